"""Who is calling: bearer tokens, mapped to a tenant and a role.

tus clients send the token as `Authorization: Bearer <token>` (every tus client
can add headers). OPTIONS, health, metrics and the receipt public key need none.
"""

from __future__ import annotations

import collections
from typing import Callable

from aiohttp import web

from buffer.tenants import Principal, TenantStore, hash_token
from gateway.context import ADMITTED, PRINCIPAL, READ_ALL, TENANT
from gateway import reads
from gateway.headers import tus_method
from gateway.problems import ErrUnauthorized, problem

OPEN_PATHS = ("/healthz", "/readyz", "/metrics", "/receipts/public-key")
PUBLIC = Principal(token_hash="", tenant="public", role="operator", name="anonymous")


CHALLENGE = {"WWW-Authenticate": 'Bearer realm="unggah"'}


def unauthorized(detail: str) -> web.Response:
    return ErrUnauthorized(detail, headers=dict(CHALLENGE))


REVOKED = "this token is unknown or was revoked; ask your administrator for a new one"


def unknown_or_revoked() -> web.Response:
    return unauthorized(REVOKED)


# Principals this process confirmed recently, by token hash; bounded (tokens are few, but
# a flood of made-up ones must not grow it: only confirmed tokens enter).
RECENT = 4096

Shed = Callable[[web.Request, str], "web.Response | None"]


def middleware(tenants: TenantStore | None, shed: Shed | None = None):
    """`tenants` None: access control is off and everyone is the open tenant "public".

    Every request that may change anything has its token confirmed, so a revoked token
    stops working at once: looked up in Redis, or, for an append with a token this process
    confirmed before, checked by the APPEND script in the step that appends (the handler
    passes the token's hash; buffer/tenants.py writes revocations where the script looks).
    Appends are most of the traffic near a deadline, and this saves each one a round trip.
    One kind of answer comes first: when admission would refuse the request anyway (`shed`,
    asked with the tenant its token had when last confirmed), the refusal goes out without
    any check. Under overload that is most requests, and a refusal changes nothing and
    reveals nothing."""
    recent: collections.OrderedDict[str, Principal] = collections.OrderedDict()

    def attach(request: web.Request, principal: Principal) -> None:
        reads.vouch(request)  # its connection no longer counts against the unauthenticated bound
        request[PRINCIPAL] = principal
        request[TENANT] = principal.tenant
        request[READ_ALL] = principal.reads_all

    @web.middleware
    async def authenticate(request: web.Request, handler):
        if request.method == "OPTIONS" or request.path in OPEN_PATHS:
            return await handler(request)
        if tenants is None:
            principal = PUBLIC
        else:
            auth = request.headers.get("Authorization", "")
            scheme, _, token = auth.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                return unauthorized("send 'Authorization: Bearer <token>'; your pair's administrator issues tokens")
            token_hash = hash_token(token)
            known = recent.get(token_hash)
            if known is not None and (refusal := admit(request, known)) is not None:
                return refusal
            if known is not None and known.can_write and tus_method(request) == "PATCH":
                principal = known  # APPEND checks the token (see above)
            else:
                principal = await tenants.lookup(token)
                if principal is None:
                    recent.pop(token_hash, None)
                    return unknown_or_revoked()
                recent[token_hash] = principal
                recent.move_to_end(token_hash)
                if len(recent) > RECENT:
                    recent.popitem(last=False)
        if ADMITTED not in request and (refusal := admit(request, principal)) is not None:
            return refusal
        attach(request, principal)
        return await handler(request)

    def admit(request: web.Request, principal: Principal) -> web.Response | None:
        """Admission's verdict on arrival: the refusal, or None and the request is let in."""
        if shed is None or not principal.can_write:
            return None
        refusal = shed(request, principal.tenant)
        if refusal is not None:
            attach(request, principal)  # the audit record names whose request it was
            return refusal
        request[ADMITTED] = True
        return None

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
