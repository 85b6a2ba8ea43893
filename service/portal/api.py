"""The API side of the portal: a business's backend (role ``portal``) asks for a customer's one-time link."""

from __future__ import annotations

import datetime as dt

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from service.auth import Principal, Role
from service.consent.schemas import LookupIn
from service.context import ServiceContext
from service.deps import get_ctx, require
from service.portal.links import issue_link

router = APIRouter(prefix="/v1", tags=["portal"])
portal = require(Role.PORTAL)


class PortalLinkOut(BaseModel):
    url: str
    expires_at: dt.datetime


@router.post("/subjects:portal-link", status_code=201, response_model=PortalLinkOut)
def portal_link(
    body: LookupIn, request: Request, ctx: ServiceContext = Depends(get_ctx), actor: Principal = Depends(portal)
) -> PortalLinkOut:
    """A signed, single-use link (``BIOIDENT_PORTAL_LINK_TTL_S``, default 15 minutes) that opens the portal for
    the customer with this ``reference``; send it to the customer (SMS, e-mail, the bank's app)."""
    portal_url = ctx.settings.portal_url or f"{str(request.base_url).rstrip('/')}/portal"
    link = issue_link(ctx, actor, body.reference, portal_url)
    return PortalLinkOut(url=link.url, expires_at=link.expires_at)
