"""The portal as its own application, mounted at ``/portal``: HTML pages and HTML errors (never
problem+json), strict security headers on every response, the language of each request."""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.context import ServiceContext
from service.errors import ServiceError
from service.portal.i18n import HERE, LANGUAGES, negotiate
from service.portal.router import BASE, page, router

log = logging.getLogger("bioident.portal")

LANG_COOKIE = "bioident_lang"
# No script at all, styles from our own file only, forms posted only to ourselves, never framed.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",  # a link's token never leaves in a Referer header
    "Cache-Control": "no-store",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=()",
    "Cross-Origin-Opener-Policy": "same-origin",
}
# Error pages: (status, the message's key in message.html)
_KNOWN = {"link_invalid", "link_expired", "link_used", "not_signed_in", "csrf", "rate_limited", "not_found",
          "opted_out", "conflict"}  # fmt: skip


def create_portal_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(title="bioident portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=HERE / "static"), name="static")

    @app.middleware("http")
    async def language_and_headers(request: Request, call_next) -> Response:  # noqa: ANN001
        chosen = request.query_params.get("lang")
        if chosen in LANGUAGES:
            request.state.lang = chosen
        else:
            remembered = request.cookies.get(LANG_COOKIE)
            request.state.lang = remembered if remembered in LANGUAGES else negotiate(
                request.headers.get("accept-language")
            )
        response = await call_next(request)
        if chosen in LANGUAGES:
            response.set_cookie(LANG_COOKIE, chosen, max_age=365 * 86400, path=BASE, httponly=True,
                                samesite="strict", secure=ctx.settings.portal_secure_cookies)  # fmt: skip
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        response.headers["Content-Language"] = request.state.lang
        return response

    def error_page(request: Request, status: int, code: str, retry_after_s: int | None = None) -> HTMLResponse:
        if not hasattr(request.state, "lang"):
            request.state.lang = "en"
        response = page(request, "message.html", status=status, title_key=code if code in _KNOWN else "failed")
        if retry_after_s is not None:
            response.headers["Retry-After"] = str(max(1, retry_after_s))
        return response

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> HTMLResponse:
        return error_page(request, exc.status, exc.code, exc.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> HTMLResponse:
        return error_page(request, 400, "failed")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> HTMLResponse:
        return error_page(request, exc.status_code, "not_found" if exc.status_code == 404 else "failed")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> HTMLResponse:
        log.error("portal: unexpected %s", type(exc).__name__)  # no message: it could carry request data
        return error_page(request, 500, "failed")

    return app
