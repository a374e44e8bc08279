"""Rehearse deadline night: run one scenario headless, in bounded time, and report.

    python -m loadtest.rehearse SCENARIO [--users N] [--duration S] [--out DIR] ...
    python -m loadtest.rehearse SCENARIO --target URL [--token TOKEN] ...

Without --target it starts its own stack (Valkey, one gateway, ingesters, each a
process held by PID, on free 127.0.0.1 ports), issues one operator token per
pair, runs Locust against it as a subprocess, injects the scenario's fault,
samples the buffer's fill, checks every upload a client believes complete
against the status API, stops everything and writes the report
(`loadtest/report.py`) into the output folder. With --target it starts nothing:
the faults need hooks (--fault-start-cmd, --fault-end-cmd) or are skipped.

Exit status: 0 when the verdict is PASS, 1 when it is FAIL, 2 when the
rehearsal itself could not run.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import zoneinfo
from pathlib import Path
from urllib.parse import urlsplit

from dukungan.election import example_toml
from unggah import processes
from loadtest import report
from loadtest.scenarios import SCENARIOS
from loadtest.scenarios.params import Params, pair_name

ROOT = Path(__file__).resolve().parent.parent
KiB = 1024
MiB = 1024 * KiB

# Per scenario: Params defaults and runner defaults. Command-line flags override both.
# The plans are larger than the clients can send before close at these think times, so the
# operators stay busy to the end (what they did not start is "never started", not a failure).
DEFAULTS: dict[str, dict] = {
    "deadline-rush": {"close_fraction": 0.75, "scans": 400},
    "flaky-network": {"close_fraction": 0.8, "scans": 250},
    "ingest-outage": {"close_fraction": 0.8, "scans": 250, "buffer_budget": 8 * MiB, "fault_at": 0.2,
                      "fault_for": 0.35},
    "redis-restart": {"close_fraction": 0.8, "scans": 250, "fault_at": 0.35, "fault_for": 5.0},
}
# A few seconds each, for CI (tests/test_rehearsal_smoke.py).
SMOKE = {"pairs": 3, "operators": 2, "rows": 2000, "rows_per_list": 1000, "scans": 60, "duration": 6.0,
         "think": 0.2, "buffer_budget": 4 * MiB, "fault_for": 2.0}
# The outage must end early enough for a Retry-After of 5 s (buffer-high) to come round before the end.
SMOKE_BY_SCENARIO = {"ingest-outage": {"duration": 8.0, "fault_at": 0.1, "fault_for": 0.25}}


# ---------------------------------------------------------------- HTTP

class Http:
    """A keep-alive HTTP/1.1 connection to one host, reopened after any error."""

    def __init__(self, base: str, timeout: float = 10.0) -> None:
        u = urlsplit(base)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 80
        self.timeout = timeout
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        for attempt in (1, 2):
            try:
                if self.conn is None:
                    self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
                self.conn.request("GET", path, headers=headers or {})
                r = self.conn.getresponse()
                body = r.read()
                return r.status, {k.lower(): v for k, v in r.getheaders()}, body
            except (OSError, http.client.HTTPException):
                self.close()
                if attempt == 2:
                    return 0, {}, b""
        return 0, {}, b""

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


# ---------------------------------------------------------------- the stack

class Stack:
    """Valkey, one gateway and N ingesters as our own processes, so faults can be injected."""

    def __init__(self, folder: Path, *, ingesters: int, partitions: int, appendfsync: str, maxmemory: str,
                 buffer_budget: int, log_level: str, extra_env: dict[str, str]) -> None:
        self.folder = folder
        self.state = folder / "state"
        self.logs = folder.parent / "logs"
        self.n_ingest = ingesters
        self.partitions = partitions
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.buffer_budget = buffer_budget
        self.log_level = log_level
        self.extra_env = extra_env
        self.valkey = None
        self.gateway: subprocess.Popen | None = None
        self.ingesters: dict[str, subprocess.Popen] = {}
        self.port = 0
        self.election_file = ""
        self.tokens: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = processes.environment(
            UNGGAH_REDIS_URL=self.valkey.url, UNGGAH_STATE_DIR=str(self.state), UNGGAH_AUTH="tokens",
            UNGGAH_PARTITIONS=str(self.partitions), UNGGAH_VALKEY_MAXMEMORY=self.maxmemory,
            UNGGAH_LOG_LEVEL=self.log_level, UNGGAH_APPENDFSYNC=self.appendfsync)
        for k in [k for k in env if k.startswith("REHEARSE_")]:
            del env[k]
        if self.buffer_budget:
            env["UNGGAH_BUFFER_BUDGET_BYTES"] = str(self.buffer_budget)
        if self.election_file:
            env["UNGGAH_ELECTION_FILE"] = self.election_file
        env.update(self.extra_env)
        return env

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        return processes.start(processes.command(*args), env=self.env(), cwd=ROOT, log=self.logs / f"{name}.log")

    def start_storage(self, pairs: int) -> None:
        """Valkey, the pairs' tenants and tokens, the ingesters."""
        from unggah.processes import free_port
        from unggah.valkey import EmbeddedValkey
        self.state.mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(parents=True, exist_ok=True)
        self.valkey = EmbeddedValkey(self.state / "valkey", port=free_port(), appendfsync=self.appendfsync,
                                     maxmemory=self.maxmemory).start()
        self.tokens = asyncio.run(self._issue_tokens(pairs))
        for i in range(self.n_ingest):
            self.start_ingester(f"ingest-{i}")

    async def _issue_tokens(self, pairs: int) -> list[str]:
        import redis.asyncio as aioredis

        from buffer.tenants import TenantStore
        client = aioredis.Redis.from_url(self.valkey.url)
        try:
            store = TenantStore(client)
            tokens = []
            for i in range(pairs):
                tenant = f"rehearsal-{pair_name(i)}"
                await store.add(tenant, f"Rehearsal pair {i + 1}")
                token, _ = await store.issue(tenant, f"rehearsal operators of {pair_name(i)}")
                tokens.append(token)
            return tokens
        finally:
            await client.aclose()

    def start_ingester(self, name: str) -> None:
        self.ingesters[name] = self._spawn(name, ["ingest", "--name", name])

    def start_gateway(self) -> None:
        from unggah.processes import free_port
        self.port = free_port()
        self.gateway = self._spawn("gateway", ["serve", "--port", str(self.port)])

    def wait_ready(self, timeout: float = 30.0) -> None:
        http_ = Http(self.url, timeout=1.0)
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                if self.gateway.poll() is not None:
                    raise RuntimeError(f"the gateway exited with {self.gateway.returncode}; see logs/gateway.log")
                status, _, _ = http_.get("/readyz")
                if status == 200:
                    return
                time.sleep(0.05)
        finally:
            http_.close()
        raise RuntimeError(f"the gateway was not ready within {timeout}s; see logs/gateway.log")

    def signal_ingesters(self, sig: int) -> list[int]:
        pids = []
        for proc in self.ingesters.values():
            if proc.poll() is None:
                os.kill(proc.pid, sig)
                pids.append(proc.pid)
        return pids

    def stop_ingesters(self, timeout: float = 20.0) -> list[int]:
        pids = self.signal_ingesters(signal.SIGTERM)
        for proc in self.ingesters.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return pids

    def restart_ingesters(self) -> list[int]:
        for name in list(self.ingesters):
            if self.ingesters[name].poll() is not None:
                self.start_ingester(name)
        return [p.pid for p in self.ingesters.values()]

    def stop(self) -> None:
        """Gateway first (no new bytes), then ingesters, then Valkey; each by its PID."""
        if self.gateway is not None:
            processes.stop(self.gateway, timeout=20)
        self.signal_ingesters(signal.SIGCONT)  # a stopped process cannot act on SIGTERM
        self.stop_ingesters()
        if self.valkey is not None:
            self.valkey.stop()


