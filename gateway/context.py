"""What middlewares attach to a request for the handlers (typed request keys)."""

from __future__ import annotations

from aiohttp import web

REQUEST_ID = web.RequestKey("request_id", str)
# The authenticated caller (buffer.tenants.Principal).
PRINCIPAL = web.RequestKey("principal", object)
# The tenant (candidate pair) the caller acts for; "public" when access control is off.
TENANT = web.RequestKey("tenant", str)
# Commission verifiers and observers may read every tenant's uploads.
READ_ALL = web.RequestKey("read_all", bool)
# Admission already let this request in on arrival (gateway.auth): it may wait its turn but
# is not refused as busy later, so a refusal is always decided the moment a request arrives.
ADMITTED = web.RequestKey("admitted", bool)
# A streamed answer has begun: an error after this can only close the connection, since a
# problem answer in its place would be written into the middle of the stream.
STREAMING = web.RequestKey("streaming", bool)
