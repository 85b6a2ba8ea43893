"""Real-time verification while the caller waits: a stream of a caller's real telephone audio is decided
as the speech arrives, over a WebSocket or Asterisk's AudioSocket, through the same claim -> decide logic,
consent, lockout and audit as an upload."""

from __future__ import annotations

import datetime as dt
import json
import socket
import struct
import time

import pytest
from sqlalchemy import text

from biometrics.voice.audio import RawCodec
from tests.conftest import TEST_OTHER
from tests.operations_fixtures import _rows
from tests.stream_helpers import (
    Played,
    audiosocket_message,
    audiosocket_uuid,
    frames,
    open_stream,
    play,
    read_to_close,
    telephone_call,
)
from tests.voice_helpers import GENUINE, IMPOSTOR, SPEAKER, _consent, _enrol

FRAME_20MS = 160  # 8 kHz mu-law


@pytest.fixture
def enrolled(bank):
    api, keys = bank
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    return api, keys


@pytest.fixture(scope="module")
def genuine_call() -> bytes:
    return telephone_call(TEST_OTHER / SPEAKER / GENUINE)


@pytest.fixture(scope="module")
def impostor_call() -> bytes:
    return telephone_call(IMPOSTOR)


def play_with_key(api, stream_id: str, key: str):
    with api.http.websocket_connect(f"/v1/voice/streams/{stream_id}", headers=api.headers(key)) as ws:
        return read_to_close(ws, Played())


def _stream_entries(api, auditor_key: str) -> list[dict]:
    entries = api.http.get("/v1/audit/entries", headers=api.headers(auditor_key)).json()["entries"]
    return [e for e in entries if e["action"] == "voice.stream"]


def test_a_genuine_caller_is_accepted_as_their_telephone_audio_streams_in(enrolled, genuine_call):
    api, keys = enrolled
    opened = open_stream(api, keys["ivr"])
    assert opened.status_code == 201, opened.text
    stream = opened.json()
    assert stream["status"] == "open" and stream["latest_event"]["decision"] == "pending"

    played = play(api, stream["id"], frames(genuine_call, FRAME_20MS))

    assert played.final["decision"] == "accept" and played.final["final"] is True, played.events
    assert played.final["score"] >= played.final["threshold"] and played.final["reasons"] == []
    speech = [e["net_speech_s"] for e in played.events]
    assert speech == sorted(speech) and all(e["decision"] == "pending" for e in played.events[:-1])
    assert played.close_code == 1000 and played.close_reason["decision"] == "accept"
    state = api.http.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["status"] == "decided" and state["decision"] == "accept"
    assert state["latest_event"]["score"] == played.final["score"]
    (entry,) = _stream_entries(api, keys["auditor"])  # one audit entry per stream decision
    assert entry["outcome"] == "accept" and entry["details"]["stream_id"] == stream["id"]
    assert "ACC-1001" not in json.dumps(played.events) + json.dumps(state)


def test_an_impostor_streaming_is_rejected_and_it_counts_towards_the_lockout(enrolled, impostor_call):
    api, keys = enrolled
    stream = open_stream(api, keys["ivr"]).json()
    played = play(api, stream["id"], frames(impostor_call, FRAME_20MS))
    assert played.final["decision"] == "reject" and played.close_code == 1000, played.events
    assert played.final["score"] < played.final["threshold"]
    (entry,) = _stream_entries(api, keys["auditor"])
    assert entry["outcome"] == "reject"
    with api.ctx.db.session() as session:
        failures = session.execute(text("SELECT count(*) FROM verification_failures")).scalar_one()
    assert failures == 1


def test_a_caller_who_never_speaks_ends_inconclusive_with_a_reason(enrolled):
    api, keys = enrolled
    api.ctx.settings.stream_silence_s = 2.0
    stream = open_stream(api, keys["ivr"]).json()
    silence = bytes([0xFF]) * 8000 * 3  # mu-law silence, 3 s: more than the 2 s a stream waits for speech
    played = play(api, stream["id"], frames(silence, FRAME_20MS), stop=False)
    assert played.final["decision"] == "inconclusive", played.events
    assert played.final["close_reason"] == "no_speech"
    assert [r["code"] for r in played.final["reasons"]] == ["NO_SPEECH"]
    assert played.close_code == 1000


