"""Alert rules and dashboard: promtool unit tests, and every metric they name exists.

promtool comes from Debian's `prometheus` package (`./dev test` installs it when
it is missing); without it the promtool tests are skipped, the cross-checks run.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from prometheus_client import ProcessCollector

from metrics.buffer import BufferCollector
from gateway.observe import GateCollector
from metrics.registry import ACKED_LOST, ACKED_LOST_BYTES, collectors, metric_names

ROOT = Path(__file__).resolve().parents[1]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "unggah-dashboard.json"
PROMTOOL = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(PROMTOOL is None, reason="promtool not installed (Debian package "
                                    "`prometheus`; ./dev test installs it with apt-get when run as root)")

REQUIRED_ALERTS = {"BufferNearFull", "IngestFallingBehind", "DeadLettersPresent", "SheddingSustained",
                   "GatewayDown", "PairsBelowThresholdNearClose", "IngesterDown", "RedisUnavailable",
                   "HighAppendLatency", "StackChildRestarting", "StackChildDown", "AcknowledgedDataLost"}
# Series Prometheus makes itself.
BUILTIN = {"up", "ALERTS", "ALERTS_FOR_STATE", "scrape_duration_seconds", "scrape_samples_scraped"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "group_left",
            "group_right", "inf", "nan", "Inf", "NaN"}


def alert_rules() -> list[dict]:
    """alerts.yml's rules: name, expr, and annotation keys. A small reader for the file's own
    layout (`- alert:`, `expr:` on one line or as a `>-` block), so no YAML library is needed;
    the real Prometheus test loads the file and checks it found the same rules."""
    rules: list[dict] = []
    lines = RULES.read_text().splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        m = re.match(r"^\s*- alert: (\S+)\s*$", line)
        if m:
            rules.append({"alert": m.group(1), "expr": "", "annotations": set()})
        elif rules and re.match(r"^\s*expr:", line):
            value = line.split("expr:", 1)[1].strip()
            if value in (">-", ">", "|", "|-"):
                indent = len(line) - len(line.lstrip())
                block = []
                while i + 1 < len(lines) and (not lines[i + 1].strip()
                                              or len(lines[i + 1]) - len(lines[i + 1].lstrip()) > indent):
                    i += 1
                    block.append(lines[i].strip())
                value = " ".join(b for b in block if b)
            rules[-1]["expr"] = value
        elif rules and re.match(r"^\s{10}(summary|runbook|description):", line):
            rules[-1]["annotations"].add(line.strip().split(":", 1)[0])
        i += 1
    return rules


def dashboard_exprs() -> list[tuple[str, str]]:
    dash = json.loads(DASHBOARD.read_text())
    out = []
    for panel in dash["panels"]:
        for t in panel.get("targets", []):
            out.append((panel["title"], t["expr"]))
    return out


def names_in(expr: str) -> set[str]:
    """Metric names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", "", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)  # range and subquery durations
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", e):
        word = m.group(0)
        if word in KEYWORDS or e[m.end():].lstrip().startswith("("):  # function or aggregation
            continue
        names.add(word)
    return names


def exposed() -> set[str]:
    gateway = collectors("gateway") + [BufferCollector(None), GateCollector(None)]
    # make_registry adds prometheus_client's process metrics to every process (process_resident_memory_bytes, ...).
    process = {m.name + ("_total" if m.type == "counter" else "") for m in ProcessCollector(registry=None).collect()}
    return (metric_names(gateway) | metric_names(collectors("ingest")) | metric_names(collectors("stack"))
            | metric_names(collectors("audit")) | process | BUILTIN)


def test_names_in_parses_promql():
    assert names_in('sum by (reason) (rate(unggah_refusals_total{code=~"429|503"}[5m])) / 1e3') == {
        "unggah_refusals_total"}
    assert names_in("max by (tenant) (a_b) < max by (tenant) (c) and on() (min(d) > 0 < 6 * 3600)") == {
        "a_b", "c", "d"}
    assert names_in('histogram_quantile(0.99, sum by (le) (rate(x_bucket{route="/f/{id}"}[5m])))') == {"x_bucket"}


def test_rules_have_runbooks_and_required_alerts():
    rules = alert_rules()
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules}
    assert len({r["alert"] for r in rules}) == len(rules)
    for r in rules:
        assert r["expr"], r["alert"]
        assert {"summary", "runbook"} <= r["annotations"], r["alert"]


