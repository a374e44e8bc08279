"""`unggah serve --workers N`: N gateway processes on one port, and their supervisor.

One gateway process is one event loop, so one core. Several share the port through
SO_REUSEPORT: each listens on it, and the kernel spreads new connections over them. Nothing
about an upload lives in a process (its state, the buffer, tokens and windows are in Redis),
so a client's next request may reach any of them; what each process keeps to itself is its
admission gate (append_slots, read slots, byte budget), docs/architecture.md "Many gateway
processes".

This process serves nothing itself. It starts the gateways as children (named gateway-0 ...),
each also listening alone on its own process_port, where Prometheus scrapes it (one target
per process, written to <state_dir>/prometheus-gateways.json) and where its readiness is
asked; it starts any that exits again, with the back-off of `unggah up` (commands.stack's
Supervisor); and SIGTERM or SIGINT stops them all, each draining as one gateway does.
"""

from __future__ import annotations

import logging
import os
import signal
import time

from commands.stack import POLL_S, STOP_SIGNALS, Supervisor, gateway_env
from metrics.targets import local_host, write_targets
from unggah import processes
from unggah.config import Settings
from unggah.processes import free_port

log = logging.getLogger("commands.workers")


def process_ports(settings: Settings) -> dict[str, int]:
    """Each gateway process's own port by its name: process_port + i, or a free one each."""
    return {f"gateway-{i}": settings.process_port + i if settings.process_port else free_port(settings.host)
            for i in range(settings.workers)}


def serve_workers(settings: Settings) -> int:
    """Run settings.workers gateway processes on settings.port until SIGTERM or SIGINT."""
    stopped_by: list[str] = []

    def on_signal(signum, frame):  # noqa: ARG001
        stopped_by.append(signal.Signals(signum).name)

    for sig in STOP_SIGNALS:
        signal.signal(sig, on_signal)
    ports = process_ports(settings)
    sup = Supervisor(settings)
    try:
        for name, port in ports.items():
            env = gateway_env(processes.environment(settings), settings.port, port)
            sup.add(name, lambda env=env: processes.start(processes.command("serve"), env=env, pdeathsig=True))
        host = local_host(settings.host)
        for name, port in ports.items():
            try:
                ready = processes.wait_ready(f"http://{host}:{port}/readyz", 30, sup.children[name].proc,
                                             stopping=lambda: bool(stopped_by))
            except RuntimeError as e:
                log.error(f"{name} did not start: {e}", extra={"child": name})
                return 1
            if not ready:
                return 0
        targets = write_targets(settings.state_dir, settings.host, ports, {}, filename="prometheus-gateways.json")
        log.info(f"{settings.workers} gateway processes on {host}:{settings.port} (pid {os.getpid()}); "
                 f"each alone at {' '.join(str(p) for p in ports.values())}; Prometheus targets in {targets}",
                 extra={"port": settings.port, "process_ports": list(ports.values()), "targets": str(targets)})
        while not stopped_by:
            sup.check()
            time.sleep(POLL_S)
        log.info(f"{stopped_by[0]}: stopping the gateway processes", extra={"signal": stopped_by[0]})
        return 0
    finally:
        sup.stop(None)
