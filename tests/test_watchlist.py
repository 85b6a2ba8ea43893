"""The fraudster watchlist over HTTP, on SQLite and PostgreSQL: the fraud team adds a known fraudster's
voice with its case and legal basis; a call by that voice is flagged (and audited), an enrolment by it is
refused (and audited); removing the entry crypto-shreds it. Real speech: LibriSpeech test-other."""

from __future__ import annotations

import json

import pytest

from tests.conftest import TEST_OTHER
from tests.operations_fixtures import _rows
from tests.stream_helpers import frames, open_stream, play, telephone_call
from tests.voice_helpers import GENUINE, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = pytest.mark.model

FRAUDSTER = TEST_OTHER / "2033"
ENTRY_FILES = ["2033-164914-0000.flac", "2033-164914-0001.flac", "2033-164914-0009.flac"]
FRAUDSTER_CALL = FRAUDSTER / "2033-164914-0002.flac"
FRAUDSTER_ENROLS = ["2033-164914-0006.flac", "2033-164914-0003.flac"]
LEGAL_BASIS = "Prevention of fraud: legitimate interest (GDPR Art. 6(1)(f), Art. 9(2)(g) with national law)"


@pytest.fixture
def watch(api):
    api.tenant("bank")
    keys = {role: api.client("bank", role) for role in ("ivr", "portal", "auditor", "fraud")}
    return api, keys


def _add_entry(api, key, files=ENTRY_FILES, case="CASE-2026-0042", basis=LEGAL_BASIS):
    return api.http.post(
        "/v1/watchlist/entries",
        data={"case_reference": case, "legal_basis": basis},
        files=[_audio(FRAUDSTER / name) for name in files],
        headers=api.headers(key),
    )


def _audit(api, auditor_key):
    return api.http.get("/v1/audit/entries?limit=1000", headers=api.headers(auditor_key)).json()["entries"]


def test_a_watchlisted_voice_is_flagged_on_verification_and_refused_at_enrolment(watch):
    api, keys = watch
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201  # the genuine customer, enrolled before the entry
    added = _add_entry(api, keys["fraud"])
    assert added.status_code == 201, added.text
    entry = added.json()["id"]

    genuine = _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()
    assert genuine["decision"] == "accept" and genuine["watchlist"] == {"hit": False, "entry": None, "score": None}

    flagged = _verify(api, keys["ivr"], FRAUDSTER_CALL)  # the fraudster calls, claiming the customer
    assert flagged.status_code == 200, flagged.text
    body = flagged.json()
    assert body["decision"] == "reject"
    assert body["watchlist"]["hit"] is True and body["watchlist"]["entry"] == entry
    hits = [e for e in _audit(api, keys["auditor"]) if e["action"] == "watchlist.hit"]
    assert len(hits) == 1 and hits[0]["outcome"] == "hit"
    assert hits[0]["details"]["entry_id"] == entry and hits[0]["details"]["during"] == "voice.verify"
    assert hits[0]["subject_token"] == body["subject_token"] and hits[0]["score"] == body["watchlist"]["score"]
    assert hits[0]["score"] >= hits[0]["details"]["threshold"]

    # Asking who the voice is (1:N) is screened too.
    found = api.http.post("/v1/voice/identify", files=[_audio(FRAUDSTER_CALL)], headers=api.headers(keys["ivr"]))
    assert found.status_code == 200 and found.json()["watchlist"]["entry"] == entry, found.text
    during = [e["details"]["during"] for e in _audit(api, keys["auditor"]) if e["action"] == "watchlist.hit"]
    assert during == ["voice.verify", "voice.identify"]
    clean = api.http.post("/v1/voice/identify", files=[_audio(TEST_OTHER / SPEAKER / GENUINE)],
                          headers=api.headers(keys["ivr"])).json()  # fmt: skip
    assert clean["watchlist"] == {"hit": False, "entry": None, "score": None}

    # The fraudster tries to enrol as a new customer: refused, nothing stored, both facts audited.
    consent = _consent(api, keys["portal"], reference="ACC-6666")
    refused = api.http.post(
        "/v1/voice/enrol",
        data={"reference": "ACC-6666"},
        files=[_audio(FRAUDSTER / name) for name in FRAUDSTER_ENROLS],
        headers=api.headers(keys["ivr"]),
    )
    assert refused.status_code == 403, refused.text
    assert refused.headers["content-type"].startswith("application/problem+json")
    assert refused.json()["type"].endswith("/watchlist_hit") and refused.json()["reasons"][0]["entry"] == entry
    held = api.http.get(f"/v1/subjects/{consent['subject_token']}", headers=api.headers(keys["portal"])).json()
    assert held["templates"] == []
    entries = _audit(api, keys["auditor"])
    enrol_hits = [e for e in entries if e["action"] == "watchlist.hit" and e["details"]["during"] == "voice.enrol"]
    assert len(enrol_hits) == 1 and enrol_hits[0]["outcome"] == "refused"
    assert enrol_hits[0]["subject_token"] == consent["subject_token"]
    refusal = [e for e in entries if e["action"] == "voice.enrol" and e["outcome"] == "refused"]
    assert refusal and refusal[-1]["details"]["reason"] == "watchlist_hit"

    # What the portal shows that customer says nothing of the screening (it would tip a fraudster off).
    from service.portal.views import export, recent_events

    with api.ctx.db.session() as session:
        shown = export(session, "bank", consent["subject_token"])["events"]
        recent = recent_events(session, consent["subject_token"])
    assert [e["action"] for e in shown] == ["consent.grant", "voice.enrol"] and "watchlist" not in json.dumps(shown)
    assert [e.action for e in recent] == ["voice.enrol", "consent.grant"]

    # The same refusal through an enrolment session.
    started = api.http.post(
        "/v1/voice/enrolments", json={"reference": "ACC-6666"}, headers=api.headers(keys["ivr"])
    ).json()
    for name in FRAUDSTER_ENROLS:
        added_sample = api.http.post(
            f"/v1/voice/enrolments/{started['id']}/samples",
            files=[_audio(FRAUDSTER / name)],
            headers=api.headers(keys["ivr"]),
        )
        assert added_sample.status_code == 201, added_sample.text
    completed = api.http.post(f"/v1/voice/enrolments/{started['id']}:complete", headers=api.headers(keys["ivr"]))
    assert completed.status_code == 403 and completed.json()["type"].endswith("/watchlist_hit")
    held = api.http.get(f"/v1/subjects/{consent['subject_token']}", headers=api.headers(keys["portal"])).json()
    assert held["templates"] == []


