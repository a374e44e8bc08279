"""Where Prometheus finds a local stack: a file_sd target list `unggah up` writes.

    <state_dir>/prometheus-targets.json   (see deploy/prometheus/prometheus.yml)

Ports of ingesters are picked free at each start, so the file is rewritten
each time; Prometheus re-reads file_sd files when they change.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


def write_targets(state_dir: str, host: str, gateway_port: int, ingest_ports: dict[str, int]) -> Path:
    host = "127.0.0.1" if host in ("0.0.0.0", "") else host
    groups = [{"targets": [f"{host}:{gateway_port}"], "labels": {"job": "unggah-gateway"}}]
    groups += [{"targets": [f"{host}:{port}"], "labels": {"job": "unggah-ingest", "consumer": name}}
               for name, port in ingest_ports.items()]
    path = Path(state_dir) / "prometheus-targets.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(groups, indent=2) + "\n")
    os.replace(tmp, path)  # atomic: Prometheus never reads half a file
    return path
