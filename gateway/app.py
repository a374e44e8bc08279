"""The aiohttp application: routes, error middleware, lifecycle."""

from __future__ import annotations

import asyncio
import logging
import re
import secrets
import time
from typing import Callable

import msgspec
import orjson
import redis.asyncio as redis
from aiohttp import web

from buffer.connection import connect, connection_lost
from buffer.messages import RECEIVING, STORED
from buffer.store import DurabilityError, UploadStore
from buffer.tenants import TenantStore
from dukungan.election import load_election
from gateway import auditing, auth, headers, reads
from gateway.admission import Admission
from gateway.background import Every
from gateway.context import REQUEST_ID, STREAMING
from gateway.lifecycle import refuse_when_draining
from gateway.observe import append_committed, install as install_metrics, log_problem, observe_requests
from gateway.problems import problem, retry_after
from gateway.progress import add_routes as add_result_routes
from gateway.tus import TusHandler, receipt_payload, status_body
from gateway.windows import Windows
from gateway.witness import AckWitness
from metrics.registry import count_acknowledged_loss
from stores.results import ResultsReader, results_reader
from unggah import receipts
from unggah.config import Settings

log = logging.getLogger("unggah.gateway")

STORE = web.AppKey("store", UploadStore)
SETTINGS = web.AppKey("settings", Settings)
READY = web.AppKey("ready", dict)
TUS = web.AppKey("tus", TusHandler)
# A random id per gateway process (per app: tests serve several in one process). It names the
# owner of the creations this gateway marks in flight (buffer/scripts.py CREATE).
BOOT_ID = web.AppKey("boot_id", str)


# A client's own request id is echoed and logged only if it looks like one.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@web.middleware
async def errors(request: web.Request, handler):
    """Every error leaves as problem+json with a request id; Redis trouble is a
    503 with Retry-After, which every tus client retries."""
    given = request.headers.get("X-Request-Id", "")
    request[REQUEST_ID] = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
    error: BaseException | None = None  # logged once, with the problem, by log_problem below
    try:
        if (name := headers.unreadable(request)) is not None:
            response = problem(400, "bad-header", f"header {name} is not UTF-8 text; send it as ASCII")
        else:
            response = await handler(request)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        reason = {404: "not-found", 405: "method-not-allowed"}.get(e.status, "http-error")
        detail = {404: "no such route; the tus endpoint is /files/"}.get(e.status, e.reason)
        response = problem(e.status, reason, detail)
    except Exception as e:
        error = e
        if isinstance(e, DurabilityError) or connection_lost(e):
            response = problem(503, "buffer-unavailable",
                               "the upload buffer is briefly unavailable; your accepted bytes are safe, retry shortly",
                               headers={"Retry-After": retry_after(2)})
        elif isinstance(e, redis.ResponseError) and "OOM" in str(e):
            response = problem(503, "buffer-full", "the upload buffer is full; retry after the pause",
                               headers={"Retry-After": retry_after(5)})
        elif isinstance(e, redis.ResponseError) or not request.get(STREAMING):
            response = problem(500, "internal", "internal error; retry, and report the request id if it persists",
                               request_id=request[REQUEST_ID])
        else:
            raise  # aiohttp logs it and closes the connection: the only honest end of a cut stream
    response.headers["X-Request-Id"] = request[REQUEST_ID]
    log_problem(request, response, error)
    return response


