"""Fixtures and helpers for the tests of operating the service: the CLI as an operator runs it, the
database read and written over a plain connection (no service code involved), problem+json checks,
a short signed audit trail, and a bank tenant with its IVR and portal clients.

The CLI runs in process through ``service.cli.main`` with ``BIOIDENT_*`` variables, against the same
databases (SQLite file and PostgreSQL) as the HTTP tests.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, text

from service.cli import main
from service.store.db import Database
from service.trail.chain import append

PROBLEM_JSON = "application/problem+json"
# Settings that would steer the CLI or the server away from the database and directory a test names.
SERVICE_VARIABLES = (
    "BIOIDENT_DATABASE_URL",
    "BIOIDENT_DATA_DIR",
    "BIOIDENT_KEYRING",
    "BIOIDENT_KEYRING_FILE",
    "BIOIDENT_HOST",
    "BIOIDENT_PORT",
    "BIOIDENT_MAX_BODY_BYTES",
)


@pytest.fixture
def clean_service_environment(monkeypatch):
    """None of the operator's own ``BIOIDENT_*`` service settings reach the test (used by its modules)."""
    for name in SERVICE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


def _cli(monkeypatch, capsys, data_dir: Path, *argv: str, url: str | None = None) -> tuple[int, str, str]:
    """``bioident <argv>`` as an operator runs it, with the database and data directory in the environment."""
    if url is not None:
        monkeypatch.setenv("BIOIDENT_DATABASE_URL", url)
    monkeypatch.setenv("BIOIDENT_DATA_DIR", str(data_dir))
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _deployment(database_url: str, data_dir: Path, **settings):
    """A deployment's context as ``bioident serve`` makes it (keyring file, ledger in the data directory)."""
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    data_dir.mkdir(mode=0o700, exist_ok=True)
    config = ServiceSettings(_env_file=None, data_dir=data_dir, database_url=database_url, **settings)
    return ServiceContext(config, create_keyring=True)


def _rows(url: str, sql: str, **params) -> list[tuple]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return [
                tuple(bytes(v) if isinstance(v, memoryview) else v for v in row)
                for row in conn.execute(text(sql), params)
            ]
    finally:
        engine.dispose()


def _execute(url: str, *statements) -> None:
    """Runs statements in one transaction on a plain connection: no service code is involved."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for statement in statements:
                if isinstance(statement, tuple):
                    conn.execute(*statement)
                else:
                    conn.execute(statement)
    finally:
        engine.dispose()


def _problem(response: httpx.Response, status: int | None = None) -> dict:
    assert response.headers["content-type"].startswith(PROBLEM_JSON), (response.status_code, response.text)
    if status is not None:
        assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == response.status_code and body["type"].startswith("https://")
    return body


TRAIL_LENGTH = 6


def _audit_key(data_dir: Path) -> bytes:
    """The audit key of the keyring the CLI will use in ``data_dir`` (created here if it is not there yet)."""
    from service.vault import Keyring

    return Keyring.load_or_create(data_dir / "keyring.json").audit_key()


def _build_trail(url: str, data_dir: Path) -> None:
    """Six entries, each in its own transaction, with scores and details that must survive the round trip."""
    db = Database(url, audit_key=_audit_key(data_dir))
    try:
        for i in range(1, TRAIL_LENGTH + 1):
            with db.session() as session:
                append(
                    session,
                    actor=f"cli_{i % 2}",
                    action="voice.verify",
                    outcome="accept" if i % 2 else "reject",
                    tenant_id="bank",
                    subject_token=f"sub_{i:064x}",
                    score=0.1 * i + 1e-9,  # not exactly representable: a lossy float column would show
                    model_fingerprint="ecapa-voxceleb-test",
                    details={"session": f"s{i}", "reasons": [{"code": "TOO_SHORT", "measured": 2.5}], "n": i},
                )
    finally:
        db.engine.dispose()


@pytest.fixture
def bank(api):
    api.tenant("bank")
    return api, {role: api.client("bank", role) for role in ("ivr", "portal", "auditor")}
