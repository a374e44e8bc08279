"""The real tus-js-client, default options, against unggah and the tus Node server in one run
(a benchmark, not a test).

    python -m loadtest.bench_clients [--cases whole-256 chunked-256 whole-1000 whole-32 parallel-256] [--rounds 1]
    python -m loadtest.bench_clients --client tuspy|push [--cases ...]
    python -m loadtest.bench_clients --open-loop [--factor 3] [--duration 60]

Why: our own load generators honour Retry-After, so they never showed what teams saw on the
night: a stock client that gives an upload up after four retries. Each case starts N uploads
at once from one Node process running tus-js-client 4.3.1 (loadtest/realclients), first
against the tus Node server (@tus/server + @tus/file-store), then against `unggah up`
(access control off, appendfsync always, its ingester running), and reports uploads
succeeded and failed, wall time and MB/s, and unggah's MB/s over the peer's (median over
rounds). For unggah, every upload the client saw succeed is then read back until its
status says `stored`.

`--client tuspy` drives tuspy (one thread per upload, its defaults: no retries, whole file
per PATCH) against both servers. `--client push` runs `unggah push` on a folder of the same
files, all in parallel; it speaks unggah's status and receipts, so it runs against unggah
only and the peer column is tus-js-client against the tus Node server in the same run.

`--open-loop` is deadline night past capacity: it measures each server's capacity with
the whole-32 case, then starts new 4 MiB uploads at `--factor` times unggah's capacity for
`--duration` seconds, bodies made as the client reads them. It reports creations refused
(and what Retry-After said), and accepted uploads that failed, which must be none.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

from loadtest import peers, realclients
from loadtest.benchstack import machine

MiB = 1 << 20
CASES = {
    "whole-32": dict(uploads=32, size=4 * MiB),
    "whole-256": dict(uploads=256, size=4 * MiB),
    "chunked-256": dict(uploads=256, size=4 * MiB, chunk_size=256 * 1024),
    "whole-1000": dict(uploads=1000, size=1 * MiB),
    "parallel-256": dict(uploads=256, size=4 * MiB, parallel_uploads=4),
}


def stored_by(urls: list[str], timeout: float = 120.0) -> tuple[int, float]:
    """How many of `urls` reach status `stored` within `timeout` (the ingester runs behind), and
    when (time.monotonic()) the last of those was seen stored."""
    left, deadline = set(urls), time.monotonic() + timeout
    last = time.monotonic()
    while left and time.monotonic() < deadline:
        for u in list(left):
            try:
                with urllib.request.urlopen(u + "/status", timeout=10) as resp:
                    if json.loads(resp.read()).get("state") == "stored":
                        left.discard(u)
                        last = time.monotonic()
            except OSError:
                pass
        if left:
            time.sleep(0.2)
    return len(urls) - len(left), last


def stored(urls: list[str], timeout: float = 120.0) -> int:
    """How many of `urls` reach status `stored` within `timeout`."""
    return stored_by(urls, timeout)[0]


def ratio(med: dict[str, float]) -> str:
    # @tus/file-store has no concatenation: parallelUploads gets 501 from the peer, and no ratio.
    return f"{med['unggah'] / med['tus-node']:.2f}x" if med["tus-node"] else "n/a (peer stored none)"


def run_client(client: str, url: str, spec: dict) -> dict:
    if client == "tuspy":
        return realclients.run_tuspy(url, timeout=300, uploads=spec["uploads"], size=spec["size"],
                                     chunk_size=spec.get("chunk_size"))
    if client == "push":
        return realclients.run_push(url, timeout=300, uploads=spec["uploads"], size=spec["size"],
                                    chunk_size=spec.get("chunk_size"))
    return realclients.run_tusjs(url, timeout=300, **spec)


def open_loop(factor: float, duration: float, size: int = 4 * MiB) -> None:
    """Arrivals at `factor` x unggah's measured capacity, against both servers in turn."""
    install = realclients.ensure_installed()
    capacity: dict[str, float] = {}
    results: dict[str, dict] = {}
    for name in ("unggah", "tus-node"):
        peer = peers.start_tus_node(install) if name == "tus-node" else peers.start_gateway()
        try:
            cap = realclients.run_tusjs(peer.url, timeout=300, **CASES["whole-32"])
            capacity[name] = cap["succeeded"] / cap["wall_s"]
            # Both servers get the same arrivals: a multiple of unggah's capacity.
            rate = factor * capacity["unggah"]
            print(f"{name}: capacity {capacity[name]:.1f} uploads/s of {size // MiB} MiB; "
                  f"open loop at {rate:.1f}/s for {duration:.0f} s", flush=True)
            r = realclients.run_tusjs(peer.url, size=size, rate=rate, duration=duration, lazy=True,
                                      timeout=600)
            if name == "unggah":
                r["stored"] = stored(r["urls"], timeout=300)
        finally:
            peer.stop()
        r["accepted"] = r["started"] - r["creation_refused"]
        results[name] = r
        print(f"{name}: {r['started']} started, {r['accepted']} accepted, {r['succeeded']} ok, "
              f"{r['creation_refused']} creations refused, {r['failed_after_accepted']} accepted failed, "
              f"{r['unfinished']} unfinished, stored {r.get('stored', '-')}, {r['wall_s']:.0f} s, "
              f"{r['mb_s']:.0f} MiB/s\n  errors {r['errors']}\n  responses {r['responses']}\n"
              f"  Retry-After on refused creations {r['retry_after_on_refused_creation']}", flush=True)
    print("\n| server | capacity, uploads/s | arrivals, uploads/s | started | creations refused | "
          "accepted | accepted failed | stored | goodput MiB/s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results.items():
        print(f"| {name} | {capacity[name]:.1f} | {factor * capacity['unggah']:.1f} | {r['started']} | "
              f"{r['creation_refused']} | {r['accepted']} | {r['failed_after_accepted']} | "
              f"{r.get('stored', '-')} | {r['mb_s']:.0f} |")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_clients", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=["whole-32", "whole-256", "chunked-256",
                                                                        "whole-1000"])
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--client", choices=("tusjs", "tuspy", "push"), default="tusjs")
    p.add_argument("--open-loop", action="store_true", help="arrivals beyond capacity instead of the cases")
    p.add_argument("--factor", type=float, default=3.0, help="open loop: arrivals over unggah's capacity")
    p.add_argument("--duration", type=float, default=60.0, help="open loop: seconds of arrivals")
    a = p.parse_args(argv)
    if a.open_loop:
        open_loop(a.factor, a.duration)
        return 0
    install = realclients.ensure_installed()
    print(f"Machine: {machine()}; {peers.node_version()}; {realclients.installed_versions()}\n", flush=True)
    client = a.client
    if client != "tusjs" and "parallel-256" in a.cases:
        p.error("parallel-256 is tus-js-client's parallelUploads; use it with --client tusjs")
    rows = []
    for case in a.cases:
        spec = CASES[case]
        runs: dict[str, list[dict]] = {"tus-node": [], "unggah": []}
        for _ in range(a.rounds):
            for name in runs:
                peer = peers.start_tus_node(install) if name == "tus-node" else peers.start_gateway()
                try:
                    # push speaks unggah's status and receipts: against the peer, tus-js-client stands in.
                    peer_client = "tusjs" if client == "push" and name == "tus-node" else client
                    r = run_client(peer_client, peer.url, spec)
                    if name == "unggah":
                        r["stored"] = stored(r["urls"])
                finally:
                    peer.stop()
                runs[name].append(r)
                print(f"{case} {name} ({r['client']}): {r['succeeded']}/{r['started']} ok, {r['failed']} failed "
                      f"{r['errors']}, {r['wall_s']:.1f} s, {r['mb_s']:.0f} MiB/s, stored {r.get('stored', '-')}",
                      flush=True)
        med = {n: statistics.median(x["mb_s"] for x in rs) for n, rs in runs.items()}
        rows.append((case, runs, med))
    print("\n| case | tus Node: ok / failed, wall, MiB/s | unggah: ok / failed / stored, wall, MiB/s | MiB/s ratio |")
    print("|---|---|---|---:|")
    for case, runs, med in rows:
        n, u = runs["tus-node"][-1], runs["unggah"][-1]
        print(f"| {case} | {n['succeeded']} / {n['failed']}, {n['wall_s']:.1f} s, {med['tus-node']:.0f} | "
              f"{u['succeeded']} / {u['failed']} / {u['stored']}, {u['wall_s']:.1f} s, {med['unggah']:.0f} | "
              f"{ratio(med)} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
