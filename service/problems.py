"""Every error leaves as RFC 9457 application/problem+json, mapped in this one place.

Nothing from the request body is echoed: validation problems name fields, never their values.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException

from biometrics.errors import (
    AudioError,
    BiometricsError,
    EmbeddingQueueFull,
    FingerprintExtractorStalled,
    FingerprintInputError,
    FingerprintTemplateError,
    IncompatibleModel,
    ModelError,
)
from service.errors import ServiceError
from service.vault.errors import VaultError

log = logging.getLogger("bioident.api")

PROBLEM_BASE = "https://bioident.dev/problems/"
PROBLEM_JSON = "application/problem+json"


class Problem(BaseModel):
    """RFC 9457 problem details; ``reasons`` for quality and matching refusals, ``errors`` for invalid fields."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str | None = None
    reasons: list[dict[str, Any]] | None = None
    errors: list[dict[str, Any]] | None = None


_WHEN = {
    400: "Bad request",
    401: "Missing or invalid API key",
    403: "Not allowed for this client, or no (fresh) consent",
    404: "Not found in this client's tenant",
    409: "Conflicts with what is stored",
    413: "Request body too large",
    422: "Invalid request, unusable audio or image, or a sample that failed the quality gates",
    423: "Locked out after failed verifications (Retry-After)",
    429: "Too many requests (Retry-After)",
    503: "Temporarily unavailable: key management or the model (Retry-After where a retry helps)",
}


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these statuses, each an ``application/problem+json`` body."""
    return {
        status: {
            "description": _WHEN[status],
            "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


# Every operation may answer these: validation, authentication and limits apply to all of them.
COMMON_PROBLEMS = (400, 401, 403, 404, 409, 413, 422, 423, 429, 503)


def problem(
    status: int,
    code: str,
    title: str,
    detail: str | None = None,
    reasons: list[dict] | None = None,
    *,
    retry_after_s: int | None = None,
    **extra: object,
) -> JSONResponse:
    body: dict[str, object] = {"type": PROBLEM_BASE + code, "title": title, "status": status}
    if detail:
        body["detail"] = detail
    if reasons is not None:
        body["reasons"] = reasons
    body.update(extra)
    headers = None if retry_after_s is None else {"Retry-After": str(max(1, retry_after_s))}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def _biometrics_status(exc: BiometricsError) -> tuple[int, str]:
    if isinstance(exc, EmbeddingQueueFull):
        return 503, "Too busy: retry later"
    if isinstance(exc, FingerprintExtractorStalled):
        return 503, "Fingerprint extraction stalled"
    if isinstance(exc, AudioError):
        return 422, "Unusable audio"
    if isinstance(exc, FingerprintInputError):
        return 422, "Unusable fingerprint image"
    if isinstance(exc, FingerprintTemplateError):
        return 409, "Fingerprint template from another extractor or matcher"
    if isinstance(exc, IncompatibleModel):
        return 409, "Template from another model"
    if isinstance(exc, ModelError):
        return 503, "Speaker model unavailable"
    return 400, "Bad request"


def install_problem_handlers(app: FastAPI) -> None:
    @app.exception_handler(ServiceError)
    async def _service(_: Request, exc: ServiceError) -> JSONResponse:
        return problem(exc.status, exc.code, exc.title, exc.detail, exc.reasons, retry_after_s=exc.retry_after_s)

    @app.exception_handler(BiometricsError)
    async def _biometrics(_: Request, exc: BiometricsError) -> JSONResponse:
        status, title = _biometrics_status(exc)
        # Where a retry helps, the error says when (EmbeddingQueueFull, FingerprintExtractorStalled).
        return problem(status, exc.code, title, exc.message, retry_after_s=getattr(exc, "retry_after_s", None))

    @app.exception_handler(VaultError)
    async def _vault(_: Request, exc: VaultError) -> JSONResponse:
        if exc.status >= 500:
            log.error("vault error %s: %s", exc.code, exc.message)  # vault messages name versions and paths only
            return problem(
                exc.status, exc.code, "Key management error", exc.public_detail, retry_after_s=exc.retry_after_s
            )
        return problem(exc.status, exc.code, "The request is not valid", exc.message)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body"), "problem": e.get("msg", "")}
            for e in exc.errors()
        ]
        return problem(422, "invalid_request", "The request is not valid", "see errors", errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status_code, "http_error")
        detail = exc.detail if isinstance(exc.detail, str) else None
        return problem(exc.status_code, code, detail or "HTTP error")

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.error("unexpected %s", type(exc).__name__)  # no message: it could carry request data
        return problem(500, "internal_error", "Internal error")
