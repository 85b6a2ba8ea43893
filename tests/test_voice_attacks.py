"""Attacks on the voice service that must fail, over HTTP on SQLite and PostgreSQL: poisoning an
enrolment with another voice, getting around a lockout through identification, attacking without a
trace; and the claim that a stream will make once and decide on many times."""

from __future__ import annotations

import pytest

from biometrics.voice.audio import RawCodec, encode_raw, read_audio_file, resample
from service.auth import authenticate
from service.errors import ConsentRequired
from service.voice.verification import claim_voice, decide_voice
from tests.conftest import TEST_OTHER
from tests.voice_helpers import GENUINE, IMPOSTOR, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = pytest.mark.model

OTHER_VOICE = [TEST_OTHER / "2033" / name for name in ("2033-164914-0006.flac", "2033-164914-0000.flac")]
MORE_OF_THE_VOICE = [TEST_OTHER / SPEAKER / f"1688-142285-000{n}.flac" for n in (3, 6, 7)]


def _silent_wav() -> bytes:
    import io

    import numpy as np
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.zeros(16000 * 2, dtype=np.float32), 16000, format="WAV")
    return buffer.getvalue()


def _add(api, ivr_key, paths, reference="ACC-1001", **form):
    files = [_audio(p) for p in paths]
    data = {"reference": reference, **form}
    return api.http.post("/v1/voice/enrol", data=data, files=files, headers=api.headers(ivr_key))


def _template(api, portal_key, token):
    held = api.http.get(f"/v1/subjects/{token}", headers=api.headers(portal_key)).json()
    (voice,) = [t for t in held["templates"] if t["modality"] == "voice"]
    return voice


def _trail(api, auditor_key):
    return api.http.get("/v1/audit/entries?limit=1000", headers=api.headers(auditor_key)).json()["entries"]


def test_another_voice_cannot_be_added_to_an_enrolment(bank):
    api, keys = bank
    _consent(api, keys["portal"])
    enrolled = _enrol(api, keys["ivr"]).json()
    before = _template(api, keys["portal"], enrolled["subject_token"])
    poisoned = _add(api, keys["ivr"], OTHER_VOICE)
    assert poisoned.status_code == 409, poisoned.text
    body = poisoned.json()
    assert body["type"].endswith("/not_the_enrolled_voice") and len(body["reasons"]) == len(OTHER_VOICE)
    assert {r["code"] for r in body["reasons"]} == {"NOT_THE_ENROLLED_VOICE"}
    assert all("measured" not in r for r in body["reasons"])  # no oracle for how close the voice came
    assert _template(api, keys["portal"], enrolled["subject_token"]) == before  # nothing changed
    assert _verify(api, keys["ivr"], OTHER_VOICE[0]).json()["decision"] == "reject"
    added = _add(api, keys["ivr"], MORE_OF_THE_VOICE)
    assert added.status_code == 201, added.text
    assert added.json()["sample_count"] == before["samples"] + len(MORE_OF_THE_VOICE)
    refused = [e for e in _trail(api, keys["auditor"]) if e["outcome"] == "refused"]
    assert [(e["action"], e["details"]["reason"]) for e in refused] == [("voice.enrol", "not_the_enrolled_voice")]
    assert refused[0]["subject_token"] == enrolled["subject_token"]


