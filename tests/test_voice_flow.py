"""The product's heart over HTTP, on SQLite and PostgreSQL: consent, enrol, verify, withdraw."""

from __future__ import annotations

import hashlib

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import TEST_OTHER
from tests.voice_helpers import GENUINE, IMPOSTOR, NOTICE, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = pytest.mark.model


@pytest.fixture
def bank(api):
    api.tenant("bank")
    keys = {role: api.client("bank", role) for role in ("ivr", "portal", "auditor")}
    return api, keys


def test_consent_enrol_verify_withdraw_leaves_no_template(bank):
    api, keys = bank
    consent = _consent(api, keys["portal"])
    assert consent["notice_sha256"] == hashlib.sha256(NOTICE.encode()).hexdigest()
    assert "ACC-1001" not in str(consent)

    enrolled = _enrol(api, keys["ivr"])
    assert enrolled.status_code == 201, enrolled.text
    body = enrolled.json()
    assert body["subject_token"] == consent["subject_token"] and body["sample_count"] == 3
    assert body["net_speech_s"] >= 12

    same = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()
    assert same["decision"] == "accept", same
    assert {"decision", "score", "threshold", "model", "reasons", "net_speech_s"} <= same.keys()
    other = _verify(api, keys["ivr"], IMPOSTOR).json()
    assert other["decision"] == "reject" and other["score"] < same["score"]

    held = api.http.get(f"/v1/subjects/{consent['subject_token']}", headers=api.headers(keys["portal"])).json()
    assert len(held["templates"]) == 1 and "sealed" not in str(held)
    sealed_before, wrapped_before = _raw_secrets(api, consent["subject_token"])
    assert sealed_before and wrapped_before
    before = _raw_database_bytes(api)

    receipt = api.http.post(
        f"/v1/subjects/{consent['subject_token']}/consents/{consent['id']}:withdraw",
        headers=api.headers(keys["portal"]),
    )
    assert receipt.status_code == 200, receipt.text
    receipt = receipt.json()
    assert receipt["destroyed"]["data_key"] is True and len(receipt["destroyed"]["templates"]) == 1
    assert len(receipt["receipt_sha256"]) == 64

    refused = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
    assert refused.status_code == 403
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/consent_required")

    assert _raw_secrets(api, consent["subject_token"]) == ([], [])
    after = _raw_database_bytes(api)
    if before is not None:  # SQLite: the file itself no longer holds the ciphertext or the wrapped key
        assert sealed_before[0] in before and wrapped_before[0] in before
        assert sealed_before[0] not in after and wrapped_before[0] not in after


def _raw_secrets(api, token):
    engine = create_engine(api.ctx.db.url)
    with engine.connect() as conn:
        sealed = [
            bytes(r[0]) for r in conn.execute(text("SELECT sealed FROM templates WHERE subject_token=:t"), {"t": token})
        ]
        wrapped = [
            bytes(r[0])
            for r in conn.execute(text("SELECT wrapped FROM data_keys WHERE subject_token=:t"), {"t": token})
        ]
    engine.dispose()
    return sealed, wrapped


def _raw_database_bytes(api):
    if not api.ctx.db.url.startswith("sqlite"):
        return None
    return (api.data_dir / "bioident.db").read_bytes()


def test_withdrawing_one_of_two_consents_for_a_modality_destroys_nothing(bank):
    api, keys = bank
    kept = _consent(api, keys["portal"])
    withdrawn = _consent(api, keys["portal"], purpose="fraud-prevention")
    assert _enrol(api, keys["ivr"]).status_code == 201
    receipt = api.http.post(
        f"/v1/subjects/{withdrawn['subject_token']}/consents/{withdrawn['id']}:withdraw",
        headers=api.headers(keys["portal"]),
    )
    assert receipt.status_code == 200, receipt.text
    assert receipt.json()["destroyed"] == {
        "data_key": False,
        "data_key_kek_version": None,
        "templates": [],
        "enrolment_sessions": 0,
    }
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()["decision"] == "accept"
    assert kept["subject_token"] == withdrawn["subject_token"]


