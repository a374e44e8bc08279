"""What the AOF policy costs the gateway (a benchmark, not a test).

    python -m loadtest.bench_fsync [--rounds 3] [--duration 6]

Per round, a fresh embedded Valkey under each policy in turn (always, then everysec) and
one `unggah serve` (tokens on): closed-loop chunks/s at 64 uploads, 256 KiB crc32c
chunks. Reports each policy's median and the per-round ratio always / everysec.
`always` is the default because it is the policy under which an acknowledged append
survives a crash of Valkey or of the machine (see docs/architecture.md).
"""

from __future__ import annotations

import argparse
import statistics
import sys

from loadtest.benchstack import gateway_stack, log, machine
from loadtest.tusload import KiB, LoadConfig, run

POLICIES = ("always", "everysec")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_fsync", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0)
    p.add_argument("--chunk", type=int, default=256 * KiB)
    a = p.parse_args(argv)
    got: dict[str, list] = {policy: [] for policy in POLICIES}
    for rnd in range(a.rounds):
        for policy in POLICIES:
            with gateway_stack(fsync=policy) as st:
                res = run(LoadConfig(url=st.files, concurrency=64, chunk=a.chunk, upload_size=16 * a.chunk,
                                     duration=a.duration, warmup=1.5, checksum="crc32c", timeout=30,
                                     headers={"Authorization": f"Bearer {st.tokens['bench']}"}, label=policy))
            got[policy].append(res)
            log(f"round {rnd + 1}: {policy}: {res.chunks_per_s:.0f} chunks/s, p50 {res.p50_ms:.1f} ms, "
                f"p99 {res.p99_ms:.1f} ms")
    med = statistics.median
    ratios = [x.chunks_per_s / y.chunks_per_s for x, y in zip(got["always"], got["everysec"])]
    print(f"\nMachine: {machine()}; {a.rounds} rounds of {a.duration:g} s, medians; {a.chunk // KiB} KiB chunks\n")
    print("| appendfsync | chunks/s | p50 | p99 |")
    print("|---|---:|---:|---:|")
    for policy in POLICIES:
        rs = got[policy]
        print(f"| {policy} | {med(r.chunks_per_s for r in rs):.0f} | {med(r.p50_ms for r in rs):.1f} ms | "
              f"{med(r.p99_ms for r in rs):.0f} ms |")
    print(f"\nalways / everysec: {med(ratios):.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
