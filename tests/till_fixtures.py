"""Fixtures for the till tests: a shop tenant with its terminal and portal clients, on a real database
(SQLite file or PostgreSQL) and a real keyring file, no voice model loaded; and a second app context on
the same database and keyring, as another replica would be."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from fastapi.testclient import TestClient

from tests.service_fixtures import Api


@dataclass
class Till:
    api: Api
    terminal: str
    portal: str

    @property
    def http(self) -> TestClient:
        return self.api.http

    def headers(self, key: str | None = None) -> dict[str, str]:
        return self.api.headers(key or self.terminal)


def _app(settings_kwargs: dict, *, create_keyring: bool):
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    settings = ServiceSettings(_env_file=None, **settings_kwargs)
    ctx = ServiceContext(settings, create_keyring=create_keyring)
    return ctx, create_app(ctx)


@pytest.fixture
def till_settings(database_url, tmp_path) -> dict:
    """The service's settings for the till tests (a test may change them before ``till`` starts)."""
    return {"data_dir": tmp_path, "database_url": database_url, "lockout_max_failures": 3}


# Image -> capture, for the whole session: the till tests send the same few FVC2002 impressions again and again
# (each LEADER extraction about 0.35 s), on both databases. The first time an image comes, the production
# analysis runs on it; extraction itself is tested in test_fingerprint_core.py and test_serial_thread.py.
# A till test that patches extraction (a stall, a failing network) must send images no other till test sends,
# or analyse through biometrics.fingerprint.capture itself: an image seen before is answered from here.
_ANALYSED: dict[tuple, object] = {}


def _analysed_once(analyse):  # noqa: ANN001, ANN202 - wraps biometrics.fingerprint.capture.analyse_capture
    def analyse_capture(image, *, settings):  # noqa: ANN001, ANN202
        gates = tuple(sorted((k, v) for k, v in settings.model_dump().items() if k.startswith("fingerprint")))
        pixels = hashlib.sha256(image.pixels.tobytes()).digest()
        key = (pixels, image.width, image.height, image.resolution_dpi, gates)
        if key not in _ANALYSED:
            _ANALYSED[key] = analyse(image, settings=settings)
        return _ANALYSED[key]

    return analyse_capture


@pytest.fixture
def till(till_settings, monkeypatch) -> Iterator[Till]:
    from service.admin.bootstrap import bootstrap_admin
    from service.fingerprint import captures

    monkeypatch.setattr(captures, "analyse_capture", _analysed_once(captures.analyse_capture))
    ctx, app = _app(till_settings, create_keyring=True)
    admin_key = bootstrap_admin(ctx.db)
    with TestClient(app, raise_server_exceptions=False) as http:
        api = Api(http=http, ctx=ctx, admin_key=admin_key, data_dir=till_settings["data_dir"])
        api.tenant("shop")
        yield Till(api, terminal=api.client("shop", "terminal"), portal=api.client("shop", "portal"))
    ctx.db.engine.dispose()


@pytest.fixture
def second_replica(till, till_settings) -> Iterator[TestClient]:
    """Another app context on the same database and keyring file: another replica of the service."""
    ctx, app = _app(till_settings, create_keyring=False)
    with TestClient(app, raise_server_exceptions=False) as http:
        yield http
    ctx.db.engine.dispose()
