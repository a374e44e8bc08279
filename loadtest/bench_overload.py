"""Overload: three times the load the gateway can carry (a benchmark, not a test).

    python -m loadtest.bench_overload [--rounds 3] [--duration 8] [--factor 3]

Per round, on one embedded Valkey (AOF everysec) and one `unggah serve` (tokens on):
capacity = closed-loop chunks/s at 64 uploads; then an open-loop run offering
`factor` x capacity over 256 uploads, each its own client with its own connection,
honouring Retry-After. Reports goodput (accepted chunks/s) against capacity, how fast
refusals are answered as the load generator sees it (from sending the request to the
refusal's arrival), and timeouts. Targets (issue 4): goodput >= 90% of capacity,
refusal p99 <= 10 ms.
"""

from __future__ import annotations

import argparse
import statistics
import sys

from loadtest.benchstack import empty_buffer, gateway_stack, log, machine
from loadtest.tusload import KiB, LoadConfig, run


def refusal_reasons(metrics_url: str) -> dict[str, float]:
    """The gateway's own count of refusals by reason (cumulative over the run)."""
    import urllib.request
    out: dict[str, float] = {}
    with urllib.request.urlopen(metrics_url, timeout=10) as resp:
        for line in resp.read().decode().splitlines():
            if line.startswith("unggah_refusals_total{"):
                reason = line.split('reason="', 1)[1].split('"', 1)[0]
                out[reason] = out.get(reason, 0) + float(line.rsplit(" ", 1)[1])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_overload", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--factor", type=float, default=3.0)
    p.add_argument("--chunk", type=int, default=256 * KiB)
    p.add_argument("--uploads", type=int, default=256, help="uploads (clients) offering the overload")
    a = p.parse_args(argv)
    rows = []
    with gateway_stack() as st:
        base = dict(url=st.files, chunk=a.chunk, upload_size=16 * a.chunk, duration=a.duration, warmup=1.5,
                    checksum="crc32c", headers={"Authorization": f"Bearer {st.tokens['bench']}"}, timeout=30)
        for rnd in range(a.rounds):
            cap = run(LoadConfig(concurrency=64, label="capacity", **base))
            empty_buffer(st.redis_url)
            over = run(LoadConfig(concurrency=a.uploads, rate=a.factor * cap.chunks_per_s,
                                  label=f"{a.factor:g}x offered", **base))
            empty_buffer(st.redis_url)
            timeouts = over.errors.get("timeout", 0)
            rows.append((cap, over, timeouts))
            reasons = refusal_reasons(st.files.replace("/files/", "/metrics"))
            log(f"round {rnd + 1}: capacity {cap.chunks_per_s:.0f}/s; offered {a.factor * cap.chunks_per_s:.0f}/s: "
                f"goodput {over.chunks_per_s:.0f}/s, refusals {over.refusals} (p50 {over.refusal_p50_ms:.1f} ms, "
                f"p99 {over.refusal_p99_ms:.1f} ms), "
                f"timeouts {timeouts}, errors {over.errors}; refusals so far by reason {reasons}")

    med = statistics.median
    capacity = med(c.chunks_per_s for c, _, _ in rows)
    goodput = med(o.chunks_per_s for _, o, _ in rows)
    ratio = med(o.chunks_per_s / c.chunks_per_s for c, o, _ in rows)
    refusal_p99 = med(o.refusal_p99_ms for _, o, _ in rows)
    print(f"\nMachine: {machine()}; {a.rounds} rounds of {a.duration:g} s, medians; {a.chunk // KiB} KiB chunks\n")
    print("| capacity (closed loop, 64 uploads) | offered | goodput | goodput / capacity | refusals per round | "
          "refusal answered p50 | p99 | timeouts |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {capacity:.0f} chunks/s | {a.factor:g}x over {a.uploads} uploads | {goodput:.0f} chunks/s | {ratio:.0%} "
          f"({', '.join(f'{o.chunks_per_s / c.chunks_per_s:.0%}' for c, o, _ in rows)}) | "
          f"{med(o.refusals for _, o, _ in rows):.0f} | {med(o.refusal_p50_ms for _, o, _ in rows):.1f} ms | "
          f"{refusal_p99:.1f} ms ({', '.join(f'{o.refusal_p99_ms:.1f}' for _, o, _ in rows)}) | "
          f"{sum(t for _, _, t in rows)} |")
    print(f"\nTargets: goodput >= 90% of capacity: {ratio:.0%}; refusal p99 <= 10 ms: {refusal_p99:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
