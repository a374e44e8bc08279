"""The gateway against raw XADD, side by side on one embedded Valkey (a benchmark, not a test).

    python -m loadtest.bench_gateway [--rounds 3] [--duration 8] [--concurrency 32,256]

One Valkey (AOF everysec by default), one `unggah serve` process with access tokens on,
and in each round, interleaved so noise hits all alike:
  - raw XADD of the same 256 KiB payloads from redis-py (pipeline depth 16): the ceiling;
  - the tus load generator, closed loop, crc32c-checksummed 256 KiB PATCHes, at each concurrency.
Then an open-loop run at 70% of the capacity just measured, spread over 256 uploads, for p99.
No ingester runs: this measures the accept path; the buffer is emptied between runs.
Prints a Markdown table (medians over rounds) and the ratios against the targets.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys

from loadtest.bench_xadd import run_xadd
from loadtest.benchstack import empty_buffer, gateway_stack, log, machine
from loadtest.tusload import KiB, LoadConfig, Result, run_load


def med(results: list[Result], attr: str) -> float:
    return statistics.median(getattr(r, attr) for r in results)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_gateway", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.5)
    p.add_argument("--concurrency", default="32,256")
    p.add_argument("--fsync", default="everysec", choices=["everysec", "always", "no"])
    p.add_argument("--chunk", type=int, default=256 * KiB)
    p.add_argument("--open-loop-share", type=float, default=0.7)
    a = p.parse_args(argv)
    concurrencies = [int(c) for c in a.concurrency.split(",")]

    with gateway_stack(fsync=a.fsync) as st:
        files = st.files
        headers = {"Authorization": f"Bearer {st.tokens['bench']}"}
        xadd: list[Result] = []
        tus: dict[int, list[Result]] = {c: [] for c in concurrencies}
        for rnd in range(a.rounds):
            order = ["xadd", *concurrencies]
            order = order[rnd % len(order):] + order[:rnd % len(order)]
            for what in order:
                if what == "xadd":
                    r = asyncio.run(run_xadd(st.redis_url, payload_size=a.chunk, seconds=a.duration, depth=16,
                                             warmup=a.warmup, label="raw XADD"))
                    xadd.append(r)
                else:
                    cfg = LoadConfig(url=files, concurrency=what, chunk=a.chunk, upload_size=32 * a.chunk,
                                     duration=a.duration, warmup=a.warmup, checksum="crc32c", headers=headers,
                                     label=f"gateway c{what}")
                    r = asyncio.run(run_load(cfg))
                    tus[what].append(r)
                empty_buffer(st.redis_url)
                log(f"round {rnd + 1}: {r.row()}")
        # Open loop at a share of the capacity measured at the highest concurrency.
        top = max(concurrencies)
        rate = a.open_loop_share * med(tus[top], "chunks_per_s")
        cfg = LoadConfig(url=files, concurrency=top, chunk=a.chunk, upload_size=32 * a.chunk, duration=a.duration,
                         warmup=a.warmup, checksum="crc32c", headers=headers, rate=rate,
                         label=f"open loop {a.open_loop_share:.0%}")
        open_loop = asyncio.run(run_load(cfg))

    x_cps = med(xadd, "chunks_per_s")
    print(f"\nMachine: {machine()}; Valkey {a.fsync}; {a.rounds} rounds of {a.duration:g} s, medians; "
          f"{a.chunk // KiB} KiB chunks, MB = 10^6 bytes\n")
    print("| what | concurrency | chunks/s | MB/s | p50 ms | p99 ms | vs raw XADD |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| raw XADD (redis-py, pipeline 16) | 16 | {x_cps:.0f} | {med(xadd, 'mb_per_s'):.0f} | "
          f"{med(xadd, 'p50_ms'):.1f} | {med(xadd, 'p99_ms'):.1f} | 1.00 |")
    for c in concurrencies:
        cps = med(tus[c], "chunks_per_s")
        print(f"| gateway, crc32c PATCH, tokens on | {c} | {cps:.0f} | {med(tus[c], 'mb_per_s'):.0f} | "
              f"{med(tus[c], 'p50_ms'):.1f} | {med(tus[c], 'p99_ms'):.1f} | {cps / x_cps:.2f} |")
    print(f"| gateway open loop at {a.open_loop_share:.0%} ({rate:.0f} chunks/s offered) | {top} | "
          f"{open_loop.chunks_per_s:.0f} | {open_loop.mb_per_s:.0f} | {open_loop.p50_ms:.1f} | "
          f"{open_loop.p99_ms:.1f} | |")
    print("\nTargets: gateway >= 70% of raw XADD: "
          + ", ".join(f"c{c} {med(tus[c], 'chunks_per_s') / x_cps:.0%}" for c in concurrencies)
          + f"; open-loop p99 <= 50 ms: {open_loop.p99_ms:.1f} ms (backlog {open_loop.backlog})")
    print("Per-round rows: " + "; ".join(f"{r.label} {r.chunks_per_s:.0f}" for r in xadd + sum(tus.values(), [])))
    return 0


if __name__ == "__main__":
    sys.exit(main())
