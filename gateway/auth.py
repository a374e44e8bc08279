"""Who is calling: bearer tokens, mapped to a tenant and a role.

tus clients send the token as `Authorization: Bearer <token>` (every tus client
can add headers). OPTIONS, health, metrics and the receipt public key need none.
"""

from __future__ import annotations

from aiohttp import web

from buffer.tenants import Principal, TenantStore
from gateway.context import PRINCIPAL, READ_ALL, TENANT
from gateway.problems import problem

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/receipts/public-key")
PUBLIC = Principal(token_hash="", tenant="public", role="operator", name="anonymous")


def unauthorized(detail: str) -> web.Response:
    return problem(401, "unauthorized", detail, headers={"WWW-Authenticate": 'Bearer realm="unggah"'})


def middleware(tenants: TenantStore | None):
    """`tenants` None: access control is off and everyone is the open tenant "public"."""

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if request.method == "OPTIONS" or request.path in OPEN_PATHS:
            return await handler(request)
        if tenants is None:
            principal = PUBLIC
        else:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                return unauthorized("send 'Authorization: Bearer <token>'; your pair's administrator issues tokens")
            principal = await tenants.lookup(token.strip())
            if principal is None:
                return unauthorized("this token is unknown or was revoked; ask your administrator for a new one")
        request[PRINCIPAL] = principal
        request[TENANT] = principal.tenant
        request[READ_ALL] = principal.reads_all
        return await handler(request)

    return authenticate


def may_write(request: web.Request) -> web.Response | None:
    """Only a pair's operators create, append to and terminate uploads."""
    p = request.get(PRINCIPAL, PUBLIC)
    if p.can_write:
        return None
    return problem(403, "read-only-role", f"the {p.role} role can read but not upload or delete")


def may_read_uploads(request: web.Request) -> web.Response | None:
    p = request.get(PRINCIPAL, PUBLIC)
    if p.role == "observer":
        return problem(403, "progress-only-role", "the observer role sees progress (/progress), not individual uploads")
    return None
