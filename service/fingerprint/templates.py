"""A subject's fingerprint template rows (one per finger): found, opened under the subject's data key, or
stored sealed, exactly as voice templates are."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from biometrics.errors import FingerprintTemplateError
from biometrics.fingerprint.templates import FingerprintTemplate
from service.errors import Conflict, NotFound
from service.modality import Modality
from service.protected import data_key, open_template, seal_into
from service.store.models import Template
from service.vault import DataKey, Keyring

FINGERPRINT = str(Modality.FINGERPRINT)


@dataclass(frozen=True)
class EnrolledFinger:
    """One finger's template in memory, with what identifies the row it came from."""

    subject_token: str
    template_id: str
    position: int
    updated_at: dt.datetime
    template: FingerprintTemplate


class TemplateFromAnotherMatcher(Conflict):
    code, title = "template_from_another_matcher", "Template from another extractor or matcher"


def template_fingerprint(template: FingerprintTemplate) -> str:
    """The extractor + matcher fingerprint a template carries (comparing across them is refused)."""
    return template.fingerprint


def fingerprint_rows(session: Session, token: str) -> list[Template]:
    query = select(Template).where(Template.subject_token == token, Template.modality == FINGERPRINT)
    return list(session.execute(query.order_by(Template.finger_position)).scalars())


def open_finger(row: Template, key: DataKey) -> EnrolledFinger:
    try:
        template = FingerprintTemplate.from_bytes(open_template(row, key))
    except FingerprintTemplateError:
        raise TemplateFromAnotherMatcher(
            "the customer's fingerprint template was made by another extractor or matcher version: re-enrol "
            "(record fresh consent, then enrol with replace=true)"
        ) from None
    return EnrolledFinger(row.subject_token, row.id, row.finger_position or 0, row.updated_at, template)


def open_fingers(session: Session, keyring: Keyring, token: str) -> list[EnrolledFinger]:
    """The subject's enrolled fingers, opened; NotFound when there are none (or they are being shredded)."""
    rows = fingerprint_rows(session, token)
    key = data_key(session, keyring, token, FINGERPRINT, create=False) if rows else None
    if key is None:
        raise NotFound("the customer has no fingerprint enrolment")
    return [open_finger(row, key) for row in rows]


def store_fingers(
    session: Session, keyring: Keyring, tenant_id: str, token: str, templates: Mapping[int, FingerprintTemplate]
) -> list[Template]:
    """Replaces the subject's fingerprint templates with these (finger position -> template), each sealed
    under the subject's data key in a row of its own; the caller has checked that it may."""
    key = data_key(session, keyring, token, FINGERPRINT, create=True)
    session.execute(delete(Template).where(Template.subject_token == token, Template.modality == FINGERPRINT))
    rows = []
    for position, template in sorted(templates.items()):
        row = Template(
            subject_token=token,
            tenant_id=tenant_id,
            modality=FINGERPRINT,
            model_fingerprint=template_fingerprint(template),
            sample_count=impressions(template),
            finger_position=position,
            sealed=b"",
        )
        session.add(row)
        session.flush()
        seal_into(row, key, template.to_bytes())
        rows.append(row)
    session.flush()
    return rows


def impressions(template: FingerprintTemplate) -> int:
    return len(template.impressions)
