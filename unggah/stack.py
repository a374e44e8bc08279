"""`unggah up`: the whole local stack in the foreground.

Embedded Valkey (unless a Redis URL is configured), one gateway process and
the ingester processes, each a child we hold by PID. Ctrl-C or SIGTERM stops
them in order: the gateway first (no new bytes), then the ingesters (they
finish or release their entries), then Valkey (it fsyncs its AOF).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from metrics.targets import write_targets
from unggah.config import Settings
from unggah.valkey import EmbeddedValkey, free_port


def running_url_file(settings: Settings) -> Path:
    """Where a running `unggah up` leaves its embedded Valkey's URL."""
    return Path(settings.state_dir) / "redis-url"


def _child(args: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Its own session: Ctrl-C (SIGINT to the terminal's process group) reaches only `unggah up`,
    # which then stops the children in order (gateway, workers, Valkey last).
    return subprocess.Popen([sys.executable, "-m", "unggah.cli", *args], env=env, start_new_session=True)


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the gateway exited with code {proc.returncode} during start-up")
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"the gateway did not become ready at {url} within {timeout}s")


def up(settings: Settings, port: int | None = None, ingesters: int | None = None) -> int:
    port = port or settings.port
    n_ingest = settings.ingest_processes if ingesters is None else ingesters
    env = dict(os.environ)
    valkey = None
    stopping = False

    def on_signal(signum, frame):  # noqa: ARG001
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    children: dict[str, subprocess.Popen[bytes]] = {}
    try:
        if settings.embedded:
            valkey = EmbeddedValkey(Path(settings.state_dir) / "valkey", appendfsync=settings.appendfsync,
                                    maxmemory=settings.valkey_maxmemory).start()
            env["UNGGAH_REDIS_URL"] = valkey.url
            # So `unggah tenants`, `unggah dead`, ... run beside the stack find its Valkey.
            running_url_file(settings).write_text(valkey.url)
        env["UNGGAH_STATE_DIR"] = settings.state_dir
        specs = {"gateway": ["serve", "--port", str(port)]}
        # Each ingester serves its own /metrics on a free port, kept across its restarts.
        metrics_ports = {f"ingest-{i}": free_port(settings.host) for i in range(n_ingest)}
        for i in range(n_ingest):
            specs[f"ingest-{i}"] = ["ingest", "--name", f"ingest-{i}",
                                    "--metrics-port", str(metrics_ports[f"ingest-{i}"])]
        # Exactly one validator: the only writer of the results store (<state_dir>/results.sqlite3).
        specs["validate"] = ["validate", "--name", "validate-0"]
        specs["audit"] = ["audit", "run"]
        for name, args in specs.items():
            children[name] = _child(args, env)
        base = f"http://{settings.host}:{port}"
        _wait_ready(base + "/readyz", children["gateway"])
        targets = write_targets(settings.state_dir, settings.host, port, metrics_ports)
        print(f"unggah is up (Ctrl-C stops it)\n"
              f"  tus endpoint  {base}/files/\n"
              f"  status        {base}/files/<id>/status\n"
              f"  metrics       {base}/metrics\n"
              f"  health        {base}/healthz  {base}/readyz\n"
              f"  redis         {env.get('UNGGAH_REDIS_URL', settings.redis_url)}"
              f"{' (embedded Valkey, AOF ' + settings.appendfsync + ')' if valkey else ''}\n"
              f"  ingesters     {n_ingest}, metrics at "
              f"{' '.join(f'http://{settings.host}:{p}/metrics' for p in metrics_ports.values()) or '-'}\n"
              f"  prometheus    file_sd targets in {targets}\n"
              f"  validation    {base}/progress  {base}/verdicts.csv  (results in {settings.results_path})\n"
              f"  state         {settings.state_dir}", flush=True)
        while not stopping:
            for name, proc in list(children.items()):
                if proc.poll() is not None and not stopping:
                    # A crashed child is restarted: an ingester's pending entries are
                    # picked up again under its stable name.
                    print(f"{name} exited with {proc.returncode}; restarting", file=sys.stderr, flush=True)
                    children[name] = _child(specs[name], env)
            time.sleep(0.2)
        return 0
    finally:
        for group in (["gateway"], [n for n in children if n != "gateway"]):
            for name in group:
                if name in children and children[name].poll() is None:
                    children[name].send_signal(signal.SIGTERM)
            for name in group:
                if name in children:
                    try:
                        children[name].wait(30)
                    except subprocess.TimeoutExpired:
                        children[name].kill()
                        children[name].wait()
        if valkey:
            valkey.stop()
            running_url_file(settings).unlink(missing_ok=True)
        print("unggah stopped", flush=True)
