"""The ingester's metrics: hooks ingest/worker.py calls, and its own /metrics server.

Each ingester process serves its own registry on its own port (`unggah ingest
--metrics-port P`); `unggah up` hands each one a free port and prints them.
Buffer-level gauges (backlog, pending, dead letters) come from the gateway,
not from here, so N ingesters never report the same stream N times.
"""

from __future__ import annotations

import functools
import logging
import time

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from buffer.messages import DATA, FAILED, RECEIVING, STORED
from metrics.registry import (INGEST_BATCH_DURATION, INGEST_BYTES, INGEST_DEAD_LETTERS, INGEST_ENTRIES,
                              INGEST_ERRORS, INGEST_REDELIVERIES, UPLOADS_FAILED, UPLOADS_STORED, make_registry)

log = logging.getLogger("unggah.ingest")

KINDS = {"d": "data", "f": "fin", "c": "concat", "x": "drop"}


def _failure(reason: str) -> str:
    """A bounded label for an upload's free-text failure reason."""
    if reason.startswith("sha256 mismatch"):
        return "sha256-mismatch"
    if reason.startswith("dead-letter"):
        return "dead-letter"
    return "other"


def _error(message: str) -> str:
    if message.startswith("crc32c mismatch"):
        return "corrupt-entry"
    if message.startswith("write failed"):
        return "write-failed"
    return "entry-failed"


def instrument(ingester) -> None:
    """Count what an Ingester does by wrapping its queue's ACK, FINISH, DEAD and error
    notes, and time its batches. Called once from Ingester.__init__."""
    q = ingester.q
    ack, finish, dead_letter, note_error, process = q.ack, q.finish, q.dead_letter, q.note_error, ingester.process

    @functools.wraps(ack)
    async def counted_ack(p, done):
        n = await ack(p, done)
        if done:
            kinds: dict[str, int] = {}
            for e in done:
                k = KINDS.get(e.k, "other")
                kinds[k] = kinds.get(k, 0) + 1
            for k, c in kinds.items():
                INGEST_ENTRIES.labels(k).inc(c)
            nbytes = sum(e.n for e in done if e.k == DATA)
            # A redelivered entry already acknowledged elsewhere drains nothing: count first acks only.
            INGEST_BYTES.inc(nbytes if n >= len(done) else nbytes * n // len(done))
        return n

    @functools.wraps(finish)
    async def counted_finish(p, e, outcome, sha256="", reason=""):
        changed = await finish(p, e, outcome, sha256=sha256, reason=reason)
        INGEST_ENTRIES.labels(KINDS.get(e.k, "other")).inc()
        if changed and outcome == STORED:
            UPLOADS_STORED.inc()
        elif changed and outcome == FAILED:
            UPLOADS_FAILED.labels(_failure(reason)).inc()
        return changed

    @functools.wraps(dead_letter)
    async def counted_dead_letter(p, e, deliveries):
        state = await q.upload(e.u)
        await dead_letter(p, e, deliveries)
        INGEST_DEAD_LETTERS.inc()
        if state is not None and state.state == RECEIVING:
            UPLOADS_FAILED.labels("dead-letter").inc()

    @functools.wraps(note_error)
    async def counted_note_error(p, entry_id, message):
        INGEST_ERRORS.labels(_error(message)).inc()
        await note_error(p, entry_id, message)

    @functools.wraps(process)
    async def timed_process(p, raw):
        start = time.perf_counter()
        try:
            await process(p, raw)
        finally:
            INGEST_BATCH_DURATION.observe(time.perf_counter() - start)

    q.ack, q.finish, q.dead_letter, q.note_error = counted_ack, counted_finish, counted_dead_letter, counted_note_error
    ingester.process = timed_process


def redelivered(n: int) -> None:
    """Entries processed again (reclaimed, or our own pending after a restart)."""
    if n:
        INGEST_REDELIVERIES.inc(n)


class MetricsServer:
    """A tiny aiohttp server on the ingester's event loop: GET /metrics and /healthz."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry | None = None) -> None:
        self.host = host
        self.port = port
        self.registry = registry or make_registry("ingest")
        self.runner: web.AppRunner | None = None

    async def start(self) -> "MetricsServer":
        app = web.Application()

        async def metrics(request: web.Request) -> web.Response:
            encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
            return web.Response(body=encoder(self.registry), headers={"Content-Type": content_type})

        async def healthz(request: web.Request) -> web.Response:
            return web.json_response({"alive": True})

        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        self.runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, self.host, self.port)
        await site.start()
        if self.port == 0:  # report the port the kernel picked
            self.port = self.runner.addresses[0][1]
        log.info("ingester metrics listening", extra={"host": self.host, "port": self.port})
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
