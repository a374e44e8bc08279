"""The admission gate's own cost with a long queue (a benchmark, not a test).

    python -m loadtest.bench_gate [--waiting 16 256 2048] [--repeat 5]

Per queue length N: N pieces of one tenant wait for a single slot (progress spread over
0..1); then every release grants the next piece while a new piece arrives and queues,
as under overload, where both happen about once per piece committed. Reports microseconds per release + arrival (median of
`repeat` runs), pure Python on one core: no sockets, no Redis.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import time

from gateway.admission import FairGate
from loadtest.benchstack import machine


async def one_run(n: int, rounds: int) -> float:
    gate = FairGate(slots=1, queue_limit=10 * n, max_wait=3600)
    rng = random.Random(n)
    await gate.acquire("pair", 0.5)  # the slot, held
    waiters = [asyncio.ensure_future(gate.acquire("pair", rng.random())) for _ in range(n)]
    await asyncio.sleep(0)  # all queued
    t0 = time.perf_counter()
    for _ in range(rounds):
        gate.release("pair")  # the most urgent waiter gets the slot
        waiters.append(asyncio.ensure_future(gate.acquire("pair", rng.random())))
        await asyncio.sleep(0)  # the granted waiter returns, the newcomer queues
    took = time.perf_counter() - t0
    for w in waiters:
        w.cancel()
    await asyncio.gather(*waiters, return_exceptions=True)
    return took / rounds * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_gate", description=__doc__.split("\n\n")[0])
    p.add_argument("--waiting", type=int, nargs="+", default=[16, 256, 2048])
    p.add_argument("--repeat", type=int, default=5)
    p.add_argument("--rounds", type=int, default=5000)
    a = p.parse_args(argv)
    print(f"Machine: {machine()}\n")
    print("| pieces waiting | µs per release + arrival (median) | runs |")
    print("|---:|---:|---|")
    for n in a.waiting:
        runs = [asyncio.run(one_run(n, a.rounds)) for _ in range(a.repeat)]
        print(f"| {n} | {statistics.median(runs):.1f} | {', '.join(f'{r:.1f}' for r in runs)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