def build_app(settings: Settings, client: redis.Redis, *, clock: Callable[[], float] = time.time,
              results: ResultsReader | None = None) -> web.Application:
    """The gateway on `client`'s Valkey. `results`: where /progress and the verdicts are read
    (default: the store the settings name, stores.results.results_reader)."""
    election = load_election(settings.election_file) if settings.election_file else None
    tenants = TenantStore(client) if settings.auth == "tokens" else None
    boot_id = secrets.token_hex(8)
    lease = settings.idempotency_owner_lease_seconds
    store = UploadStore(client, partitions=settings.partitions, clock=clock,
                        waitaof=(settings.waitaof_local, settings.waitaof_replicas, settings.waitaof_timeout_ms),
                        wait_replicas=settings.wait_replicas,
                        owner=boot_id, lease_ms=int(lease * 1000), on_append=append_committed)
    # Renewed four times per lease: a renewal or two lost to a slow moment does not let it lapse.
    creations = Every(lease / 4, store.renew_creations, "creation-leases")
    refusals = auditing.RefusalLog(store)
    admission = Admission(settings, store)

    witness = AckWitness(store, on_loss=count_acknowledged_loss)
    tus = TusHandler(store, settings, admission, Windows(election, clock), witness=witness,
                     clock=clock)
    # Auditing sits outside `errors` so that the refusals `errors` makes (Redis unreachable,
    # internal errors) are in the trail too.
    app = web.Application(middlewares=[reads.track_heads, observe_requests, auditing.middleware(store, refusals), errors,
                                       auth.middleware(tenants, tus.shed),
                                       refuse_when_draining],
                          client_max_size=1 << 20,
                          # A connection waiting for its turn buffers at most 2x this, plus one read of
                          # read_chunk_bytes (gateway/reads.py), before aiohttp pauses reading it: the
                          # rest waits in the kernel under TCP flow control, so bodies are read (the main
                          # cost of a request) inside admission's fair turns.
                          handler_args={"read_bufsize": settings.read_buffer_bytes,
                                        # gateway/reads.py: what comes before a request is bounded too.
                                        "max_line_size": settings.max_header_bytes,
                                        "max_field_size": settings.max_header_bytes,
                                        "max_headers": settings.max_headers,
                                        "keepalive_timeout": settings.idle_timeout_seconds})
    app[STORE] = store
    app[SETTINGS] = settings
    app[READY] = {"ready": True}
    app[TUS] = tus
    app[BOOT_ID] = boot_id
    signing_key = receipts.load_or_create_key(settings.receipt_key_path)
    public_key_pem = receipts.public_pem(signing_key)
    # /metrics, timing, graceful shutdown
    install_metrics(app, settings, client, admission, ready=app[READY])
    app.on_response_prepare.append(reads.drain_refused_body)

    async def upload_status(request: web.Request) -> web.Response:
        refusal = auth.may_read_uploads(request)
        if refusal is not None:
            return refusal
        state = await tus.load(request, request.match_info["upload_id"])
        if state is None:
            if (acked := await store.lost_acknowledged(request.match_info["upload_id"])) is not None:
                return problem(410, "upload-lost",
                               f"the buffer lost this upload in a crash after acknowledging {acked} bytes of it; "
                               "nothing of it is kept: create it again and send the whole file")
            return tus.not_found(request.match_info["upload_id"])
        if state.concat == "final" and state.state == RECEIVING and not state.finq:
            # Its assembly is not queued yet: check again, in case the trigger was lost to a crash.
            await store.link_final(state)
        body = status_body(state)
        if state.state == STORED and state.concat != "partial":
            # A partial of a concatenation is a part, not a file: the final gets the receipt.
            # Ed25519 is deterministic: signing on demand hands out the same receipt every time.
            body["receipt"] = msgspec.to_builtins(receipts.sign(receipt_payload(state), signing_key))
        return web.Response(body=orjson.dumps(body), content_type="application/json",
                            headers={"Cache-Control": "no-store"})

    async def public_key(request: web.Request) -> web.Response:
        return web.Response(text=public_key_pem, content_type="application/x-pem-file")

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"alive": True})

    async def readyz(request: web.Request) -> web.Response:
        if not app[READY]["ready"]:
            return web.json_response({"ready": False, "why": "shutting down"}, status=503)
        try:
            if settings.redis_cluster:
                # A ping reaches one node, which answers even while the cluster has lost a shard
                # and refuses every key (CLUSTERDOWN); a node's own view of the cluster does not.
                info = await client.cluster_info()
                if info.get("cluster_state") != "ok":
                    return web.json_response({"ready": False, "why": f"redis cluster_state "
                                              f"{info.get('cluster_state')}"}, status=503)
            else:
                await client.ping()
        except Exception as e:
            if not connection_lost(e):
                raise
            return web.json_response({"ready": False, "why": f"redis: {e}"}, status=503)
        return web.json_response({"ready": True})

    app.router.add_route("*", "/files", tus.handle)
    app.router.add_route("*", "/files/", tus.handle)
    app.router.add_get("/files/{upload_id}/status", upload_status)
    app.router.add_route("*", "/files/{upload_id}", tus.handle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/receipts/public-key", public_key)
    # Validation results: /progress, /progress/all, /verdicts.csv, /files/{id}/verdicts
    add_result_routes(app, results if results is not None else results_reader(settings), election, clock, tenants)

    async def start_watch(app: web.Application) -> None:
        admission.buffer.start()
        witness.start()
        creations.start()

    async def stop_watch(app: web.Application) -> None:
        await creations.stop()
        try:  # what this process still held in flight may be taken over at once
            await asyncio.wait_for(store.release_creations(), 2)
        except (asyncio.TimeoutError, redis.RedisError, OSError) as e:
            log.debug("creation leases not released (they lapse by themselves)", extra={"error": repr(e)})
        await witness.stop()
        await admission.buffer.stop()
        try:
            await refusals.flush()
        except (asyncio.TimeoutError, redis.RedisError, OSError) as e:
            log.warning("refusal records not written", extra={"error": repr(e), "pending": len(refusals.pending)})

    app.on_startup.append(start_watch)
    app.on_cleanup.append(stop_watch)

    async def close_redis(app: web.Application) -> None:
        try:  # bounded: shutting down must never hang on a connection stuck mid-command
            await asyncio.wait_for(client.aclose(), 5)
        except (asyncio.TimeoutError, redis.RedisError, OSError) as e:
            log.warning("redis connections not closed cleanly", extra={"error": repr(e)})

    app.on_cleanup.append(close_redis)
    return app


async def make_app(settings: Settings) -> web.Application:
    return build_app(settings, connect(settings.redis_url, cluster=settings.redis_cluster))