def test_watchlist_entries_are_listed_and_removal_crypto_shreds_them(watch, database_url):
    api, keys = watch
    fraud = api.headers(keys["fraud"])
    added = _add_entry(api, keys["fraud"])
    assert added.status_code == 201, added.text
    entry = added.json()
    assert entry["case_reference"] == "CASE-2026-0042" and entry["legal_basis"] == LEGAL_BASIS
    assert entry["sample_count"] == 3 and entry["net_speech_s"] >= 12 and "sealed" not in entry

    listed = api.http.get("/v1/watchlist/entries", headers=fraud).json()["entries"]
    assert [e["id"] for e in listed] == [entry["id"]] and listed[0]["legal_basis"] == LEGAL_BASIS
    ((sealed,),) = _rows(database_url, "SELECT sealed FROM watchlist_entries WHERE id = :id", id=entry["id"])
    assert len(sealed) > 200 and b"BIVT" not in sealed  # sealed, not the template's plaintext
    assert _rows(database_url, "SELECT count(*) FROM data_keys WHERE subject_token = :id", id=entry["id"]) == [(1,)]

    # The entry is in use: a call in the fraudster's voice hits it.
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    assert _verify(api, keys["ivr"], FRAUDSTER_CALL).json()["watchlist"]["hit"] is True

    removed = api.http.delete(f"/v1/watchlist/entries/{entry['id']}", headers=fraud)
    assert removed.status_code == 200, removed.text
    assert removed.json() == {"id": entry["id"], "data_key_destroyed": True}
    assert _rows(database_url, "SELECT count(*) FROM data_keys WHERE subject_token = :id", id=entry["id"]) == [(0,)]
    assert _rows(database_url, "SELECT count(*) FROM watchlist_entries") == [(0,)]
    assert api.http.get("/v1/watchlist/entries", headers=fraud).json()["entries"] == []
    ledger = (api.data_dir / "destruction-ledger.jsonl").read_text()
    assert entry["id"] in ledger  # a restored backup cannot bring the entry's key back
    assert _verify(api, keys["ivr"], FRAUDSTER_CALL).json()["watchlist"]["hit"] is False

    again = api.http.delete(f"/v1/watchlist/entries/{entry['id']}", headers=fraud)
    assert again.status_code == 404 and again.headers["content-type"].startswith("application/problem+json")
    actions = [(e["action"], e["outcome"]) for e in _audit(api, keys["auditor"])]
    assert ("watchlist.add", "added") in actions and ("watchlist.remove", "removed") in actions


