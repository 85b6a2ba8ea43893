"""The portal's pages. Each route only translates between the browser and a use case: it reads the
session, checks the form's CSRF token, calls the consent domain, and renders or redirects (POST, then
303 to a page, so a reload never repeats an action)."""

from __future__ import annotations

import hashlib
import json
import secrets
from pathlib import Path

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import select

from service.consent.receipts import receipts_of
from service.consent.records import (
    ConsentChannel,
    ConsentTerms,
    record_consent_with_receipt,
    set_never_enrol,
    subject_in_tenant,
)
from service.consent.withdrawal import erase_subject, withdraw
from service.context import ServiceContext
from service.errors import NotFound, ServiceError
from service.modality import Modality
from service.portal import links
from service.portal.i18n import gettext, render
from service.portal.links import Customer
from service.portal.views import (
    ACTION_NAMES,
    HELD_NAMES,
    MODALITY_NAMES,
    NOTICES,
    OUTCOME_NAMES,
    export,
    overview,
    receipt_view,
)
from service.store.models import Consent

SESSION_COOKIE = "bioident_portal"
PRE_COOKIE = "bioident_portal_pre"  # double-submit token of the link page's form (before any session)
BASE = "/portal"
POLICY = Path(__file__).with_name("retention-policy.md")  # package data: a wheel install has it too
NOTICE_VERSION = "portal-2026-12"

router = APIRouter()


def _ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


def _lang(request: Request) -> str:
    return request.state.lang


def page(
    request: Request, template: str, *, status: int = 200, customer: Customer | None = None, **values: object
) -> HTMLResponse:
    """A rendered page in the request's language; forms of a signed-in customer carry the CSRF token."""
    csrf = links.csrf_token(_ctx(request), customer) if customer is not None else None
    here = request.url.path if request.method == "GET" else f"{BASE}/"
    html = render(
        _lang(request), template, base=BASE, here=here, csrf=csrf, signed_in=customer is not None,
        modality_names=MODALITY_NAMES, held_names=HELD_NAMES, action_names=ACTION_NAMES,
        outcome_names=OUTCOME_NAMES, **values,
    )  # fmt: skip
    return HTMLResponse(html, status_code=status)


def _customer(request: Request) -> Customer:
    return links.current_customer(_ctx(request), request.cookies.get(SESSION_COOKIE))


def _posted(request: Request, csrf: str | None) -> Customer:
    customer = _customer(request)
    links.check_csrf(_ctx(request), customer, csrf)
    return customer


def _see(path: str) -> RedirectResponse:
    return RedirectResponse(f"{BASE}{path}", status_code=303)


def _address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _cookie(response: Response, request: Request, name: str, value: str, max_age: int) -> None:
    response.set_cookie(
        name, value, max_age=max_age, path=BASE, httponly=True, samesite="strict",
        secure=_ctx(request).settings.portal_secure_cookies,
    )  # fmt: skip


# --- signing in with a one-time link ----------------------------------------------------------------


@router.get("/l/{signed}", response_class=HTMLResponse)
def link_page(signed: str, request: Request) -> HTMLResponse:
    ctx = _ctx(request)
    links.count_attempt(ctx, _address(request))
    links.check_link(ctx, signed)
    pre = secrets.token_urlsafe(24)
    response = page(request, "link.html", signed=signed, pre=pre)
    _cookie(response, request, PRE_COOKIE, pre, ctx.settings.portal_link_ttl_s)
    return response


@router.post("/l/{signed}", response_class=HTMLResponse)
def link_exchange(signed: str, request: Request, pre: str = Form("")) -> Response:
    ctx = _ctx(request)
    links.count_attempt(ctx, _address(request))
    expected = request.cookies.get(PRE_COOKIE, "")
    if not pre or not expected or not secrets.compare_digest(pre, expected):
        raise links.CsrfRefused("the form was sent without its security token: open the link again")
    secret = links.exchange_link(ctx, signed)
    response = _see("/")
    _cookie(response, request, SESSION_COOKIE, secret, ctx.settings.portal_session_ttl_s)
    response.delete_cookie(PRE_COOKIE, path=BASE)
    return response


@router.post("/sign-out", response_class=HTMLResponse)
def sign_out(request: Request, csrf: str = Form("")) -> HTMLResponse:
    customer = _posted(request, csrf)
    links.end_session(_ctx(request), customer)
    response = page(request, "message.html", title_key="signed_out")
    response.delete_cookie(SESSION_COOKIE, path=BASE)
    return response


# --- what is held -----------------------------------------------------------------------------------


@router.get("/", response_class=HTMLResponse)
def home(request: Request) -> HTMLResponse:
    ctx = _ctx(request)
    customer = _customer(request)
    with ctx.db.session() as session:
        view = overview(session, customer.tenant_id, customer.subject_token, ctx.settings.portal_purposes)
    notices = {m: gettext(_lang(request), text) for m, text in NOTICES.items()}
    return page(request, "overview.html", customer=customer, view=view, notices=notices,
                modalities=[str(m) for m in Modality])  # fmt: skip


