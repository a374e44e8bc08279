"""Deadline-night rehearsal scenarios: one Locust file per scenario, sharing `common`.

| scenario | locustfile | fault the runner injects |
|---|---|---|
| deadline-rush | deadline_rush.py | none: the server's own window closes during the run |
| flaky-network | flaky_network.py | none: the clients cut their own PATCHes and retry badly |
| ingest-outage | ingest_outage.py | ingesters stopped (SIGSTOP or SIGTERM) for a while, then back |
| redis-restart | redis_restart.py | Valkey killed with SIGKILL and restarted on its port and data |

Run them with `python -m loadtest.rehearse SCENARIO` (see docs/rehearsal.md); a
locustfile can also be run by hand with `locust -f loadtest/scenarios/<file>.py
--headless --host http://...` and the REHEARSE_* variables of `common.Params`.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent

SCENARIOS = {
    "deadline-rush": HERE / "deadline_rush.py",
    "flaky-network": HERE / "flaky_network.py",
    "ingest-outage": HERE / "ingest_outage.py",
    "redis-restart": HERE / "redis_restart.py",
}
