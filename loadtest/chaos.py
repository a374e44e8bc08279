"""Chaos run: checksummed uploads through the whole stack while its processes are killed.

    python -m loadtest.chaos [--uploads 200] [--size-mb 4] [--fsync always|everysec] [--kills 3]

Starts `unggah up` (embedded Valkey, gateway, ingesters, validator, auditor) in a temp state
directory on a free 127.0.0.1 port, with auth off. Writes N random files of the given size to a
temp folder and uploads them with the project's own client (`client.api.push`: it resumes,
re-creates an upload the server has forgotten, and confirms storage). While the uploads run it
SIGKILLs, one at a time, Valkey, the gateway and an ingester (children of `unggah up`, found by
their command lines), in that order, round robin: kill i comes once the bytes on the blob store
pass (i+1)/(kills+1) of the total, and only after the previous victim is back (a new PID, and
/readyz answers). `unggah up` restarts each one.

Then every upload must be stored: GET <upload>/status says `stored`, and the file under
<state>/blobs/stored/<upload id> has the source file's sha256. The last line of stdout is the
verdict, e.g.

    chaos: 200 uploads, 3 kills (valkey, gateway, ingest-0), 200 stored, 0 lost, 0 mismatched: PASS

lost: not stored in the end (failed, never confirmed, or its blob is missing); mismatched: stored
with other bytes than were sent. Every one is listed above the verdict.

Under appendfsync everysec a kill -9 of Valkey can lose its last second. Such a loss must be
detected and reported (a witness marks the upload: its status says what to send again, or
410 upload-lost), and `unggah push` then sends it again: the run lists each one and counts it
in the verdict as "losses detected and reported", and it is not a failure. An upload the server
forgot silently (a 404 for a known upload, so the client made a new one) is counted as
re-created: a loss nobody reported, a FAIL in either mode.

Exit 0 on PASS, 1 on FAIL, 2 when the run itself could not be set up.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from unggah import processes
from unggah.processes import free_port

MiB = 1 << 20
VICTIMS = ("valkey", "gateway", "ingest-0")
RECOVERY_TIMEOUT_S = 60.0


def say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------ the stack's processes

def _argv(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _ppid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[1])


def role(argv: list[str]) -> str | None:
    """Which child of `unggah up` this command line is."""
    line = " " + " ".join(argv) + " "
    if "valkey-server" in line:
        return "valkey"
    if " serve " in line:
        return "gateway"
    if " ingest " in line:
        return argv[argv.index("--name") + 1] if "--name" in argv[:-1] else "ingest"
    if " validate " in line:
        return "validate"
    if " audit " in line:
        return "audit"
    return None


def children(up_pid: int) -> dict[str, int]:
    """The live children of `unggah up`, by role."""
    out: dict[str, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        if _ppid(pid) != up_pid:
            continue
        r = role(_argv(pid))
        if r is not None:
            out[r] = pid
    return out


def ready(base: str) -> bool:
    try:
        with urllib.request.urlopen(base + "/readyz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


class Stack:
    """`unggah up` as our child, in its own session, stopped by its PID."""

    def __init__(self, workdir: Path, fsync: str) -> None:
        self.workdir = workdir
        self.state_dir = workdir / "state"
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "unggah.log"
        # Never a Redis URL of the caller's: the stack's embedded Valkey, which we kill.
        env = processes.environment(UNGGAH_STATE_DIR=str(self.state_dir), UNGGAH_AUTH="off", UNGGAH_APPENDFSYNC=fsync)
        self.seen: dict[int, list[str]] = {}  # every child PID we have seen, with its command line
        # If we die without stopping it (kill -9), the kernel sends it SIGTERM: it stops its
        # children in order rather than outliving us (see unggah.processes.with_pdeathsig).
        self.proc = processes.start(processes.command("up", "--port", str(self.port)), env=env, cwd=workdir,
                                    log=self.log_path, session=True, pdeathsig=True)

    @property
    def blobs(self) -> Path:
        return self.state_dir / "blobs"

    def children(self) -> dict[str, int]:
        kids = children(self.proc.pid)
        for pid in kids.values():
            self.seen.setdefault(pid, _argv(pid))
        return kids

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"unggah up exited with {self.proc.returncode}\n{self.log_tail()}")
            if ready(self.base) and all(v in self.children() for v in VICTIMS):
                return
            time.sleep(0.1)
        raise RuntimeError(f"the stack was not ready within {timeout:.0f}s\n{self.log_tail()}")

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def stop(self, timeout: float = 90.0) -> None:
        """SIGTERM `unggah up` (it stops its children in order), SIGKILL what is left."""
        self.children()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid, argv in self.seen.items():  # an orphan, if any; the same command line, not a reused PID
            if argv and _argv(pid) == argv:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


# ------------------------------------------------------------------ the kills

@dataclass
class Kill:
    victim: str
    pid: int
    at_fraction: float  # share of the bytes on the blob store when it was killed
    at_s: float
    new_pid: int | None = None
    back_after_s: float | None = None
    after_uploads: bool = False  # the uploads had all finished before this kill

    def describe(self) -> str:
        back = (f"back as pid {self.new_pid} after {self.back_after_s:.1f}s" if self.new_pid
                else f"NOT back within {RECOVERY_TIMEOUT_S:.0f}s")
        when = "after the uploads had finished" if self.after_uploads else f"at {self.at_fraction:.0%} of the bytes stored"
        return f"  kill -9 {self.victim} (pid {self.pid}) at {self.at_s:.1f}s, {when}; {back}"


def bytes_on_disk(blobs: Path) -> int:
    total = 0
    for sub in ("partial", "stored"):
        try:
            with os.scandir(blobs / sub) as it:
                for e in it:
                    try:
                        total += e.stat().st_size
                    except OSError:
                        pass
        except OSError:
            pass
    return total


async def run_kills(stack: Stack, n: int, total: int, uploads_done: asyncio.Event, t0: float) -> list[Kill]:
    kills: list[Kill] = []
    for i in range(n):
        victim = VICTIMS[i % len(VICTIMS)]
        threshold = (i + 1) / (n + 1)
        while not uploads_done.is_set() and bytes_on_disk(stack.blobs) < threshold * total:
            await asyncio.sleep(0.02)
        pid = stack.children().get(victim)
        if pid is None:
            raise RuntimeError(f"no {victim} process under unggah up (pid {stack.proc.pid})")
        os.kill(pid, signal.SIGKILL)
        k = Kill(victim, pid, bytes_on_disk(stack.blobs) / total, time.monotonic() - t0,
                 after_uploads=uploads_done.is_set())
        kills.append(k)
        say(f"chaos: kill -9 {victim} (pid {pid}) at {k.at_s:.1f}s")
        killed_at = time.monotonic()
        while time.monotonic() - killed_at < RECOVERY_TIMEOUT_S:
            new = stack.children().get(victim)
            if new is not None and new != pid and await asyncio.to_thread(ready, stack.base):
                k.new_pid, k.back_after_s = new, time.monotonic() - killed_at
                break
            await asyncio.sleep(0.05)
        else:
            break  # a victim that does not come back ends the chaos (and fails the run)
    return kills


# ------------------------------------------------------------------ the uploads and the check

@dataclass
class Source:
    path: Path
    sha256: str


def write_sources(folder: Path, n: int, size: int) -> list[Source]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        data = os.urandom(size)
        p = folder / f"chaos-{i:04d}.bin"
        p.write_bytes(data)
        out.append(Source(p, hashlib.sha256(data).hexdigest()))
    return out


def sha256_of(path: Path) -> str | None:
    h = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(4 * MiB):
                h.update(chunk)
    except OSError:
        return None
    return h.hexdigest()


@dataclass
class Outcome:
    stored: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)  # "name: why"
    mismatched: list[str] = field(default_factory=list)
    recreated: list[str] = field(default_factory=list)
    reported: list[str] = field(default_factory=list)  # losses the server detected and reported


# In what `unggah push` notes when the server reported a loss (client/api.py: "the server lost ...
# in a crash ...") and it sent the file again; not in its note for an upload forgotten silently.
REPORTED_LOSS = " in a crash"


async def final_status(base_urls: dict[str, str], timeout: float) -> dict[str, dict]:
    """GET <url>/status for each upload until it is stored or failed, or the deadline."""
    import aiohttp
    out: dict[str, dict] = {}
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        waiting = dict(base_urls)
        while waiting:
            for name, url in list(waiting.items()):
                try:
                    async with http.get(url + "/status") as resp:
                        if resp.status == 200:
                            st = await resp.json()
                            out[name] = st
                            if st.get("state") in ("stored", "failed"):
                                del waiting[name]
                        elif resp.status == 404:
                            out[name] = {"state": "unknown", "reason": "404: the server does not know it"}
                            del waiting[name]
                except (aiohttp.ClientError, asyncio.TimeoutError):
                    pass
            if not waiting or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.5)
    return out


@dataclass
class Sent:
    """What the client knows of one file: from push's report, or its state file if push ran out of time."""
    url: str | None
    reason: str | None
    notes: list[str]


