"""The test session's own servers: stopped however the run is stopped."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WAITS_FOREVER = '''
import time
from pathlib import Path

def test_waits(valkey):
    Path({pidfile!r}).write_text(str(valkey.pid))
    time.sleep(300)
'''


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigterm_to_the_test_run_stops_its_valkey(tmp_path):
    pidfile = tmp_path / "valkey.pid"
    (tmp_path / "test_waits.py").write_text(WAITS_FOREVER.format(pidfile=str(pidfile)))
    run = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest",
                            "-c", str(ROOT / "pyproject.toml"), "--rootdir", str(ROOT), "-p", "no:cacheprovider",
                            str(tmp_path / "test_waits.py")],
                           cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while not pidfile.exists() or not pidfile.read_text():
            assert run.poll() is None, run.stdout.read().decode()
            assert time.monotonic() < deadline, "the inner test run never started its Valkey"
            time.sleep(0.1)
        valkey_pid = int(pidfile.read_text())
        assert _alive(valkey_pid)
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=30)
        deadline = time.monotonic() + 20
        while _alive(valkey_pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not _alive(valkey_pid), "the session's Valkey outlived a SIGTERM to its test run"
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
        if pidfile.exists() and pidfile.read_text() and _alive(int(pidfile.read_text())):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