@router.get("/export.json")
def export_json(request: Request) -> Response:
    ctx = _ctx(request)
    customer = _customer(request)
    with ctx.db.session() as session:
        body = export(session, customer.tenant_id, customer.subject_token)
    return Response(
        json.dumps(body, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={"Content-Disposition": 'attachment; filename="my-biometric-data.json"'},
    )


@router.get("/receipts", response_class=HTMLResponse)
def receipts(request: Request) -> HTMLResponse:
    ctx = _ctx(request)
    customer = _customer(request)
    with ctx.db.session() as session:
        rows = receipts_of(session, customer.tenant_id, customer.subject_token)
    return page(request, "receipts.html", customer=customer, receipts=rows)


def _receipt(request: Request, customer: Customer, receipt_id: str):  # noqa: ANN202
    with _ctx(request).db.session() as session:
        found = receipt_view(session, customer.tenant_id, customer.subject_token, receipt_id)
    if found is None:
        raise NotFound("no such receipt")
    return found


@router.get("/receipts/{receipt_id}", response_class=HTMLResponse)
def receipt(receipt_id: str, request: Request) -> HTMLResponse:
    customer = _customer(request)
    row, body = _receipt(request, customer, receipt_id)
    return page(request, "receipt.html", customer=customer, receipt=row, body=body,
                done=request.query_params.get("done"))  # fmt: skip


@router.get("/receipts/{receipt_id}/download")
def receipt_download(receipt_id: str, request: Request) -> Response:
    customer = _customer(request)
    row, body = _receipt(request, customer, receipt_id)
    document = {"receipt": body, "jws": row.jws, "verify_with": body.get("verificationKeys")}
    return Response(
        json.dumps(document, indent=2, ensure_ascii=False),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{row.id}.json"'},
    )


@router.get("/retention-policy", response_class=HTMLResponse)
def retention_policy(request: Request) -> HTMLResponse:
    return page(request, "policy.html", policy=POLICY.read_text(encoding="utf-8"))


# --- choices ----------------------------------------------------------------------------------------


@router.post("/consents", response_class=HTMLResponse)
def grant(
    request: Request,
    csrf: str = Form(""),
    modality: str = Form(""),
    purpose: str = Form(""),
    notice_read: str = Form(""),
) -> Response:
    ctx = _ctx(request)
    customer = _posted(request, csrf)
    if modality not in {str(m) for m in Modality} or notice_read != "yes":
        raise ServiceError("choose what to consent to and confirm that you read the notice")
    notice = gettext(_lang(request), NOTICES[modality])
    with ctx.db.session() as session:
        query = select(Consent.purpose).where(Consent.subject_token == customer.subject_token)
        known = set(session.execute(query).scalars())
        if purpose not in {*ctx.settings.portal_purposes, *known}:
            raise ServiceError("choose one of the purposes offered")
        terms = ConsentTerms(
            Modality(modality), purpose, f"{NOTICE_VERSION}-{_lang(request)}",
            hashlib.sha256(notice.encode()).hexdigest(), ConsentChannel.PORTAL,
            f"portal-session:{customer.session_id[:16]}", _lang(request),
        )  # fmt: skip
        _, receipt = record_consent_with_receipt(session, customer.actor, customer.subject_token, terms)
    return _see(f"/receipts/{receipt.id}?done=granted")


def _own_consent(request: Request, customer: Customer, consent_id: str) -> Consent:
    with _ctx(request).db.session() as session:
        consent = session.get(Consent, consent_id)
        subject_in_tenant(session, customer.tenant_id, customer.subject_token)
    if consent is None or consent.subject_token != customer.subject_token:
        raise NotFound("no such consent")
    return consent


@router.get("/consents/{consent_id}/withdraw", response_class=HTMLResponse)
def withdraw_page(consent_id: str, request: Request) -> HTMLResponse:
    customer = _customer(request)
    consent = _own_consent(request, customer, consent_id)
    return page(request, "withdraw.html", customer=customer, consent=consent)


@router.post("/consents/{consent_id}/withdraw", response_class=HTMLResponse)
def withdraw_consent(consent_id: str, request: Request, csrf: str = Form("")) -> Response:
    customer = _posted(request, csrf)
    _own_consent(request, customer, consent_id)
    receipt = withdraw(_ctx(request), customer.actor, customer.subject_token, consent_id, language=_lang(request))
    return _see(f"/receipts/{receipt.signed_receipt_id}?done=withdrawn")


@router.post("/never-enrol", response_class=HTMLResponse)
def never_enrol(request: Request, csrf: str = Form(""), choice: str = Form("")) -> Response:
    customer = _posted(request, csrf)
    if choice not in ("set", "lift"):
        raise ServiceError("choose whether you want to be enrolled")
    with _ctx(request).db.session() as session:
        set_never_enrol(session, customer.actor, customer.subject_token, never=choice == "set")
    return _see("/#never-enrol")


@router.post("/erase", response_class=HTMLResponse)
def erase(request: Request, csrf: str = Form(""), confirm: str = Form("")) -> Response:
    customer = _posted(request, csrf)
    if confirm != "yes":
        raise ServiceError("tick the box to confirm that everything should be erased")
    receipt_id = erase_subject(_ctx(request), customer.actor, customer.subject_token, language=_lang(request))
    return _see(f"/receipts/{receipt_id}?done=erased")
