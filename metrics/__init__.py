"""Observability and lifecycle for unggah's processes.

    registry.py   every metric, defined once, and the per-role registries
    buffer.py     buffer-level gauges read from Redis (cached snapshot, gateway only)
    http.py       the gateway's request middleware, /metrics, refusal logging, store timing
    ingest.py     the ingester's hooks and its own /metrics server
    lifecycle.py  graceful shutdown of the gateway (readiness first, then drain)

Each process serves its own registry on its own port; nothing is shared
between processes, so no multiprocess mode is needed. Buffer-level gauges
describe Redis, not a process: only gateways expose them, and dashboards take
`max by (partition)` so several gateway replicas never double-count.

Setters other packages call (windows, admission control, validation):
`set_window_close`, `set_buffer_budget`, `set_pair_progress`, `record_validation`.
"""

from metrics.registry import record_validation, set_buffer_budget, set_pair_progress, set_window_close

__all__ = ["record_validation", "set_buffer_budget", "set_pair_progress", "set_window_close"]
