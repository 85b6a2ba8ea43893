"""The FastAPI application."""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel

from service.accuracy import router as accuracy
from service.admin import router as admin
from service.consent import router as consent
from service.context import ServiceContext
from service.middleware import BodySizeLimit
from service.problems import install_problem_handlers
from service.trail import router as trail
from service.voice import router as voice


class Health(BaseModel):
    status: str


def create_app(ctx: ServiceContext) -> FastAPI:
    app = FastAPI(
        title="bioident",
        version="0.1.0",
        description="Biometric customer identification by voice, with the customer in control.",
    )
    app.state.ctx = ctx
    install_problem_handlers(app)
    for module in (admin, consent, voice, trail, accuracy):
        app.include_router(module.router)

    @app.get("/health", tags=["health"], response_model=Health)
    def health() -> Health:
        return Health(status="ok")

    app.add_middleware(BodySizeLimit, max_bytes=ctx.settings.max_body_bytes)
    return app
