"""Bad requests never become a 5xx: malformed, wrong or unauthorised requests, uploads that are not
audio, text with NUL characters and bodies over the limit get 4xx problems that do not echo what was sent."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

from tests.conftest import TEST_OTHER
from tests.operations_fixtures import _problem
from tests.voice_helpers import GENUINE, SPEAKER, _audio, _consent, _enrol, _verify

pytestmark = [pytest.mark.model, pytest.mark.usefixtures("clean_service_environment")]


CONSENT = {
    "reference": "ACC-SECRET-4711",
    "modality": "voice",
    "purpose": "authentication",
    "notice_version": "2026-11",
    "notice_text": "We use your voice to recognise you when you call.",
    "channel": "portal",
    "evidence_ref": "portal-session-77",
}


def test_bad_requests_get_4xx_problems_that_do_not_echo_what_was_sent(bank):
    api, keys = bank
    portal, ivr = api.headers(keys["portal"]), api.headers(keys["ivr"])

    malformed = json.dumps(CONSENT)[:-20].encode()  # cut off mid-object
    response = api.http.post("/v1/consents", content=malformed, headers={**portal, "content-type": "application/json"})
    body = _problem(response, 422)
    assert CONSENT["reference"] not in response.text and body["errors"]

    response = api.http.post("/v1/consents", json={**CONSENT, "modality": "face"}, headers=portal)
    body = _problem(response, 422)
    assert [e["field"] for e in body["errors"]] == ["modality"]
    assert CONSENT["reference"] not in response.text and "face" not in response.text

    blank = {**CONSENT, "reference": "   "}  # passes the schema; the tokenizer refuses it
    for wrong in ([CONSENT], None, "text", {**CONSENT, "reference": ""}, {**CONSENT, "reference": 4711}, blank):
        response = api.http.post("/v1/consents", json=wrong, headers=portal)
        _problem(response, 422)
        assert CONSENT["reference"] not in response.text

    _problem(api.http.post("/v1/consents", json=CONSENT), 401)
    _problem(api.http.post("/v1/consents", json=CONSENT, headers={"Authorization": "Bearer bik.cli_x.nope"}), 401)
    _problem(api.http.get("/v1/clients", headers={"Authorization": "Basic dXNlcjpwYXNz"}), 401)
    _problem(api.http.get("/v1/clients", headers=ivr), 403)
    _problem(api.http.post("/v1/tenants", json={"id": "shop", "name": "Shop"}, headers=portal), 403)
    genuine = [_audio(TEST_OTHER / SPEAKER / GENUINE)]
    _problem(api.http.post("/v1/voice/verify", data={"reference": "ACC-1001"}, files=genuine, headers=portal), 403)

    _consent(api, keys["portal"])
    assert _enrol(api, keys["ivr"]).status_code == 201
    flac = (TEST_OTHER / SPEAKER / GENUINE).read_bytes()
    not_audio = {
        "text": ("notes.txt", b"this is a text file, not a recording\n" * 40, "text/plain"),
        "empty": ("empty.wav", b"", "audio/wav"),
        "truncated-flac": ("cut.flac", flac[:3000], "audio/flac"),
        "riff-garbage": ("bad.wav", b"RIFF\x00\x10\x00\x00WAVEfmt " + bytes(range(256)) * 4, "audio/wav"),
    }
    for name, upload in not_audio.items():
        for path, form in (
            ("/v1/voice/verify", {"reference": "ACC-1001"}),
            ("/v1/voice/identify", {}),
            ("/v1/voice/enrol", {"reference": "ACC-1001"}),
        ):
            response = api.http.post(path, data=form, files=[("audio", upload)], headers=ivr)
            assert 400 <= response.status_code < 500, (name, path, response.status_code, response.text)
            _problem(response)
    odd_raw = api.http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001", "codec": "pcm16", "sample_rate": "8000"},
        files=[("audio", ("raw.pcm", b"\x01" * 8001, "application/octet-stream"))],
        headers=ivr,
    )
    _problem(odd_raw, 422)
    no_file = api.http.post("/v1/voice/verify", data={"reference": "ACC-1001"}, headers=ivr)
    _problem(no_file, 422)
    assert _verify(api, keys["ivr"], TEST_OTHER / SPEAKER / GENUINE).json()["decision"] == "accept"  # still serving


def test_text_with_nul_characters_is_refused_not_a_server_error(bank):
    api, keys = bank
    portal, admin = api.headers(keys["portal"]), api.headers(api.admin_key)
    attempts = [
        api.http.post("/v1/consents", json={**CONSENT, "evidence_ref": "portal\u0000session"}, headers=portal),
        api.http.post("/v1/tenants", json={"id": "shop", "name": "Sh\u0000op"}, headers=admin),
        api.http.post("/v1/clients", json={"tenant_id": "ba\u0000nk", "name": "x", "role": "ivr"}, headers=admin),
        api.http.get("/v1/subjects/sub_%00", headers=portal),
    ]
    for response in attempts:
        assert response.status_code < 500, (response.request.url, response.text)
        if response.status_code >= 400:
            _problem(response)


def test_text_with_a_lone_surrogate_is_refused_not_a_server_error(bank):
    """JSON's \\ud800 escapes decode to a lone surrogate, which hashing or storing the text cannot encode."""
    api, keys = bank
    portal = {**api.headers(keys["portal"]), "content-type": "application/json"}
    for field in ("notice_text", "notice_version", "evidence_ref", "reference"):
        body = json.dumps({**CONSENT, field: "notice \ud800 text"})  # ensure_ascii: sent as the escape
        assert "\\ud800" in body
        response = api.http.post("/v1/consents", content=body.encode(), headers=portal)
        problem = _problem(response, 422)
        assert [e["field"] for e in problem["errors"]] == [field], problem
    assert api.http.post("/v1/consents", json=CONSENT, headers=portal).status_code == 201  # the connection lives on


