"""`unggah up` owns and supervises its children: real stacks, real signals, real PIDs.

Each test starts `python -m commands.cli up` on a free port with its own state directory, finds
the children by PPID in /proc, and kills what it must. Restart counts are read as Prometheus
reads them: over HTTP from the supervisor's own /metrics, at the URL `unggah up` prints.
Teardown SIGKILLs every process that carries the test's state directory (in its environment or
command line), so an orphan left by a failure does not outlive the test.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import time
import urllib.request
from pathlib import Path

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import make_settings
from unggah import processes
from unggah.processes import free_port
from unggah.valkey import EmbeddedValkey

ROLES = ("valkey", "gateway", "ingest-0", "validate", "audit")


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of a process, None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    # A zombie has exited: whoever reaps orphans here may not do it at once.
    st = _stat(pid)
    return st is not None and st[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _role(cmdline: str) -> str | None:
    if " -S -c " in cmdline:  # still the death-signal wrapper, before its exec
        return None
    if "valkey-server" in cmdline:
        return "valkey"
    m = re.search(r"-m commands\.cli (serve|ingest --name (\S+)|validate|audit run)", cmdline)
    if not m:
        return None
    return {"serve": "gateway", "validate": "validate", "audit run": "audit"}.get(m.group(1), m.group(2))


def children_of(parent: int) -> dict[str, int]:
    """role -> pid for the live children of `parent`."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            st = _stat(int(entry))
            if st and st[1] == parent and st[0] != "Z":
                role = _role(_cmdline(int(entry)))
                if role:
                    out[role] = int(entry)
    return out


def processes_of(state_dir: Path) -> list[int]:
    """Every live process (but us) started for this state directory: the Python children
    inherit UNGGAH_STATE_DIR; Valkey overwrites its argv and environment with its process
    title, but it runs in its --dir."""
    needle = f"UNGGAH_STATE_DIR={state_dir}".encode()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            environ = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            cwd = os.readlink(f"/proc/{entry}/cwd")
        except OSError:
            continue
        if (needle in environ or cwd.startswith(str(state_dir))) and alive(int(entry)):
            found.append(int(entry))
    return found


