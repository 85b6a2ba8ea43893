"""Standing a deployment up: ``bioident serve`` as an operator starts it (the first admin key printed
once, answering over HTTP, found again after a restart), and a new SQLite database file is owner-only."""

from __future__ import annotations

import stat
import time
import uuid

import httpx
import pytest
import websockets.exceptions
import websockets.sync.client

from tests.operations_fixtures import _problem
from tests.serve_helpers import serve, stop

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


def test_bioident_serve_prints_the_first_admin_key_once_and_answers_over_http(tmp_path):
    data_dir, logs = tmp_path / "data", tmp_path / "logs"
    process = None
    try:
        served = serve(data_dir, logs)
        process, base, out_path, err_path = served.process, served.base, served.out_path, served.err_path
        lines = out_path.read_text().splitlines()
        assert lines and "first admin API key" in lines[0], lines
        assert sum("first admin API key" in line for line in lines) == 1, lines
        admin_key = lines[0].rsplit(":", 1)[1].strip()
        assert admin_key.startswith("bik.")
        assert err_path.read_text().count(admin_key) == 0  # shown on stdout only, and not logged

        with httpx.Client(base_url=base, timeout=30) as http:
            docs = http.get("/docs")
            assert docs.status_code == 200 and "swagger" in docs.text.lower()
            spec = http.get("/openapi.json")
            assert spec.status_code == 200 and "/v1/voice/verify" in spec.json()["paths"]
            clients = http.get("/v1/clients", headers={"Authorization": f"Bearer {admin_key}"})
            assert clients.status_code == 200, clients.text
            assert [(c["role"], c["tenant_id"]) for c in clients.json()] == [("admin", "default")]
            assert all(c["api_key"] is None for c in clients.json())  # never shown again
            anonymous = http.get("/v1/clients")
            _problem(anonymous, 401)
        # A stream id is the audio transport's credential: uvicorn logs each WebSocket handshake's path, but
        # never with the id in it.
        stream_ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        ws_base = base.replace("http://", "ws://")
        paths = (f"/v1/voice/streams/{stream_ids[0]}", f"/v1/voice/%73treams%2F{stream_ids[1]}")  # decoded: routed
        for path in paths:
            connect = websockets.sync.client.connect(ws_base + path)
            with pytest.raises(websockets.exceptions.WebSocketException), connect as socket:
                socket.recv(timeout=30)  # unknown: closed with 4404
        handshakes = [line for line in _log_when_written(err_path, "WebSocket", count=2) if "WebSocket" in line]
        assert len(handshakes) == 2 and all("/v1/voice/streams/{id}" in line for line in handshakes), handshakes
        logged = err_path.read_text() + out_path.read_text()
        assert not [stream_id for stream_id in stream_ids if stream_id in logged]
        assert stat.S_IMODE((data_dir / "keyring.json").stat().st_mode) == 0o600
        stop(process)

        # A restart on the same data directory finds the admin: no new key is printed, the old one works.
        served = serve(data_dir, logs)
        process, base, out_path = served.process, served.base, served.out_path
        assert "first admin API key" not in out_path.read_text()
        again = httpx.get(f"{base}/v1/clients", headers={"Authorization": f"Bearer {admin_key}"}, timeout=30)
        assert again.status_code == 200 and len(again.json()) == 1
    finally:
        if process is not None:
            stop(process)


def test_a_new_sqlite_database_file_is_owner_only(tmp_path):
    from service.store.db import Database, upgrade

    url = f"sqlite:///{tmp_path / 'fresh' / 'bioident.db'}"
    Database(url)
    upgrade(url)
    assert stat.S_IMODE((tmp_path / "fresh" / "bioident.db").stat().st_mode) == 0o600


def _log_when_written(path, text: str, count: int = 1, wait_s: float = 10.0) -> list[str]:
    """The log's lines once ``text`` is in it ``count`` times (the server writes it after answering), or as they
    are at the end of the wait."""
    deadline = time.monotonic() + wait_s
    while path.read_text().count(text) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    return path.read_text().splitlines()
