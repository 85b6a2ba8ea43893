"""What a withdrawal destroys: the registry per modality, through the one place that destroys data keys.

No model: the sealed data is made directly, as the voice and (later) fingerprint use cases make it.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import func, select

from service.auth import Principal, Role
from service.consent.records import ConsentChannel, ConsentTerms, record_consent
from service.consent.registry import ERASED_ON_WITHDRAWAL
from service.consent.withdrawal import withdraw_consent
from service.modality import Modality
from service.protected import data_key, seal_into
from service.store.db import Database
from service.store.models import DataKey, EnrolmentSample, EnrolmentSession, Template, Tenant, utcnow
from service.vault import Keyring

TOKEN = "sub_" + "c" * 64
ACTOR = Principal("cli_portal", "bank", Role.PORTAL)


def test_every_modality_says_what_its_withdrawal_destroys():
    assert set(ERASED_ON_WITHDRAWAL) == set(Modality)
    for entries in ERASED_ON_WITHDRAWAL.values():
        assert {"templates", "enrolment_sessions"} <= {e.name for e in entries}


def _consent(session, modality: Modality):
    terms = ConsentTerms(modality, "authentication", "v1", "0" * 64, ConsentChannel.PORTAL, "call-1")
    return record_consent(session, ACTOR, TOKEN, terms)


def _sealed_data(session, keyring: Keyring, modality: Modality) -> Template:
    key = data_key(session, keyring, TOKEN, str(modality), create=True)
    template = Template(
        subject_token=TOKEN, tenant_id="bank", modality=str(modality), model_fingerprint="m", sample_count=1, sealed=b""
    )
    session.add(template)
    session.flush()
    seal_into(template, key, b"template bytes")
    enrolment = EnrolmentSession(
        tenant_id="bank",
        subject_token=TOKEN,
        modality=str(modality),
        purpose="authentication",
        expires_at=utcnow() + dt.timedelta(hours=1),
    )
    session.add(enrolment)
    session.flush()
    session.add(EnrolmentSample(session_id=enrolment.id, accepted=True, net_speech_s=3.0, report={}))
    session.flush()
    return template


@pytest.fixture
def bank_db(database_url):
    """A database with the tenant ``bank``, and the keyring its data keys are wrapped under."""
    keyring = Keyring.ephemeral()
    db = Database(database_url, audit_key=keyring.audit_key())
    try:
        with db.session() as session:
            session.add(Tenant(id="bank", name="bank"))
        yield db, keyring
    finally:
        db.engine.dispose()


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_withdrawing_the_last_consent_shreds_that_modality_and_leaves_the_other(bank_db):
    db, keyring = bank_db
    with db.session() as session:
        voice = _consent(session, Modality.VOICE)
        _consent(session, Modality.FINGERPRINT)
        voice_template = _sealed_data(session, keyring, Modality.VOICE)
        _sealed_data(session, keyring, Modality.FINGERPRINT)
    with db.session() as session:
        receipt = withdraw_consent(session, ACTOR, TOKEN, voice.id)
    assert receipt.destroyed == {
        "data_key": True,
        "data_key_kek_version": keyring.active_version,
        "templates": [voice_template.id],
        "enrolment_sessions": 1,
    }
    with db.session() as session:
        left = dict(session.execute(select(Template.modality, func.count()).group_by(Template.modality)).all())
        keys = set(session.execute(select(DataKey.modality)).scalars())
        sessions = set(session.execute(select(EnrolmentSession.modality)).scalars())
        samples = session.execute(select(func.count()).select_from(EnrolmentSample)).scalar_one()
        assert data_key(session, keyring, TOKEN, "voice", create=False) is None
    assert left == {"fingerprint": 1} and keys == {"fingerprint"} and sessions == {"fingerprint"} and samples == 1


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_withdrawal_withdraws_the_purpose_whatever_number_of_times_it_was_consented_to(bank_db):
    """Consent given again (as a re-enrolment needs) left the purpose active after its customer withdrew it."""
    from service.consent.records import active_consents
    from service.consent.withdrawal import withdraw_everything

    db, keyring = bank_db
    with db.session() as session:
        first, again, third = (_consent(session, Modality.VOICE) for _ in range(3))
        fingerprint = _consent(session, Modality.FINGERPRINT)
        voice_template = _sealed_data(session, keyring, Modality.VOICE)
    with db.session() as session:
        receipt = withdraw_consent(session, ACTOR, TOKEN, again.id)
        assert receipt.also_withdrawn == sorted([first.id, third.id])
        assert receipt.destroyed["data_key"] is True and receipt.destroyed["templates"] == [voice_template.id]
        assert [c.id for c in active_consents(session, TOKEN)] == [fingerprint.id]
    with db.session() as session:
        fingerprint_again = _consent(session, Modality.FINGERPRINT)
    with db.session() as session:  # erasing everything closes each consent once, duplicates included
        done = withdraw_everything(session, ACTOR, TOKEN, ledger=None)
        assert sorted(done.consents_closed) == sorted([fingerprint.id, fingerprint_again.id])
        assert len(done.withdrawal_receipts) == 1 and active_consents(session, TOKEN) == []
