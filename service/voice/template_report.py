"""Which voice templates are held to the unknown-channel threshold, for an operator planning re-enrolments.

A template whose telephone mean was made before front end 2 (2026-12-05), or one made before channels were
recorded (format 1), is scored as of unknown channel: at the stricter threshold of that pair, until the
customer enrols again (``biometrics.voice.templates``). Only the sealed template says which it is, so the
report opens every voice template under its subject's data key, in memory, one at a time; it keeps nothing
but counts and the subjects' tokens, and it is audited (``voice.templates.report``).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from sqlalchemy import select

from biometrics.errors import BiometricsError
from biometrics.voice.templates import UNKNOWN
from service.errors import NotFound
from service.store.db import Database
from service.store.models import Template, Tenant
from service.trail.chain import append
from service.vault import Keyring, VaultError
from service.voice.templates import VOICE, open_voice_template

BATCH = 500  # template rows read per transaction


@dataclass(frozen=True)
class VoiceTemplateReport:
    templates: int = 0
    scored_as: dict[str, int] = field(default_factory=dict)  # wideband, telephone or unknown: what a caller meets
    unknown_channel: list[tuple[str, str]] = field(default_factory=list)  # (tenant, subject token), to re-enrol
    unreadable: int = 0  # shredded meanwhile, or not a template this release reads


def voice_template_report(db: Database, keyring: Keyring, tenant_id: str | None = None) -> VoiceTemplateReport:
    """Opens every voice template (of ``tenant_id``, or all) and says what each is scored as; audited."""
    if tenant_id is not None:
        with db.session() as session:
            if session.get(Tenant, tenant_id) is None:
                raise NotFound(f"no tenant {tenant_id}")
    counts: Counter[str] = Counter()
    unknown: list[tuple[str, str]] = []
    unreadable = 0
    after = ""  # template ids are text: read in their order, a batch at a time
    while True:
        with db.session() as session:
            query = select(Template).where(Template.modality == VOICE, Template.id > after)
            if tenant_id is not None:
                query = query.where(Template.tenant_id == tenant_id)
            rows = list(session.execute(query.order_by(Template.id).limit(BATCH)).scalars())
            for row in rows:
                try:
                    channel = open_voice_template(session, keyring, row).scored_channel
                except (NotFound, VaultError, BiometricsError):
                    unreadable += 1
                    continue
                slot = UNKNOWN if channel is None else str(channel)
                counts[slot] += 1
                if channel is None:
                    unknown.append((row.tenant_id, row.subject_token))
        if not rows:
            break
        after = rows[-1].id
    report = VoiceTemplateReport(sum(counts.values()), dict(sorted(counts.items())), unknown, unreadable)
    with db.session() as session:
        append(
            session,
            actor="operator",
            action="voice.templates.report",
            outcome="listed",
            tenant_id=tenant_id,
            details={"templates": report.templates, "scored_as": report.scored_as, "unreadable": unreadable},
        )
    return report