def test_a_first_enrolment_of_two_voices_is_refused(bank):
    """Whoever holds the phone at a first enrolment had been able to mix in a second voice, and both passed."""
    api, keys = bank
    token = _consent(api, keys["portal"])["subject_token"]
    first = [TEST_OTHER / SPEAKER / name for name in ("1688-142285-0000.flac", "1688-142285-0001.flac")]
    mixed = _add(api, keys["ivr"], [*first, *OTHER_VOICE])
    assert mixed.status_code == 422, mixed.text
    body = mixed.json()
    assert body["type"].endswith("/samples_do_not_match"), body
    assert body["reasons"] and {r["code"] for r in body["reasons"]} == {"SAMPLES_DO_NOT_MATCH"}
    assert all(set(r) == {"code", "sample"} for r in body["reasons"])  # no scores
    held = api.http.get(f"/v1/subjects/{token}", headers=api.headers(keys["portal"])).json()
    assert held["templates"] == []  # nothing stored
    refused = [e for e in _trail(api, keys["auditor"]) if e["outcome"] == "refused"]
    assert [(e["action"], e["details"]["reason"]) for e in refused] == [("voice.enrol", "samples_do_not_match")]
    # Samples are named by their place among those sent, a refused one (no speech) included.
    silence = ("audio", ("silence.wav", _silent_wav(), "audio/wav"))
    files = [silence, *(_audio(p) for p in [*first, MORE_OF_THE_VOICE[0], OTHER_VOICE[0]])]
    one_more = api.http.post("/v1/voice/enrol", data={"reference": "ACC-1001"}, files=files,
                             headers=api.headers(keys["ivr"]))  # fmt: skip
    assert one_more.status_code == 422, one_more.text
    assert [r["sample"] for r in one_more.json()["reasons"]] == [4]
    assert _add(api, keys["ivr"], [*first, *MORE_OF_THE_VOICE]).status_code == 201  # one voice: enrolled


def test_samples_of_another_channel_are_a_re_enrolment_and_failed_additions_count_towards_the_lockout(bank):
    api, keys = bank
    _consent(api, keys["portal"])
    token = _enrol(api, keys["ivr"]).json()["subject_token"]
    before = _template(api, keys["portal"], token)
    calls = [
        ("audio", (p.name, encode_raw(resample(read_audio_file(p).samples, 16_000, 8_000), 8_000, RawCodec.MULAW), "x"))
        for p in MORE_OF_THE_VOICE
    ]
    data = {"reference": "ACC-1001", "codec": "mulaw", "sample_rate": "8000"}
    phone = api.http.post("/v1/voice/enrol", data=data, files=calls, headers=api.headers(keys["ivr"]))
    assert phone.status_code == 409 and phone.json()["reasons"] == [
        {"code": "CHANNEL_NOT_ENROLLED", "channel": "telephone"}
    ]
    assert _template(api, keys["portal"], token) == before
    api.ctx.settings.lockout_max_failures = 1
    assert _add(api, keys["ivr"], OTHER_VOICE).status_code == 409  # a failed addition is a failed attempt
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).status_code == 423
    assert _add(api, keys["ivr"], MORE_OF_THE_VOICE).status_code == 423  # and adding is refused while locked


def test_replacing_a_voice_is_a_re_enrolment_that_needs_fresh_consent(bank):
    api, keys = bank
    _consent(api, keys["portal"])
    token = _enrol(api, keys["ivr"]).json()["subject_token"]
    stale = _add(api, keys["ivr"], OTHER_VOICE, replace="true")
    assert stale.status_code == 403 and stale.json()["type"].endswith("/reconsent_required"), stale.text
    assert _verify(api, keys["ivr"], OTHER_VOICE[0]).json()["decision"] == "reject"
    _consent(api, keys["portal"])  # the customer consents again, now
    replaced = _add(api, keys["ivr"], OTHER_VOICE, replace="true")
    assert replaced.status_code == 201, replaced.text
    assert replaced.json()["sample_count"] == len(OTHER_VOICE) and _template(api, keys["portal"], token)
    assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "accept"
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()["decision"] == "reject"
    actions = [(e["action"], e["outcome"]) for e in _trail(api, keys["auditor"]) if e["subject_token"] == token]
    assert ("voice.reenrol", "replaced") in actions


def test_identification_never_returns_a_locked_out_subject(bank):
    api, keys = bank
    api.ctx.settings.lockout_max_failures = 2
    _consent(api, keys["portal"])
    _enrol(api, keys["ivr"])
    genuine = [_audio(TEST_OTHER / SPEAKER / GENUINE)]
    found = api.http.post("/v1/voice/identify", files=genuine, headers=api.headers(keys["ivr"])).json()
    assert found["decision"] == "accept" and len(found["candidates"]) == 1
    for _ in range(2):
        assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "reject"
    locked = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
    assert locked.status_code == 423 and 1 <= int(locked.headers["Retry-After"]) <= api.ctx.settings.lockout_window_s
    hidden = api.http.post("/v1/voice/identify", files=genuine, headers=api.headers(keys["ivr"])).json()
    assert hidden["decision"] == "reject" and hidden["candidates"] == []


