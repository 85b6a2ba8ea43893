"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI

from service.api import admin, audit, audits, consents, voice
from service.api.middleware import BodySizeLimit
from service.api.problems import install_problem_handlers
from service.context import ServiceContext


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(
        title="bioident",
        version="0.1.0",
        description="Biometric customer identification by voice, with the customer in control.",
    )
    app.state.ctx = ctx
    install_problem_handlers(app)
    for module in (admin, consents, voice, audit, audits):
        app.include_router(module.router)

    @app.get("/health", tags=["health"])
    def health() -> dict:
        return {"status": "ok"}

    app.add_middleware(BodySizeLimit, max_bytes=ctx.settings.max_body_bytes)
    return app