def sent_from_report(report) -> dict[str, Sent]:
    return {f.name: Sent(f.url, f.reason, list(f.notes)) for f in report.files}


def sent_from_state(path: Path, why: str) -> dict[str, Sent]:
    import orjson
    try:
        uploads = orjson.loads(path.read_bytes()).get("uploads", {})
    except (OSError, ValueError):
        uploads = {}
    return {e["name"]: Sent(e.get("url"), e.get("reason") or why, []) for e in uploads.values() if e.get("name")}


async def check(stack: Stack, sources: list[Source], results: dict[str, Sent], timeout: float) -> Outcome:
    out = Outcome()
    by_name = {s.path.name: s for s in sources}
    urls = {n: f.url for n, f in results.items() if f.url}
    statuses = await final_status(urls, timeout)
    for name, src in by_name.items():
        fr = results.get(name)
        if fr is not None and any("made a new upload" in n for n in fr.notes):
            out.recreated.append(f"{name}: " + "; ".join(n for n in fr.notes if "made a new upload" in n))
        if fr is not None and any(REPORTED_LOSS in n for n in fr.notes):
            out.reported.append(f"{name}: " + "; ".join(n for n in fr.notes if REPORTED_LOSS in n))
        if fr is None or not fr.url:
            out.lost.append(f"{name}: never created ({fr.reason if fr else 'not in the report'})")
            continue
        st = statuses.get(name, {})
        if st.get("state") != "stored":
            why = st.get("reason") or fr.reason or "no reason given"
            out.lost.append(f"{name}: {st.get('state', 'no status')} ({why}) at {fr.url}")
            continue
        upload_id = fr.url.rstrip("/").rsplit("/", 1)[1]
        got = await asyncio.to_thread(sha256_of, stack.blobs / "stored" / upload_id)
        if got is None:
            out.lost.append(f"{name}: status says stored but blobs/stored/{upload_id} is missing")
        elif got != src.sha256 or (st.get("sha256") or got) != src.sha256:
            out.mismatched.append(f"{name}: sent {src.sha256}, stored {got} (status says {st.get('sha256')}) "
                                  f"in blobs/stored/{upload_id}")
        else:
            out.stored.append(name)
    return out


