"""What a withdrawal destroys, per modality.

When the last consent for a modality is withdrawn, the subject's data key for it is destroyed
(``service.protected.destroy_data_key``), which makes everything sealed under it unrecoverable, and
the ciphertexts themselves are deleted. This registry names those ciphertexts per modality, and the
withdrawal receipt lists what each entry deleted. A new kind of sealed data (fingerprint templates,
payment links) is added here, beside the modality it belongs to, so no withdrawal can forget it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from service.modality import Modality
from service.store.models import EnrolmentSample, EnrolmentSession, PaymentLink, Template


@dataclass(frozen=True)
class Erasable:
    """One kind of sealed data: ``erase(session, subject_token, modality)`` deletes it and says what went."""

    name: str  # its key in the receipt's ``destroyed``
    erase: Callable[[Session, str, str], object]
    nothing: Callable[[], object]  # what the receipt shows when nothing was destroyed
    # How many the subject holds now (the portal shows it; a kind without it is not shown there).
    held: Callable[[Session, str, str], int] | None = None


def _erase_templates(session: Session, token: str, modality: str) -> list[str]:
    ids = list(
        session.execute(
            select(Template.id).where(Template.subject_token == token, Template.modality == modality)
        ).scalars()
    )
    session.execute(delete(Template).where(Template.id.in_(ids)))
    return ids


def _erase_enrolment_sessions(session: Session, token: str, modality: str) -> int:
    ids = list(
        session.execute(
            select(EnrolmentSession.id).where(
                EnrolmentSession.subject_token == token, EnrolmentSession.modality == modality
            )
        ).scalars()
    )
    session.execute(delete(EnrolmentSample).where(EnrolmentSample.session_id.in_(ids)))
    session.execute(delete(EnrolmentSession).where(EnrolmentSession.id.in_(ids)))
    return len(ids)


def _count(model: type, *conditions: object) -> Callable[[Session, str, str], int]:
    def held(session: Session, token: str, modality: str) -> int:
        query = select(func.count()).select_from(model).where(
            model.subject_token == token, model.modality == modality, *conditions
        )
        return session.execute(query).scalar_one()

    return held


def _erase_payment_links(session: Session, token: str, modality: str) -> list[str]:
    """The payment token is sealed under the same data key as the fingerprint templates; its row (the
    sealed token, the card's digest, the PIN hash) goes too."""
    ids = list(
        session.execute(
            select(PaymentLink.id).where(PaymentLink.subject_token == token, PaymentLink.modality == modality)
        ).scalars()
    )
    session.execute(delete(PaymentLink).where(PaymentLink.id.in_(ids)))
    return ids


TEMPLATES = Erasable("templates", _erase_templates, list, _count(Template))
ENROLMENT_SESSIONS = Erasable(
    "enrolment_sessions", _erase_enrolment_sessions, int, _count(EnrolmentSession, EnrolmentSession.status == "open")
)
PAYMENT_LINKS = Erasable("payment_links", _erase_payment_links, list, _count(PaymentLink))

ERASED_ON_WITHDRAWAL: dict[Modality, tuple[Erasable, ...]] = {
    Modality.VOICE: (TEMPLATES, ENROLMENT_SESSIONS),
    Modality.FINGERPRINT: (TEMPLATES, ENROLMENT_SESSIONS, PAYMENT_LINKS),
}


def erase(session: Session, token: str, modality: Modality) -> dict[str, object]:
    """Deletes every registered kind of sealed data of the subject for ``modality``; says what went."""
    erased = {entry.name: entry.erase(session, token, str(modality)) for entry in ERASED_ON_WITHDRAWAL[modality]}
    session.flush()
    return erased


def nothing_erased(modality: Modality) -> dict[str, object]:
    return {entry.name: entry.nothing() for entry in ERASED_ON_WITHDRAWAL[modality]}


def held(session: Session, token: str, modality: Modality) -> dict[str, int]:
    """How many of each registered kind of sealed data the subject holds for ``modality`` (never its contents)."""
    entries = ERASED_ON_WITHDRAWAL[modality]
    return {entry.name: entry.held(session, token, str(modality)) for entry in entries if entry.held is not None}
