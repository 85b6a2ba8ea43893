"""A subject's voice template row: found, opened under the subject's data key, or consolidated and sealed."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from biometrics.scoring.operating_points import ChannelScoring
from biometrics.voice.templates import Capture, VoiceTemplate
from enroll.voice import Mismatch, consolidate, samples_not_agreeing, samples_not_matching
from service.errors import Conflict, NotFound, QualityFailed
from service.modality import Modality
from service.protected import data_key, open_template, seal_into
from service.store.models import Template
from service.vault import Keyring

VOICE = str(Modality.VOICE)


def voice_template_row(session: Session, token: str) -> Template:
    row = find_voice_template_row(session, token)
    if row is None:
        raise NotFound("the subject has no voice enrolment")
    return row


def find_voice_template_row(session: Session, token: str) -> Template | None:
    return session.execute(
        select(Template).where(Template.subject_token == token, Template.modality == VOICE)
    ).scalar_one_or_none()


def open_voice_template(session: Session, keyring: Keyring, row: Template) -> VoiceTemplate:
    key = data_key(session, keyring, row.subject_token, VOICE, create=False)
    if key is None:  # shredded: the template row is going with it
        raise NotFound("the subject has no voice enrolment")
    return VoiceTemplate.from_bytes(open_template(row, key))


class NotTheEnrolledVoice(Conflict):
    code, title = "not_the_enrolled_voice", "The samples do not match the enrolled voice"


class SamplesDoNotMatch(QualityFailed):
    code, title = "samples_do_not_match", "The samples are not of one voice"


class ChannelNotEnrolled(Conflict):
    code, title = "channel_not_enrolled", "The samples are of a channel the voice is not enrolled in"


def _named(mismatches: Sequence[Mismatch], labels: Sequence[int | str] | None) -> list[dict]:
    return [m.as_dict() if labels is None else {**m.as_dict(), "sample": labels[m.sample]} for m in mismatches]


def store_voice_template(
    session: Session,
    keyring: Keyring,
    tenant_id: str,
    token: str,
    captures: Sequence[Capture],
    scoring: ChannelScoring,
    *,
    replace: bool = False,
    labels: Sequence[int | str] | None = None,
) -> Template:
    """Creates the subject's voice template, or adds the captures to the one it has, each of which must
    verify against it at the operating point in force (``replace``: a new template from these captures
    alone; the caller has checked that it may). Sealed either way. ``labels`` name the captures in a
    refusal's reasons as the caller knows them (a sample's place among those sent, a session's sample id)."""
    key = data_key(session, keyring, token, VOICE, create=True)
    row = find_voice_template_row(session, token)
    existing = None if row is None or replace else VoiceTemplate.from_bytes(open_template(row, key))
    if existing is not None:
        new = sorted({c.slot for c in captures} - set(existing.means))
        if new:  # a mean made of these samples alone would be what later callers are scored against
            raise ChannelNotEnrolled(
                f"the voice is enrolled from {', '.join(sorted(existing.means))} audio and these samples are "
                f"{', '.join(new)}: nothing was added; enrolling another channel is a re-enrolment (record fresh "
                "consent, then enrol with replace=true)",
                reasons=[{"code": "CHANNEL_NOT_ENROLLED", "channel": slot} for slot in new],
            )
        mismatches = samples_not_matching(existing, captures, scoring)
        if mismatches:
            raise NotTheEnrolledVoice(
                f"{len(mismatches)} of {len(captures)} samples do not verify against the enrolled voice; "
                "nothing was added (replacing a voice is a re-enrolment: record fresh consent, then enrol "
                "with replace=true)",
                reasons=_named(mismatches, labels),
            )
    else:
        disagreeing = samples_not_agreeing(captures, scoring)
        if disagreeing:
            raise SamplesDoNotMatch(
                f"{len(disagreeing)} of {len(captures)} samples do not verify as the voice of the others: an "
                "enrolment is one person's voice; nothing was stored (record the customer's samples again)",
                reasons=_named(disagreeing, labels),
            )
    template = consolidate(existing, captures)
    if row is None:
        row = Template(
            subject_token=token,
            tenant_id=tenant_id,
            modality=VOICE,
            model_fingerprint=template.model_fingerprint,
            sample_count=template.count,
            sealed=b"",
        )
        session.add(row)
        session.flush()
    else:
        row.sample_count, row.model_fingerprint = template.count, template.model_fingerprint
    seal_into(row, key, template.to_bytes())
    session.flush()
    return row