def test_refused_verifications_leave_a_trace_without_creating_subjects(bank):
    api, keys = bank
    token = _consent(api, keys["portal"])["subject_token"]
    _enrol(api, keys["ivr"])
    api.ctx.settings.lockout_max_failures = 1
    assert _verify(api, keys["ivr"], IMPOSTOR, reference="ACC-UNKNOWN").status_code == 404
    assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "reject"
    assert _verify(api, keys["ivr"], IMPOSTOR).status_code == 423
    garbage = [("audio", ("call.wav", b"not audio at all", "audio/wav"))]
    api.ctx.settings.lockout_max_failures = 5
    unusable = api.http.post(
        "/v1/voice/verify", data={"reference": "ACC-1001"}, files=garbage, headers=api.headers(keys["ivr"])
    )
    assert unusable.status_code == 422
    refused = [e for e in _trail(api, keys["auditor"]) if e["outcome"] == "refused"]
    assert [(e["subject_token"], e["details"]["reason"], e["details"]["status"]) for e in refused] == [
        (None, "not_found", 404),
        (token, "locked_out", 423),
        (token, "audio_not_recognised", 422),
    ]
    lookup = api.http.post(
        "/v1/subjects:lookup", json={"reference": "ACC-UNKNOWN"}, headers=api.headers(keys["portal"])
    )
    assert lookup.status_code == 404  # the refusal created no subject


def test_a_claim_is_checked_once_and_decided_on_many_samples(bank):
    api, keys = bank
    _consent(api, keys["portal"])
    _enrol(api, keys["ivr"])
    with api.ctx.db.session() as session:
        ivr = authenticate(session, f"Bearer {keys['ivr']}")
    claim = claim_voice(api.ctx, ivr, "ACC-1001", "authentication")
    verifier = api.ctx.verifier
    genuine = verifier.probe(_waveform(TEST_OTHER / SPEAKER / GENUINE))
    impostor = verifier.probe(_waveform(IMPOSTOR))
    assert decide_voice(api.ctx, claim, genuine).decision == "accept"
    assert decide_voice(api.ctx, claim, impostor).decision == "reject"
    consent_id = api.http.get(f"/v1/subjects/{claim.subject_token}/consents", headers=api.headers(keys["portal"]))
    withdrawn = api.http.post(
        f"/v1/subjects/{claim.subject_token}/consents/{consent_id.json()[0]['id']}:withdraw",
        headers=api.headers(keys["portal"]),
    )
    assert withdrawn.status_code == 200
    with pytest.raises(ConsentRequired):  # consent is checked again right before each decision
        decide_voice(api.ctx, claim, genuine)
    again = api.http.post(
        f"/v1/subjects/{claim.subject_token}/consents/{consent_id.json()[0]['id']}:withdraw",
        headers=api.headers(keys["portal"]),
    )
    assert again.status_code == 409


def test_enrolling_a_customer_with_no_consent_says_to_record_it_first(bank):
    api, keys = bank
    refused = _enrol(api, keys["ivr"], reference="ACC-NEW")
    assert refused.status_code == 403 and "record it first" in refused.json()["detail"]


def _waveform(path):
    from biometrics.voice.audio import read_audio_file

    return read_audio_file(path)


def test_an_enrolment_with_unusable_audio_is_refused_and_audited(bank):
    api, keys = bank
    token = _consent(api, keys["portal"])["subject_token"]
    garbage = [("audio", ("take.wav", b"not audio at all", "audio/wav"))]
    refused = api.http.post(
        "/v1/voice/enrol", data={"reference": "ACC-1001"}, files=garbage, headers=api.headers(keys["ivr"])
    )
    assert refused.status_code == 422
    entries = [e for e in _trail(api, keys["auditor"]) if e["outcome"] == "refused"]
    assert [(e["action"], e["subject_token"], e["details"]["reason"]) for e in entries] == [
        ("voice.enrol", token, "audio_not_recognised")
    ]
