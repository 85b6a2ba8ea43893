"""The audit of the deployment itself: enrolments, consents, lockouts, key versions and the audit chain."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from biometrics.errors import BiometricsError
from biometrics.scoring.operating_points import ChannelScoring
from biometrics.voice import default_cohorts
from service.settings import ServiceSettings
from service.store.models import (
    KEYRING_STATE_ID,
    AuditEntry,
    Consent,
    DataKey,
    KeyringState,
    Subject,
    Template,
    VerificationFailure,
)
from service.trail.chain import verify_chain
from service.vault import Keyring


def _count(session: Session, query) -> int:  # noqa: ANN001
    return int(session.execute(query).scalar_one())


def operating_points(settings: ServiceSettings, scoring: ChannelScoring | None = None) -> dict:
    """The operating point in force for each pair of channels and where it came from (default cohort at the
    target FMR, calibration file, or an override). Without a running service's ``scoring``, it is worked out
    from the settings for the model the packaged cohorts were made with (the one the service refuses others for)."""
    try:
        if scoring is None:
            scoring = ChannelScoring.for_model(settings, default_cohorts.manifest()["model_fingerprint"])
    except BiometricsError as exc:
        return {"error": exc.message}
    return {"target_fmr": settings.target_fmr, "by_channels": scoring.summary()}


def deployment_report(
    session: Session,
    keyring: Keyring,
    settings: ServiceSettings,
    tenant_id: str | None = None,
    scoring: ChannelScoring | None = None,
    model: dict[str, str] | None = None,
) -> dict:
    """Enrolled subjects per modality, consents, lockouts, key versions in use and the audit chain's state.

    ``model``: the running model's fingerprint and the precision its embeddings are computed in.
    """

    def scoped(query, column):  # noqa: ANN001, ANN202
        return query if tenant_id is None else query.where(column == tenant_id)

    templates = session.execute(
        scoped(
            select(Template.modality, func.count(func.distinct(Template.subject_token))), Template.tenant_id
        ).group_by(Template.modality)
    ).all()
    consents_q = select(Consent.modality, Consent.withdrawn_at.is_(None), func.count()).join(
        Subject, Subject.token == Consent.subject_token
    )
    consents = session.execute(
        scoped(consents_q, Subject.tenant_id).group_by(Consent.modality, Consent.withdrawn_at.is_(None))
    ).all()
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.lockout_window_s)
    locked = (
        scoped(
            select(VerificationFailure.subject_token).join(Subject, Subject.token == VerificationFailure.subject_token),
            Subject.tenant_id,
        )
        .where(VerificationFailure.at >= since)
        .group_by(VerificationFailure.subject_token)
        .having(func.count() >= settings.lockout_max_failures)
    )
    locked_now = _count(session, select(func.count()).select_from(locked.subquery()))
    lockout_events = _count(
        session,
        scoped(
            select(func.count()).select_from(AuditEntry).where(AuditEntry.action == "voice.lockout"),
            AuditEntry.tenant_id,
        ),
    )
    key_use = session.execute(
        scoped(
            select(DataKey.kek_version, func.count()).join(Subject, Subject.token == DataKey.subject_token),
            Subject.tenant_id,
        ).group_by(DataKey.kek_version)
    ).all()
    chain = verify_chain(session, settings.audit_unsigned_up_to)
    by_modality: dict[str, dict[str, int]] = {}
    for modality, active, n in consents:
        by_modality.setdefault(modality, {"active": 0, "withdrawn": 0})["active" if active else "withdrawn"] += n
    state = session.get(KeyringState, KEYRING_STATE_ID)
    return {
        "scope": tenant_id or "deployment",
        "generated_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "enrolled_subjects": {modality: n for modality, n in templates},
        "consents": by_modality,
        "lockouts": {"subjects_locked_now": locked_now, "lockout_events": lockout_events},
        "keys": {
            "active_version": keyring.active_version,
            "versions": [{"version": v.version, "status": str(v.status)} for v in keyring.versions()],
            "data_keys_by_version": {str(v): n for v, n in key_use},
            # The keyring the database is bound to (this replica's must be the same to have loaded).
            "keyring_id": state.keyring_id,
            # Replicas whose keyring is older than this version may not wrap new data keys.
            "min_wrap_version": state.min_wrap_version,
        },
        "audit_chain": chain.as_dict(),
        "operating_points": operating_points(settings, scoring),
        **({"model": model} if model is not None else {}),
    }
