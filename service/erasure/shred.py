"""Key-encryption epochs: the shred step that makes residue of destroyed data keys unreadable.

A destroyed data key leaves copies behind that this service cannot delete: PostgreSQL's dead rows
(until vacuum), its WAL and WAL archives, older backups. Each copy is wrapped under the key version
that was active when it was written. The shred step adds a version, re-wraps every live data key (and
every backup's key section) under it, and retires every older version: their material is gone from
the keyring, so no copy older than the new epoch can be unwrapped, with the keyring or without it.

It is due when the active version is older than ``BIOIDENT_SHREDDING_PERIOD_S`` or, with a period of 0,
when a data key was destroyed since the last shred. ``bioident keys shred`` runs it (for cron), the
shredding schedule inside ``bioident serve`` every minute, and a withdrawal itself with a period of 0.
Replicas on one database take turns: the decision is made again under the fence row's exclusive lock,
with the keyring file read again, so one replica rotates per period.

A keyring from ``BIOIDENT_KEYRING`` cannot be changed here: the step re-wraps under a newer version the
secret store holds, and otherwise says what the operator must do (``Shred.operator_action``).
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from sqlalchemy import update

from service.deployment_keyring import keyring_origin, load_keyring, require_same_keyring
from service.erasure.destruction import replay_ledger
from service.erasure.ledger import DestructionLedger
from service.erasure.sections import BackupKeys
from service.errors import Conflict
from service.keys import (
    Retirement,
    Rotation,
    deployment_wrap_version,
    retire_key,
    rotate_under_fence,
    secret_store_has_newer,
)
from service.protected import lock_fence
from service.settings import ServiceSettings
from service.store.db import Database
from service.store.models import ERASURE_STATE_ID, KEYRING_STATE_ID, ErasureState, KeyringState, utcnow
from service.trail.chain import append
from service.vault import Keyring, KeyStatus

log = logging.getLogger("bioident.erasure")

CHECK_INTERVAL_S = 60  # how often the schedule inside 'bioident serve' looks whether a shred is due
SCHEDULE_ACTOR = "shredding-schedule"


@dataclass(frozen=True)
class Shred:
    active_version: int
    reason: str | None  # why a rotation was due; None when none was
    rotation: Rotation | None  # None when nothing was rotated
    retired: tuple[int, ...]  # versions whose material this step destroyed
    operator_action: str | None  # what only the operator can do (a keyring held in a secret store)


def rotation_due(keyring: Keyring, state: ErasureState, settings: ServiceSettings, now: dt.datetime) -> str | None:
    """Why the keyring must move to a new epoch now, or None."""
    period = settings.shredding_period_s
    if period == 0:
        pending = state.destroyed_since_shred
        return f"{pending} data keys destroyed since the last shred (shredding period 0)" if pending > 0 else None
    active = next(info for info in keyring.versions() if info.version == keyring.active_version)
    age = (now - active.created_at).total_seconds()
    if age < period:
        return None
    return f"key version {active.version} is {age:.0f} s old; the shredding period is {period} s"


def shred_reason(keyring: Keyring, state: ErasureState, fence: KeyringState, settings: ServiceSettings) -> str | None:
    """``rotation_due``, and for a keyring from a secret store: it holds a version newer than the one in use."""
    if keyring.read_only and secret_store_has_newer(keyring, fence):
        return f"BIOIDENT_KEYRING holds key version {keyring.active_version}, newer than the one in use"
    return rotation_due(keyring, state, settings, utcnow())


def older_versions_with_material(keyring: Keyring) -> list[int]:
    return [info.version for info in keyring.versions() if info.status is KeyStatus.DECRYPT_ONLY]


SECRET_STORE_ROTATION = (
    "the keyring comes from BIOIDENT_KEYRING, which this service cannot change: add a key version in the "
    "secret store and redeploy (the shredding schedule, or 'bioident keys shred', then re-wraps every data key "
    "under it), then destroy the older versions there"
)


def secret_store_action(older: list[int]) -> str:
    return (
        f"destroy key versions {', '.join(map(str, older))} in the secret store (no data key or backup needs "
        "them any more) and redeploy: until then, residue wrapped under them is readable"
    )


def shred(db: Database, settings: ServiceSettings, *, now: bool = False, actor: str = "operator") -> Shred:
    """Rotates when due (``now``: whatever the schedule says), then retires every older version."""
    keyring = load_keyring(settings)
    rotation, reason, action = None, None, None
    if now or _looks_due(db, keyring, settings):  # a cheap look first; decided again under the lock
        rotation, reason, action = _rotate(db, settings, now=now, actor=actor)
    keyring = load_keyring(settings)  # as the file is now
    older = older_versions_with_material(keyring)
    retired: list[int] = []
    if keyring.read_only:
        in_use_from = deployment_wrap_version(db)
        older = [version for version in older if version < in_use_from]
        if older and action is None:
            action = secret_store_action(older)
    else:
        backups = BackupKeys.of(settings, DestructionLedger.of(settings, keyring))
        for version in older:
            try:
                if retire_key(db, keyring, version, backups, actor=actor) is Retirement.RETIRED:
                    retired.append(version)
            except Conflict as exc:  # a data key still under it (a replica with an old keyring): next time
                log.warning("key version %s not retired yet: %s", version, exc.detail)
    return Shred(keyring.active_version, reason, rotation, tuple(retired), action)


def _looks_due(db: Database, keyring: Keyring, settings: ServiceSettings) -> bool:
    with db.session() as session:
        state = session.get(ErasureState, ERASURE_STATE_ID)
        return shred_reason(keyring, state, session.get(KeyringState, KEYRING_STATE_ID), settings) is not None


def _rotate(
    db: Database, settings: ServiceSettings, *, now: bool, actor: str
) -> tuple[Rotation | None, str | None, str | None]:
    with db.session() as session:
        fence = lock_fence(session, exclusive=True)  # one replica at a time; wraps in flight finish first
        keyring = load_keyring(settings)  # another replica may have rotated while we waited for the lock
        if fence.keyring_id is not None:
            require_same_keyring(keyring, fence.keyring_id, keyring_origin(settings))
        state = session.get(ErasureState, ERASURE_STATE_ID)
        reason = "asked for now" if now else shred_reason(keyring, state, fence, settings)
        if reason is None:
            return None, None, None
        backups = BackupKeys.of(settings, DestructionLedger.of(settings, keyring))
        try:
            rotation = rotate_under_fence(session, fence, keyring, backups)
        except Conflict:  # a keyring from a secret store that holds nothing newer
            return None, reason, SECRET_STORE_ROTATION
        session.execute(
            update(ErasureState)
            .where(ErasureState.id == ERASURE_STATE_ID)
            .values(
                # Destructions committed while we ran stay counted: they may be under the new version.
                destroyed_since_shred=ErasureState.destroyed_since_shred - state.destroyed_since_shred,
                last_shred_at=utcnow(),
            )
        )
        sections = rotation.backups
        append(
            session,
            actor=actor,
            action="keys.shred",
            outcome="rotated",
            details={
                "reason": reason,
                "active_version": rotation.active_version,
                "data_keys_rewrapped": rotation.rewrapped,
                "backup_keys_rewrapped": sections.rewrapped if sections else 0,
                "backup_keys_dropped": sections.dropped if sections else 0,
            },
        )
    return rotation, reason, None


def shred_after_withdrawal(db: Database, settings: ServiceSettings) -> None:
    """With a shredding period of 0: the step, right after the withdrawal committed. A failure is logged
    and left to the schedule (the withdrawal itself stands)."""
    try:
        outcome = shred(db, settings, actor=SCHEDULE_ACTOR)
    except Exception:
        log.exception("shredding after a withdrawal failed; the shredding schedule tries again")
        return
    if outcome.operator_action:
        log.warning("erasure needs the operator: %s", outcome.operator_action)


class ShreddingSchedule:
    """Inside ``bioident serve``: replays the ledger and runs the shred step every ``interval_s`` seconds."""

    def __init__(self, db: Database, settings: ServiceSettings, interval_s: float = CHECK_INTERVAL_S) -> None:
        self.db, self.settings, self.interval_s = db, settings, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="shredding-schedule", daemon=True)
        self._told: str | None = None
        self._replayed = 0  # ledger lines this process found done (the start replayed them all)

    def start(self) -> ShreddingSchedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def run_once(self) -> Shred:
        ledger = DestructionLedger.of(self.settings, load_keyring(self.settings))
        replay = replay_ledger(self.db, ledger, skip=self._replayed)
        self._replayed = replay.ledger_lines
        if replay.completed:
            log.warning("destroyed again from the destruction ledger: %d subject modalities", len(replay.completed))
        outcome = shred(self.db, self.settings, actor=SCHEDULE_ACTOR)
        if outcome.rotation is not None:
            log.info("shredded: key version %s active, versions %s retired", outcome.active_version, outcome.retired)
        if outcome.operator_action and outcome.operator_action != self._told:
            log.warning("erasure needs the operator: %s", outcome.operator_action)
        self._told = outcome.operator_action
        return outcome

    def _run(self) -> None:
        while True:
            try:
                self.run_once()
            except Exception:
                log.exception("the shredding schedule failed; it tries again in %s s", self.interval_s)
            if self._stop.wait(self.interval_s):
                return