def test_only_the_fraud_role_of_the_tenant_manages_the_watchlist(watch):
    api, keys = watch
    for role in ("ivr", "portal", "auditor"):
        listed = api.http.get("/v1/watchlist/entries", headers=api.headers(keys[role]))
        assert listed.status_code == 403 and listed.json()["type"].endswith("/forbidden")
        assert _add_entry(api, keys[role]).status_code == 403
    assert _verify(api, keys["fraud"], FRAUDSTER_CALL).status_code == 403  # and fraud does not verify

    entry = _add_entry(api, keys["fraud"]).json()["id"]
    api.tenant("other")
    other = api.headers(api.client("other", "fraud"))
    assert api.http.get("/v1/watchlist/entries", headers=other).json()["entries"] == []
    assert api.http.delete(f"/v1/watchlist/entries/{entry}", headers=other).status_code == 404
    assert len(api.http.get("/v1/watchlist/entries", headers=api.headers(keys["fraud"])).json()["entries"]) == 1


def test_bad_watchlist_requests_are_problems_and_store_nothing(watch, database_url):
    api, keys = watch
    fraud = api.headers(keys["fraud"])
    no_basis = api.http.post(
        "/v1/watchlist/entries",
        data={"case_reference": "CASE-1"},
        files=[_audio(FRAUDSTER / ENTRY_FILES[0])],
        headers=fraud,
    )
    assert no_basis.status_code == 422 and no_basis.json()["type"].endswith("/invalid_request")
    nul = _add_entry(api, keys["fraud"], case="CASE\x001")
    assert nul.status_code == 422
    for blank in ({"case": "  "}, {"basis": " \t\n "}):  # an entry must say what case and on what basis
        refused = _add_entry(api, keys["fraud"], **blank)
        assert refused.status_code == 422 and refused.json()["type"].endswith("/invalid_request"), refused.text
    too_little = _add_entry(api, keys["fraud"], files=["2033-164914-0005.flac"])  # 3.5 s of audio
    assert too_little.status_code == 422 and too_little.json()["type"].endswith("/quality_failed")
    not_audio = api.http.post(
        "/v1/watchlist/entries",
        data={"case_reference": "CASE-1", "legal_basis": LEGAL_BASIS},
        files=[("audio", ("x.wav", b"RIFF not really", "audio/wav"))],
        headers=fraud,
    )
    assert not_audio.status_code == 422
    assert api.http.delete("/v1/watchlist/entries/no-such", headers=fraud).status_code == 422
    assert api.http.delete("/v1/watchlist/entries/wle_0", headers=fraud).status_code == 404
    assert _rows(database_url, "SELECT count(*) FROM watchlist_entries") == [(0,)]


def test_a_damaged_watchlist_entry_is_left_out_and_calls_are_still_answered(watch, database_url):
    from sqlalchemy import create_engine, text

    api, keys = watch
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    entry = _add_entry(api, keys["fraud"]).json()["id"]
    ((sealed,),) = _rows(database_url, "SELECT sealed FROM watchlist_entries WHERE id = :id", id=entry)
    tampered = sealed[:-1] + bytes([sealed[-1] ^ 1])
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE watchlist_entries SET sealed = :s WHERE id = :id"), {"s": tampered, "id": entry})
    finally:
        engine.dispose()
    answered = _verify(api, keys["ivr"], FRAUDSTER_CALL)
    assert answered.status_code == 200, answered.text
    assert answered.json()["watchlist"] == {"hit": False, "entry": None, "score": None}


def test_an_entry_removed_on_another_replica_is_never_hit_from_a_stale_gallery(watch, replica):
    from service.watchlist.screening import watchlist_gallery

    api, keys = watch
    other_http, _ = replica
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    entry = _add_entry(api, keys["fraud"]).json()["id"]
    assert _verify(api, keys["ivr"], FRAUDSTER_CALL).json()["watchlist"]["hit"] is True
    assert watchlist_gallery(api.ctx).size("bank") == 1

    removed = other_http.delete(f"/v1/watchlist/entries/{entry}", headers=api.headers(keys["fraud"]))
    assert removed.status_code == 200, removed.text
    assert watchlist_gallery(api.ctx).size("bank") == 1  # this replica's copy is stale, as a cache may be
    assert _verify(api, keys["ivr"], FRAUDSTER_CALL).json()["watchlist"]["hit"] is False  # re-checked
    assert watchlist_gallery(api.ctx).size("bank") == 0


def test_a_watchlisted_voice_streaming_over_the_telephone_is_flagged_in_the_decision(watch):
    api, keys = watch
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    entry = _add_entry(api, keys["fraud"]).json()["id"]

    stream = open_stream(api, keys["ivr"]).json()  # the fraudster calls the IVR, claiming the customer
    played = play(api, stream["id"], frames(telephone_call(FRAUDSTER_CALL), 160))

    assert played.final["decision"] == "reject", played.events
    assert played.final["watchlist"]["hit"] is True and played.final["watchlist"]["entry"] == entry
    state = api.http.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["latest_event"]["watchlist"]["entry"] == entry
    hits = [e for e in _audit(api, keys["auditor"]) if e["action"] == "watchlist.hit"]
    assert len(hits) == 1 and hits[0]["details"]["during"] == "voice.stream"
