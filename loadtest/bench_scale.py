"""Scale-out side by side (a benchmark, not a test): one Valkey against a 3-primary cluster, one
gateway process against two, one ingester against three, and the tus Node server as the peer.

    python -m loadtest.bench_scale [--case whole-256] [--rounds 3] [--variants NAME ...]

Each variant is `unggah up` with its own arguments (access control off, appendfsync always, as
loadtest.bench_clients runs it); every round runs every variant once, in turn, so a noisy moment
of the machine falls on all of them alike. The load is the real tus-js-client at its defaults
(loadtest/realclients), N uploads at once. Reported per variant, as medians over the rounds:

- acknowledged MiB/s: bytes of the uploads the client saw succeed, over the client's wall time;
- p50 and p99 of one upload's time, from its start to the client's onSuccess;
- stored MiB/s: the same bytes over the time until the last of them was `stored` (read back
  from /status, so the ingesters' pace shows), counted from the client's start;
- and the ratio of acknowledged MiB/s to the peer's in the same round.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request

from loadtest import peers, realclients
from loadtest.bench_clients import CASES, stored_by
from loadtest.benchstack import machine

MiB = 1 << 20
VARIANTS = {
    "tus-node": None,
    "valkey-1gw-1ing": [],
    "cluster-1gw-1ing": ["--cluster"],
    "valkey-2gw-1ing": ["--gateways", "2"],
    "valkey-1gw-3ing": ["--ingesters", "3"],
    "cluster-2gw-3ing": ["--cluster", "--gateways", "2", "--ingesters", "3"],
}


def quantile(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def one(name: str, spec: dict, install) -> dict:
    args = VARIANTS[name]
    peer = peers.start_tus_node(install) if args is None else peers.start_gateway(extra_args=args, timeout=120)
    try:
        t0 = time.monotonic()
        r = realclients.run_tusjs(peer.url, timeout=300, **spec)
        if args is not None:
            count, last = stored_by(r["urls"], timeout=300)
            r["stored"] = count
            r["stored_mb_s"] = r["bytes_sent"] / MiB / (last - t0) if count == len(r["urls"]) and count else 0.0
    finally:
        peer.stop()
    r["p50"], r["p99"] = quantile(r["seconds"], 0.5), quantile(r["seconds"], 0.99)
    print(f"{name}: {r['succeeded']}/{r['started']} ok {r['errors'] or ''}, {r['wall_s']:.1f} s, "
          f"{r['mb_s']:.0f} MiB/s acknowledged, p50 {r['p50']:.2f} s, p99 {r['p99']:.2f} s, "
          f"stored {r.get('stored', '-')} at {r.get('stored_mb_s', 0):.0f} MiB/s", flush=True)
    return r


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_scale", description=__doc__.split("\n\n")[0])
    p.add_argument("--case", choices=list(CASES), default="whole-256")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    a = p.parse_args(argv)
    install = realclients.ensure_installed()
    print(f"Machine: {machine()}; {peers.node_version()}; {realclients.installed_versions()}; "
          f"case {a.case} {CASES[a.case]}\n", flush=True)
    runs: dict[str, list[dict]] = {n: [] for n in a.variants}
    for i in range(a.rounds):
        print(f"round {i + 1}", flush=True)
        for name in a.variants:
            runs[name].append(one(name, CASES[a.case], install))
    med = {n: {k: statistics.median(r.get(k, 0.0) for r in rs) for k in ("mb_s", "p50", "p99", "stored_mb_s")}
           for n, rs in runs.items()}
    peer = med.get("tus-node", {}).get("mb_s")
    print(f"\n| variant | ok / failed (last round) | acknowledged MiB/s | over the peer | upload p50 / p99, s | "
          f"stored MiB/s |")
    print("|---|---|---:|---:|---:|---:|")
    for n, m in med.items():
        last = runs[n][-1]
        over = f"{m['mb_s'] / peer:.2f}x" if peer and n != "tus-node" else "-"
        stored = "-" if n == "tus-node" else f"{m['stored_mb_s']:.0f}"
        print(f"| {n} | {last['succeeded']} / {last['failed']} | {m['mb_s']:.0f} | {over} | "
              f"{m['p50']:.2f} / {m['p99']:.2f} | {stored} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
