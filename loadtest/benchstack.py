"""What every benchmark here starts: an embedded Valkey, pairs with tokens, and one
`unggah serve` process, all in a temp folder, stopped by PID at the end."""

from __future__ import annotations

import asyncio
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import msgspec
import redis as sync_redis

from buffer import keys
from unggah import processes
from unggah.processes import free_port
from unggah.valkey import EmbeddedValkey


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Stack(msgspec.Struct):
    redis_url: str
    files: str  # the tus endpoint
    tokens: dict[str, str]  # pair -> bearer token
    work: Path
    gateway_pid: int

    @property
    def metrics(self) -> str:
        """The gateway's Prometheus endpoint."""
        return self.files.replace("/files/", "/metrics")

    def gateway_peak_rss(self) -> int:
        """The gateway process's peak resident memory so far, in bytes (Linux: VmHWM)."""
        for line in Path(f"/proc/{self.gateway_pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmHWM in /proc: peak memory is read on Linux only")


async def _issue_tokens(url: str, pairs: tuple[str, ...]) -> dict[str, str]:
    import redis.asyncio as aioredis

    from buffer.tenants import TenantStore
    r = aioredis.Redis.from_url(url)
    store = TenantStore(r)
    out = {}
    for pair in pairs:
        await store.add(pair, pair)
        out[pair] = (await store.issue(pair, "load generator"))[0]
    await r.aclose()
    return out


def start_process(args: list[str], url: str, state: Path, log_name: str, python: str = sys.executable,
                  **env_extra: str) -> subprocess.Popen:
    """`unggah <args>` in its own process; `python`: the interpreter to run it under (one with
    the project installed, e.g. another version's venv, or a venv of an older commit's worktree:
    isolated (-P) keeps the working directory's code from shadowing what that venv has installed)."""
    env = processes.environment(on_path=False, UNGGAH_REDIS_URL=url, UNGGAH_STATE_DIR=str(state),
                                UNGGAH_VALKEY_MAXMEMORY="8gb", UNGGAH_LOG_LEVEL="WARNING", **env_extra)
    return processes.start(processes.command(*args, python=python, isolated=True), env=env, log=state / log_name)


# No ingester drains the buffer here, so it only grows (gigabytes per run). Valkey's automatic
# AOF rewrite would then copy all of it in a forked child mid-run, taking a core from the
# processes being measured; with ingesters draining, the live data a rewrite copies is small.
NO_AOF_REWRITE = ("--auto-aof-rewrite-percentage", "0")


@contextmanager
def gateway_stack(pairs: tuple[str, ...] = ("bench",), fsync: str = "everysec", gateway_cpus: set[int] | None = None,
                  python: str = sys.executable, **settings: str):
    """`settings`: extra UNGGAH_* environment for the gateway, e.g. UNGGAH_APPEND_SLOTS="32".
    `gateway_cpus`: pin the gateway to these CPUs (the caller pins itself, and so Valkey, elsewhere).
    `python`: the interpreter the gateway runs under."""
    work = Path(tempfile.mkdtemp(prefix="unggah-bench-"))
    vk = EmbeddedValkey(work / "valkey", appendfsync=fsync, maxmemory="8gb", extra_args=NO_AOF_REWRITE).start()
    port = free_port()
    gw = None
    try:
        tokens = asyncio.run(_issue_tokens(vk.url, pairs))
        gw = start_process(["serve"], vk.url, work, "gateway.log", python, UNGGAH_PORT=str(port), **settings)
        if gateway_cpus:
            os.sched_setaffinity(gw.pid, gateway_cpus)
        processes.wait_ready(f"http://127.0.0.1:{port}/readyz", 10, gw, work / "gateway.log")
        yield Stack(redis_url=vk.url, files=f"http://127.0.0.1:{port}/files/", tokens=tokens, work=work,
                    gateway_pid=gw.pid)
    finally:
        if gw:
            processes.stop(gw)
        vk.stop()
        shutil.rmtree(work, ignore_errors=True)


@contextmanager
def worktree(rev: str):
    """A detached checkout of git revision `rev` in a temporary folder, removed afterwards. A
    gateway runs its code with PYTHONPATH=<the folder> (-P in start_process keeps the working
    directory out; the editable install's finder comes after PYTHONPATH)."""
    root = Path(__file__).resolve().parents[1]
    parent = Path(tempfile.mkdtemp(prefix="unggah-rev-"))
    path = parent / "tree"
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(path), rev],
                   check=True, capture_output=True)
    try:
        yield path
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(path)], capture_output=True)
        shutil.rmtree(parent, ignore_errors=True)


def empty_buffer(url: str) -> None:
    """Drop buffered uploads between runs (tenants and tokens stay)."""
    r = sync_redis.Redis.from_url(url)
    for key in r.scan_iter(f"{keys.PREFIX}:{{p*", count=1000):  # every partition-tagged key
        r.delete(key)
    r.close()


def cpu_steal() -> float:
    """CPU seconds the hypervisor has taken from this machine since boot, all CPUs (Linux:
    /proc/stat). On a shared VM, a benchmark round with steal in it ran on less machine."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    return int(fields[8]) / os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0.0


def machine() -> str:
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({cpu}), {platform.system()} {platform.release()}, Python {platform.python_version()}"
