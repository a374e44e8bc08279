"""A small /metrics and /healthz server on a process's own event loop (the ingesters').

The supervisor and the auditor, which have no event loop to spare, serve theirs from a thread
(metrics/supervisor.py).
"""

from __future__ import annotations

import logging

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from metrics.registry import make_registry

log = logging.getLogger("unggah.metrics")


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
        log.info("metrics listening", extra={"host": self.host, "port": self.port})
        return self

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None
