"""What is held about a subject, as the customer may see it: never template contents."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from sqlalchemy import select

from service.auth import Principal
from service.consent.records import subject_in_tenant
from service.context import ServiceContext
from service.store.models import Consent, EnrolmentSession, PaymentLink, Template

TEMPLATE_PROTECTION = "AES-256-GCM envelope"


@dataclass(frozen=True)
class Held:
    subject_token: str
    created_at: dt.datetime
    consents: list[Consent]
    templates: list[Template]  # their rows' metadata only: the sealed bytes are never shown
    enrolment_sessions: list[EnrolmentSession]
    payment_links: list[PaymentLink]  # metadata only: the sealed token and the PIN hash are never shown


def what_is_held(ctx: ServiceContext, actor: Principal, token: str) -> Held:
    with ctx.db.session() as session:
        subject = subject_in_tenant(session, actor.tenant_id, token)
        return Held(
            subject_token=subject.token,
            created_at=subject.created_at,
            consents=list(session.execute(select(Consent).where(Consent.subject_token == token)).scalars()),
            templates=list(session.execute(select(Template).where(Template.subject_token == token)).scalars()),
            enrolment_sessions=list(
                session.execute(select(EnrolmentSession).where(EnrolmentSession.subject_token == token)).scalars()
            ),
            payment_links=list(
                session.execute(select(PaymentLink).where(PaymentLink.subject_token == token)).scalars()
            ),
        )
