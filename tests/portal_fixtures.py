"""Helpers for the portal's tests: a bank whose backend asks for links, and a customer's browser over HTTP
(cookies kept, HTTPS so that Secure cookies come back, as they do in a real browser)."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

NOTICE_TEXT = "We use your voice to recognise you when you call."


def consent(api, portal_key: str, reference: str, modality: str = "voice", purpose: str = "authentication") -> dict:
    response = api.http.post(
        "/v1/consents",
        json={"reference": reference, "modality": modality, "purpose": purpose, "notice_version": "2026-12",
              "notice_text": NOTICE_TEXT, "channel": "ivr" if modality == "voice" else "terminal",
              "evidence_ref": "call-1"},
        headers=api.headers(portal_key),
    )  # fmt: skip
    assert response.status_code == 201, response.text
    return response.json()


def portal_link(api, portal_key: str, reference: str) -> str:
    """The link's path (``/portal/l/...``) as the bank's backend gets it."""
    response = api.http.post("/v1/subjects:portal-link", json={"reference": reference}, headers=api.headers(portal_key))
    assert response.status_code == 201, response.text
    return urlsplit(response.json()["url"]).path


def browser(api) -> TestClient:
    """A customer's browser on the same app: its own cookies, over HTTPS."""
    return TestClient(api.http.app, base_url="https://testserver", raise_server_exceptions=False)


def field(html: str, name: str) -> str:
    match = re.search(rf'name="{name}" value="([^"]*)"', html)
    assert match is not None, f"no {name} field on the page"
    return match.group(1)


def sign_in(customer: TestClient, link: str):
    """Opens the link page, then continues (the exchange); the response of the portal's first page."""
    page = customer.get(link)
    assert page.status_code == 200, page.text
    return customer.post(link, data={"pre": field(page.text, "pre")})


@pytest.fixture
def bank_portal(api):
    api.tenant("bank")
    return api, {role: api.client("bank", role) for role in ("ivr", "portal", "terminal")}
