"""Request dependencies: the service context, the authenticated principal, path ids."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import Depends, Path, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from service.auth import Principal, Role, authenticate
from service.context import ServiceContext
from service.errors import Forbidden, ServiceError
from service.limits import count_request


def get_ctx(request: Request) -> ServiceContext:
    return request.app.state.ctx


# Declares the bearer scheme in the OpenAPI; a missing or malformed header is answered by ``authenticate``.
bearer = HTTPBearer(auto_error=False, description="the API key of a client: Bearer <api key>")


def require(*roles: Role) -> Callable[..., Principal]:
    def dependency(
        request: Request,
        ctx: ServiceContext = Depends(get_ctx),
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),
    ) -> Principal:
        if len(request.headers.getlist("authorization")) > 1:  # a proxy reading the last would see another client
            raise ServiceError("send one Authorization header, not several")
        authorization = None if credentials is None else f"{credentials.scheme} {credentials.credentials}"
        with ctx.db.session() as session:
            principal = authenticate(session, authorization)
            count_request(session, principal.client_id, ctx.settings.rate_limit_per_minute)
        if principal.role not in roles:
            raise Forbidden(f"the {principal.role} role cannot do this")
        return principal

    return dependency


# A factory, not a shared instance: FastAPI binds a parameter marker to the first parameter it is used for.
def id_path() -> Any:
    """Path ids (subject tokens, consent and session ids) are word characters only; anything else is a 422."""
    return Path(pattern=r"^[A-Za-z0-9_]{1,80}$")
