"""Starting and stopping unggah's own processes: the one way `unggah up`, the benchmarks, the
rehearsals and the tests do it.

A child is `python -m commands.cli <args>` (`command`), with an environment made from the
caller's minus its own UNGGAH_* variables, plus the settings it should run with (`environment`),
started by `start` and stopped by its PID with `stop`. Every server listens on a free port of
127.0.0.1 (`free_port`) unless told otherwise.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import msgspec

from unggah.config import Settings

# The checkout this module belongs to: a child started from another folder imports it too.
ROOT = Path(__file__).resolve().parents[1]

# Run by `python -S -c` between fork and the real program: PR_SET_PDEATHSIG is set in the
# child itself (a preexec_fn would do the same but is unsafe in a process with threads), and it
# survives the execv that follows. If the parent died before prctl took effect, nothing would
# ever send the signal, so the child checks it still has the parent that started it.
_PDEATHSIG_WRAPPER = (
    "import ctypes,os,sys\n"
    "libc=ctypes.CDLL(None,use_errno=True)\n"
    "if libc.prctl(1,int(sys.argv[1]),0,0,0)!=0:\n"  # 1 = PR_SET_PDEATHSIG
    " sys.exit('prctl(PR_SET_PDEATHSIG) failed: '+os.strerror(ctypes.get_errno()))\n"
    "if os.getppid()!=int(sys.argv[2]):\n"
    " sys.exit('parent exited before the child started')\n"
    "os.execv(sys.argv[3],sys.argv[3:])\n"
)


def with_pdeathsig(argv: list[str], sig: int = signal.SIGTERM) -> list[str]:
    """`argv` wrapped so the kernel sends `sig` to the process when its parent dies, even by
    kill -9, when nothing of the parent's own runs to stop it.

    Linux only (elsewhere `argv` is returned as is, and only the owner's orderly stop holds).
    The PID stays the wrapped program's own (it execs). The death that counts is that of the
    parent *thread* that started the child: call this from a thread that lives as long as the
    child should (`unggah up` starts everything from its main thread).
    SIGTERM rather than SIGKILL: Valkey fsyncs its AOF, the gateway and ingesters let go of
    what they hold.
    """
    if not sys.platform.startswith("linux"):
        return list(argv)
    return [sys.executable, "-S", "-c", _PDEATHSIG_WRAPPER, str(int(sig)), str(os.getpid()), *argv]



def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def command(*args: str, python: str = sys.executable, isolated: bool = False) -> list[str]:
    """`unggah <args>` as an argv. `python`: the interpreter (one with the project installed,
    such as an older commit's venv); `isolated`: -P, so the working directory's code does not
    shadow what that interpreter has installed."""
    return [python, *(["-P"] if isolated else []), "-m", "commands.cli", *args]


def environment(settings: Settings | None = None, *, on_path: bool = True, **env: str) -> dict[str, str]:
    """The caller's environment without its UNGGAH_* variables (a child never inherits a Redis
    URL or a state directory by accident), then each of `settings` that differs from the
    default as UNGGAH_<NAME>, then `env`. `on_path`: this checkout first on PYTHONPATH, so a
    child started in another folder runs the same code."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("UNGGAH_")}
    if settings is not None:
        default = Settings()
        for f in msgspec.structs.fields(Settings):
            value = getattr(settings, f.name)
            if value != getattr(default, f.name):
                out["UNGGAH_" + f.name.upper()] = str(value)
    if on_path:
        out["PYTHONPATH"] = str(ROOT) + (os.pathsep + out["PYTHONPATH"] if out.get("PYTHONPATH") else "")
    out.update(env)
    return out


def start(argv: list[str], *, env: dict[str, str], log: Path | None = None, cwd: Path | None = None,
          session: bool = False, pdeathsig: bool = False) -> subprocess.Popen[bytes]:
    """Start `argv` (usually `command(...)`) with no stdin. `log`: its stdout and stderr are
    appended there (None: they are the caller's). `session`: its own session and process group,
    so the terminal's Ctrl-C reaches the caller only, and the caller can signal the group.
    `pdeathsig`: it gets SIGTERM if the caller dies (with_pdeathsig)."""
    if log is not None:
        log.parent.mkdir(parents=True, exist_ok=True)
    out = open(log, "ab") if log is not None else None
    try:
        return subprocess.Popen(with_pdeathsig(argv) if pdeathsig else argv, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, stdout=out,
                                stderr=subprocess.STDOUT if out is not None else None,
                                start_new_session=session)
    finally:
        if out is not None:
            out.close()  # the child holds its own copy


def stop(proc: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
    """Stop a child by its PID: `sig`, then SIGKILL if it is still there after `timeout`
    seconds. Its exit code."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_ready(url: str, timeout: float = 20.0, proc: subprocess.Popen | None = None, log: Path | None = None,
               stopping: Callable[[], bool] = lambda: False) -> bool:
    """Poll `url` (a /readyz) until it answers 200: True. False if `stopping()` turns true first
    (a stop asked for during start-up). RuntimeError, naming `log`, if `proc` exits or
    `timeout` passes first."""
    deadline = time.monotonic() + timeout
    see = f"; see {log}" if log else ""
    while not stopping():
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return True
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"it exited with code {proc.returncode} before {url} was ready{see}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} was not ready within {timeout:.0f} s{see}")
        time.sleep(0.05)
    return False
