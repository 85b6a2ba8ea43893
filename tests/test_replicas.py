"""Beyond one machine: two real server processes on one PostgreSQL behave as one service. A lockout earned
on one is enforced by the other, an enrolment session started on one completes on the other, a withdrawal
on one is honoured at once by identification on the other, and a stream opened on one is fed on the other.
Everything goes through the HTTP API, so it holds however each replica caches what it reads."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect

from tests.conftest import TEST_OTHER
from tests.serve_helpers import serve, stop
from tests.stream_helpers import frames, telephone_call
from tests.voice_helpers import ENROL, GENUINE, IMPOSTOR, NOTICE, SPEAKER

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


class Replica:
    def __init__(self, base: str) -> None:
        self.base = base
        self.http = httpx.Client(base_url=base, timeout=120)

    def post(self, key: str, path: str, **kwargs) -> httpx.Response:
        return self.http.post(path, headers={"Authorization": f"Bearer {key}"}, **kwargs)

    def get(self, key: str, path: str) -> httpx.Response:
        return self.http.get(path, headers={"Authorization": f"Bearer {key}"})


def _file(path: Path) -> tuple[str, tuple[str, bytes, str]]:
    return ("audio", (path.name, path.read_bytes(), "audio/flac"))


def _consent(replica: Replica, portal: str, reference: str) -> dict:
    body = {
        "reference": reference,
        "modality": "voice",
        "purpose": "authentication",
        "notice_version": "2026-11",
        "notice_text": NOTICE,
        "channel": "portal",
        "evidence_ref": "portal-session-1",
    }
    response = replica.post(portal, "/v1/consents", json=body)
    assert response.status_code == 201, response.text
    return response.json()


@pytest.mark.parametrize("database_url", ["postgresql"], indirect=True)
def test_two_replicas_on_one_postgresql_act_as_one_service(database_url, tmp_path):
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    processes: list[subprocess.Popen] = []
    try:
        # One keyring (data directory) for both replicas, as a deployment shares it.
        variables = {"BIOIDENT_DATABASE_URL": database_url, "BIOIDENT_LOCKOUT_MAX_FAILURES": "2"}
        first = serve(data_dir, logs, wait_s=180, **variables)
        processes.append(first.process)
        base_a = first.base
        admin = first.out_path.read_text().splitlines()[0].rsplit(":", 1)[1].strip()
        second = serve(data_dir, logs, wait_s=180, **variables)
        processes.append(second.process)
        base_b = second.base
        a, b = Replica(base_a), Replica(base_b)

        assert a.post(admin, "/v1/tenants", json={"id": "bank", "name": "bank"}).status_code == 201
        keys = {}
        for role in ("ivr", "portal"):
            created = a.post(admin, "/v1/clients", json={"tenant_id": "bank", "name": role, "role": role})
            keys[role] = created.json()["api_key"]
        ivr, portal = keys["ivr"], keys["portal"]

        # An enrolment session started on A completes on B.
        consent = _consent(a, portal, "ACC-1")
        session = a.post(ivr, "/v1/voice/enrolments", json={"reference": "ACC-1"})
        assert session.status_code == 201, session.text
        session_id = session.json()["id"]
        for name in ENROL:
            added = b.post(
                ivr, f"/v1/voice/enrolments/{session_id}/samples", files=[_file(TEST_OTHER / SPEAKER / name)]
            )
            assert added.status_code == 201, added.text
        completed = b.post(ivr, f"/v1/voice/enrolments/{session_id}:complete")
        assert completed.status_code == 201, completed.text

        # A stream opened on A is fed over B's WebSocket; A reads its decision.
        stream = a.post(
            ivr,
            "/v1/voice/streams",
            json={"reference": "ACC-1", "purpose": "authentication", "codec": "mulaw", "sample_rate": 8000},
        ).json()
        with connect(f"ws://{base_b.removeprefix('http://')}/v1/voice/streams/{stream['id']}") as ws:
            for chunk in frames(telephone_call(TEST_OTHER / SPEAKER / GENUINE), 160):
                ws.send(chunk)
            ws.send(json.dumps({"event": "stop"}))
            events = [json.loads(message) for message in ws]
        assert events[-1]["decision"] == "accept", events
        assert a.get(ivr, f"/v1/voice/streams/{stream['id']}").json()["decision"] == "accept"

        # A withdrawal on A is honoured at once by identification on B.
        probe = [_file(TEST_OTHER / SPEAKER / GENUINE)]
        found = b.post(ivr, "/v1/voice/identify", files=probe).json()
        assert [c["subject_token"] for c in found["candidates"]] == [consent["subject_token"]]
        withdrawn = a.post(portal, f"/v1/subjects/{consent['subject_token']}/consents/{consent['id']}:withdraw")
        assert withdrawn.status_code == 200, withdrawn.text
        assert b.post(ivr, "/v1/voice/identify", files=probe).json()["candidates"] == []

        # A lockout earned on A is enforced by B.
        _consent(a, portal, "ACC-2")
        enrolled = a.post(
            ivr, "/v1/voice/enrol", data={"reference": "ACC-2"}, files=[_file(TEST_OTHER / SPEAKER / n) for n in ENROL]
        )
        assert enrolled.status_code == 201, enrolled.text
        for _ in range(2):
            rejected = a.post(ivr, "/v1/voice/verify", data={"reference": "ACC-2"}, files=[_file(IMPOSTOR)])
            assert rejected.json()["decision"] == "reject"
        locked = b.post(
            ivr, "/v1/voice/verify", data={"reference": "ACC-2"}, files=[_file(TEST_OTHER / SPEAKER / GENUINE)]
        )
        assert locked.status_code == 423 and int(locked.headers["Retry-After"]) >= 1
        refused_stream = b.post(
            ivr,
            "/v1/voice/streams",
            json={"reference": "ACC-2", "purpose": "authentication", "codec": "mulaw", "sample_rate": 8000},
        )
        assert refused_stream.status_code == 423
    finally:
        for process in processes:
            stop(process)