def test_every_metric_in_rules_and_dashboard_exists():
    known = exposed()
    used: dict[str, set[str]] = {}
    for r in alert_rules():
        for n in names_in(r["expr"]):
            used.setdefault(n, set()).add("alert " + r["alert"])
    for title, expr in dashboard_exprs():
        for n in names_in(expr):
            used.setdefault(n, set()).add("panel " + title)
    missing = {n: sorted(where) for n, where in used.items() if n not in known}
    assert not missing, f"metrics used but not exposed by any registry: {missing}"
    # And the dashboard covers what deadline night needs.
    all_exprs = " ".join(e for _, e in dashboard_exprs())
    for name in ("unggah_appends_accepted_total", "unggah_received_bytes_total", "unggah_buffer_bytes",
                 "unggah_buffer_budget_bytes", "unggah_refusals_total", "unggah_http_request_duration_seconds_bucket",
                 "unggah_ingest_backlog_entries", "unggah_ingest_entries_total", "unggah_dead_letter_entries",
                 "unggah_pair_supporters", "unggah_pair_min_support", "unggah_window_close_seconds"):
        assert name in all_exprs, name


def test_dashboard_is_importable_json():
    dash = json.loads(DASHBOARD.read_text())
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in dash["panels"]:
        if p["type"] == "row":
            continue
        assert p["datasource"]["uid"] == "${DS_PROMETHEUS}", p["title"]
        assert p["targets"] and all(t["expr"].strip() for t in p["targets"]), p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"])


def test_metric_names_follow_conventions():
    for c in (collectors("gateway") + [BufferCollector(None)] + collectors("ingest") + collectors("stack")
              + collectors("audit")):
        for fam in c.describe():
            assert fam.name.startswith("unggah_"), fam.name
            for unit in ("seconds", "bytes"):
                if unit in fam.name:
                    assert fam.name.endswith(unit) or fam.name.endswith(unit + "_total"), fam.name
            assert not fam.name.endswith(("_ms", "_milliseconds", "_kb", "_mb"))


@needs_promtool
def test_acknowledged_data_lost_sums_every_witness():
    """A loss the auditor counts (job unggah-audit) fires the alert as a gateway's does: the rule
    aggregates the counter over every job, and does not select one."""
    rule = next(r for r in alert_rules() if r["alert"] == "AcknowledgedDataLost")
    assert "unggah_acknowledged_lost_total" in rule["expr"]
    assert "job=" not in rule["expr"] and "sum by" not in rule["expr"], rule["expr"]
    for counter in (ACKED_LOST, ACKED_LOST_BYTES):  # the same counters, served by both kinds of process
        assert counter in collectors("audit") and counter in collectors("gateway")


@needs_promtool
def test_promtool_rule_unit_tests():
    res = subprocess.run([PROMTOOL, "test", "rules", RULE_TESTS.name], cwd=RULE_TESTS.parent,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr


@needs_promtool
def test_promtool_checks_rules():
    res = subprocess.run([PROMTOOL, "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    assert f"{len(alert_rules())} rules found" in res.stdout


@needs_promtool
async def test_promtool_lints_the_exposition(gateway, http):
    """`promtool check metrics`: naming, units and help text of what /metrics really serves
    (the gateway, an ingester, `unggah up`'s supervisor with a child that has exited, the auditor)."""
    from metrics import supervisor
    from metrics.server import MetricsServer
    from metrics.registry import make_registry
    from tests.conftest import create, patch

    url = await create(http, gateway, 10)
    await patch(http, url, 0, b"0123456789")
    server = await MetricsServer("127.0.0.1", 0).start()
    supervisor.child_started("ingest-0")
    supervisor.child_exited("ingest-0", -9)
    supervisor.child_restarted("ingest-0")
    stack = supervisor.StackMetricsServer("127.0.0.1", 0).start()
    audit = supervisor.ThreadMetricsServer("127.0.0.1", 0, make_registry("audit"), "auditor").start()
    try:
        for target in (gateway.url + "/metrics", f"http://127.0.0.1:{server.port}/metrics", stack.url, audit.url):
            async with http.get(target, headers={"Accept": "text/plain"}) as resp:
                text = await resp.text()
            res = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True,
                                 timeout=30)
            problems = [line for line in (res.stdout + res.stderr).splitlines()
                        if line.startswith("unggah_")]
            assert not problems, problems
    finally:
        await server.stop()
        stack.stop()
        audit.stop()
        supervisor.reset()