def test_enrolment_and_verification_need_active_consent(bank):
    api, keys = bank
    refused = _enrol(api, keys["ivr"], reference="ACC-NO-CONSENT")
    assert refused.status_code in (403, 404)
    assert refused.headers["content-type"].startswith("application/problem+json")
    _consent(api, keys["portal"], reference="ACC-2", purpose="fraud-screening")
    wrong_purpose = _enrol(api, keys["ivr"], reference="ACC-2")
    assert wrong_purpose.status_code == 403 and "authentication" in wrong_purpose.json()["detail"]


def test_one_tenant_never_sees_another_tenants_subjects(bank):
    api, keys = bank
    consent = _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    api.tenant("shop")
    shop_ivr, shop_portal = api.client("shop", "ivr"), api.client("shop", "portal")
    token = consent["subject_token"]
    assert api.http.get(f"/v1/subjects/{token}", headers=api.headers(shop_portal)).status_code == 404
    assert api.http.get(f"/v1/subjects/{token}/consents", headers=api.headers(shop_portal)).status_code == 404
    withdraw = api.http.post(
        f"/v1/subjects/{token}/consents/{consent['id']}:withdraw", headers=api.headers(shop_portal)
    )
    assert withdraw.status_code == 404
    # The same reference in another tenant is another subject, with no consent and no template.
    assert _verify(api, shop_ivr, TEST_OTHER / SPEAKER / GENUINE).status_code == 404
    found = api.http.post(
        "/v1/voice/identify", files=[_audio(TEST_OTHER / SPEAKER / GENUINE)], headers=api.headers(shop_ivr)
    ).json()
    assert found["candidates"] == [] and found["decision"] == "reject" and found["score"] is None
    ours = api.http.post(
        "/v1/voice/identify", files=[_audio(TEST_OTHER / SPEAKER / GENUINE)], headers=api.headers(keys["ivr"])
    ).json()
    assert [c["subject_token"] for c in ours["candidates"]] == [token]
    assert ours["decision"] == "accept" and ours["score"] == ours["candidates"][0]["score"] >= ours["threshold"]
    assert "subject_token" not in ours and ours["model"].startswith("ecapa-voxceleb-")
    # A template left from another model version cannot be compared: it is passed over, not a failure.
    from sqlalchemy import update

    from service.store.models import Template

    with api.ctx.db.session() as session:
        session.execute(update(Template).values(model_fingerprint="ecapa-voxceleb-000000000000000000000000"))
    after_upgrade = api.http.post(
        "/v1/voice/identify", files=[_audio(TEST_OTHER / SPEAKER / GENUINE)], headers=api.headers(keys["ivr"])
    )
    assert after_upgrade.status_code == 200 and after_upgrade.json()["candidates"] == []


def test_raw_telephone_audio_with_declared_codec_is_verified(bank):
    from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file
    from biometrics.voice.audio.resample import resample

    api, keys = bank
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    speech = read_audio_file(TEST_OTHER / SPEAKER / GENUINE)
    call = encode_raw(resample(speech.samples, 16_000, 8_000), 8_000, RawCodec.MULAW)
    response = api.http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001", "codec": "mulaw", "sample_rate": "8000"},
        files=[("audio", ("call.ulaw", call, "audio/basic"))],
        headers=api.headers(keys["ivr"]),
    )
    assert response.status_code == 200, response.text
    assert response.json()["decision"] == "accept"
    wrong_rate = api.http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001", "codec": "mulaw", "sample_rate": "16000"},
        files=[("audio", ("call.ulaw", call, "audio/basic"))],
        headers=api.headers(keys["ivr"]),
    )
    assert wrong_rate.status_code == 422 and wrong_rate.json()["type"].endswith("/audio_unsupported_sample_rate")
