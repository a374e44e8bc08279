"""Fairness between pairs end to end (a benchmark, not a test).

    python -m loadtest.bench_fairness [--rounds 3] [--duration 6]

Pair A uploads with eight operators, pair B with one, at the same time, against one
`unggah serve` (tokens on) on an embedded Valkey; each pair's load generator runs in a
process of its own so neither shares an event loop with the other or with the gateway.
Reports each pair's accepted chunks/s and B's share (target: at least 40%), next to
B alone for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys

from loadtest.benchstack import empty_buffer, gateway_stack, log, machine


async def load(files: str, token: str, concurrency: int, seconds: float) -> dict:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "loadtest.tusload", "--url", files, "-c", str(concurrency),
        "--duration", str(seconds), "--warmup", "1", "--chunk", "128k", "--upload-size", "4m",
        "--checksum", "crc32c", "-H", f"Authorization: Bearer {token}", "--json",
        stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    return json.loads(out.decode().strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_fairness", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=6.0)
    a = p.parse_args(argv)
    rows = []
    with gateway_stack(pairs=("pair-a", "pair-b")) as st:
        tok, files = st.tokens, st.files
        for rnd in range(a.rounds):
            alone = asyncio.run(load(files, tok["pair-b"], 1, a.duration))
            empty_buffer(st.redis_url)

            async def both():
                return await asyncio.gather(load(files, tok["pair-a"], 8, a.duration),
                                            load(files, tok["pair-b"], 1, a.duration))
            many, one = asyncio.run(both())
            empty_buffer(st.redis_url)
            share = one["chunks_per_s"] / (one["chunks_per_s"] + many["chunks_per_s"])
            rows.append((alone, many, one, share))
            log(f"round {rnd + 1}: B alone {alone['chunks_per_s']:.0f}/s; A(8) {many['chunks_per_s']:.0f}/s, "
                f"B(1) {one['chunks_per_s']:.0f}/s: B's share {share:.0%}")
    med = statistics.median
    print(f"\nMachine: {machine()}; {a.rounds} rounds of {a.duration:g} s, medians; 128 KiB crc32c chunks\n")
    print("| pair B alone (1 operator) | pair A (8 operators) | pair B (1 operator) at the same time | B's share |")
    print("|---:|---:|---:|---:|")
    print(f"| {med(r[0]['chunks_per_s'] for r in rows):.0f} chunks/s | {med(r[1]['chunks_per_s'] for r in rows):.0f} "
          f"chunks/s (p99 {med(r[1]['p99_ms'] for r in rows):.0f} ms) | {med(r[2]['chunks_per_s'] for r in rows):.0f} "
          f"chunks/s (p99 {med(r[2]['p99_ms'] for r in rows):.0f} ms) | {med(r[3] for r in rows):.0%} |")
    print(f"\nTarget: B's share >= 40%: {med(r[3] for r in rows):.0%} (rounds: "
          + ", ".join(f"{r[3]:.0%}" for r in rows) + ")")
    return 0


if __name__ == "__main__":
    sys.exit(main())
