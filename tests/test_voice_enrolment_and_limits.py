"""Enrolment sessions, lockouts and rate limits over HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import create_engine, text

from tests.conftest import FSDD, TEST_OTHER
from tests.voice_helpers import ENROL, GENUINE, IMPOSTOR, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = pytest.mark.model


@pytest.fixture
def bank(api):
    api.tenant("bank")
    keys = {role: api.client("bank", role) for role in ("ivr", "portal", "auditor")}
    _consent(api, keys["portal"])
    return api, keys


def _count(api, table: str) -> int:
    engine = create_engine(api.ctx.db.url)
    with engine.connect() as conn:
        count = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()
    engine.dispose()
    return count


def _start(api, key):
    response = api.http.post("/v1/voice/enrolments", json={"reference": "ACC-1001"}, headers=api.headers(key))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def test_an_enrolment_session_reports_each_sample_and_completes_into_a_template(bank):
    api, keys = bank
    session_id = _start(api, keys["ivr"])
    short = api.http.post(
        f"/v1/voice/enrolments/{session_id}/samples",
        files=[_audio(FSDD / "5_yweweler_3.wav")],
        headers=api.headers(keys["ivr"]),
    )
    assert short.status_code == 201 and short.json()["accepted"] is False
    assert short.json()["reasons"][0]["code"] in ("NO_SPEECH", "TOO_SHORT")
    early = api.http.post(f"/v1/voice/enrolments/{session_id}:complete", headers=api.headers(keys["ivr"]))
    assert early.status_code == 422 and early.json()["reasons"][0]["code"] == "TOO_SHORT"
    assert _count(api, "templates") == 0
    for name in ENROL:
        report = api.http.post(
            f"/v1/voice/enrolments/{session_id}/samples",
            files=[_audio(TEST_OTHER / SPEAKER / name)],
            headers=api.headers(keys["ivr"]),
        ).json()
        assert report["accepted"] is True and report["net_speech_s"] > 1
    assert report["session_usable_speech_s"] >= report["required_speech_s"]
    done = api.http.post(f"/v1/voice/enrolments/{session_id}:complete", headers=api.headers(keys["ivr"]))
    assert done.status_code == 201, done.text
    assert done.json()["sample_count"] == 3
    assert _count(api, "enrolment_samples") == 0  # sealed sample embeddings are gone once the template exists
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()["decision"] == "accept"
    again = api.http.post(
        f"/v1/voice/enrolments/{session_id}/samples", files=[_audio(IMPOSTOR)], headers=api.headers(keys["ivr"])
    )
    assert again.status_code == 409


def test_an_abandoned_session_leaves_no_template_and_no_sample(bank):
    api, keys = bank
    session_id = _start(api, keys["ivr"])
    added = api.http.post(
        f"/v1/voice/enrolments/{session_id}/samples",
        files=[_audio(TEST_OTHER / SPEAKER / ENROL[0])],
        headers=api.headers(keys["ivr"]),
    )
    assert added.status_code == 201 and _count(api, "enrolment_samples") == 1
    assert (
        api.http.post(f"/v1/voice/enrolments/{session_id}:abandon", headers=api.headers(keys["ivr"])).status_code == 200
    )
    assert _count(api, "enrolment_samples") == 0 and _count(api, "templates") == 0
    assert (
        api.http.post(f"/v1/voice/enrolments/{session_id}:complete", headers=api.headers(keys["ivr"])).status_code
        == 409
    )


def test_a_session_whose_samples_came_from_another_model_version_is_refused_and_kept(bank, monkeypatch):
    api, keys = bank
    session_id = _start(api, keys["ivr"])
    for name in ENROL:
        added = api.http.post(
            f"/v1/voice/enrolments/{session_id}/samples",
            files=[_audio(TEST_OTHER / SPEAKER / name)],
            headers=api.headers(keys["ivr"]),
        )
        assert added.status_code == 201 and added.json()["accepted"] is True
    # A rolling upgrade: the replica that completes the session runs another model version.
    monkeypatch.setattr(api.ctx.embedder, "fingerprint", "ecapa-voxceleb-000000000000000000000000")
    done = api.http.post(f"/v1/voice/enrolments/{session_id}:complete", headers=api.headers(keys["ivr"]))
    assert done.status_code == 409 and done.headers["content-type"].startswith("application/problem+json")
    assert "model version" in done.json()["detail"]
    assert _count(api, "templates") == 0 and _count(api, "enrolment_samples") == len(ENROL)


def test_one_call_enrolment_with_too_little_speech_creates_nothing(bank):
    api, keys = bank
    files = [_audio(FSDD / f"{d}_george_0.wav") for d in range(3)]
    response = api.http.post(
        "/v1/voice/enrol", data={"reference": "ACC-1001"}, files=files, headers=api.headers(keys["ivr"])
    )
    assert response.status_code == 422 and response.json()["reasons"][0]["code"] == "TOO_SHORT"
    assert _count(api, "templates") == 0


def test_repeated_failures_lock_the_subject_out_and_are_audited(bank):
    api, keys = bank
    assert _enrol(api, keys["ivr"]).status_code == 201
    limit = api.ctx.settings.lockout_max_failures
    for _ in range(limit):
        assert _verify(api, keys["ivr"], IMPOSTOR).json()["decision"] == "reject"
    locked = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE)
    assert locked.status_code == 423 and locked.json()["type"].endswith("/locked_out")
    trail = api.http.get("/v1/audit/entries", headers=api.headers(keys["auditor"])).json()["entries"]
    assert [e["action"] for e in trail].count("voice.lockout") == 1
    assert all("ACC-1001" not in str(e) for e in trail)
    report = api.http.get("/v1/audit/deployment", headers=api.headers(keys["auditor"])).json()
    assert report["lockouts"]["subjects_locked_now"] == 1
    api.tenant("shop")  # another tenant's auditor sees none of the bank's lockouts
    other = api.http.get("/v1/audit/deployment", headers=api.headers(api.client("shop", "auditor"))).json()
    assert other["lockouts"]["subjects_locked_now"] == 0


def test_a_client_over_its_rate_limit_gets_429(bank, monkeypatch):
    api, keys = bank
    api.ctx.settings.rate_limit_per_minute = 3
    monkeypatch.setattr("service.limits._epoch", lambda: 1_800_000_030.0)  # all in one minute window
    responses = [api.http.get("/v1/audit/chain", headers=api.headers(keys["auditor"])) for _ in range(5)]
    assert [r.status_code for r in responses] == [200, 200, 200, 429, 429]
    # 30 s into the minute: the window reopens in 30 s, in the header as in the detail
    assert responses[3].headers["Retry-After"] == "30" and "retry in 30 s" in responses[3].json()["detail"]
    assert "Retry-After" not in responses[0].headers


def test_a_sample_refused_for_its_quality_tells_no_score_and_the_trail_keeps_it(bank):
    """Quality refusals count no failure, so their score would be an oracle no lockout bounds."""
    import io

    import soundfile as sf

    api, keys = bank
    assert _enrol(api, keys["ivr"]).status_code == 201
    audio, rate = sf.read(TEST_OTHER / SPEAKER / GENUINE)
    short = io.BytesIO()
    sf.write(short, audio[: int(2.5 * rate)], rate, format="FLAC")  # the customer's own voice, too little of it
    response = api.http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001"},
        files=[("audio", ("short.flac", short.getvalue(), "audio/flac"))],
        headers=api.headers(keys["ivr"]),
    )
    body = response.json()
    assert response.status_code == 200 and body["decision"] == "reject"
    assert [r["code"] for r in body["reasons"]] == ["TOO_SHORT"]
    assert body["score"] is None and body["llr"] is None
    trail = api.http.get("/v1/audit/entries", headers=api.headers(keys["auditor"])).json()["entries"]
    [entry] = [e for e in trail if e["action"] == "voice.verify"]
    assert entry["score"] is not None and entry["details"]["reasons"] == ["TOO_SHORT"]  # scored, and audited
    full = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()
    assert full["decision"] == "accept" and full["score"] is not None and full["reasons"] == []


def test_a_recording_sent_twice_counts_once_and_a_session_takes_so_many_samples(bank, monkeypatch):
    """One short recording sent four times had met the 12 s of speech an enrolment needs."""
    import service.voice.enrolment as enrolment

    api, keys = bank
    one = TEST_OTHER / SPEAKER / ENROL[0]
    files = [_audio(one) for _ in range(4)]
    repeated = api.http.post("/v1/voice/enrol", data={"reference": "ACC-1001"}, files=files,
                             headers=api.headers(keys["ivr"]))  # fmt: skip
    assert repeated.status_code == 422 and [r["code"] for r in repeated.json()["reasons"]] == ["TOO_SHORT"]
    (short,) = repeated.json()["reasons"]
    assert short["measured"] < short["limit"]  # the speech of one copy: the repeats count for nothing
    assert _count(api, "templates") == 0
    files = [_audio(TEST_OTHER / SPEAKER / name) for name in ENROL] + [_audio(one)]
    enrolled = api.http.post("/v1/voice/enrol", data={"reference": "ACC-1001"}, files=files,
                             headers=api.headers(keys["ivr"]))  # fmt: skip
    assert enrolled.status_code == 201 and enrolled.json()["sample_count"] == 3, enrolled.text
    last = enrolled.json()["samples"][-1]
    repeat = {"code": "DUPLICATE_SAMPLE", "measured": 0.98, "limit": 0.98}  # no score is told
    assert last["accepted"] is False and last["reasons"] == [repeat]

    monkeypatch.setattr(enrolment, "MAX_SAMPLES", 2)
    session_id = _start(api, keys["ivr"])

    def add(path):
        return api.http.post(f"/v1/voice/enrolments/{session_id}/samples", files=[_audio(path)],
                             headers=api.headers(keys["ivr"]))  # fmt: skip

    assert add(one).json()["accepted"] is True
    again = add(one).json()
    assert again["accepted"] is False and again["reasons"][0]["code"] == "DUPLICATE_SAMPLE"
    assert again["session_usable_speech_s"] == pytest.approx(again["net_speech_s"], abs=1e-3)
    assert add(TEST_OTHER / SPEAKER / ENROL[1]).json()["accepted"] is True
    full = add(TEST_OTHER / SPEAKER / ENROL[2])
    assert full.status_code == 409 and "holds 2 accepted samples" in full.json()["detail"], full.text
