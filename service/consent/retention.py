"""Retention: a subject with no interaction for the retention period is purged.

"Interaction" is a consent given or a successful verification (``Subject.last_active_at``; a subject
that has none counts from its creation). A purge closes every active consent through the same
withdrawal as the API (data keys destroyed, sealed data deleted, the destruction ledger written),
destroys what no consent covers any more, and is audited (``retention.purge``) with a signed receipt
stored for the customer.

Safe with several replicas: each subject is purged in a transaction of its own that holds the
subject's row (PostgreSQL ``FOR UPDATE``; SQLite writes one at a time) and looks again, under that
lock, whether the subject is still due and still holds anything; whichever replica comes second
finds nothing left to purge, so there is one purge per subject.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import and_, exists, func, or_, select
from sqlalchemy.orm import Session

from service.auth import Principal, Role
from service.consent.receipts import ReceiptKind, issue_receipt
from service.consent.records import lock_subject
from service.consent.withdrawal import withdraw_everything
from service.erasure.ledger import DestructionLedger
from service.erasure.shred import shred_after_withdrawal
from service.settings import ServiceSettings
from service.store.db import Database
from service.store.models import Consent, DataKey, EnrolmentSession, Subject, Template, WatchlistEntry, utcnow
from service.trail.chain import record_event
from service.vault import Keyring

log = logging.getLogger("bioident.retention")

RETENTION_ACTOR = "retention"
BATCH = 100  # subjects looked at per query


@dataclass(frozen=True)
class Purge:
    subject_token: str
    tenant_id: str
    last_active_at: str
    consents_closed: list[str]
    withdrawal_receipts: list[str]
    destroyed: dict = field(default_factory=dict)  # per modality: what went
    receipt_id: str = ""


def cutoff(days: int, now: dt.datetime | None = None) -> dt.datetime:
    return (now or utcnow()) - dt.timedelta(days=days)


def _last_active():  # noqa: ANN202 - a column expression
    return func.coalesce(Subject.last_active_at, Subject.created_at)


def _holds_something():  # noqa: ANN202 - a boolean expression over Subject
    """A customer who still holds consent or biometric data. A fraudster watchlist entry's subject row (the
    owner of its data key) is no customer: it is removed by the watchlist's own path, never by retention."""
    return and_(
        ~exists().where(WatchlistEntry.id == Subject.token),
        or_(
            exists().where(Consent.subject_token == Subject.token, Consent.withdrawn_at.is_(None)),
            exists().where(DataKey.subject_token == Subject.token),
            exists().where(Template.subject_token == Subject.token),
            exists().where(EnrolmentSession.subject_token == Subject.token, EnrolmentSession.status == "open"),
        ),
    )


def due_subjects(session: Session, before: dt.datetime, *, after: str = "", limit: int = BATCH) -> list[str]:
    """Tokens of subjects inactive since before ``before`` that still hold consent or biometric data."""
    query = (
        select(Subject.token)
        .where(_last_active() < before, _holds_something(), Subject.token > after)
        .order_by(Subject.token)
        .limit(limit)
    )
    return list(session.execute(query).scalars())


def purge_subject(
    session: Session, token: str, before: dt.datetime, *, ledger: DestructionLedger | None, days: int
) -> Purge | None:
    """Purges one subject if, under its lock, it is still due and still holds something; else None."""
    lock_subject(session, token)
    subject = session.execute(
        select(Subject).where(Subject.token == token, _last_active() < before, _holds_something())
    ).scalar_one_or_none()
    if subject is None:
        return None  # active again, or purged already (by another replica)
    actor = Principal(RETENTION_ACTOR, subject.tenant_id, Role.PORTAL)
    last_active = (subject.last_active_at or subject.created_at).isoformat(timespec="seconds")
    done = withdraw_everything(session, actor, token, ledger=ledger)
    closed, withdrawals, destroyed, services = (
        done.consents_closed, done.withdrawal_receipts, done.destroyed, done.services
    )
    details = {"last_active_at": last_active, "retention_days": days, "consents_closed": closed,
               "data_keys_destroyed": sorted(m for m, d in destroyed.items() if d.get("data_key"))}  # fmt: skip
    record_event(session, actor, action="retention.purge", outcome="purged", subject_token=token, details=details)
    receipt = issue_receipt(
        session,
        kind=ReceiptKind.PURGE,
        subject_token=token,
        tenant_id=subject.tenant_id,
        channel="retention",
        services=services,
        event={"state": "purged", "last_active_at": last_active, "retention_days": days,
               "consents_closed": closed, "withdrawal_receipts": withdrawals, "destroyed": destroyed},  # fmt: skip
    )
    return Purge(token, subject.tenant_id, last_active, closed, withdrawals, destroyed, receipt.id)


def run_retention(db: Database, ledger: DestructionLedger | None, days: int, *, dry_run: bool = False) -> list[Purge]:
    """Purges every due subject, each in a transaction of its own; ``dry_run``: only says who is due."""
    before = cutoff(days)
    purged: list[Purge] = []
    after = ""
    while True:
        with db.session() as session:
            batch = due_subjects(session, before, after=after)
        if not batch:
            return purged
        after = batch[-1]
        for token in batch:
            if dry_run:
                purged.append(Purge(token, "", "", [], []))
                continue
            with db.session() as session:
                purge = purge_subject(session, token, before, ledger=ledger, days=days)
            if purge is not None:
                purged.append(purge)


def purge_inactive(db: Database, settings: ServiceSettings, keyring: Keyring, *, dry_run: bool = False) -> list[Purge]:
    """Retention as the deployment runs it: destructions go to its ledger, and with a shredding period of 0
    their residue goes right after."""
    purged = run_retention(db, DestructionLedger.of(settings, keyring), settings.retention_days, dry_run=dry_run)
    if settings.shredding_period_s == 0 and any(d.get("data_key") for p in purged for d in p.destroyed.values()):
        shred_after_withdrawal(db, settings)
    return purged


class RetentionSchedule:
    """Inside ``bioident serve``: runs retention every ``interval_s`` seconds (the first run right away)."""

    def __init__(self, run: Callable[[], list[Purge]], interval_s: float) -> None:
        self._run_once, self.interval_s = run, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="retention-schedule", daemon=True)

    def start(self) -> RetentionSchedule:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                purged = self._run_once()
                if purged:
                    log.info("retention purged %d subjects", len(purged))
            except Exception:
                log.exception("retention failed; it tries again in %s s", self.interval_s)
            if self._stop.wait(self.interval_s):
                return