def write_election(path: Path, close_at: float, grace: int) -> dt.datetime:
    """An election whose only window opened yesterday and closes at `close_at` (WIB, whole second)."""
    tz = zoneinfo.ZoneInfo("Asia/Jakarta")
    closes = dt.datetime.fromtimestamp(int(close_at), tz).replace(tzinfo=None)
    opens = closes - dt.timedelta(days=1)
    path.write_text("# Written by loadtest.rehearse: a window that closes during the rehearsal.\n" + example_toml(
        name="Rehearsal (deadline rush)", vote_date=(closes + dt.timedelta(days=180)).date(), dpt_base=161413,
        grace_seconds=grace, scans=None, code_list={"path": "not-used-by-the-gateway.csv", "version": "rehearsal"},
        windows=[{"name": "penyerahan", "kind": "submission", "opens": opens, "closes": closes}]))
    return closes


# ---------------------------------------------------------------- buffer sampling

class BufferSampler(threading.Thread):
    """Every `interval` s: the gateway's /metrics (unggah_buffer_bytes summed over partitions,
    the budget, bytes received); without that gauge, Redis's byte counters `unggah:{pN}:bytes`."""

    def __init__(self, base: str, t0: float, *, redis_url: str = "", partitions: int = 8,
                 interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.http = Http(base, timeout=2.0)
        self.t0 = t0
        self.redis_url = redis_url
        self.partitions = partitions
        self.interval = interval
        self.samples: list[dict] = []
        self.budget = 0
        self.source = ""
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            t = time.time()
            self.samples.append({"t": round(t - self.t0, 2), **self.read()})
            self.stopping.wait(max(0.0, self.interval - (time.time() - t)))
        self.http.close()

    def read(self) -> dict:
        status, _, body = self.http.get("/metrics")
        if status == 200:
            m = parse_metrics(body.decode(errors="replace"))
            if "unggah_buffer_bytes" in m and m.get("unggah_redis_up", 1) == 1:
                self.source = "metrics"
                self.budget = int(m.get("unggah_buffer_budget_bytes", 0)) or self.budget
                return {"bytes": int(m["unggah_buffer_bytes"]),
                        "received_total": int(m.get("unggah_received_bytes_total", 0))}
        if self.redis_url:
            try:
                import redis
                r = redis.Redis.from_url(self.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5)
                try:
                    vals = r.mget([f"unggah:{{p{p}}}:bytes" for p in range(self.partitions)])
                finally:
                    r.close()
                self.source = self.source or "redis"
                return {"bytes": sum(int(v or 0) for v in vals)}
            except Exception:  # noqa: BLE001 - Redis down (the fault itself): no sample
                return {"bytes": None}
        return {"bytes": None}

    def stop(self) -> None:
        self.stopping.set()
        self.join(5)


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text: each metric name summed over its labels."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        name_labels, _, value = line.rpartition(" ")
        name = name_labels.split("{", 1)[0]
        try:
            out[name] = out.get(name, 0.0) + float(value)
        except ValueError:
            continue
    return out


# ---------------------------------------------------------------- faults

class Faults:
    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.events: list[dict] = []

    def note(self, what: str, **detail) -> None:
        ev = {"t": round(time.time() - self.t0, 2), "what": what, **detail}
        self.events.append(ev)
        print(f"  [{ev['t']:7.2f}s] {what} {detail if detail else ''}", flush=True)


def run_hook(cmd: str, faults: Faults, what: str) -> None:
    r = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=120)
    faults.note(what, hook=cmd, exit=r.returncode, output=(r.stdout + r.stderr)[-500:])


