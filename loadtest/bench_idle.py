"""Thousands of idle and slow connections beside 256 active uploads (a benchmark, not a test).

    python -m loadtest.bench_idle [--idle 5000] [--uploads 256]

Why: on deadline night most connections to the gateway do nothing useful: browsers that
keep a connection open, laptops behind a failing mobile link that send a header line every
few seconds. Each must cost the gateway little, and none may slow the uploads that are
moving. Per server (unggah up, then the tus Node server), `--idle` connections are opened
first: a third only connect, a third send half a request line, a third trickle header
bytes every 2 s. Then the real tus-js-client starts `--uploads` 4 MiB uploads with default
options. Reported: the server process's RSS before, with the connections open, and at the
end; how many idle connections were still open at the end; uploads stored and failed.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
from pathlib import Path

from loadtest import peers, realclients
from loadtest.bench_clients import stored
from loadtest.benchstack import machine

MiB = 1 << 20


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def serving_pid(peer: peers.Peer) -> int:
    """The process that holds the connections: the gateway under `unggah up`, else the peer."""
    for child in Path(f"/proc/{peer.pid}/task/{peer.pid}/children").read_text().split():
        cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
        if b"serve" in cmd:
            return int(child)
    return peer.pid


class IdleCrowd:
    """`n` connections held open on their own event loop thread, each idle, half-sent or trickling."""

    def __init__(self, host: str, port: int, n: int) -> None:
        self.host, self.port, self.n = host, port, n
        self.open = 0
        self.failed_to_connect = 0
        self.closed_by_server = 0
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self._tasks: list[asyncio.Future] = []
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> "IdleCrowd":
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._open_all(), self._loop).result(timeout=120)
        return self

    async def _open_all(self) -> None:
        self._stop = asyncio.Event()
        for i in range(self.n):
            try:
                _, w = await asyncio.open_connection(self.host, self.port)
            except OSError:
                self.failed_to_connect += 1
                continue
            self.open += 1
            self._tasks.append(asyncio.ensure_future(self._hold(w, i % 3)))

    async def _hold(self, w: asyncio.StreamWriter, kind: int) -> None:
        try:
            if kind == 1:
                w.write(b"PATCH /files/x HTTP/1.1\r\nHost: x\r\n")
            while not self._stop.is_set():
                if kind == 2:
                    w.write(b"X-Slow: 1\r\n")
                await w.drain()
                try:
                    await asyncio.wait_for(self._stop.wait(), 2.0)
                except asyncio.TimeoutError:
                    pass
                if w.transport.is_closing():
                    raise ConnectionError
        except (OSError, ConnectionError):
            self.closed_by_server += 1
            self.open -= 1
            return
        w.close()

    def still_open(self) -> int:
        return self.open

    def stop(self) -> None:
        if self._stop:
            self._loop.call_soon_threadsafe(self._stop.set)
        # Let each holder see the stop and close its socket, then end the loop.
        self._loop.call_soon_threadsafe(self._loop.call_later, 0.5, self._loop.stop)


def one(name: str, install: Path, n_idle: int, uploads: int) -> dict:
    peer = peers.start_tus_node(install) if name == "tus-node" else peers.start_gateway()
    try:
        pid = serving_pid(peer)
        out = {"server": name, "rss_before": rss_mib(pid)}
        host, port = "127.0.0.1", int(peer.url.split(":")[2].split("/")[0])
        crowd = IdleCrowd(host, port, n_idle).start()
        out.update(connected=crowd.open, refused_connect=crowd.failed_to_connect, rss_idle=rss_mib(pid))
        r = realclients.run_tusjs(peer.url, timeout=300, uploads=uploads, size=4 * MiB)
        out.update(ok=r["succeeded"], failed=r["failed"], errors=r["errors"], wall_s=r["wall_s"], mb_s=r["mb_s"],
                   rss_end=rss_mib(pid), idle_still_open=crowd.still_open())
        crowd.stop()
        if name == "unggah":
            out["stored"] = stored(r["urls"])
        return out
    finally:
        peer.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_idle", description=__doc__.split("\n\n")[0])
    p.add_argument("--idle", type=int, default=5000)
    p.add_argument("--uploads", type=int, default=256)
    a = p.parse_args(argv)
    install = realclients.ensure_installed()
    print(f"Machine: {machine()}; {peers.node_version()}; {realclients.installed_versions()}\n", flush=True)
    rows = [one(n, install, a.idle, a.uploads) for n in ("unggah", "tus-node")]
    print("\n| server | idle connections opened | RSS before / with them / at end, MiB | uploads ok / failed / stored "
          "| wall, MiB/s | idle still open at end |")
    print("|---|---:|---|---|---|---:|")
    for o in rows:
        print(f"| {o['server']} | {o['connected']} (refused {o['refused_connect']}) | {o['rss_before']:.0f} / "
              f"{o['rss_idle']:.0f} / {o['rss_end']:.0f} | {o['ok']} / {o['failed']} / {o.get('stored', '-')} "
              f"| {o['wall_s']:.1f} s, {o['mb_s']:.0f} | {o['idle_still_open']} |", flush=True)
        if o["errors"]:
            print(f"  errors: {o['errors']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
