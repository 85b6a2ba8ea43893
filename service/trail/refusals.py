"""Refused attempts leave a trace: a verification or identification refused (locked out, no consent,
unknown subject, unusable audio or image) is audited with its reason, so a security team sees an attack on a
locked account.

The entry names the subject only where one exists in the client's tenant; a refusal for an unknown
reference creates no subject and is recorded without a token (counted, not attributed).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from biometrics.errors import AudioError, FingerprintInputError, FingerprintTemplateError, IncompatibleModel
from service.auth import Principal
from service.context import ServiceContext
from service.errors import ServiceError
from service.store.models import Subject
from service.trail.chain import record_event


def _refusal(exc: Exception) -> tuple[str, int] | None:
    """The reason code and status of an input refusal; None for faults that are not the caller's."""
    if isinstance(exc, ServiceError) and exc.refuses_attempt:
        return exc.code, exc.status
    if isinstance(exc, AudioError | FingerprintInputError):
        return exc.code, 422
    if isinstance(exc, FingerprintTemplateError):
        return exc.code, 409
    if isinstance(exc, IncompatibleModel):
        return exc.code, 409
    return None


@dataclass
class Attempt:
    """Whose attempt it is, once the use case knows (a session id names its subject only when opened)."""

    subject_token: str | None = None


@contextmanager
def refusals_audited(
    ctx: ServiceContext, actor: Principal, action: str, *, reference: str | None, details: dict
) -> Iterator[Attempt]:
    """Runs an attempt; if it is refused, appends ``action`` with outcome ``refused`` and re-raises."""
    attempt = Attempt()
    try:
        yield attempt
    except Exception as exc:
        refusal = _refusal(exc)
        if refusal is not None:
            _record(ctx, actor, action, reference, attempt, details, *refusal)
        raise


def _record(
    ctx: ServiceContext,
    actor: Principal,
    action: str,
    reference: str | None,
    attempt: Attempt,
    details: dict,
    reason: str,
    status: int,
) -> None:
    with ctx.db.session() as session:
        token = None
        if attempt.subject_token is not None or reference is not None:
            candidate = attempt.subject_token or ctx.token(actor.tenant_id, reference)
            subject = session.get(Subject, candidate)
            token = candidate if subject is not None and subject.tenant_id == actor.tenant_id else None
        record_event(
            session,
            actor,
            action=action,
            outcome="refused",
            subject_token=token,
            details={**details, "reason": reason, "status": status},
        )