@pytest.fixture
def small_limit_app(database_url, embedder, tmp_path):
    from service.admin.bootstrap import bootstrap_admin
    from service.app import create_app
    from service.context import ServiceContext
    from service.settings import ServiceSettings

    settings = ServiceSettings(_env_file=None, data_dir=tmp_path, database_url=database_url, max_body_bytes=2048)
    ctx = ServiceContext(settings, embedder=embedder, create_keyring=True)
    admin_key = bootstrap_admin(ctx.db)
    with TestClient(create_app(ctx), raise_server_exceptions=False) as http:
        yield http, {"Authorization": f"Bearer {admin_key}"}
    ctx.db.engine.dispose()


def test_a_body_over_the_limit_gets_413_and_is_not_acted_on(small_limit_app):
    http, admin = small_limit_app
    big = http.post("/v1/tenants", json={"id": "shop", "name": "S" * 4000}, headers=admin)
    body = _problem(big, 413)
    assert "2048" in body["detail"]
    audio = http.post(
        "/v1/voice/verify",
        data={"reference": "ACC-1001"},
        files=[_audio(TEST_OTHER / SPEAKER / GENUINE)],
        headers=admin,
    )
    _problem(audio, 413)

    # Without a Content-Length the limit is enforced while reading: refused (4xx), never processed.
    chunked = http.post(
        "/v1/tenants",
        content=(b"{" + b" " * 1000 for _ in range(5)),
        headers={**admin, "content-type": "application/json"},
    )
    assert 400 <= chunked.status_code < 500, chunked.text
    _problem(chunked)
    taken = http.post("/v1/tenants", json={"id": "shop", "name": "Shop"}, headers=admin)
    assert taken.status_code == 201, taken.text  # neither refused request created the tenant
    small = http.post("/v1/tenants", json={"id": "cafe", "name": "Cafe"}, headers=admin)
    assert small.status_code == 201


def test_an_oversized_chunked_body_gets_413_like_one_with_a_content_length(small_limit_app):
    http, admin = small_limit_app
    chunked = http.post(
        "/v1/tenants", content=(b" " * 1000 for _ in range(5)), headers={**admin, "content-type": "application/json"}
    )
    _problem(chunked, 413)


def test_an_admin_key_is_made_only_in_the_operators_own_tenant(bank):
    """An admin manages every tenant: an "admin of tenant bank" would be nothing of the sort, so none is made."""
    api, _ = bank
    admin = api.headers(api.admin_key)
    for tenant in ("bank", "nowhere"):
        body = {"tenant_id": tenant, "name": f"{tenant} admin", "role": "admin"}
        _problem(api.http.post("/v1/clients", json=body, headers=admin), 400)
    clients = api.http.get("/v1/clients", headers=admin).json()
    assert [c["tenant_id"] for c in clients if c["role"] == "admin"] == ["default"]
    second = {"tenant_id": "default", "name": "second operator", "role": "admin"}
    assert api.http.post("/v1/clients", json=second, headers=admin).status_code == 201
    teller = {**second, "tenant_id": "bank", "role": "ivr"}
    assert api.http.post("/v1/clients", json=teller, headers=admin).status_code == 201


def test_two_authorization_headers_are_refused_whichever_comes_first(bank):
    """The first of two had been used: a proxy that reads the last would have seen another client."""
    api, keys = bank
    good, other = api.headers(keys["portal"])["Authorization"], api.headers(keys["ivr"])["Authorization"]
    for first, second in ((good, "Bearer wrong"), ("Bearer wrong", good), (good, other)):
        response = api.http.get("/v1/subjects/sub_x", headers=[("Authorization", first), ("Authorization", second)])
        body = _problem(response, 400)
        assert "one Authorization header" in body["detail"] and keys["portal"] not in response.text
    assert api.http.get("/v1/subjects/sub_x", headers=api.headers(keys["portal"])).status_code == 404
