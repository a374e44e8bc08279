"""The gateway's observability: request metrics, /metrics, refusal logging, buffer-commit timing,
the admission gate's gauges.

Hooks in gateway/app.py:

    middlewares=[observe_requests, errors, refuse_when_draining]   # outermost first
    UploadStore(..., on_append=append_committed)                    # buffer-commit timing
    install(app, settings, client, admission, ready=app[READY])     # /metrics, gauges, lifecycle
    log_problem(request, response, error)                          # once, at the end of `errors`
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time

import redis.asyncio as redis
from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.exposition import choose_encoder

from buffer.store import Appended
from gateway.admission import Admission
from gateway.context import REQUEST_ID
from gateway.headers import tus_method
from gateway import lifecycle
from metrics.buffer import BufferCollector, BufferSnapshot
from metrics.registry import (APPENDS_ACCEPTED, APPENDS_REJECTED, BUFFER_APPEND_DURATION, EVENT_LOOP_LAG, GC_PAUSE,
                              HTTP_DURATION, HTTP_IN_FLIGHT, HTTP_REQUESTS, RECEIVED_BYTES, REFUSALS, UPLOADS_CREATED,
                              UPLOADS_TERMINATED, label, make_registry)
from unggah.config import Settings

log = logging.getLogger("unggah.gateway")

REGISTRY = web.AppKey("metrics_registry", CollectorRegistry)
SNAPSHOT = web.AppKey("buffer_snapshot", BufferSnapshot)

METHODS = frozenset({"GET", "HEAD", "POST", "PATCH", "DELETE", "OPTIONS", "PUT"})
# Status when the handler was cancelled (shutdown past its grace): nginx's "client closed request".
CANCELLED = 499


def route_of(request: web.Request) -> str:
    """The route template ("/files/{upload_id}"), never the raw path; "unmatched" for 404s."""
    try:
        resource = request.match_info.route.resource
    except AttributeError:
        resource = None
    return resource.canonical if resource is not None else "unmatched"


def _classify(request: web.Request, route: str, response: web.StreamResponse) -> None:
    status = response.status
    reason = response.headers.get("Unggah-Reason")
    if status >= 400:
        REFUSALS.labels(label(reason or "unknown"), str(status)).inc()
    method = tus_method(request)
    if route in ("/files", "/files/") and method == "POST":
        if status == 201 and "Idempotent-Replayed" not in response.headers:
            UPLOADS_CREATED.inc()
            if "Upload-Offset" in response.headers:  # creation-with-upload: the body was an append
                APPENDS_ACCEPTED.inc()
        elif status >= 400 and "Location" in response.headers:  # created, but its body was refused
            UPLOADS_CREATED.inc()
            APPENDS_REJECTED.labels(label(reason or "unknown")).inc()
    elif route == "/files/{upload_id}":
        if method == "PATCH":
            if status == 204:
                APPENDS_ACCEPTED.inc()
            elif status >= 400:
                APPENDS_REJECTED.labels(label(reason or "unknown")).inc()
        elif method == "DELETE" and status == 204:
            UPLOADS_TERMINATED.inc()


@web.middleware
async def observe_requests(request: web.Request, handler):
    """Count and time every request by method, route template and code (outermost middleware,
    so it sees the problem responses the `errors` middleware makes)."""
    start = time.perf_counter()
    HTTP_IN_FLIGHT.inc()
    status = CANCELLED
    response = None
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as e:  # redirects and the like pass through `errors`
        status = e.status
        raise
    finally:
        HTTP_IN_FLIGHT.dec()
        route = route_of(request)
        method = request.method if request.method in METHODS else "other"
        HTTP_REQUESTS.labels(method, route, str(status)).inc()
        HTTP_DURATION.labels(method, route).observe(time.perf_counter() - start)
        if response is not None:
            _classify(request, route, response)


def log_problem(request: web.Request, response: web.StreamResponse, error: BaseException | None = None) -> None:
    """Log a problem response exactly once: info for 4xx, warning for 5xx, error with the
    traceback for an internal error. Called at the end of the `errors` middleware."""
    if response.status < 400:
        return
    extra: dict[str, object] = {
        "request_id": request.get(REQUEST_ID), "status": response.status,
        "reason": response.headers.get("Unggah-Reason", ""), "method": tus_method(request),
        "route": route_of(request),
    }
    upload = request.match_info.get("upload_id")
    if upload:
        extra["upload"] = upload[:80]
    if error is not None:
        extra["error"] = repr(error)[:500]
    if response.status >= 500 and extra["reason"] == "internal" and error is not None:
        log.error("request failed", extra=extra, exc_info=error)
    elif response.status >= 500:
        log.warning("request refused", extra=extra)
    else:
        log.info("request refused", extra=extra)


def append_committed(seconds: float, result: Appended | None, nbytes: int) -> None:
    """UploadStore's `on_append`: time every buffer commit and count the bytes it accepted
    (a duplicate retry, answered from the PATCH records, commits nothing and is not counted)."""
    BUFFER_APPEND_DURATION.observe(seconds)
    if result is not None and result.outcome == "ok" and nbytes:
        RECEIVED_BYTES.inc(nbytes)


async def metrics_handler(request: web.Request) -> web.Response:
    """Read the buffer's state from Redis (cached ~1 s, one round trip), then render."""
    await request.app[SNAPSHOT].refresh()
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(request.app[REGISTRY]), headers={"Content-Type": content_type,
                                                                      "Cache-Control": "no-store"})


