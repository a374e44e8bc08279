"""The real tus-js-client, default options, against unggah and the tus Node server in one run
(a benchmark, not a test).

    python -m loadtest.bench_clients [--cases whole-256 chunked-256 whole-1000 whole-32 parallel-256] [--rounds 1]

Why: our own load generators honour Retry-After, so they never showed what teams saw on the
night: a stock client that gives an upload up after four retries. Each case starts N uploads
at once from one Node process running tus-js-client 4.3.1 (loadtest/realclients), first
against the tus Node server (@tus/server + @tus/file-store), then against `unggah up`
(access control off, appendfsync always, its ingester running), and reports uploads
succeeded and failed, wall time and MB/s, and unggah's MB/s over the peer's (median over
rounds). For unggah, every upload the client saw succeed is then read back until its
status says `stored`.
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


def stored(urls: list[str], timeout: float = 120.0) -> int:
    """How many of `urls` reach status `stored` within `timeout` (the ingester runs behind)."""
    left, deadline = set(urls), time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        for u in list(left):
            try:
                with urllib.request.urlopen(u + "/status", timeout=10) as resp:
                    if json.loads(resp.read()).get("state") == "stored":
                        left.discard(u)
            except OSError:
                pass
        if left:
            time.sleep(0.5)
    return len(urls) - len(left)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_clients", description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=["whole-32", "whole-256", "chunked-256",
                                                                        "whole-1000"])
    p.add_argument("--rounds", type=int, default=1)
    a = p.parse_args(argv)
    install = realclients.ensure_installed()
    print(f"Machine: {machine()}; {peers.node_version()}; {realclients.installed_versions()}\n", flush=True)
    rows = []
    for case in a.cases:
        spec = CASES[case]
        runs: dict[str, list[dict]] = {"tus-node": [], "unggah": []}
        for _ in range(a.rounds):
            for name in runs:
                peer = peers.start_tus_node(install) if name == "tus-node" else peers.start_gateway()
                try:
                    r = realclients.run_tusjs(peer.url, timeout=300, **spec)
                    if name == "unggah":
                        r["stored"] = stored(r["urls"])
                finally:
                    peer.stop()
                runs[name].append(r)
                print(f"{case} {name}: {r['succeeded']}/{r['started']} ok, {r['failed']} failed "
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
              f"{med['unggah'] / med['tus-node']:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
