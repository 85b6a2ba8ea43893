"""Fixtures for the service tests: a real database (SQLite file or PostgreSQL), a real keyring file,
the real model, and an HTTP client on the FastAPI app."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text

POSTGRES_ADMIN_URL = os.environ.get("BIOIDENT_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> Iterator[str]:
    """A fresh, migrated database: an SQLite file, or a new PostgreSQL database over a real connection."""
    from service.store.db import upgrade

    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'bioident.db'}"
        upgrade(url)
        yield url
        return
    name = f"bioident_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_ADMIN_URL, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # a missing server must fail loudly, not skip
        pytest.fail(f"PostgreSQL is not reachable at {POSTGRES_ADMIN_URL}: {type(exc).__name__}")
    url = POSTGRES_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@dataclass
class Api:
    http: TestClient
    ctx: object
    admin_key: str
    data_dir: Path

    def headers(self, key: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {key}"}

    def client(self, tenant: str, role: str) -> str:
        response = self.http.post(
            "/v1/clients",
            json={"tenant_id": tenant, "name": f"{tenant}-{role}", "role": role},
            headers=self.headers(self.admin_key),
        )
        assert response.status_code == 201, response.text
        return response.json()["api_key"]

    def tenant(self, tenant: str) -> None:
        response = self.http.post(
            "/v1/tenants", json={"id": tenant, "name": tenant}, headers=self.headers(self.admin_key)
        )
        assert response.status_code == 201, response.text


@pytest.fixture
def api(database_url, embedder, tmp_path) -> Iterator[Api]:
    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, database_url=database_url)
    ctx = ServiceContext(settings, embedder=embedder, create_keyring=True)
    admin_key = bootstrap_admin(ctx.db)
    with TestClient(create_app(ctx), raise_server_exceptions=False) as http:
        yield Api(http=http, ctx=ctx, admin_key=admin_key, data_dir=tmp_path)
    ctx.db.engine.dispose()


@pytest.fixture
def replica(api, embedder):
    """A second service process on the same database and keyring as ``api``, with its own in-memory state
    (galleries): an HTTP client on it and its context."""
    from service.app import create_app
    from service.context import ServiceContext

    ctx = ServiceContext(api.ctx.settings, embedder=embedder)
    with TestClient(create_app(ctx), raise_server_exceptions=False) as http:
        yield http, ctx
    ctx.db.engine.dispose()
