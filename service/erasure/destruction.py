"""Destructions recorded outside the database, and replayed over it before it serves.

``record_destruction`` is called by a withdrawal in its own transaction, right after the data key was
destroyed: the ledger line is on disk before the transaction commits. ``replay_ledger`` runs on every
start of ``bioident serve``, in every ``bioident restore`` and on the shredding schedule: whatever the
ledger says was destroyed but the database still holds (a database put back from a backup, a withdrawal
whose process stopped before it committed) is destroyed again through the same registry and
``destroy_data_key``, and audited.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.consent import registry
from service.erasure.errors import LedgerError
from service.erasure.ledger import Destruction, DestructionLedger
from service.modality import Modality
from service.protected import DestroyedKey, destroy_data_key
from service.store.db import Database
from service.store.models import (
    ERASURE_STATE_ID,
    Consent,
    DataKey,
    EnrolmentSession,
    ErasureState,
    PaymentLink,
    Subject,
    Template,
    utcnow,
)
from service.trail.chain import append

_CHUNK = 500  # subjects looked up at once


def record_destruction(
    session: Session, ledger: DestructionLedger | None, token: str, modality: str, key: DestroyedKey
) -> None:
    """Appends the destruction's ledger line (synced) and counts it, in the caller's transaction, before it
    commits. ``ledger`` is None only where there is no deployment (a library caller, a test): the residue
    is still counted for the shredding schedule."""
    counts = {ErasureState.destroyed_since_shred: ErasureState.destroyed_since_shred + 1}
    if ledger is not None:
        ledger.append(Destruction(token, modality, key.key_id, key.kek_version, utcnow()))
        counts[ErasureState.ledger_lines] = ErasureState.ledger_lines + 1
    session.execute(update(ErasureState).where(ErasureState.id == ERASURE_STATE_ID).values(counts))


@dataclass(frozen=True)
class Replay:
    ledger_lines: int
    completed: tuple[tuple[str, str], ...]  # (subject token, modality) destroyed again, in ledger order


def replay_ledger(db: Database, ledger: DestructionLedger, *, adopt: bool = False, skip: int = 0) -> Replay:
    """Destroys again what the ledger says was destroyed and the database still holds.

    ``LedgerError`` for a line that does not verify, and for a ledger with fewer lines than the database's
    withdrawals appended to it (cut, lost, or another file). ``adopt`` (a restore: the database is older
    than the ledger) makes the database take the ledger's count. ``skip``: lines a replay by this process
    found done already (the database is not swapped under a running process: only a restore does that).
    """
    with db.session() as session:
        return replay_in(session, ledger, adopt=adopt, skip=skip)


def replay_in(session: Session, ledger: DestructionLedger, *, adopt: bool = False, skip: int = 0) -> Replay:
    """``replay_ledger`` in the caller's transaction (a restore loads and replays in one)."""
    destructions = ledger.read()
    state = session.get(ErasureState, ERASURE_STATE_ID)
    if len(destructions) < state.ledger_lines:
        raise LedgerError(
            f"the destruction ledger at {ledger.path} has {len(destructions)} lines, but this database's "
            f"withdrawals appended {state.ledger_lines}: it was cut or replaced. Point BIOIDENT_LEDGER_FILE "
            "at the deployment's ledger; nothing serves without it"
        )
    if adopt:
        state.ledger_lines = len(destructions)
    held = _still_held(session, destructions[skip:])
    completed = [(d.subject_token, d.modality) for d in held if _complete(session, d)]
    return Replay(len(destructions), tuple(completed))


def _still_held(session: Session, destructions: list[Destruction]) -> list[Destruction]:
    """The destructions the database does not show: their key is still there, or (no key of the subject for
    that modality at all) sealed data is, or a consent given before the destruction still stands."""
    by_token: dict[str, list[Destruction]] = defaultdict(list)
    for destruction in destructions:
        by_token[destruction.subject_token].append(destruction)
    tokens = list(by_token)
    held = []
    for start in range(0, len(tokens), _CHUNK):
        chunk = tokens[start : start + _CHUNK]
        keys = {
            (t, m): key_id
            for t, m, key_id in session.execute(
                select(DataKey.subject_token, DataKey.modality, DataKey.key_id).where(DataKey.subject_token.in_(chunk))
            )
        }
        sealed: dict[tuple[str, str], list] = defaultdict(list)  # when each piece of sealed data was made
        for model in (Template, EnrolmentSession, PaymentLink):
            for t, m, created_at in session.execute(
                select(model.subject_token, model.modality, model.created_at).where(model.subject_token.in_(chunk))
            ):
                sealed[(t, m)].append(created_at)
        consents: dict[tuple[str, str], list] = defaultdict(list)
        for t, m, granted_at in session.execute(
            select(Consent.subject_token, Consent.modality, Consent.granted_at).where(
                Consent.subject_token.in_(chunk), Consent.withdrawn_at.is_(None)
            )
        ):
            consents[(t, m)].append(granted_at)
        for token in chunk:
            for d in by_token[token]:
                pair = (d.subject_token, d.modality)
                key = keys.get(pair)
                if (
                    key == d.key_id
                    # data made after the destruction (a new session after fresh consent) is not this one's
                    or (key is None and any(made <= d.destroyed_at for made in sealed[pair]))
                    or any(granted <= d.destroyed_at for granted in consents[pair])
                ):
                    held.append(d)
    return held


def _complete(session: Session, d: Destruction) -> bool:
    """Completes one destruction as the withdrawal did it; False when another replica did it first."""
    tenant_id = session.execute(select(Subject.tenant_id).where(Subject.token == d.subject_token)).scalar_one_or_none()
    if tenant_id is None:
        return False
    withdrawn = session.execute(
        update(Consent)
        .where(
            Consent.subject_token == d.subject_token,
            Consent.modality == d.modality,
            Consent.withdrawn_at.is_(None),
            Consent.granted_at <= d.destroyed_at,
        )
        .values(withdrawn_at=d.destroyed_at)
    ).rowcount
    # Locked: a withdrawal (or a replay) destroying it right now goes first, and then it is simply gone.
    key = session.execute(
        select(DataKey)
        .where(DataKey.subject_token == d.subject_token, DataKey.modality == d.modality)
        .with_for_update()
    ).scalar_one_or_none()
    if key is not None and key.key_id != d.key_id:
        erased, destroyed = registry.nothing_erased(Modality(d.modality)), None  # a later key: not this one's data
    else:
        erased = registry.erase(session, d.subject_token, Modality(d.modality))
        destroyed = destroy_data_key(session, d.subject_token, d.modality) if key is not None else None
    if destroyed is not None:
        record_destruction(session, None, d.subject_token, d.modality, destroyed)
    if not withdrawn and destroyed is None and not any(erased.values()):
        return False
    append(
        session,
        actor="destruction-ledger",
        action="erasure.replay",
        outcome="destroyed",
        tenant_id=tenant_id,
        subject_token=d.subject_token,
        details={
            "modality": d.modality,
            "destroyed_at": d.fields()["destroyed_at"],
            "data_key_destroyed": destroyed is not None,
            "templates_deleted": len(erased.get("templates", [])),
            "consents_withdrawn": withdrawn,
        },
    )
    return True