# ---------------------------------------------------------------- verification

def verify(journal: dict, base: str, tokens: list[str], drain_timeout: float) -> dict:
    """Every upload a client believes complete must be `stored` with the client's sha256;
    every acknowledged byte of an unfinished upload must still be there (bytes_received)."""
    http_ = Http(base, timeout=10.0)
    token_of = {pair_name(i): tokens[i % len(tokens)] for i in range(len(journal["pairs"]))} if tokens else {}
    files = [f for f in journal["files"] if f["url"] and f["kind"] != "probe"]
    complete = [f for f in files if f["outcome"] == "complete"]
    partial = [f for f in files if f["outcome"] != "complete" and f["acked"] > 0]
    results: dict[str, dict] = {}

    def status(f: dict) -> tuple[int, dict]:
        h = {"Authorization": "Bearer " + token_of[f["pair"]]} if f["pair"] in token_of else {}
        code, _, body = http_.get(urlsplit(f["url"]).path + "/status", h)
        try:
            return code, json.loads(body) if code == 200 else {}
        except ValueError:
            return code, {}

    deadline = time.monotonic() + drain_timeout
    waiting = list(complete)
    while waiting:
        still = []
        for f in waiting:
            code, st = status(f)
            state = st.get("state")
            if code == 200 and state in ("stored", "failed"):
                results[f["url"]] = {"code": code, "state": state, "sha256": st.get("sha256"),
                                     "bytes_received": st.get("bytes_received"), "reason": st.get("reason")}
            elif code in (200, 503, 0) and time.monotonic() < deadline:
                still.append(f)  # receiving (ingest behind) or the buffer briefly away: ask again
            else:
                results[f["url"]] = {"code": code, "state": state or "", "sha256": st.get("sha256"),
                                     "bytes_received": st.get("bytes_received"), "reason": st.get("reason")}
        waiting = still
        if waiting:
            time.sleep(0.25)
    for f in partial:
        code, st = status(f)
        results[f["url"]] = {"code": code, "state": st.get("state", ""), "sha256": st.get("sha256"),
                             "bytes_received": st.get("bytes_received"), "reason": st.get("reason")}
    http_.close()

    lost_uploads = []
    lost_bytes = 0
    verified = 0
    for f in complete:
        r = results[f["url"]]
        if r["state"] == "stored" and r["sha256"] == f["sha256"]:
            verified += 1
            continue
        why = ("stored with another sha256" if r["state"] == "stored" else
               f"state {r['state'] or 'unknown'} (HTTP {r['code']})" + (f": {r['reason']}" if r.get("reason") else ""))
        lost_bytes += f["size"]
        lost_uploads.append({"name": f["name"], "pair": f["pair"], "url": f["url"], "bytes": f["size"], "why": why})
    intact = 0
    for f in partial:
        r = results[f["url"]]
        got = r.get("bytes_received")
        if r["code"] == 200 and got is not None and got >= f["acked"]:
            intact += 1
            continue
        missing = f["acked"] - (got or 0) if got is not None else f["acked"]
        lost_bytes += missing
        lost_uploads.append({"name": f["name"], "pair": f["pair"], "url": f["url"], "bytes": missing,
                             "why": f"unfinished upload: server has {got} of {f['acked']} acknowledged bytes "
                                    f"(HTTP {r['code']})"})
    regressed = sum(f["regressed_bytes"] for f in journal["files"])
    for f in journal["files"]:
        if f["regressed_bytes"]:
            lost_uploads.append({"name": f["name"], "pair": f["pair"], "url": f["url"],
                                 "bytes": f["regressed_bytes"],
                                 "why": "a HEAD reported an offset below one already acknowledged"})
    lost_bytes += regressed
    stored_state = {f["url"]: results[f["url"]]["state"] for f in files if f["url"] in results}
    return {"ran": True, "passed": lost_bytes == 0, "acknowledged_complete": len(complete),
            "verified_stored": verified, "unfinished_checked": len(partial), "unfinished_intact": intact,
            "lost_bytes": lost_bytes, "lost_uploads": lost_uploads[:200], "regressed_bytes": regressed,
            "drain_timeout": drain_timeout, "states": stored_state}


