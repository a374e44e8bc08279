"""Refusals go into the audit trail: the evidence a team needs in a dispute is that the
server said no, when, to whom and why. (Creations, appends, terminations and
completions are written by the buffer scripts themselves, in the same step.)"""

from __future__ import annotations

import logging

import redis.asyncio as redis
from aiohttp import web

from buffer import keys
from buffer.store import UploadStore
from gateway.context import PRINCIPAL, TENANT

log = logging.getLogger("unggah.audit")


def middleware(store: UploadStore):
    @web.middleware
    async def audit_refusals(request: web.Request, handler):
        response = await handler(request)
        if response.status >= 400 and request.path.startswith("/files"):
            upload_id = request.match_info.get("upload_id", "")
            p = store.partition(upload_id)
            tenant = request.get(TENANT, "")
            if p is None:
                p = keys.partition_for_key(tenant or "-", "refusals", store.partitions)
            principal = request.get(PRINCIPAL)
            actor = f"{principal.tenant}/{principal.name}" if principal is not None else "unauthenticated"
            try:
                await store.audit(p, "refused", u=upload_id, t=tenant, a=actor, method=request.method,
                                  status=response.status, reason=response.headers.get("Unggah-Reason", ""))
            except (redis.RedisError, OSError) as e:  # the refusal itself must still go out
                log.warning("could not audit a refusal", extra={"error": str(e)})
        return response

    return audit_refusals
