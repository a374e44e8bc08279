"""The metrics of `unggah up`'s supervisor, and the /metrics endpoint it serves them on.

The supervisor (commands/stack.py) is a plain synchronous loop, not an event loop, so its
endpoint is prometheus_client's own threaded HTTP server: one daemon thread that answers
scrapes while the main thread polls the children. The values are the metric objects of
metrics/registry.py (STACK_*), so they are thread-safe and Prometheus reads them as they are
at scrape time. Every child has all its series (restarts 0, up 1) from the moment it is added,
so `increase()` and alerts see a series before the first restart.

The endpoint listens on `stack_metrics_host` (127.0.0.1 by default: it reveals only process
state, but nothing outside the host needs it in development) and `stack_metrics_port` (0: a free
port picked by the kernel at each start; `unggah up` prints it and writes it to
<state_dir>/prometheus-targets.json as job `unggah-stack`).

ThreadMetricsServer is that endpoint for any registry: the auditor (ingest/audit.py) serves its
own with it too (job `unggah-audit`), from a thread beside its event loop.
"""

from __future__ import annotations

import logging
import threading
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server

from metrics.registry import STACK_CHILD_LAST_EXIT_CODE, STACK_CHILD_RESTARTS, STACK_CHILD_UP, make_registry
from metrics.targets import local_host

log = logging.getLogger("commands.stack")


def reset() -> None:
    """Forget every child (a new supervisor in the same process starts from nothing)."""
    for m in (STACK_CHILD_RESTARTS, STACK_CHILD_UP, STACK_CHILD_LAST_EXIT_CODE):
        m.clear()


def child_started(name: str) -> None:
    """The child runs (first start): its restart counter exists, at 0, and it is up."""
    STACK_CHILD_RESTARTS.labels(name)
    STACK_CHILD_UP.labels(name).set(1)


def child_exited(name: str, code: int) -> None:
    """The supervisor saw the child exit with this code (negative: killed by that signal)."""
    STACK_CHILD_UP.labels(name).set(0)
    STACK_CHILD_LAST_EXIT_CODE.labels(name).set(code)


def child_restarted(name: str) -> None:
    """The child was started again after it exited."""
    STACK_CHILD_RESTARTS.labels(name).inc()
    STACK_CHILD_UP.labels(name).set(1)


class ThreadMetricsServer:
    """GET /metrics for one registry, served by prometheus_client from a daemon thread."""

    def __init__(self, host: str, port: int, registry: CollectorRegistry, what: str,
                 logger: logging.Logger = log) -> None:
        self.host = host
        self.port = port
        self.registry = registry
        self.what = what  # for the log line: "supervisor", "auditor"
        self.log = logger
        self._httpd: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{local_host(self.host)}:{self.port}/metrics"

    def start(self) -> "ThreadMetricsServer":
        """Bind and serve; OSError (port taken, address not local) is the caller's to report."""
        self._httpd, self._thread = start_http_server(self.port, addr=self.host, registry=self.registry)
        self.port = self._httpd.server_port  # the one the kernel picked, for port 0
        self.log.info(f"{self.what} metrics listening", extra={"host": self.host, "port": self.port, "url": self.url})
        return self

    def stop(self) -> None:
        """Stop serving and close the socket (the serving loop notices within half a second)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None


class StackMetricsServer(ThreadMetricsServer):
    """GET /metrics for the supervisor, served from a daemon thread."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(host, port, make_registry("stack"), "supervisor")