# ---------------------------------------------------------------- the run

def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.rehearse", description=__doc__.split("\n\n")[0])
    p.add_argument("scenario", choices=sorted(SCENARIOS))
    p.add_argument("--users", type=int, help="operators online at the peak (default pairs x operators)")
    p.add_argument("--duration", type=float, help="seconds of load (default 90; --smoke 6)")
    p.add_argument("--out", help="output folder (default .unggah/rehearsals/<scenario>-<time>)")
    p.add_argument("--target", help="a deployed gateway's base URL, e.g. https://unggah.example; starts nothing")
    p.add_argument("--token", action="append", default=[], help="bearer token (repeat: pair i uses token i mod n)")
    p.add_argument("--tokens-file", help="file with one bearer token per line, pair i uses line i mod n")
    p.add_argument("--smoke", action="store_true", help="a few seconds with a small plan, for CI")
    g = p.add_argument_group("the work")
    g.add_argument("--pairs", type=int)
    g.add_argument("--operators", type=int, help="operators per pair")
    g.add_argument("--rows", type=int, help="supporter rows per pair")
    g.add_argument("--rows-per-list", type=int, help="rows per CSV file")
    g.add_argument("--row-bytes", type=int)
    g.add_argument("--scans", type=int, help="scans per pair")
    g.add_argument("--scan-bytes", type=int)
    g.add_argument("--chunk", type=int, help="PATCH size in bytes")
    g = p.add_argument_group("timing and surge")
    g.add_argument("--close-at", type=float, dest="close_fraction",
                   help="share of the run after which no upload starts (deadline-rush: the server's window closes)")
    g.add_argument("--grace", type=int, help="deadline-rush: the election's grace_seconds (default: the rest of the run)")
    g.add_argument("--surge", choices=("ramp", "step", "flat"))
    g.add_argument("--surge-share", type=float, help="the surge covers this last share of the window")
    g.add_argument("--base-share", type=float, help="share of the operators online before the surge")
    g.add_argument("--think", type=float, help="seconds between files before the surge")
    g = p.add_argument_group("client behaviour")
    g.add_argument("--cut-rate", type=float, help="share of PATCHes cut mid-body")
    g.add_argument("--impatient-share", type=float, help="share of clients retrying at once")
    g.add_argument("--no-checksum-share", type=float, help="share of clients sending no Upload-Checksum")
    g.add_argument("--tusjs-share", type=float,
                   help="share of operators on tus-js-client defaults (give an upload up after 4 retries)")
    g.add_argument("--timeout", type=float, help="client request timeout, s")
    g = p.add_argument_group("faults")
    g.add_argument("--fault-at", type=float, help="share of the run at which the fault starts")
    g.add_argument("--fault-for", type=float,
                   help="how long the fault lasts: seconds, or a share of the run when below 1")
    g.add_argument("--outage-signal", choices=("stop", "term"), default="term",
                   help="ingest-outage: SIGSTOP/SIGCONT, or SIGTERM and start again (default)")
    g.add_argument("--fault-start-cmd", help="with --target: shell command that starts the fault")
    g.add_argument("--fault-end-cmd", help="with --target: shell command that ends it")
    g = p.add_argument_group("the embedded stack")
    g.add_argument("--ingesters", type=int, default=1)
    g.add_argument("--partitions", type=int, default=8)
    g.add_argument("--appendfsync", choices=("everysec", "always", "no"), default="always",
                   help="the embedded Valkey's AOF policy (default: always, the product's default)")
    g.add_argument("--maxmemory", default="1gb", help="Valkey maxmemory (the default buffer budget is 75%% of it)")
    g.add_argument("--buffer-budget", type=int, help="UNGGAH_BUFFER_BUDGET_BYTES (ingest-outage: 8 MiB)")
    g.add_argument("--log-level", default="WARNING", help="gateway and ingester log level")
    g.add_argument("--stack-env", action="append", default=[], metavar="NAME=VALUE",
                   help="extra UNGGAH_* setting for the gateway and ingesters (repeatable)")
    g.add_argument("--keep-state", action="store_true", help="keep the stack's blobs and AOF after the run")
    p.add_argument("--drain-timeout", type=float, default=60.0,
                   help="how long the zero-loss check waits for acknowledged uploads to be stored")
    p.add_argument("--seed", type=int, default=1)
    return p


