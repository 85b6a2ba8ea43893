"""The FastAPI application."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from pydantic import BaseModel, Field

from biometrics.fingerprint.extraction import MAX_STALLED_NBIS_THREADS, stalled_threads
from biometrics.voice.model.precision import resolve_precision
from service.accuracy import router as accuracy
from service.admin import router as admin
from service.consent import router as consent
from service.context import ServiceContext
from service.fingerprint import router as fingerprint
from service.metrics import METRICS_CONTENT_TYPE, RequestTiming, ServiceMetrics
from service.middleware import BodySizeLimit
from service.portal import api as portal_api
from service.portal.app import create_portal_app
from service.problems import COMMON_PROBLEMS, Problem, install_problem_handlers, problem_responses
from service.trail import router as trail
from service.voice import router as voice
from service.voice.streams import router as streams
from service.voice.streams.audiosocket import start_audiosocket
from service.watchlist import router as watchlist


class Health(BaseModel):
    status: str = Field(description="ok while the process answers")
    precision: Literal["fp32", "bf16"] = Field(
        description="the precision of the voice model's matrix products here (BIOIDENT_PRECISION resolved on this "
        "host's CPU), whether or not the model is loaded yet"
    )
    voice_model_loaded: bool = Field(description="the voice model is in memory (it loads on first use)")
    fingerprint_gallery: Literal["loading", "ready", "failed"] = Field(
        description="the in-memory 1:N gallery of the till: finger-only and PIN payments answer 503 until ready"
    )
    fingerprint_extractor_stalled: int = Field(
        description="NBIS threads abandoned on a stalled capture that have not ended; "
        f"at {MAX_STALLED_NBIS_THREADS}, captures answer 503"
    )


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """The AudioSocket listener, when ``BIOIDENT_AUDIOSOCKET`` names HOST:PORT, runs on the app's loop."""
    ctx: ServiceContext = app.state.ctx
    server = None
    if ctx.settings.audiosocket:
        host, _, port = ctx.settings.audiosocket.rpartition(":")
        server = await start_audiosocket(ctx, host or "127.0.0.1", int(port))
        app.state.audiosocket_port = server.sockets[0].getsockname()[1]
    try:
        yield
    finally:
        if server is not None:
            server.close()
            await server.wait_closed()


def create_app(ctx: ServiceContext) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app_: FastAPI) -> AsyncIterator[None]:
        ctx.start_fingerprint_gallery()  # decrypted fingers in process memory only, for 1:N at the till
        async with _lifespan(app_):
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
    for module in (admin, consent, portal_api, voice, streams, watchlist, fingerprint, trail, accuracy):
        app.include_router(module.router, responses=problem_responses(*COMMON_PROBLEMS))

    @app.get("/health", tags=["health"], response_model=Health)
    def health() -> Health:
        """Cheap enough for a liveness probe: loads nothing."""
        return Health(
            status="ok",
            precision=ctx.embedder.precision if ctx.voice_model_loaded else resolve_precision(ctx.settings.precision),
            voice_model_loaded=ctx.voice_model_loaded,
            fingerprint_gallery=ctx.fingerprint_gallery.state,
            fingerprint_extractor_stalled=stalled_threads(),
        )

    metrics = ServiceMetrics(queue_depth=lambda: ctx.queue_depth(), gallery_sizes=lambda: ctx.gallery_sizes())
    ctx.metrics = metrics
    ctx.on_batch = metrics.observe_batch

    @app.get(
        "/metrics",
        tags=["health"],
        response_class=PlainTextResponse,
        responses={200: {"content": {METRICS_CONTENT_TYPE: {}}, "description": "Prometheus text format"}},
    )
    def prometheus_metrics() -> Response:
        """Queue depth, batch sizes, latency per route and transport, decisions by outcome, streams open."""
        return Response(metrics.exposition(), media_type=METRICS_CONTENT_TYPE)

    # The customers' pages: their own trust boundary (links, cookies, CSRF), not part of the API's schema.
    app.mount("/portal", create_portal_app(ctx))

    app.add_middleware(BodySizeLimit, max_bytes=ctx.settings.max_body_bytes)
    app.add_middleware(RequestTiming, metrics=metrics)
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
