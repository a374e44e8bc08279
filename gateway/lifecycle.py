"""Graceful shutdown of the gateway.

On SIGTERM (or SIGINT):
  1. readiness turns false at once (/readyz answers 503), so load balancers stop
     sending new clients; /healthz still says alive;
  2. new uploads (creation POST) are refused: 503, Retry-After, reason
     `shutting-down` (tus clients retry, and reach another gateway);
  3. the gateway keeps listening while requests under /files are in flight
     (appends in progress finish; HEAD and PATCH are still served), at least
     `shutdown_drain_seconds` and at most `shutdown_grace_seconds`;
  4. then it stops listening, gives any request still running one more second,
     cancels what is left (a streamed PATCH keeps every entry it committed;
     the client resumes from HEAD), closes Redis and exits 0.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import time
from typing import Awaitable, Callable

from aiohttp import web

from gateway import reads
from gateway.headers import tus_method
from gateway.problems import problem, retry_after
from metrics.registry import SHUTTING_DOWN
from unggah.config import Settings

log = logging.getLogger("unggah.gateway")

# After the drain, a request that is still running (or slipped in at the last
# moment) gets this long before it is cancelled.
LAST_CALL_SECONDS = 1.0


class Lifecycle:
    def __init__(self, ready: dict) -> None:
        self.ready = ready  # the dict /readyz reads: {"ready": bool}
        self.draining = False
        self.inflight = 0  # requests under /files being handled
        self.idle = asyncio.Event()
        self.idle.set()

    def begin_shutdown(self) -> None:
        self.ready["ready"] = False
        self.draining = True
        SHUTTING_DOWN.set(1)

    async def drained(self, min_seconds: float, max_seconds: float) -> bool:
        """Wait until no request under /files is in flight (after at least min_seconds);
        False if max_seconds passed first."""
        start = time.monotonic()
        await asyncio.sleep(min(min_seconds, max_seconds))
        while self.inflight:
            remaining = max_seconds - (time.monotonic() - start)
            if remaining <= 0:
                return False
            self.idle.clear()
            try:
                await asyncio.wait_for(self.idle.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return True


LIFECYCLE = web.AppKey("lifecycle", Lifecycle)


def _is_creation(request: web.Request) -> bool:
    return request.path in ("/files", "/files/") and tus_method(request) == "POST"


@web.middleware
async def refuse_when_draining(request: web.Request, handler):
    """Innermost middleware: refuses new uploads while draining; counts tus requests in flight."""
    lc = request.app.get(LIFECYCLE)
    if lc is None or not request.path.startswith("/files"):
        return await handler(request)
    if lc.draining and _is_creation(request):
        return problem(503, "shutting-down",
                       "this gateway is shutting down; retry in a moment and another one will take your upload",
                       headers={"Retry-After": retry_after(2)})
    lc.inflight += 1
    try:
        return await handler(request)
    finally:
        lc.inflight -= 1
        if lc.inflight == 0:
            lc.idle.set()


def install(app: web.Application, ready: dict) -> Lifecycle:
    lc = Lifecycle(ready)
    app[LIFECYCLE] = lc
    SHUTTING_DOWN.set(0)
    return lc


async def serve(make_app: Callable[[Settings], Awaitable[web.Application]], settings: Settings) -> int:
    """Run the gateway until SIGTERM/SIGINT, then shut down as described above."""
    app = await make_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=LAST_CALL_SECONDS)
    await runner.setup()
    doors = reads.doors_for(settings)
    listeners = [await reads.listen(runner, settings.host, settings.port, settings.read_chunk_bytes, doors,
                                    reuse_port=settings.reuse_port)]
    if settings.process_port:
        # This process alone, beside the port it may share: Prometheus scrapes each process here,
        # and a supervisor asks each for /readyz. The same app and gates: no second door.
        listeners.append(await reads.listen(runner, settings.host, settings.process_port,
                                            settings.read_chunk_bytes, doors))
    # Everything built so far (modules, the app, settings) lives as long as the process: out of
    # the collector's sight, a full collection costs a fraction of the time, which is a pause
    # every request in flight would otherwise wait out.
    gc.freeze()
    log.info("gateway listening", extra={"host": settings.host, "port": settings.port,
                                         "reuse_port": settings.reuse_port, "process_port": settings.process_port})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    lc = app[LIFECYCLE]
    lc.begin_shutdown()
    log.info("shutting down: not ready, new uploads refused, draining",
             extra={"inflight": lc.inflight, "grace_seconds": settings.shutdown_grace_seconds})
    clean = await lc.drained(settings.shutdown_drain_seconds, settings.shutdown_grace_seconds)
    if not clean:
        log.warning("grace period over; cancelling what is still running", extra={"inflight": lc.inflight})
    for listener in listeners:
        listener.close()
    await runner.cleanup()
    log.info("gateway stopped")
    return 0