def test_a_caller_who_hangs_up_too_soon_is_inconclusive_as_too_short(enrolled, genuine_call):
    api, keys = enrolled
    stream = open_stream(api, keys["ivr"]).json()
    played = play(api, stream["id"], frames(genuine_call[: 8000 * 1], FRAME_20MS))
    assert played.final["decision"] == "inconclusive" and played.final["close_reason"] == "ended_by_caller"
    assert played.final["reasons"][0]["code"] in {"TOO_SHORT", "NO_SPEECH"}


def test_a_stream_refused_for_its_quality_tells_no_score_on_the_way_or_at_the_end(enrolled, genuine_call, monkeypatch):
    import dataclasses

    api, keys = enrolled
    monkeypatch.setattr(api.ctx, "limits", dataclasses.replace(api.ctx.limits, min_snr_db=99.0))  # no call passes
    stream = open_stream(api, keys["ivr"]).json()
    played = play(api, stream["id"], frames(genuine_call, FRAME_20MS))
    scored = [e for e in played.events if (e["net_speech_s"] or 0) >= api.ctx.settings.min_verify_speech_s]
    assert scored and all(e["reasons"] and e["score"] is None for e in scored), played.events
    assert any(e["event"] == "pending" for e in scored), played.events  # on the way, not only at the end
    assert played.final["decision"] == "inconclusive" and played.final["score"] is None
    (entry,) = _stream_entries(api, keys["auditor"])
    assert entry["outcome"] == "inconclusive" and entry["score"] is not None  # scored, and only audited


def test_an_inconclusive_end_on_clean_audio_costs_an_attempt(enrolled, genuine_call, monkeypatch):
    """Pending events show the score near the threshold: hanging up inside the margin must count."""
    api, keys = enrolled
    monkeypatch.setattr(api.ctx.settings, "stream_margin", 5.0)  # nothing decides before the end
    stream = open_stream(api, keys["ivr"]).json()
    played = play(api, stream["id"], frames(genuine_call, FRAME_20MS))
    assert played.final["decision"] == "inconclusive" and played.final["reasons"] == [], played.events
    assert any(e["event"] == "pending" and e["score"] is not None for e in played.events)
    failures = "SELECT count(*) FROM verification_failures"
    assert _rows(api.ctx.db.url, failures) == [(1,)]


@pytest.mark.parametrize("fault", ["oversize", "not json"])
def test_breaking_the_framing_after_a_score_was_told_costs_an_attempt(enrolled, impostor_call, monkeypatch, fault):
    """Ending a losing stream with a malformed frame had left it undecided: scores probed, no lockout."""
    api, keys = enrolled
    monkeypatch.setattr(api.ctx.settings, "stream_margin", 5.0)  # pending events with scores, nothing decided
    stream = open_stream(api, keys["ivr"]).json()
    with api.http.websocket_connect(f"/v1/voice/streams/{stream['id']}") as ws:
        for chunk in frames(impostor_call, FRAME_20MS):
            ws.send_bytes(chunk)
        if fault == "oversize":
            ws.send_bytes(b"\xff" * (api.ctx.settings.stream_max_frame_bytes + 1))
        else:
            ws.send_text(fault)
        played = read_to_close(ws, Played())
    assert any(e["event"] == "pending" and e["score"] is not None for e in played.events), played.events
    code, reason = (1009, "oversize_frame") if fault == "oversize" else (1007, "malformed_frame")
    assert played.close_code == code and played.close_reason == {"reason": reason, "decision": "inconclusive"}
    assert played.final["decision"] == "inconclusive" and played.final["close_reason"] == reason
    assert _rows(api.ctx.db.url, "SELECT count(*) FROM verification_failures") == [(1,)]
    (entry,) = _stream_entries(api, keys["auditor"])
    assert entry["outcome"] == "inconclusive" and entry["details"]["close_reason"] == reason


