"""Seconds-long smokes of each deadline-night rehearsal (loadtest/rehearse.py).

Each runs the real runner as a subprocess (Locust uses gevent; it must not share
this process or an asyncio loop): its own Valkey, gateway and ingester on free
ports, a small plan for 6-8 s of load, the fault, the zero-loss check, the
report. Each takes about 10-13 s.

The verdict itself is not asserted: on a loaded CI machine a seconds-long run can
legitimately end with a file still waiting out a Retry-After (the report says so).
What must hold every time: the report exists, the zero-loss check ran and passed,
and the scenario's fault happened.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def rehearse(scenario: str, out: Path, *extra: str) -> dict:
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "loadtest.rehearse", scenario, "--smoke", "--out", str(out), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=90)
    elapsed = time.monotonic() - t
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("report.md", "summary.json", "locust.html", "journal.json"):
        assert (out / name).exists(), f"{name} missing; stderr: {proc.stderr[-2000:]}"
    summary = json.loads((out / "summary.json").read_text())
    summary["_elapsed"] = elapsed
    summary["_stdout"] = proc.stdout
    # The zero-loss check ran, checked something, and passed.
    z = summary["zero_loss"]
    assert z["ran"] is True
    assert z["acknowledged_complete"] > 0
    assert z["verified_stored"] == z["acknowledged_complete"], z
    assert z["lost_bytes"] == 0 and z["passed"] is True, z
    assert summary["verdict"]["line"].startswith(("PASS", "FAIL"))
    assert summary["fault"]["happened"] is True, summary["fault"]
    assert elapsed < 40, f"the smoke took {elapsed:.1f}s"
    return summary


def test_deadline_rush_window_closes_on_time(tmp_path):
    s = rehearse("deadline-rush", tmp_path / "out")
    w = s["window"]
    assert w["probes"] > 0
    assert w["probes_refused_window_closed"] == w["probes"]  # every creation after close: 403 window-closed
    assert w["probes_accepted"] == 0
    assert all(p["stored"] > 0 for p in s["pairs"])


def test_flaky_network_cut_patches_resume(tmp_path):
    s = rehearse("flaky-network", tmp_path / "out")
    f = s["fault"]
    assert f["cuts"] > 0 and f["uploads_cut"] > 0
    assert f["uploads_cut_completed"] > 0  # cut, resumed through HEAD, completed, verified above
    assert f["resumes"] >= f["cuts"]
    assert {"patient", "impatient"} <= set(s["clients"])


def test_ingest_outage_sheds_then_recovers(tmp_path):
    s = rehearse("ingest-outage", tmp_path / "out")
    f = s["fault"]
    assert f["shed_total"] > 0, f  # 503 with reason buffer-high or buffer-full
    assert set(f["shedding"]) <= {"refused:buffer-high", "refused:buffer-full"}
    assert s["buffer"]["peak"] and s["buffer"]["peak"] >= s["buffer"]["high_watermark"] * 0.5
    events = [e["what"] for e in s["fault_events"]]
    assert any(e.startswith("ingesters terminated") for e in events)
    assert any(e.startswith("ingesters restarted") for e in events)


def test_redis_restart_loses_nothing(tmp_path):
    s = rehearse("redis-restart", tmp_path / "out")
    events = [e["what"] for e in s["fault_events"]]
    assert any(e.startswith("valkey killed") for e in events)
    assert any(e.startswith("valkey restarted") for e in events)
    assert sum(s["fault"]["client_saw"].values()) > 0  # the clients noticed the outage...
    assert s["zero_loss"]["lost_bytes"] == 0  # ...and nothing acknowledged was lost
