"""The metrics of unggah's processes: a registry that imports nothing of ours but `buffer/`.

    registry.py   every metric, defined once, and the per-role registries
    buffer.py     buffer-level gauges read from Redis (cached snapshot, gateway only)
    server.py     a /metrics server on a process's event loop (the ingesters')
    supervisor.py a /metrics server on a thread (`unggah up`'s supervisor, the auditor)
    targets.py    the file_sd targets file `unggah up` writes

What each process counts is counted where it happens: the gateway's instrumentation is
gateway/observe.py, the ingester's observer ingest/observe.py.

Each process serves its own registry on its own port; nothing is shared
between processes, so no multiprocess mode is needed. Buffer-level gauges
describe Redis, not a process: only gateways expose them, and dashboards take
`max by (partition)` so several gateway replicas never double-count.

Setters other packages call (windows, admission control, validation):
`set_window_close`, `set_buffer_budget`, `set_pair_progress`, `record_validation`.
"""

from metrics.registry import record_validation, set_buffer_budget, set_pair_progress, set_window_close

__all__ = ["record_validation", "set_buffer_budget", "set_pair_progress", "set_window_close"]