def test_a_customer_not_enrolled_or_opted_out_is_answered_at_once(bank):
    api, keys = bank
    unknown = open_stream(api, keys["ivr"], reference="ACC-NOBODY")
    assert unknown.status_code == 201 and unknown.json()["decision"] == "not_enrolled"
    consent = _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    withdrawn = api.http.post(
        f"/v1/subjects/{consent['subject_token']}/consents/{consent['id']}:withdraw",
        headers=api.headers(keys["portal"]),
    )
    assert withdrawn.status_code == 200
    opted_out = open_stream(api, keys["ivr"]).json()
    assert opted_out["decision"] == "opted_out" and opted_out["status"] == "decided"
    assert [e["outcome"] for e in _stream_entries(api, keys["auditor"])] == ["not_enrolled", "opted_out"]
    # Such a stream takes no audio.
    played = play(api, opted_out["id"], [b"\xff" * FRAME_20MS])
    assert played.close_code == 4409 and played.close_reason == {"reason": "stream_used"}


def test_a_locked_out_customer_cannot_open_a_stream(enrolled, impostor_call):
    api, keys = enrolled
    api.ctx.settings.lockout_max_failures = 1
    stream = open_stream(api, keys["ivr"]).json()
    assert play(api, stream["id"], frames(impostor_call, FRAME_20MS)).final["decision"] == "reject"
    refused = open_stream(api, keys["ivr"])
    assert refused.status_code == 423 and "Retry-After" in refused.headers


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_withdrawal_during_a_stream_ends_it_without_a_decision(bank, genuine_call):
    api, keys = bank
    consent = _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    stream = open_stream(api, keys["ivr"]).json()
    chunks = frames(genuine_call, FRAME_20MS)
    with api.http.websocket_connect(f"/v1/voice/streams/{stream['id']}") as ws:
        assert json.loads(ws.receive_text())["event"] == "connected"
        for chunk in chunks[:25]:  # half a second: nothing scored yet
            ws.send_bytes(chunk)
        withdrawn = api.http.post(
            f"/v1/subjects/{consent['subject_token']}/consents/{consent['id']}:withdraw",
            headers=api.headers(keys["portal"]),
        )
        assert withdrawn.status_code == 200
        for chunk in chunks[25:]:
            ws.send_bytes(chunk)
        ws.send_text(json.dumps({"event": "stop"}))
        ended = read_to_close(ws, Played())
    assert ended.close_code == 4403 and ended.close_reason == {"reason": "consent_required", "decision": None}
    assert ended.final["refusal"] == "consent_required" and ended.final["decision"] is None
    assert [e["event"] for e in ended.events].count("ended") == 1, ended.events  # one final event, not two
    state = api.http.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["status"] == "ended" and state["decision"] is None
    assert [e["outcome"] for e in _stream_entries(api, keys["auditor"])] == ["refused"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_bad_stream_ids_end_with_a_close_code_and_a_reason(enrolled, genuine_call):
    api, keys = enrolled
    never = play(api, "0b5e2c4e-8d0f-4a53-9b9e-3f0c2d1e0a11", [])
    assert (never.close_code, never.close_reason) == (4404, {"reason": "unknown_stream"})
    not_a_uuid = play(api, "nonsense", [])
    assert (not_a_uuid.close_code, not_a_uuid.close_reason) == (4404, {"reason": "unknown_stream"})

    stale = open_stream(api, keys["ivr"]).json()
    with api.ctx.db.session() as session:
        session.execute(
            text("UPDATE voice_streams SET connect_by = :t WHERE id = :id"),
            {"t": dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1), "id": stale["id"]},
        )
    expired = play(api, stale["id"], [])
    assert (expired.close_code, expired.close_reason) == (4410, {"reason": "stream_expired"})
    assert (
        api.http.get(f"/v1/voice/streams/{stale['id']}", headers=api.headers(keys["ivr"])).json()["status"] == "expired"
    )
    portal_key = play_with_key(api, stream_id=open_stream(api, keys["ivr"]).json()["id"], key=keys["portal"])
    assert (portal_key.close_code, portal_key.close_reason) == (4403, {"reason": "forbidden"})

    stream = open_stream(api, keys["ivr"]).json()
    with api.http.websocket_connect(f"/v1/voice/streams/{stream['id']}") as first:
        assert json.loads(first.receive_text())["event"] == "connected"
        second = play(api, stream["id"], [])  # the stream is already taken by the first connection
        assert (second.close_code, second.close_reason) == (4409, {"reason": "stream_used"})
        first.send_text(json.dumps({"event": "stop"}))
        ended = read_to_close(first, Played())
    assert ended.final["decision"] == "inconclusive"  # nothing heard


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_malformed_oversize_and_late_frames_end_cleanly(enrolled, genuine_call):
    api, keys = enrolled
    oversize = open_stream(api, keys["ivr"]).json()
    big = play(api, oversize["id"], [b"\xff" * (api.ctx.settings.stream_max_frame_bytes + 1)])
    assert big.close_code == 1009 and big.close_reason == {"reason": "oversize_frame", "decision": None}
    assert big.final == {
        "event": "ended",
        "stream_id": oversize["id"],
        "decision": None,
        "close_reason": "oversize_frame",
    }

    garbled = open_stream(api, keys["ivr"]).json()
    bad_text = play(api, garbled["id"], [], text=["not json"])
    assert bad_text.close_code == 1007 and bad_text.close_reason["reason"] == "malformed_frame"

    odd = open_stream(api, keys["ivr"], codec="pcm16", rate=8000).json()
    half_sample = play(api, odd["id"], [b"\x00\x01\x02"])
    assert half_sample.close_code == 1007 and half_sample.close_reason["reason"] == "malformed_frame"

    late = open_stream(api, keys["ivr"]).json()
    played = play(api, late["id"], [*frames(genuine_call, FRAME_20MS), b"\xff" * FRAME_20MS], stop=True)
    assert played.final["decision"] == "accept"
    after = play(api, late["id"], [b"\xff" * FRAME_20MS])  # frames after the close are refused
    assert after.close_code == 4409
    state = api.http.get(f"/v1/voice/streams/{late['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["decision"] == "accept" and played.final.items() <= state["latest_event"].items()

    for name in (oversize, garbled, odd):
        state = api.http.get(f"/v1/voice/streams/{name['id']}", headers=api.headers(keys["ivr"])).json()
        assert state["status"] == "ended" and state["decision"] is None
    outcomes = [e["outcome"] for e in _stream_entries(api, keys["auditor"])]
    assert outcomes == ["refused", "refused", "refused", "accept"]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_model_fault_ends_the_stream_with_1011_and_leaves_nothing_half_done(enrolled, genuine_call, monkeypatch):
    from biometrics.errors import ModelError

    api, keys = enrolled

    def broken(utterances):
        raise ModelError("the model is unavailable")

    monkeypatch.setattr(api.ctx.batching.batcher, "_embed_speech", broken)
    stream = open_stream(api, keys["ivr"]).json()
    played = play(api, stream["id"], frames(genuine_call, FRAME_20MS))
    assert played.close_code == 1011 and played.close_reason == {"reason": "internal_error", "decision": None}
    state = api.http.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["status"] == "ended" and state["latest_event"]["close_reason"] == "internal_error"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_fault_while_deciding_after_a_broken_frame_still_ends_the_stream(enrolled, impostor_call, monkeypatch):
    from sqlalchemy.exc import OperationalError

    import service.voice.streams.run as stream_run

    api, keys = enrolled
    monkeypatch.setattr(api.ctx.settings, "stream_margin", 5.0)

    def locked(*args, **kwargs):
        raise OperationalError("UPDATE", {}, Exception("database is locked"))

    monkeypatch.setattr(stream_run, "decide_voice", locked)
    stream = open_stream(api, keys["ivr"]).json()
    with api.http.websocket_connect(f"/v1/voice/streams/{stream['id']}") as ws:
        for chunk in frames(impostor_call, FRAME_20MS):
            ws.send_bytes(chunk)
        ws.send_text("not json")
        played = read_to_close(ws, Played())
    assert played.close_code == 1011 and played.close_reason == {"reason": "internal_error", "decision": None}
    state = api.http.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["status"] == "ended" and state["latest_event"]["close_reason"] == "internal_error"


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_past_the_most_streams_a_connection_is_turned_away_and_the_stream_stays_usable(enrolled):
    api, keys = enrolled
    api.ctx.settings.stream_max_open = 1
    held, turned_away = open_stream(api, keys["ivr"]).json(), open_stream(api, keys["ivr"]).json()
    with api.http.websocket_connect(f"/v1/voice/streams/{held['id']}") as first:
        assert json.loads(first.receive_text())["event"] == "connected"
        refused = play(api, turned_away["id"], [])
        assert (refused.close_code, refused.close_reason) == (1013, {"reason": "too_many_streams"})
        first.send_text(json.dumps({"event": "stop"}))
        read_to_close(first, Played())
    state = api.http.get(f"/v1/voice/streams/{turned_away['id']}", headers=api.headers(keys["ivr"])).json()
    assert state["status"] == "open"
    assert play(api, turned_away["id"], []).final["decision"] == "inconclusive"  # now it can connect


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_wrong_codec_is_refused_before_any_audio(enrolled):
    api, keys = enrolled
    for codec, rate in (("mulaw", 16000), ("opus", 8000), ("alaw", 44100)):
        refused = open_stream(api, keys["ivr"], codec=codec, rate=rate)
        assert refused.status_code == 422, refused.text
        assert refused.headers["content-type"].startswith("application/problem+json")
    with api.ctx.db.session() as session:
        assert session.execute(text("SELECT count(*) FROM voice_streams")).scalar_one() == 0


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_dropped_connection_is_decided_on_what_was_heard(enrolled, genuine_call):
    api, keys = enrolled
    stream = open_stream(api, keys["ivr"]).json()
    with api.http.websocket_connect(f"/v1/voice/streams/{stream['id']}") as ws:
        for chunk in frames(genuine_call[: 8000 * 2], FRAME_20MS):
            ws.send_bytes(chunk)
    # The client went away without a stop event; the server decides on the two seconds it heard.
    for _ in range(200):
        state = api.http.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
        if state["status"] != "streaming":
            break
        time.sleep(0.05)
    assert state["status"] == "decided" and state["decision"] == "inconclusive"
    assert state["latest_event"]["close_reason"] == "dropped"
    assert [e["outcome"] for e in _stream_entries(api, keys["auditor"])] == ["inconclusive"]


def test_asterisk_audiosocket_streams_end_to_end_over_tcp(bank, tmp_path, database_url, embedder, genuine_call):
    """A real TCP listener, the real frame format: UUID message, 320-byte signed-linear frames, hangup."""
    from fastapi.testclient import TestClient

    from service.app import create_app

    api, keys = bank
    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    api.ctx.settings.audiosocket = "127.0.0.1:0"
    slin = telephone_call(TEST_OTHER / SPEAKER / GENUINE, RawCodec.PCM16)
    with TestClient(create_app(api.ctx)) as client:
        port = client.app.state.audiosocket_port
        most = api.ctx.settings.stream_max_open
        api.ctx.settings.stream_max_open = 1
        idle = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(3)]  # they say nothing
        try:
            held = open_stream(api, keys["ivr"]).json()
            with client.websocket_connect(f"/v1/voice/streams/{held['id']}") as ws:
                assert json.loads(ws.receive_text())["event"] == "connected"  # the idle sockets hold no slot
                ws.send_text(json.dumps({"event": "stop"}))
                read_to_close(ws, Played())
        finally:
            for connection in idle:
                connection.close()
            api.ctx.settings.stream_max_open = most
        stream = open_stream(api, keys["ivr"], codec="pcm16", rate=8000).json()
        events = f"/v1/voice/streams/{stream['id']}/events"  # the IVR watches the call's events meanwhile
        with client.websocket_connect(events, headers=api.headers(keys["ivr"])) as watcher:
            assert watcher.receive_json()["event"] == "opened"
            with socket.create_connection(("127.0.0.1", port), timeout=60) as call:
                call.sendall(audiosocket_uuid(stream["id"]))
                for chunk in frames(slin, 320):
                    call.sendall(audiosocket_message(0x10, chunk))
                call.sendall(audiosocket_message(0x00))
                reply = b""
                while len(reply) < 3:
                    more = call.recv(3 - len(reply))
                    if not more:
                        break
                    reply += more
            watched = read_to_close(watcher, Played())
        assert struct.unpack(">BH", reply) == (0x00, 0)  # the server hangs up when the stream ends
        assert watched.final["decision"] == "accept" and watched.final["final"] is True
        assert watched.close_code == 1000 and watched.close_reason == {"reason": "decided", "decision": "accept"}
        # The watcher's own refusals: no key, a key of another role, another tenant's ivr (for whom this
        # stream does not exist), an id that is not a stream.
        api.tenant("other-bank")
        stranger = api.client("other-bank", "ivr")
        for headers, path, code in (
            ({}, events, 4403),
            (api.headers(keys["auditor"]), events, 4403),
            (api.headers(stranger), events, 4404),
            (api.headers(keys["ivr"]), "/v1/voice/streams/not-a-uuid/events", 4404),
            (api.headers(keys["ivr"]), "/v1/voice/streams/0b5e2c4e-8d0f-4a53-9b9e-3f0c2d1e0a11/events", 4404),
        ):
            with client.websocket_connect(path, headers=headers) as refused:
                assert read_to_close(refused, Played()).close_code == code
        state = client.get(f"/v1/voice/streams/{stream['id']}", headers=api.headers(keys["ivr"])).json()
        assert state["decision"] == "accept", state

        mulaw = open_stream(api, keys["ivr"]).json()  # AudioSocket carries signed linear only
        with socket.create_connection(("127.0.0.1", port), timeout=60) as call:
            call.sendall(audiosocket_uuid(mulaw["id"]))
            assert call.recv(3) == audiosocket_message(0x00)
        state = client.get(f"/v1/voice/streams/{mulaw['id']}", headers=api.headers(keys["ivr"])).json()
        assert state["status"] == "open"  # refused before it was taken: still usable with the right transport
        with socket.create_connection(("127.0.0.1", port), timeout=60) as call:
            call.sendall(audiosocket_uuid("0b5e2c4e-8d0f-4a53-9b9e-3f0c2d1e0a11"))  # no such stream
            assert call.recv(3) == audiosocket_message(0x00)
        garbled = open_stream(api, keys["ivr"], codec="pcm16", rate=8000).json()
        with socket.create_connection(("127.0.0.1", port), timeout=60) as call:
            call.sendall(audiosocket_uuid(garbled["id"]) + audiosocket_message(0x10, b"\x00\x01\x02"))
            assert call.recv(3) == audiosocket_message(0x00)
        state = client.get(f"/v1/voice/streams/{garbled['id']}", headers=api.headers(keys["ivr"])).json()
        assert state["status"] == "ended" and state["latest_event"]["close_reason"] == "malformed_frame"
    accepted, refused = [e for e in _stream_entries(api, keys["auditor"]) if e["details"]["transport"] == "audiosocket"]
    assert accepted["outcome"] == "accept"
    assert refused["outcome"] == "refused" and refused["details"]["reason"] == "malformed_frame"


def test_a_websocket_with_two_authorization_headers_is_refused():
    """As over HTTP: a proxy may have read the other one. (Starlette's test client joins repeated headers of a
    WebSocket into one, so the check is called on the headers a server such as uvicorn hands over.)"""
    from types import SimpleNamespace

    from starlette.datastructures import Headers

    from service.voice.streams.router import _authorization
    from service.voice.streams.store import StreamUnavailable

    def connection(*values: str) -> SimpleNamespace:
        return SimpleNamespace(headers=Headers(raw=[(b"authorization", v.encode()) for v in values]))

    with pytest.raises(StreamUnavailable):
        _authorization(connection("Bearer a", "Bearer b"))
    assert _authorization(connection("Bearer a")) == "Bearer a" and _authorization(connection()) is None