def wait_until(predicate, timeout: float, interval: float = 0.05, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met within {timeout}s (last value {value!r})")
        time.sleep(interval)


class Stack:
    """`unggah up` as a real subprocess, stdout and stderr in one log file."""

    def __init__(self, settings, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.settings = settings
        self.state = Path(settings.state_dir)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path
        self.proc = processes.start(processes.command("up", "--port", str(self.port), "--ingesters", "1"),
                                    env=processes.environment(settings, **(env or {})), log=log_path)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(self.base + "/readyz", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def children(self) -> dict[str, int]:
        return children_of(self.pid)

    def wait_up(self, timeout: float = 60) -> dict[str, int]:
        def up():
            assert self.proc.poll() is None, f"unggah up exited with {self.proc.returncode}:\n{self.log()}"
            return "unggah is up" in self.log() and self.ready()
        wait_until(up, timeout, what="unggah up ready")
        return wait_until(lambda: (c := self.children()).keys() >= set(ROLES) and c, 10, what="all children")

    def restarted(self, role: str, old_pid: int, timeout: float = 20) -> int:
        """The PID of `role`'s new process once it has been started again."""
        def new():
            pid = self.children().get(role)
            return pid if pid and pid != old_pid else None
        return wait_until(new, timeout, interval=0.02, what=f"{role} restarted")

    def metrics_url(self, who: str = "supervisor") -> str:
        """The supervisor's (or the auditor's) /metrics, from the summary `unggah up` prints once it is up."""
        m = re.search(rf"^  {who} +(http://\S+/metrics)", self.log(), re.M)
        assert m, self.log()
        return m.group(1)

    def scrape(self) -> dict[str, dict[str, float]]:
        """metric name -> {child: value} from the supervisor's /metrics, over HTTP."""
        with urllib.request.urlopen(self.metrics_url(), timeout=5) as r:
            assert r.status == 200
            text = r.read().decode()
        out: dict[str, dict[str, float]] = {}
        for fam in text_string_to_metric_families(text):
            for sample in fam.samples:
                if sample.name.startswith("unggah_stack_child_"):
                    out.setdefault(sample.name, {})[sample.labels["child"]] = sample.value
        return out

    def restart_counts(self) -> dict[str, int]:
        return {child: int(v) for child, v in self.scrape()["unggah_stack_child_restarts_total"].items()}


@pytest.fixture
def stacks(tmp_path):
    started: list[Stack] = []
    settings = make_settings(tmp_path, "")  # no Redis URL: the embedded Valkey

    def start(env: dict[str, str] | None = None) -> Stack:
        s = Stack(settings, tmp_path / f"up-{len(started)}.log", env)
        started.append(s)
        return s

    yield start
    for s in started:
        if s.proc.poll() is None:
            s.proc.kill()
            s.proc.wait()
    for pid in processes_of(Path(settings.state_dir)):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def wait_all_gone(pids: dict[str, int], timeout: float) -> dict[str, float]:
    """role -> seconds until its process was gone; fails if any outlives `timeout`."""
    t0 = time.monotonic()
    gone: dict[str, float] = {}
    while len(gone) < len(pids):
        now = time.monotonic() - t0
        for role, pid in pids.items():
            if role not in gone and not alive(pid):
                gone[role] = now
        if now > timeout:
            left = {r: p for r, p in pids.items() if r not in gone}
            raise AssertionError(f"still running {timeout}s after the signal: {left}")
        time.sleep(0.01)
    return gone


@pytest.mark.parametrize("sig", [signal.SIGHUP, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_hangup_terminate_and_interrupt_each_stop_every_child_gateway_first_valkey_last(stacks, sig):
    stack = stacks()
    kids = stack.wait_up()
    stack.proc.send_signal(sig)
    gone = wait_all_gone(kids, 10)
    assert gone["valkey"] >= gone["gateway"], gone  # no buffer under a gateway still taking bytes
    assert stack.proc.wait(10) == 0, stack.log()
    assert "unggah stopped" in stack.log()
    assert not processes_of(stack.state)


def test_kill_9_of_up_takes_every_child_with_it_and_leaves_no_stale_lock(stacks):
    stack = stacks()
    kids = stack.wait_up()
    stack.proc.kill()
    stack.proc.wait()
    wait_all_gone(kids, 10)
    # The death signal is SIGTERM, so Valkey still fsynced its AOF on the way out.
    assert "User requested shutdown" in (stack.state / "valkey" / "valkey.log").read_text()
    assert not processes_of(stack.state)
    # Neither the stack's nor Valkey's lock outlives its holder: the next `unggah up` starts.
    again = stacks()
    again.wait_up()


def test_killed_valkey_is_restarted_on_its_port_and_data_and_readyz_recovers(stacks):
    stack = stacks()
    kids = stack.wait_up()
    url = (stack.state / "redis-url").read_text().strip()
    port = url.rsplit(":", 1)[1].split("/")[0]
    client = redis.Redis.from_url(url)
    client.set("supervision-probe", b"kept")  # appendfsync always: on disk before the reply
    client.close()

    os.kill(kids["valkey"], signal.SIGKILL)
    new = stack.restarted("valkey", kids["valkey"])
    # The same port, so every child's UNGGAH_REDIS_URL still holds. (Its command line until
    # Valkey replaces it with its title "valkey-server <host>:<port>".)
    assert re.search(rf"(--port |:){port}\b", _cmdline(new)), _cmdline(new)
    wait_until(stack.ready, 20, what="/readyz 200 after the Valkey restart")
    client = redis.Redis.from_url(url)
    assert client.get("supervision-probe") == b"kept"  # the same data directory, AOF replayed
    client.close()
    assert re.search(r"valkey exited with code -9 \(killed by SIGKILL\).*restart 1", stack.log())
    assert f"valkey restarted (pid {new}, restart 1)" in stack.log()
    assert stack.restart_counts()["valkey"] == 1
    assert stack.children().keys() >= set(ROLES)


def test_killed_gateway_and_ingester_are_restarted_and_each_restart_logged_and_counted(stacks):
    stack = stacks()
    kids = stack.wait_up()
    os.kill(kids["gateway"], signal.SIGKILL)
    stack.restarted("gateway", kids["gateway"])
    wait_until(stack.ready, 20, what="/readyz 200 after the gateway restart")
    os.kill(kids["ingest-0"], signal.SIGKILL)
    stack.restarted("ingest-0", kids["ingest-0"])
    log = stack.log()
    for role in ("gateway", "ingest-0"):
        assert re.search(rf"{role} exited with code -9 \(killed by SIGKILL\)", log), log
    counts = stack.restart_counts()
    assert (counts["gateway"], counts["ingest-0"], counts["valkey"], counts["validate"]) == (1, 1, 0, 0)


def test_kill_9_of_a_child_is_counted_on_the_supervisors_own_metrics_endpoint(stacks):
    port = free_port()
    stack = stacks({"UNGGAH_STACK_METRICS_PORT": str(port)})  # a configured port (default: a free one)
    kids = stack.wait_up()
    url = stack.metrics_url()
    assert url == f"http://127.0.0.1:{port}/metrics", url  # this host only, by default
    # Announced to Prometheus beside the gateway and the ingesters.
    groups = json.loads((stack.state / "prometheus-targets.json").read_text())
    assert {"targets": [f"127.0.0.1:{port}"], "labels": {"job": "unggah-stack"}} in groups, groups
    before = stack.scrape()
    assert before["unggah_stack_child_restarts_total"] == dict.fromkeys(ROLES, 0), before
    assert before["unggah_stack_child_up"] == dict.fromkeys(ROLES, 1), before
    assert "unggah_stack_child_last_exit_code" not in before, before  # nothing has exited yet

    os.kill(kids["ingest-0"], signal.SIGKILL)
    stack.restarted("ingest-0", kids["ingest-0"])
    after = wait_until(lambda: (m := stack.scrape())["unggah_stack_child_restarts_total"]["ingest-0"] == 1 and m,
                       10, what="the restart on /metrics")
    assert after["unggah_stack_child_restarts_total"] == {**dict.fromkeys(ROLES, 0), "ingest-0": 1}, after
    assert after["unggah_stack_child_up"] == dict.fromkeys(ROLES, 1), after
    assert after["unggah_stack_child_last_exit_code"] == {"ingest-0": -9}, after  # -SIGKILL
    with urllib.request.urlopen(url, timeout=5) as r:
        assert re.search(r'^unggah_build_info\{[^}]*role="stack"[^}]*\} 1\.0$', r.read().decode(), re.M)


def test_the_auditor_serves_its_own_metrics_announced_as_unggah_audit_on_the_same_port_after_a_restart(stacks):
    stack = stacks()
    kids = stack.wait_up()
    url = stack.metrics_url("auditor")
    m = re.fullmatch(r"http://127\.0\.0\.1:(\d+)/metrics", url)  # this host only, a free port by default
    assert m, url
    groups = json.loads((stack.state / "prometheus-targets.json").read_text())
    assert {"targets": [f"127.0.0.1:{m.group(1)}"], "labels": {"job": "unggah-audit"}} in groups, groups
    assert not (stack.state / "acknowledged-lost.prom").exists()  # no textfile: Prometheus scrapes it

    def served() -> str | None:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                return r.read().decode()
        except OSError:
            return None
    text = wait_until(served, 15, what="the auditor's /metrics")
    assert re.search(r'^unggah_build_info\{[^}]*role="audit"[^}]*\} 1\.0$', text, re.M), text
    assert re.search(r'^unggah_acknowledged_lost_total\{what="upload"\} 0\.0$', text, re.M), text
    assert re.search(r"^unggah_acknowledged_lost_bytes_total 0\.0$", text, re.M), text

    # Killed and started again: the same port, so Prometheus's target stays the same.
    os.kill(kids["audit"], signal.SIGKILL)
    pid = stack.restarted("audit", kids["audit"])
    text = wait_until(lambda: alive(pid) and served(), 20, what="the restarted auditor's /metrics")
    assert re.search(r'^unggah_build_info\{[^}]*role="audit"[^}]*\} 1\.0$', text, re.M), text


def test_up_refuses_to_start_when_the_supervisors_metrics_port_is_taken(stacks):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        stack = stacks({"UNGGAH_STACK_METRICS_PORT": str(port)})
        rc = stack.proc.wait(30)
    out = stack.log()
    assert rc == 1, out
    assert f"the supervisor's /metrics cannot listen on 127.0.0.1:{port}" in out, out
    assert not processes_of(stack.state)  # refused before any child was started
    assert not stack.children()


def test_child_that_keeps_dying_is_restarted_after_a_doubling_back_off(stacks):
    stack = stacks()
    pid = stack.wait_up()["validate"]
    waits = []
    for _ in range(3):
        t0 = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        pid = stack.restarted("validate", pid)
        waits.append(time.monotonic() - t0)
    # 0.5 s, 1 s, 2 s (lower bounds: the supervisor notices a death within its poll interval)
    assert waits[0] >= 0.45 and waits[1] >= 0.95 and waits[2] >= 1.95, waits
    assert waits[2] < 10, waits
    assert stack.restart_counts()["validate"] == 3
    assert "restart 3 in 2.0s" in stack.log()


def test_second_up_on_the_same_state_dir_refuses_and_names_the_first_pid_and_port(stacks):
    first = stacks()
    first.wait_up()
    second = stacks()
    rc = second.proc.wait(30)
    out = second.log()
    assert rc != 0, out
    assert f"pid {first.pid}" in out and f"port {first.port}" in out, out
    assert first.ready()
    valkeys = [p for p in processes_of(first.state) if "valkey-server" in _cmdline(p)]
    assert len(valkeys) == 1, valkeys  # no second server on the same AOF


def test_embedded_valkey_refuses_a_data_dir_another_valkey_holds_until_that_one_dies(tmp_path):
    a = EmbeddedValkey(tmp_path / "valkey").start()
    b = EmbeddedValkey(tmp_path / "valkey")
    try:
        with pytest.raises(RuntimeError, match=rf"in use by another Valkey \(pid {a.pid}, port {a.port}"):
            b.start()
        assert b.proc is None
        a.kill()  # the lock goes with the server, however it dies
        b.start()
        assert redis.Redis(port=b.port).ping()
    finally:
        a.kill()
        b.kill()
