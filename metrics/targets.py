"""Where Prometheus finds a local stack: a file_sd target list `unggah up` writes.

    <state_dir>/prometheus-targets.json   (see deploy/prometheus/prometheus.yml)

Jobs: unggah-gateway (one target; or, with several gateway processes on one port,
one per process at its own process_port, labelled with its name), unggah-ingest (one
target per ingester, labelled with its consumer name), unggah-stack (the supervisor's own /metrics: child restarts) and
unggah-audit (the auditor's own /metrics: acknowledged data its chain witness
finds lost). Ports of ingesters, of the supervisor and of the auditor are picked
free at each start, so the file is rewritten each time; Prometheus re-reads
file_sd files when they change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def local_host(host: str) -> str:
    """A scrape address for a server listening on `host` (a wildcard: this machine)."""
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def write_targets(state_dir: str, host: str, gateway_port: int | dict[str, int], ingest_ports: dict[str, int], *,
                  stack_port: int | None = None, stack_host: str = "127.0.0.1",
                  audit_port: int | None = None, audit_host: str = "127.0.0.1",
                  filename: str = "prometheus-targets.json") -> Path:
    """`gateway_port`: the one gateway's port, or each gateway process's own port by its name
    (several processes on one port: a scrape of the shared port reaches any one of them, and
    its counters would seem to jump between theirs)."""
    host = local_host(host)
    if isinstance(gateway_port, int):
        groups = [{"targets": [f"{host}:{gateway_port}"], "labels": {"job": "unggah-gateway"}}]
    else:
        groups = [{"targets": [f"{host}:{port}"], "labels": {"job": "unggah-gateway", "process": name}}
                  for name, port in gateway_port.items()]
    groups += [{"targets": [f"{host}:{port}"], "labels": {"job": "unggah-ingest", "consumer": name}}
               for name, port in ingest_ports.items()]
    if stack_port is not None:
        groups.append({"targets": [f"{local_host(stack_host)}:{stack_port}"], "labels": {"job": "unggah-stack"}})
    if audit_port is not None:
        groups.append({"targets": [f"{local_host(audit_host)}:{audit_port}"], "labels": {"job": "unggah-audit"}})
    path = Path(state_dir) / filename
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: Prometheus never reads half a file
    return path
