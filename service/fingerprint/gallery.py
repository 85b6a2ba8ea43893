"""The in-memory gallery for 1:N at the till: every tenant's fingerprint templates, decrypted, in process
memory only (never written, logged or returned), each tenant's behind the matcher's index.

It is built when the service starts, in the background (opening and indexing many fingers takes minutes:
the service answers everything else meanwhile, and 1:N payments answer 503 with Retry-After until the
gallery is complete, never from part of it), updated by this process's enrolments and withdrawals, and brought in
line with the database before each search (``sync``): every row of the customers with a row stamped since
its last look, less a margin for transactions that committed late (as the voice gallery does), is read (a
re-enrolment replaces all of a customer's rows), opened and put in when new or changed, and the customer's
other fingers dropped. Rows removed by another replica cannot be seen that way: every row is listed, and those gone are
dropped, at least every ``SWEEP_S``, and at the next search after a re-check found a customer's rows
changed or gone (``drop_stale``); listing all 10,000 rows of the till benchmark took 25-50 ms of every 1:N
payment. It is a cache all the same: the payment use cases re-check every candidate it returns in the
database, in the transaction that decides (consent active, template row unchanged, not locked out), so
a withdrawal through another replica or another process on the same database is never answered from it.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass, field
from typing import Literal

from sqlalchemy import select
from sqlalchemy.orm import Session

from biometrics.fingerprint.matcher import FingerprintIndex
from biometrics.fingerprint.templates import FingerprintTemplate
from service.errors import ServiceError
from service.fingerprint.templates import FINGERPRINT, EnrolledFinger, open_finger
from service.protected import unwrap_row
from service.store.db import Database
from service.store.models import DataKey, Template, utcnow
from service.vault import DecryptionError, Keyring, KeyVersionRetired

# Rows stamped this long before the newest one seen are looked at again at each sync (a transaction that
# stamped its row earlier but committed after the last look is still picked up).
LATE_COMMIT_MARGIN = dt.timedelta(seconds=120)
SWEEP_S = 300.0  # every row is listed at least this often, so that removals made elsewhere leave memory


class GalleryLoading(ServiceError):
    status, code, title = 503, "gallery_loading", "The fingerprint gallery is still loading"

    def __init__(self, detail: str, *, failed: bool, retry_after_s: int) -> None:
        super().__init__(detail, retry_after_s=retry_after_s)
        self.failed = failed

    @property
    def refuses_attempt(self) -> bool:
        """"Not yet" is an answer to an attempt, audited as refused; a gallery that failed to load is a fault."""
        return not self.failed


def finger_key(subject_token: str, position: int) -> str:
    return f"{subject_token}/{position}"


@dataclass
class _TenantFingers:
    index: FingerprintIndex = field(default_factory=FingerprintIndex)
    fingers: dict[str, EnrolledFinger] = field(default_factory=dict)
    by_subject: dict[str, set[str]] = field(default_factory=dict)
    newest: dt.datetime | None = None  # the newest row stamp listed
    swept_at: float | None = None  # when every row was last listed (time.monotonic)
    stale_drops: int = 0  # customers dropped because a re-check found their rows changed or gone
    swept_drops: int = 0  # ... as counted when every row was last listed

    def needs_sweep(self) -> bool:
        return (
            self.newest is None
            or self.swept_at is None
            or self.stale_drops != self.swept_drops
            or time.monotonic() - self.swept_at > SWEEP_S
        )

    def put(self, finger: EnrolledFinger) -> None:
        key = finger_key(finger.subject_token, finger.position)
        if key in self.fingers:
            self.index.remove(key)
        self.fingers[key] = finger
        self.by_subject.setdefault(finger.subject_token, set()).add(key)
        self.index.add(key, finger.template)

    def drop_key(self, key: str) -> None:
        finger = self.fingers.pop(key, None)
        if finger is None:
            return
        self.index.remove(key)
        keys = self.by_subject.get(finger.subject_token, set())
        keys.discard(key)
        if not keys:
            self.by_subject.pop(finger.subject_token, None)


@dataclass(frozen=True)
class Match:
    finger: EnrolledFinger
    score: float


class FingerprintGallery:
    """Decrypted fingerprint templates per tenant, for identification; safe to share between threads."""

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self._tenants: dict[str, _TenantFingers] = {}
        self._ready = threading.Event()
        self._failed = False

    def wait_ready(self, timeout_s: float) -> None:
        """Returns once every enrolled finger is in; else ``GalleryLoading`` (503, Retry-After)."""
        if not self._ready.wait(timeout_s) or self._failed:
            detail = "could not be loaded: see the service's log" if self._failed else "is still loading"
            raise GalleryLoading(
                f"the fingerprint gallery {detail}; try again shortly", failed=self._failed, retry_after_s=10
            )

    def build_failed(self) -> None:
        self._failed = True
        self._ready.set()

    def _tenant(self, tenant_id: str) -> _TenantFingers:
        return self._tenants.setdefault(tenant_id, _TenantFingers())

    def build(self, db: Database, keyring: Keyring) -> int:
        """Loads every tenant's fingerprint templates (at start), then serves searches; returns how many
        fingers it holds. Each tenant's rows are read in a short transaction of their own and indexed after
        it ends: indexing takes minutes for many fingers, and on SQLite a transaction holds the write lock."""
        with db.session() as session:
            tenants = list(
                session.execute(select(Template.tenant_id).where(Template.modality == FINGERPRINT).distinct()).scalars()
            )
        for tenant_id in tenants:
            with self._lock:
                drops = self._tenant(tenant_id).stale_drops
            started = utcnow()
            with db.session() as session:
                listing, opened, _ = self._fetch(session, keyring, tenant_id, since=None)
            self._apply(tenant_id, listing, opened, started=started, customers=None, drops=drops)
        self._ready.set()
        with self._lock:
            return sum(len(t.fingers) for t in self._tenants.values())

    def sync(self, session: Session, keyring: Keyring, tenant_id: str) -> None:
        """Brings the tenant's fingers in line with the database's template rows (see the module's docstring)."""
        with self._lock:
            tenant = self._tenant(tenant_id)
            sweep = tenant.needs_sweep()
            since = None if sweep else tenant.newest - LATE_COMMIT_MARGIN  # a sweep is due while newest is None
            drops = tenant.stale_drops
        started = utcnow()
        listing, opened, customers = self._fetch(session, keyring, tenant_id, since)
        self._apply(tenant_id, listing, opened, started=started, customers=customers, drops=drops)

    def _fetch(
        self, session: Session, keyring: Keyring, tenant_id: str, since: dt.datetime | None
    ) -> tuple[dict[str, tuple[str, dt.datetime]], list[EnrolledFinger], set[str] | None]:
        """Every row of the tenant (``since`` None), or every row of the customers with a row stamped at or
        after ``since`` (a re-enrolment replaces all of a customer's rows: the listing must show which of
        theirs are gone): by key, as (row id, stamp); those this gallery lacks or holds stale, opened; and
        the customers listed (None: all)."""
        columns = select(Template.id, Template.subject_token, Template.finger_position, Template.updated_at).where(
            Template.tenant_id == tenant_id, Template.modality == FINGERPRINT
        )
        customers = None
        if since is None:
            found = session.execute(columns).all()
        else:
            customers = set(
                session.execute(
                    select(Template.subject_token)
                    .where(Template.tenant_id == tenant_id, Template.modality == FINGERPRINT)
                    .where(Template.updated_at >= since)
                ).scalars()
            )
            ordered = sorted(customers)
            found = [
                row
                for start in range(0, len(ordered), 500)
                for row in session.execute(columns.where(Template.subject_token.in_(ordered[start : start + 500])))
            ]
        wanted = {finger_key(token, position or 0): (row_id, updated) for row_id, token, position, updated in found}
        with self._lock:
            tenant = self._tenant(tenant_id)
            stale = [
                row_id
                for key, (row_id, updated) in wanted.items()
                if (held := tenant.fingers.get(key)) is None or held.template_id != row_id or held.updated_at != updated
            ]
        opened = []
        for start in range(0, len(stale), 500):
            rows = session.execute(
                select(Template, DataKey)
                .join(DataKey, (DataKey.subject_token == Template.subject_token) & (DataKey.modality == FINGERPRINT))
                .where(Template.id.in_(stale[start : start + 500]))
            )
            for row, key_row in rows:
                try:
                    opened.append(open_finger(row, unwrap_row(keyring, key_row)))
                except ServiceError:
                    continue  # another matcher's template: it cannot be searched; that customer re-enrols
                except (DecryptionError, KeyVersionRetired):
                    continue  # altered, or under a retired key version (a database older than a shred): no one opens it
        return wanted, opened, customers

    def _apply(
        self,
        tenant_id: str,
        listing: dict[str, tuple[str, dt.datetime]],
        opened: list[EnrolledFinger],
        *,
        started: dt.datetime,
        customers: set[str] | None,
        drops: int,
    ) -> None:
        """Drops the held keys of the customers listed (all with None) that the listing lacks, unless put in
        after the listing began (``started``: an enrolment on this process meanwhile); puts the opened
        fingers in unless something newer is held."""
        with self._lock:
            tenant = self._tenant(tenant_id)
            held_keys = (
                list(tenant.fingers)
                if customers is None
                else [k for token in customers for k in tenant.by_subject.get(token, ())]
            )
            for key in held_keys:
                if key not in listing and tenant.fingers[key].updated_at < started:
                    tenant.drop_key(key)
            if customers is None:
                tenant.swept_at, tenant.swept_drops = time.monotonic(), drops
            for finger in opened:
                held = tenant.fingers.get(finger_key(finger.subject_token, finger.position))
                if held is None or held.updated_at <= finger.updated_at:
                    tenant.put(finger)
            # A clock running ahead on another replica must not move the look past rows stamped here meanwhile.
            stamps = [stamp for _, stamp in listing.values()] + ([tenant.newest] if tenant.newest else [])
            tenant.newest = min(max(stamps), started) if stamps else None

    def put(self, tenant_id: str, fingers: list[EnrolledFinger]) -> None:
        """A subject's fingers after an enrolment here: they replace whatever was held of that subject."""
        with self._lock:
            self.drop_subject(tenant_id, *{f.subject_token for f in fingers})
            tenant = self._tenant(tenant_id)
            for finger in fingers:
                tenant.put(finger)

    def drop_subject(self, tenant_id: str, *subject_tokens: str) -> None:
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                return
            for token in subject_tokens:
                for key in list(tenant.by_subject.get(token, ())):
                    tenant.drop_key(key)

    def drop_stale(self, tenant_id: str, subject_token: str) -> None:
        """A re-check found the customer's rows changed or gone: dropped now, and the next sync lists every
        row, so that whatever the customer holds now comes back."""
        with self._lock:
            self.drop_subject(tenant_id, subject_token)
            self._tenant(tenant_id).stale_drops += 1

    def fingers_of(self, tenant_id: str, subject_token: str) -> list[EnrolledFinger]:
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None:
                return []
            return [tenant.fingers[k] for k in sorted(tenant.by_subject.get(subject_token, ()))]

    def size(self, tenant_id: str) -> int:
        """How many fingers the tenant's gallery holds."""
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            return 0 if tenant is None else len(tenant.fingers)

    def total(self) -> int:
        """Fingers held, all tenants together. Without the lock, which a tenant's indexing holds for minutes
        at start: for /metrics, a count a moment old is right enough (copying the values is atomic)."""
        return sum(len(t.fingers) for t in list(self._tenants.values()))

    @property
    def state(self) -> Literal["loading", "ready", "failed"]:
        if not self._ready.is_set():
            return "loading"
        return "failed" if self._failed else "ready"

    def search(self, tenant_id: str, probe: FingerprintTemplate, limit: int) -> list[Match]:
        """The fingers most like the probe, best first (the index's fast first stage, then full scores)."""
        with self._lock:
            tenant = self._tenants.get(tenant_id)
            if tenant is None or not tenant.fingers:
                return []
            found = tenant.index.search(probe, limit=limit)
            return [Match(tenant.fingers[key], float(score)) for key, score in found if key in tenant.fingers]
