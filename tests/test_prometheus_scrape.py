"""A real Prometheus scrapes a running gateway, an ingester process, a supervisor's
/metrics (as `unggah up` serves it) and an auditor process; every dashboard query returns
data, every alert rule loads and evaluates.

Prometheus is Debian's `prometheus` binary (`./dev test` installs it when missing),
started on a free 127.0.0.1 port with a generated config (1 s scrapes, targets from
the file_sd list `unggah up` writes) and a temporary storage dir, stopped by PID.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import time
from pathlib import Path

import aiohttp
import pytest

from metrics import record_validation, set_pair_progress, set_window_close
from metrics import supervisor
from metrics.registry import clear_pair_progress
from metrics.targets import write_targets
from tests.conftest import TUS, child_env, create, patch, wait_for, wait_stored
from tests.test_alerts import RULES, alert_rules, dashboard_exprs
from unggah import processes
from unggah.processes import free_port

PROMETHEUS = shutil.which("prometheus")
pytestmark = pytest.mark.skipif(PROMETHEUS is None, reason="prometheus not installed (Debian package "
                                "`prometheus`; ./dev test installs it with apt-get when run as root)")


class Prometheus:
    def __init__(self, workdir: Path, targets: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        # JSON is YAML: no YAML library needed to write the config.
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "scrape_timeout": "900ms", "evaluation_interval": "1s"},
            "rule_files": [str(RULES)],
            "scrape_configs": [{"job_name": "unggah-local",
                                "file_sd_configs": [{"files": [str(targets)], "refresh_interval": "1s"}]}],
        }))
        self.log = workdir / "prometheus.log"
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--storage.tsdb.retention.time=1h",
             "--log.level=warn"],
            stdout=subprocess.DEVNULL, stderr=open(self.log, "ab"), cwd=workdir)

    async def api(self, http: aiohttp.ClientSession, path: str, **params) -> dict:
        async with http.get(self.url + path, params=params) as resp:
            body = await resp.json()
        assert body["status"] == "success", body
        return body["data"]

    async def query(self, http: aiohttp.ClientSession, expr: str) -> list:
        return (await self.api(http, "/api/v1/query", query=expr))["result"]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


async def test_real_prometheus_scrapes_and_every_dashboard_query_has_data(tmp_path, settings, gateway, http, r):
    # Per-pair progress, window and validation are set by code being built elsewhere: set them here.
    set_window_close(time.time() + 4 * 3600)
    set_pair_progress("pasangan-a", 900, 1000, units_meeting=4, min_spread=5)
    set_pair_progress("pasangan-b", 1200, 1000, units_meeting=6, min_spread=5)
    record_validation("MS", rows=10)
    record_validation("TMS", "NIK_FORMAT", rows=2)

    Path(settings.state_dir).mkdir(parents=True, exist_ok=True)
    ing_port = free_port()
    ingester = processes.start(processes.command("ingest", "--name", "prom-0", "--metrics-port", str(ing_port)),
                               env=child_env(settings), log=Path(settings.state_dir) / "prom-0.log")
    # The auditor, as `unggah up` starts it: its /metrics port from the settings.
    audit_port = free_port()
    auditor = processes.start(processes.command("audit", "run"), log=Path(settings.state_dir) / "audit.log",
                              env=processes.environment(settings, UNGGAH_AUDIT_METRICS_PORT=str(audit_port)))
    # `unggah up`'s supervisor, in-process: its metrics server and children whose state it reports.
    for child in ("valkey", "gateway", "ingest-0", "validate", "audit"):
        supervisor.child_started(child)
    supervisor.child_exited("ingest-0", -9)
    supervisor.child_restarted("ingest-0")
    stack = supervisor.StackMetricsServer("127.0.0.1", 0).start()
    targets = write_targets(str(tmp_path), "127.0.0.1", gateway.port, {"ingest-0": ing_port},
                            stack_port=stack.port, audit_port=audit_port)
    prom = Prometheus(tmp_path, targets)
    try:
        async def prom_ready():
            assert prom.proc.poll() is None, prom.log.read_text()
            try:
                async with http.get(prom.url + "/-/ready") as resp:
                    return resp.status == 200
            except aiohttp.ClientError:
                return False
        await wait_for(prom_ready, 20)

        # Traffic while Prometheus scrapes: refusals first, so their counters exist from the first scrape.
        async with http.head(gateway.files + "0-" + "f" * 32, headers=TUS) as resp:
            assert resp.status == 404
        urls = []
        for i in range(4):
            data = bytes([i]) * 50_000
            url = await create(http, gateway, len(data))
            assert (await patch(http, url, 0, data[:20_000])).status == 204
            assert (await patch(http, url, 0, data[:10])).status == 409
            assert (await patch(http, url, 20_000, data[20_000:])).status == 204
            urls.append(url)
            await asyncio.sleep(0.7)
        for url in urls:
            assert (await wait_stored(http, url))["state"] == "stored"

        async def scraped_enough():
            res = await prom.query(http, 'min by (job) (count_over_time(up{job=~"unggah-.*"}[1m]))')
            return len(res) == 4 and all(float(s["value"][1]) >= 5 for s in res)
        await wait_for(scraped_enough, 30, interval=0.5)

        active = (await prom.api(http, "/api/v1/targets"))["activeTargets"]
        assert sorted(t["labels"]["job"] for t in active) == ["unggah-audit", "unggah-gateway", "unggah-ingest",
                                                              "unggah-stack"]
        assert all(t["health"] == "up" for t in active), active

        empty = []
        for title, expr in dashboard_exprs():
            if not await prom.query(http, expr):
                empty.append((title, expr))
        assert not empty, f"dashboard queries with no data: {empty}"

        # A few values, to be sure the data is the right data.
        async def one(expr: str) -> float:
            res = await prom.query(http, expr)
            assert len(res) == 1, (expr, res)
            return float(res[0]["value"][1])
        assert await one("sum(unggah_uploads_stored_total)") >= 4
        assert await one('sum(unggah_refusals_total{reason="offset-mismatch"})') >= 4
        assert await one("sum(max by (partition) (unggah_ingest_backlog_entries))") == 0
        assert 3 * 3600 < await one("min(unggah_window_close_seconds)") <= 4 * 3600
        assert await one("count(max by (tenant) (unggah_pair_supporters) < "
                         "max by (tenant) (unggah_pair_min_support)) or vector(0)") == 1
        assert await one('unggah_stack_child_restarts_total{job="unggah-stack",child="ingest-0"}') == 1
        assert await one('sum(unggah_stack_child_restarts_total{job="unggah-stack"})') == 1
        assert await one('unggah_stack_child_last_exit_code{job="unggah-stack"}') == -9
        assert await one('count(unggah_stack_child_up{job="unggah-stack"} == 1)') == 5
        # The auditor's loss counts (nothing lost), under its own job, which the alert sums with the gateways'.
        assert await one('count(unggah_acknowledged_lost_total{job="unggah-audit"})') == 2  # bytes, upload
        assert await one('sum(unggah_acknowledged_lost_total{job="unggah-audit"})') == 0
        assert await one('unggah_acknowledged_lost_bytes_total{job="unggah-audit"}') == 0
        assert await one('count(unggah_build_info{job="unggah-audit",role="audit"})') == 1
        assert await one('count(process_start_time_seconds{job="unggah-audit"})') == 1  # the alert's second term

        # Every rule in alerts.yml loaded and evaluates without error.
        async def rules_evaluated():
            groups = (await prom.api(http, "/api/v1/rules"))["groups"]
            rules = [rule for g in groups for rule in g["rules"]]
            return rules if rules and all(rule["health"] == "ok" for rule in rules) else None
        rules = await wait_for(rules_evaluated, 15, interval=0.5)
        assert sorted(rule["name"] for rule in rules) == sorted(a["alert"] for a in alert_rules())
    finally:
        prom.stop()
        stack.stop()
        supervisor.reset()
        ingester.terminate()
        auditor.terminate()
        ingester.wait(20)
        auditor.wait(20)
        set_window_close(None)
        clear_pair_progress()
    assert ingester.returncode == 0
    assert auditor.returncode == 0, (Path(settings.state_dir) / "audit.log").read_text()