PARAM_FLAGS = ("pairs", "operators", "users", "rows", "rows_per_list", "row_bytes", "scans", "scan_bytes", "chunk",
               "close_fraction", "surge", "surge_share", "base_share", "think", "cut_rate", "impatient_share",
               "no_checksum_share", "tusjs_share", "timeout", "seed")


def make_params(a: argparse.Namespace, out: Path) -> tuple[Params, dict]:
    defaults = dict(DEFAULTS[a.scenario])
    runner = {k: defaults.pop(k) for k in ("buffer_budget", "fault_at", "fault_for") if k in defaults}
    base = dict(defaults)
    if a.smoke:
        base.update(SMOKE)
        base.update(SMOKE_BY_SCENARIO.get(a.scenario, {}))
        for k in ("buffer_budget", "fault_at", "fault_for"):
            if k in base:
                v = base.pop(k)
                if k in runner or k == "fault_at":
                    runner[k] = v
    p = Params(scenario=a.scenario, out=str(out))
    for k, v in base.items():
        if hasattr(p, k):
            setattr(p, k, v)
    p.duration = a.duration or base.get("duration") or 90.0
    explicit = {k: v for k, v in base.items() if hasattr(p, k)}  # passed on to Locust
    for k in PARAM_FLAGS:
        v = getattr(a, k, None)
        if v is not None:
            setattr(p, k, v)
            explicit[k] = v
    if not p.users:
        p.users = p.pairs * p.operators
    for k in ("buffer_budget", "fault_at", "fault_for"):
        v = getattr(a, k, None)
        if v is not None:
            runner[k] = v
    return p, {"explicit": explicit, **runner}


