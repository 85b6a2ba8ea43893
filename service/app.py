"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from service.accuracy import router as accuracy
from service.admin import router as admin
from service.consent import router as consent
from service.context import ServiceContext
from service.fingerprint import router as fingerprint
from service.middleware import BodySizeLimit
from service.problems import COMMON_PROBLEMS, Problem, install_problem_handlers, problem_responses
from service.trail import router as trail
from service.voice import router as voice


class Health(BaseModel):
    status: str


def create_app(ctx: ServiceContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        ctx.start_fingerprint_gallery()  # decrypted fingers in process memory only, for 1:N at the till
        yield

    app = FastAPI(
        lifespan=lifespan,
        title="bioident",
        version="0.1.0",
        description="Biometric customer identification by voice and fingerprint, with the customer in control. "
        "Errors are application/problem+json (RFC 9457).",
    )
    app.state.ctx = ctx
    install_problem_handlers(app)
    for module in (admin, consent, voice, fingerprint, trail, accuracy):
        app.include_router(module.router, responses=problem_responses(*COMMON_PROBLEMS))

    @app.get("/health", tags=["health"], response_model=Health)
    def health() -> Health:
        return Health(status="ok")

    app.add_middleware(BodySizeLimit, max_bytes=ctx.settings.max_body_bytes)
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, with the problem+json body every error response refers to."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = Problem.model_json_schema(
            ref_template="#/components/schemas/{model}"
        )
        app.openapi_schema = schema
    return app.openapi_schema