GATE_METRICS = {
    "unggah_append_slots": "Pieces this gateway lets be read and committed at once (append_slots).",
    "unggah_append_in_progress": "Pieces being read and committed now.",
    "unggah_append_waiting": "Pieces waiting for a slot now.",
    "unggah_append_read_slots": "Of those slots, pieces whose bodies may be read at once (append_read_slots).",
    "unggah_append_reading": "Pieces whose bodies are being read now (the rest in progress are being committed).",
    "unggah_append_predicted_wait_seconds": "How long a piece queued now would wait (pieces waiting or being read "
                                            "slowly x measured time between two commits).",
    "unggah_creation_predicted_wait_seconds": "The wait creations are judged by: the larger of the append wait and "
                                              "the active uploads' bytes to come over the commit rate; above "
                                              "create_target_wait_ms new uploads are held.",
    "unggah_creations_held": "New uploads held now, waiting to be let in or refused.",
    "unggah_commit_rate_bytes": "Bytes per second this gateway committed while pieces waited for slots "
                                "(0: not measured yet).",
}


class GateCollector(Collector):
    """The admission gates as they stand at scrape time (admission None: names only, for describe())."""

    def __init__(self, admission: Admission | None) -> None:
        self.admission = admission

    def describe(self):
        for name, doc in GATE_METRICS.items():
            yield GaugeMetricFamily(name, doc)

    def collect(self):
        g, c = self.admission.gate, self.admission.creations
        values = (g.slots, g.inflight, g.n_waiting, g.read_slots, g.reading, g.predicted_wait(),
                  c.predicted_wait(), c.n_held, c.rate or 0)
        for (name, doc), v in zip(GATE_METRICS.items(), values):
            yield GaugeMetricFamily(name, doc, value=v)


def install(app: web.Application, settings: Settings, client: redis.Redis, admission: Admission, *,
            ready: dict) -> None:
    snapshot = BufferSnapshot(client, settings.partitions, budget=settings.buffer_budget)
    app[SNAPSHOT] = snapshot
    app[REGISTRY] = make_registry("gateway", [BufferCollector(snapshot), GateCollector(admission)])
    app.router.add_get("/metrics", metrics_handler)
    lifecycle.install(app, ready)
    app.cleanup_ctx.append(sample_loop_lag)
    app.cleanup_ctx.append(time_collections)


LAG_INTERVAL = 0.1


async def sample_loop_lag(app: web.Application):
    """While the app runs: how late the loop wakes a 100 ms sleep. Cheap (ten wake-ups a
    second) and the one figure that says a gateway is saturated before its latencies do."""
    async def sample() -> None:
        while True:
            t = time.perf_counter()
            await asyncio.sleep(LAG_INTERVAL)
            EVENT_LOOP_LAG.observe(max(0.0, time.perf_counter() - t - LAG_INTERVAL))

    task = asyncio.create_task(sample())
    yield
    task.cancel()
    await asyncio.wait({task}, timeout=5)


async def time_collections(app: web.Application):
    """While the app runs: every garbage collection's pause, by generation. The callback only
    notes the pause; a task moves the notes into the histogram, so no lock is ever taken inside
    a collection (one that started while the histogram's lock was held would wait on itself)."""
    notes: list[tuple[int, float]] = []
    started = [0.0]

    def note(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter()
        else:
            notes.append((info["generation"], time.perf_counter() - started[0]))

    async def record() -> None:
        while True:
            await asyncio.sleep(LAG_INTERVAL)
            n = len(notes)
            taken = notes[:n]
            del notes[:n]  # a collection during the copy appends after n: kept for the next time
            for generation, pause in taken:
                GC_PAUSE.labels(str(generation)).observe(pause)

    gc.callbacks.append(note)
    task = asyncio.create_task(record())
    yield
    gc.callbacks.remove(note)
    task.cancel()
    await asyncio.wait({task}, timeout=5)
