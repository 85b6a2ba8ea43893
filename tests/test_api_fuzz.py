"""No input gets a server error, and every answer is what the OpenAPI says: a bounded property-based fuzz
of every operation (Schemathesis), with the API keys of the roles each operation is for.

Checked on each response: not a 5xx, a status the operation documents, its documented content type,
and a body that conforms to the documented schema (problem+json for every error).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.model

CASES_PER_OPERATION = 150
ROLE_OF_PREFIX = (
    ("/v1/tenants", "admin"),
    ("/v1/clients", "admin"),
    ("/v1/consents", "portal"),
    ("/v1/subjects", "portal"),
    ("/v1/voice", "ivr"),
    ("/v1/watchlist", "fraud"),
    ("/v1/fingerprint", "terminal"),
    ("/v1/audit", "auditor"),  # /v1/audit/... and /v1/audits
)


@pytest.fixture(scope="module")
def fuzzed_service(tmp_path_factory, embedder):
    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings
    from service.store.db import upgrade

    data_dir = tmp_path_factory.mktemp("fuzz")
    url = f"sqlite:///{data_dir / 'bioident.db'}"
    upgrade(url)
    settings = ServiceSettings(
        _env_file=None,
        data_dir=data_dir,
        database_url=url,
        rate_limit_per_minute=1_000_000,
        audit_datasets_dir=data_dir / "datasets",
    )
    ctx = ServiceContext(settings, embedder=embedder, create_keyring=True)
    app = create_app(ctx)
    admin_key = bootstrap_admin(ctx.db)
    from fastapi.testclient import TestClient

    keys = {"admin": admin_key}
    with TestClient(app) as http:
        for role in ("portal", "ivr", "auditor", "fraud", "terminal"):
            created = http.post(
                "/v1/clients",
                json={"tenant_id": "default", "name": f"fuzz-{role}", "role": role},
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            keys[role] = created.json()["api_key"]
    yield app, keys
    ctx.db.engine.dispose()


def _published_schema() -> schemathesis.BaseSchema:
    """The OpenAPI as the service publishes it (it depends on no runtime state, so an app with no
    database serves it here); the cases are then sent to the real service of ``fuzzed_service``."""
    from types import SimpleNamespace

    from service.app import create_app
    from service.settings import ServiceSettings

    # It serves nothing else: its start has no gallery of enrolled fingers to build.
    no_database = SimpleNamespace(settings=ServiceSettings(_env_file=None), start_fingerprint_gallery=lambda: None)
    return schemathesis.openapi.from_asgi("/openapi.json", create_app(no_database))


schema = _published_schema()


def _role(path: str) -> str | None:
    return next((role for prefix, role in ROLE_OF_PREFIX if path.startswith(prefix)), None)


@schema.parametrize()
@settings(
    max_examples=CASES_PER_OPERATION,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    database=None,  # nothing cached between runs: a fresh machine sees what CI sees
)
def test_no_input_gets_a_server_error_or_an_undocumented_answer(case, fuzzed_service):
    app, keys = fuzzed_service
    role = _role(case.path)
    headers = {} if role is None else {"Authorization": f"Bearer {keys[role]}"}
    case.call_and_validate(
        app=app,
        headers=headers,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