def scenario_env(p: Params, explicit: dict) -> dict[str, str]:
    """REHEARSE_* for Locust: the plan and the clock, plus every knob set on the command line
    (the others keep the scenario file's own defaults)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("REHEARSE_")}
    full = p.to_env()
    keep = {"scenario", "out", "pairs", "operators", "users", "rows", "rows_per_list", "row_bytes", "scans",
            "scan_bytes", "chunk", "start_at", "close_at", "end_at", "duration", "tokens", "seed", *explicit}
    env.update({k: v for k, v in full.items() if k.removeprefix("REHEARSE_").lower() in keep})
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def _terminated(signum, frame):  # noqa: ARG001
    raise SystemExit(2)  # unwinds through the finally blocks: every process we started is stopped


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = Path(a.out or f".unggah/rehearsals/{a.scenario}-{stamp}").resolve()  # .unggah/ is git-ignored
    if out.exists():
        shutil.rmtree(out)
    (out / "logs").mkdir(parents=True)
    p, runner = make_params(a, out)
    tokens = list(a.token)
    if a.tokens_file:
        tokens += [t.strip() for t in Path(a.tokens_file).read_text().splitlines() if t.strip()]
    extra_env = {}
    for item in a.stack_env:
        k, sep, v = item.partition("=")
        if not sep or not k.startswith("UNGGAH_"):
            print(f"--stack-env wants UNGGAH_NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        extra_env[k] = v
    duration = p.duration
    fault_at = runner.get("fault_at", 0.3)
    fault_for = runner.get("fault_for", 0.0)
    fault_for = fault_for * duration if 0 < fault_for < 1 else fault_for
    if a.scenario == "ingest-outage":
        # New uploads are held while the ingesters are out (and the buffer near its watermark),
        # and refused only once held create_hold_ms: for the outage to be seen shedding, the
        # hold must end well inside it (the default 30 s outlasts a short run's outage).
        extra_env.setdefault("UNGGAH_CREATE_HOLD_MS", str(max(200, int(fault_for * 1000 / 4))))
    run_info: dict = {"scenario": a.scenario, "argv": sys.argv[1:] if argv is None else argv,
                      "target": a.target or "", "embedded": not a.target, "duration": duration}

    stack: Stack | None = None
    sampler: BufferSampler | None = None
    locust: subprocess.Popen | None = None
    faults = Faults(time.time())
    t_setup = time.time()
    try:
        if a.target:
            base = a.target.rstrip("/")
        else:
            stack = Stack(out / "stack", ingesters=a.ingesters, partitions=a.partitions, appendfsync=a.appendfsync,
                          maxmemory=a.maxmemory, buffer_budget=runner.get("buffer_budget", 0) or 0,
                          log_level=a.log_level, extra_env=extra_env)
            stack.start_storage(p.pairs)
            tokens = stack.tokens
        # The clock of the run: load starts once the gateway and Locust are up.
        p.start_at = time.time() + 1.5
        p.close_at = p.start_at + p.close_fraction * duration
        p.end_at = p.start_at + duration
        p.tokens = ",".join(tokens)
        if stack is not None:
            if a.scenario == "deadline-rush":
                p.close_at = float(int(p.close_at))  # the election file has whole seconds
                grace = a.grace if a.grace is not None else max(1, int(p.end_at - p.close_at))
                stack.election_file = str(out / "stack" / "election.toml")
                closes = write_election(Path(stack.election_file), p.close_at, grace)
                run_info["window"] = {"closes_local": closes.isoformat(sep=" ") + " WIB", "grace_seconds": grace}
            stack.start_gateway()
            base = stack.url
        run_info.update({"base": base, "start_at": p.start_at, "close_at": p.close_at, "end_at": p.end_at,
                         "params": {k: v for k, v in vars(p).items() if k != "tokens"},
                         "fault_at": fault_at, "fault_for": fault_for, "tokens": len(tokens),
                         "outage_signal": a.outage_signal if a.scenario == "ingest-outage" else None})
        if stack is not None:
            run_info["stack"] = {"ingesters": a.ingesters, "partitions": a.partitions, "appendfsync": a.appendfsync,
                                 "maxmemory": a.maxmemory, "buffer_budget": stack.buffer_budget or None,
                                 "extra_env": extra_env, "pids": {"valkey": stack.valkey.pid,
                                                                  "gateway": stack.gateway.pid}}
        cmd = [sys.executable, "-m", "locust", "-f", str(SCENARIOS[a.scenario]), "--headless", "--host", base,
               "--only-summary", "--loglevel", "WARNING", "--exit-code-on-error", "0",
               "--run-time", f"{int(duration + 60)}s", "--stop-timeout", "0",
               "--html", str(out / "locust.html"), "--json-file", str(out / "locust"), "--csv", str(out / "locust")]
        run_info["locust_cmd"] = " ".join(cmd[1:])
        log = open(out / "logs" / "locust.log", "wb")
        locust = subprocess.Popen(cmd, cwd=ROOT, env=scenario_env(p, runner["explicit"]),
                                  stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        if stack is not None:
            stack.wait_ready()
        faults = Faults(p.start_at)
        faults.events.append({"t": round(t_setup - p.start_at, 2), "what": "setup started"})
        if stack is not None:
            faults.note("gateway ready")
        sampler = BufferSampler(base, p.start_at, redis_url=stack.valkey.url if stack else "",
                                partitions=a.partitions)
        sampler.start()
        print(f"rehearsal {a.scenario}: {p.users} operators of {p.pairs} pairs against {base}; "
              f"load {duration:.0f}s, no new upload after {p.close_at - p.start_at:.0f}s; out {out}", flush=True)
        run_faults(a, p, stack, faults, fault_at, fault_for, locust)
        try:
            locust.wait(max(5.0, p.end_at + 45 - time.time()))
        except subprocess.TimeoutExpired:
            faults.note("locust did not stop in time; terminated")
            locust.terminate()
            locust.wait(15)
        faults.note("load finished", locust_exit=locust.returncode)
        journal_path = out / "journal.json"
        if not journal_path.exists():
            raise RuntimeError(f"Locust wrote no journal; see {out / 'logs' / 'locust.log'}")
        journal = json.loads(journal_path.read_text())
        if stack is not None and stack.gateway.poll() is not None:
            faults.note("gateway had exited", code=stack.gateway.returncode)
        verification = verify(journal, base, tokens, a.drain_timeout)
        faults.note("zero-loss check done", lost_bytes=verification["lost_bytes"])
        time.sleep(min(1.0, sampler.interval * 2))
    except (RuntimeError, OSError) as e:
        print(f"rehearsal could not run: {e}", file=sys.stderr)
        return 2
    finally:
        if locust is not None and locust.poll() is None:
            locust.terminate()
            try:
                locust.wait(10)
            except subprocess.TimeoutExpired:
                locust.kill()
                locust.wait()
        if sampler is not None:
            sampler.stop()
        if stack is not None:
            stack.stop()
            if not a.keep_state:
                shutil.rmtree(stack.state / "blobs", ignore_errors=True)
                shutil.rmtree(stack.state / "valkey", ignore_errors=True)
    run_info["finished_at"] = time.time()
    (out / "run.json").write_text(json.dumps(run_info, indent=2, default=str))
    (out / "verification.json").write_text(json.dumps(verification, indent=2))
    (out / "buffer.json").write_text(json.dumps({"source": sampler.source, "budget": sampler.budget,
                                                 "samples": sampler.samples}))
    (out / "faults.json").write_text(json.dumps(faults.events, indent=2, default=str))
    summary = report.build(out)
    print(report.render_text(summary), flush=True)
    return 0 if summary["verdict"]["ok"] else 1


def run_faults(a, p: Params, stack: Stack | None, faults: Faults, fault_at: float, fault_for: float,
               locust: subprocess.Popen) -> None:
    """Inject the scenario's fault on time (relative to the load's start); returns once it is over."""
    kind = {"ingest-outage": "ingest-outage", "redis-restart": "redis-restart"}.get(a.scenario)
    if kind is None:
        return
    start = p.start_at + fault_at * (p.end_at - p.start_at)

    def sleep_until(t: float) -> bool:
        while time.time() < t:
            if locust.poll() is not None:
                return False
            time.sleep(min(0.05, max(0.0, t - time.time())))
        return True

    if stack is None:
        if not (a.fault_start_cmd and a.fault_end_cmd):
            faults.note("fault skipped", why="--target: this runner cannot control the target's processes; "
                        "give --fault-start-cmd and --fault-end-cmd to inject it")
            return
        if not sleep_until(start):
            return
        run_hook(a.fault_start_cmd, faults, "fault started (hook)")
        sleep_until(start + fault_for)
        run_hook(a.fault_end_cmd, faults, "fault ended (hook)")
        return
    if not sleep_until(start):
        return
    if kind == "ingest-outage":
        if a.outage_signal == "stop":
            faults.note("ingesters stopped (SIGSTOP)", pids=stack.signal_ingesters(signal.SIGSTOP))
            sleep_until(start + fault_for)
            faults.note("ingesters continued (SIGCONT)", pids=stack.signal_ingesters(signal.SIGCONT))
        else:
            t = time.time()
            pids = stack.stop_ingesters()
            faults.note("ingesters terminated (SIGTERM)", pids=pids, exited_after_s=round(time.time() - t, 2))
            sleep_until(start + fault_for)
            faults.note("ingesters restarted", pids=stack.restart_ingesters())
    else:
        old = stack.valkey.pid
        stack.valkey.kill()
        faults.note("valkey killed (SIGKILL)", pid=old, appendfsync=stack.appendfsync)
        sleep_until(start + fault_for)
        t = time.time()
        stack.valkey.start()
        faults.note("valkey restarted on the same port and data", pid=stack.valkey.pid,
                    ready_after_s=round(time.time() - t, 3))


if __name__ == "__main__":
    raise SystemExit(main())
