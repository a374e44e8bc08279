"""Drain rate of one ingester against the accept rate of one gateway (a benchmark, not a test).

    python -m loadtest.bench_ingest [--rounds 3] [--duration 8] [--concurrency 32]

Per round, on one embedded Valkey (AOF everysec): the gateway alone accepts
crc32c-checksummed 256 KiB chunks for `duration` seconds (no ingester runs, so the
buffer fills); then one `unggah ingest` process starts and drains it to empty
(writes with pwrite, fsync per batch, acknowledges, finalises every upload with its
sha256). Reported: accept rate, drain rate, their ratio. Then both together for
`duration` seconds: does the backlog stay flat?
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import time

import redis as sync_redis

from buffer import keys

from loadtest.benchstack import empty_buffer, gateway_stack, log, machine, start_process
from loadtest.tusload import KiB, LoadConfig, run_load
from unggah.config import Settings
from unggah.processes import stop


def backlog(r: sync_redis.Redis, partitions: int) -> tuple[int, int]:
    entries = sum(r.xlen(keys.stream(p)) for p in range(partitions))
    data = sum(int(r.get(keys.buffered_bytes(p)) or 0) for p in range(partitions))
    return entries, data


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_ingest", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--chunk", type=int, default=256 * KiB)
    a = p.parse_args(argv)
    partitions = Settings().partitions  # the stack runs with the default
    rows = []
    with gateway_stack() as st:
        r = sync_redis.Redis.from_url(st.redis_url)
        cfg = LoadConfig(url=st.files, concurrency=a.concurrency, chunk=a.chunk, upload_size=32 * a.chunk,
                         duration=a.duration, warmup=0.0, checksum="crc32c",
                         headers={"Authorization": f"Bearer {st.tokens['bench']}"}, label="accept")
        for rnd in range(a.rounds):
            accepted = asyncio.run(run_load(cfg))
            entries, data = backlog(r, partitions)
            t0 = time.perf_counter()
            ing = start_process(["ingest", "--name", "bench.ingest-0"], st.redis_url, st.work, "ingest.log")
            while backlog(r, partitions)[0] > 0:
                time.sleep(0.05)
            drain_s = time.perf_counter() - t0  # includes the ingester's start-up (~0.5 s)
            both = None
            if rnd == a.rounds - 1:
                before = backlog(r, partitions)[1]
                both = asyncio.run(run_load(cfg))
                after = backlog(r, partitions)[1]
                both = (both, before, after)
            stop(ing)
            empty_buffer(st.redis_url)
            shutil.rmtree(st.work / "blobs", ignore_errors=True)
            rows.append((accepted, entries, data, drain_s, both))
            log(f"round {rnd + 1}: accepted {accepted.chunks_per_s:.0f} chunks/s; drained {entries} entries "
                f"({data / 1e6:.0f} MB) in {drain_s:.1f} s = {entries / drain_s:.0f} entries/s")
        r.close()

    med = statistics.median
    acc = med(x[0].chunks_per_s for x in rows)
    acc_mb = med(x[0].mb_per_s for x in rows)
    drain = med(x[1] / x[3] for x in rows)
    drain_mb = med(x[2] / 1e6 / x[3] for x in rows)
    print(f"\nMachine: {machine()}; Valkey everysec; {a.rounds} rounds, medians; {a.chunk // KiB} KiB chunks, "
          f"{a.concurrency} uploads\n")
    print("| one gateway accepts | one ingester drains (pwrite + fsync + ack + sha256) | drain / accept |")
    print("|---:|---:|---:|")
    print(f"| {acc:.0f} chunks/s ({acc_mb:.0f} MB/s) | {drain:.0f} entries/s ({drain_mb:.0f} MB/s) | {drain / acc:.2f} |")
    both, before, after = rows[-1][4]
    print(f"\nBoth at once for {a.duration:g} s: gateway {both.chunks_per_s:.0f} chunks/s, backlog "
          f"{before / 1e6:.0f} MB -> {after / 1e6:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
