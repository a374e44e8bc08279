"""Chaos: what the ingester logs when Valkey goes away, and the chaos run itself.

The first test runs a real `unggah ingest` against its own Valkey, SIGKILLs Valkey, starts it
again on the same port and data directory, and reads the ingester's log. The second runs
`python -m loadtest.chaos` at smoke size (loadtest/chaos.py): the whole stack under
`unggah up`, with Valkey, the gateway and the ingester each killed once during the uploads.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Gateway, IngesterProcess, create, make_settings, patch, wait_stored
from unggah.valkey import EmbeddedValkey

ROOT = Path(__file__).resolve().parents[1]


def log_lines(path: Path) -> list[dict]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"msg": line})  # not ours (a traceback printed raw would land here)
    return out


def wait_for_line(path: Path, text: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.exists() and text in path.read_text(errors="replace"):
            return
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {path.name} within {timeout}s:\n{path.read_text(errors='replace')[-3000:]}")


async def test_an_outage_of_valkey_is_one_line_in_the_ingester_log_not_a_traceback_per_partition(tmp_path):
    vk = EmbeddedValkey(tmp_path / "valkey", appendfsync="always").start()
    settings = make_settings(tmp_path, vk.url)  # 4 partitions, reclaim every 0.5 s
    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    ing = IngesterProcess(settings, "chaos.ingest-0")
    log = Path(settings.state_dir) / "chaos.ingest-0.log"
    try:
        wait_for_line(log, "ingester started")
        time.sleep(0.5)  # every partition loop in its blocking read, the reclaim loop between rounds
        vk.kill()
        time.sleep(3)  # a few retries of every loop: 4 partitions and the reclaim loop
        vk.start()  # same port, same data directory
        wait_for_line(log, "buffer reachable again")
        time.sleep(2)  # several reclaim rounds, on connections the pool held through the outage

        # And it still does its work: an upload sent now is stored by this same ingester.
        gw = await Gateway(settings).start()
        try:
            async with aiohttp.ClientSession() as http:
                data = os.urandom(100_000)
                url = await create(http, gw, len(data))
                assert (await patch(http, url, 0, data)).status == 204
                assert (await wait_stored(http, url))["state"] == "stored"
        finally:
            await gw.stop()
    finally:
        ing.stop()
        vk.stop()

    text = log.read_text(errors="replace")
    lines = log_lines(log)
    lost = [x for x in lines if x.get("msg") == "buffer unreachable, retrying"]
    back = [x for x in lines if str(x.get("msg", "")).startswith("buffer reachable again")]
    assert len(lost) == 1, text
    assert len(back) == 1, text
    assert lost[0]["level"] == "warning" and "ConnectionError" in lost[0]["error"], lost[0]
    assert "\n" not in lost[0]["error"]
    assert back[0]["level"] == "info" and 2.5 < back[0]["down_s"] < 30, back[0]
    assert "Traceback" not in text
    assert not [x for x in lines if x.get("level") == "error"], text


# A creation cut off by a kill can hold its Idempotency-Key "in flight" for up to
# idempotency_inflight_seconds (60 s) before the client's retry gets through: allow for one.
@pytest.mark.timeout(240)
def test_chaos_smoke_loses_nothing_when_valkey_the_gateway_and_an_ingester_are_killed():
    proc = subprocess.Popen([sys.executable, "-m", "loadtest.chaos", "--uploads", "20", "--size-mb", "1",
                             "--kills", "3"], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=180)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it stops its stack by PID, then exits
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        raise AssertionError(f"the chaos smoke took over 180 s:\n{out[-3000:]}\n{err[-3000:]}")
    last = out.strip().splitlines()[-1] if out.strip() else ""
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    assert "0 lost, 0 mismatched" in last, out[-4000:]
    assert last.startswith("chaos: 20 uploads, 3 kills (valkey, gateway, ingest-0), 20 stored") and last.endswith("PASS")


def _kills(n: int) -> list:
    from loadtest.chaos import Kill
    return [Kill(victim=v, pid=100 + i, at_fraction=0.5, at_s=1.0, new_pid=200 + i)
            for i, v in enumerate(("valkey", "gateway", "ingest-0")[:n])]


def test_the_chaos_verdict_passes_a_loss_the_server_reported_and_fails_one_it_did_not():
    from loadtest.chaos import Outcome, verdict

    stored = [f"f{i}" for i in range(3)]
    reported = Outcome(stored=stored, reported=["f1: the server lost acknowledged bytes in a crash; sent again"])
    line, ok = verdict(reported, _kills(3), uploads=3, planned_kills=3)
    assert ok and line.endswith("1 losses detected and reported: PASS"), line
    silent = Outcome(stored=stored, recreated=["f2: the server lost or expired ...; made a new upload"])
    line, ok = verdict(silent, _kills(3), uploads=3, planned_kills=3)
    assert not ok and "1 re-created" in line and line.endswith("FAIL"), line
    line, ok = verdict(Outcome(stored=stored), _kills(2), uploads=3, planned_kills=3)
    assert not ok and "a victim did not come back" in line
    line, ok = verdict(Outcome(stored=stored), _kills(3), uploads=3, planned_kills=3)
    assert ok and line.endswith("3 stored, 0 lost, 0 mismatched: PASS"), line
