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


@pytest.fixture
def bank_ctx(bank_db, database_url, tmp_path):
    """A service context (no model) on ``bank_db``: what ``erase_subject`` runs in."""
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    db, keyring = bank_db
    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, database_url=database_url)
    return ServiceContext(settings, database=db, keyring=keyring)


def _receipts(ctx) -> list[tuple[str, str]]:
    from service.store.models import Receipt

    with ctx.db.session() as session:
        return list(session.execute(select(Receipt.kind, Receipt.id).order_by(Receipt.created_at)).all())


def _erasures_audited(ctx) -> list[tuple[str, dict]]:
    from service.store.models import AuditEntry

    query = select(AuditEntry.outcome, AuditEntry.details).where(AuditEntry.action == "subject.erase")
    with ctx.db.session() as session:
        return [(outcome, details) for outcome, details in session.execute(query.order_by(AuditEntry.seq)).all()]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_erasing_again_with_nothing_left_gives_back_the_same_receipt_and_audits_the_request(bank_ctx):
    from service.consent.withdrawal import erase_subject

    with bank_ctx.db.session() as session:
        _consent(session, Modality.VOICE)
        _sealed_data(session, bank_ctx.keyring, Modality.VOICE)
    first = erase_subject(bank_ctx, ACTOR, TOKEN)
    receipts = _receipts(bank_ctx)
    again = erase_subject(bank_ctx, ACTOR, TOKEN)  # a double click, a retry
    assert again == first and _receipts(bank_ctx) == receipts
    assert [kind for kind, _ in receipts].count("erasure") == 1
    audited = _erasures_audited(bank_ctx)
    assert [outcome for outcome, _ in audited] == ["erased", "nothing_held"]
    assert audited[1][1] == {"consents_closed": [], "modalities_destroyed": [], "receipt_id": first}


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_erasing_after_enrolling_again_erases_and_gives_a_new_receipt(bank_ctx):
    from service.consent.withdrawal import erase_subject

    with bank_ctx.db.session() as session:
        _consent(session, Modality.VOICE)
        _sealed_data(session, bank_ctx.keyring, Modality.VOICE)
    first = erase_subject(bank_ctx, ACTOR, TOKEN)
    with bank_ctx.db.session() as session:  # back after the erasure: consent and enrolment again
        _consent(session, Modality.FINGERPRINT)
        _sealed_data(session, bank_ctx.keyring, Modality.FINGERPRINT)
    second = erase_subject(bank_ctx, ACTOR, TOKEN)
    assert second != first
    assert [i for kind, i in _receipts(bank_ctx) if kind == "erasure"] == [first, second]
    audited = _erasures_audited(bank_ctx)
    assert [outcome for outcome, _ in audited] == ["erased", "erased"]
    assert audited[1][1]["modalities_destroyed"] == ["fingerprint"]
    with bank_ctx.db.session() as session:
        assert session.execute(select(func.count()).select_from(Template)).scalar_one() == 0


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_a_customer_who_held_nothing_gets_one_receipt_that_says_so_and_a_new_one_after_a_new_consent(bank_ctx):
    """No erasure receipt yet and nothing held: one receipt (the proof asked for), then that one again; a
    consent given and withdrawn since makes the old receipt stale, so the next erasure issues a new one."""
    from service.consent.withdrawal import erase_subject

    with bank_ctx.db.session() as session:
        consent = _consent(session, Modality.VOICE)
    with bank_ctx.db.session() as session:
        withdraw_consent(session, ACTOR, TOKEN, consent.id)
    first = erase_subject(bank_ctx, ACTOR, TOKEN)
    assert erase_subject(bank_ctx, ACTOR, TOKEN) == first
    with bank_ctx.db.session() as session:
        consent = _consent(session, Modality.VOICE)
    with bank_ctx.db.session() as session:
        withdraw_consent(session, ACTOR, TOKEN, consent.id)
    later = erase_subject(bank_ctx, ACTOR, TOKEN)
    assert later != first and erase_subject(bank_ctx, ACTOR, TOKEN) == later
    assert [kind for kind, _ in _receipts(bank_ctx)].count("erasure") == 2
    assert [o for o, _ in _erasures_audited(bank_ctx)] == ["erased", "nothing_held", "erased", "nothing_held"]


@pytest.mark.parametrize("database_url", ["sqlite", "postgresql"], indirect=True)
def test_two_erasures_at_once_give_one_receipt(bank_ctx):
    """The subject's lock serialises them: the second finds nothing held and the first one's receipt."""
    from concurrent.futures import ThreadPoolExecutor
    from threading import Barrier

    from service.consent.withdrawal import erase_subject

    with bank_ctx.db.session() as session:
        _consent(session, Modality.VOICE)
        _sealed_data(session, bank_ctx.keyring, Modality.VOICE)
    start = Barrier(2)

    def erase(_: int) -> str:
        start.wait()
        return erase_subject(bank_ctx, ACTOR, TOKEN)

    with ThreadPoolExecutor(2) as pool:
        ids = list(pool.map(erase, range(2)))
    assert ids[0] == ids[1]
    assert [kind for kind, _ in _receipts(bank_ctx)].count("erasure") == 1
    assert sorted(o for o, _ in _erasures_audited(bank_ctx)) == ["erased", "nothing_held"]