async def run(a: argparse.Namespace, workdir: Path) -> tuple[str, bool]:
    from client.api import push

    size = int(a.size_mb * MiB)
    say(f"chaos: writing {a.uploads} random files of {a.size_mb:g} MiB in {workdir / 'files'}")
    sources = await asyncio.to_thread(write_sources, workdir / "files", a.uploads, size)
    stack = Stack(workdir, a.fsync)
    try:
        await asyncio.to_thread(stack.wait_ready)
        say(f"chaos: unggah up (pid {stack.proc.pid}) at {stack.base}, appendfsync {a.fsync}, "
            f"children {stack.children()}")
        t0 = time.monotonic()
        done = asyncio.Event()
        kills_task = asyncio.create_task(run_kills(stack, a.kills, a.uploads * size, done, t0))
        state_path = workdir / "push-state.json"
        # A generous retry budget: the run judges the server, not the client's patience.
        report = None
        try:
            report = await asyncio.wait_for(
                push([str(s.path) for s in sources], stack.base, parallel=a.parallel, state_path=state_path,
                     wait=a.wait, retry_ratio=1.0, retry_min=1000), a.timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            done.set()
        upload_s = time.monotonic() - t0
        kills = await kills_task
        if report is not None:
            results = sent_from_report(report)
            summary = (f"push finished in {upload_s:.1f}s ("
                       + ", ".join(f"{v} {k}" for k, v in sorted(report.counts().items()))
                       + f"; {report.requests} requests, {report.retries} retries)")
        else:
            results = sent_from_state(state_path, f"push did not finish within {a.timeout:.0f}s")
            summary = f"push did NOT finish within {a.timeout:.0f}s; judged from its state file"
        outcome = await check(stack, sources, results, a.wait if report is not None else 10.0)
        wall = time.monotonic() - t0
    finally:
        await asyncio.to_thread(stack.stop)
    say(f"chaos: {summary}; checked after {wall:.1f}s")
    for k in kills:
        say(k.describe())
    for title, items in (("lost", outcome.lost), ("mismatched", outcome.mismatched),
                         ("re-created (the server forgot them silently while they were sent)", outcome.recreated),
                         ("losses detected and reported by the server (sent again)", outcome.reported)):
        if items:
            say(f"chaos: {len(items)} {title}:")
            for line in items:
                say(f"  {line}")
    return verdict(outcome, kills, a.uploads, a.kills)


def verdict(outcome: Outcome, kills: list[Kill], uploads: int, planned_kills: int) -> tuple[str, bool]:
    """The last line of the run, and whether it passed: every upload stored with its bytes,
    every victim back, and no loss the server did not report."""
    all_back = len(kills) == planned_kills and all(k.new_pid for k in kills)
    ok = (all_back and not outcome.lost and not outcome.mismatched and not outcome.recreated
          and len(outcome.stored) == uploads)
    extra = f", {len(outcome.recreated)} re-created" if outcome.recreated else ""
    if outcome.reported:
        extra += f", {len(outcome.reported)} losses detected and reported"
    if not all_back:
        extra += ", a victim did not come back"
    names = ", ".join(k.victim for k in kills)
    line = (f"chaos: {uploads} uploads, {len(kills)} kills ({names}), {len(outcome.stored)} stored, "
            f"{len(outcome.lost)} lost, {len(outcome.mismatched)} mismatched{extra}: {'PASS' if ok else 'FAIL'}")
    return line, ok


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m loadtest.chaos", description=__doc__.split("\n\n")[0])
    p.add_argument("--uploads", type=int, default=200)
    p.add_argument("--size-mb", type=float, default=4.0, help="size of each file, MiB")
    p.add_argument("--fsync", choices=("always", "everysec"), default="always", help="Valkey's appendfsync")
    p.add_argument("--kills", type=int, default=3, help="kill -9s, round robin over valkey, gateway, ingest-0")
    p.add_argument("--parallel", type=int, default=4, help="files uploaded at once")
    p.add_argument("--wait", type=float, default=180.0, help="seconds to wait for the uploads to be stored")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds push may take, storage included")
    p.add_argument("--keep", action="store_true", help="keep the temp folder (kept anyway on FAIL)")
    return p


def _terminated(signum, frame):  # noqa: ARG001
    raise KeyboardInterrupt(f"stopped by signal {signum}")


def main(argv: list[str] | None = None) -> int:
    a = build_parser().parse_args(argv)
    # SIGTERM (a CI timeout, `kill`) tears down as Ctrl-C does: the stack is stopped by its PID.
    signal.signal(signal.SIGTERM, _terminated)
    if a.uploads < 1 or a.size_mb <= 0 or a.kills < 0:
        print("chaos: --uploads, --size-mb must be positive and --kills not negative", file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="unggah-chaos-"))
    t = time.monotonic()
    ok = False
    try:
        line, ok = asyncio.run(run(a, workdir))
    except (RuntimeError, OSError) as e:
        print(f"chaos: could not run: {e}", file=sys.stderr)
        say(f"chaos: {a.uploads} uploads: the run could not be completed (see {workdir}): ERROR")
        return 2
    finally:
        if ok and not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    if not ok:
        say(f"chaos: logs and files kept in {workdir}")
    say(f"chaos: wall time {time.monotonic() - t:.1f}s")
    say(line)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
