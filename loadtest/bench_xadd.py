"""Raw XADD of chunk-sized payloads from redis-py asyncio: the ceiling the
gateway's Redis side can reach, reported as the same Result as the tus load
generator so both print side by side.

Each of K connections sends pipelines of `depth` XADDs to its own stream and
DELetes that stream every `trim_every` entries, so memory stays bounded (the
deletes are inside the measured time: a real buffer is drained too).

    python -m loadtest.bench_xadd                      # embedded Valkey, AOF everysec
    python -m loadtest.bench_xadd --fsync no-aof,everysec,always --seconds 8
    python -m loadtest.bench_xadd --url redis://127.0.0.1:6379/0 --depth 16 --connections 2
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import uuid

import msgspec
import redis.asyncio as aredis
from redis.exceptions import RedisError

from loadtest.tusload import HEADER, KiB, Recorder, Result, parse_size, summarize


async def _writer(url: str, rec: Recorder, payloads: list[bytes], depth: int,
                  trim_every: int, deadline: float) -> None:
    client = aredis.Redis.from_url(url, max_connections=1)
    key = f"loadtest:xadd:{uuid.uuid4().hex}"
    size = len(payloads[0])
    written = 0
    i = 0
    try:
        while True:
            t0 = time.perf_counter()
            if t0 >= deadline:
                return
            pipe = client.pipeline(transaction=False)
            for _ in range(depth):
                pipe.xadd(key, {"d": payloads[i % len(payloads)]})
                i += 1
            try:
                await pipe.execute()
            except RedisError as e:
                # e.g. OOM under noeviction: count it, drop the stream, go on.
                rec.error(type(e).__name__, time.perf_counter())
                await client.delete(key)
                written = 0
                await asyncio.sleep(0.05)
                continue
            t1 = time.perf_counter()
            rec.chunk(t1 - t0, depth * size, t1, count=depth)
            written += depth
            if written >= trim_every:
                await client.delete(key)
                written = 0
    finally:
        try:
            await client.delete(key)
        finally:
            await client.aclose()


async def run_xadd(url: str, payload_size: int = 256 * KiB, seconds: float = 10.0, depth: int = 16,
                   *, connections: int = 1, warmup: float = 1.0, trim_every: int = 256,
                   label: str = "xadd") -> Result:
    """XADD `payload_size`-byte entries for `warmup` + `seconds`; entries/s, MB/s and
    per-entry latency (the round trip of the pipeline it went in) over `seconds`."""
    payloads = [os.urandom(payload_size) for _ in range(8)]
    rec = Recorder()
    now = time.perf_counter()
    rec.start = now + warmup
    rec.end = rec.start + seconds
    tasks = [asyncio.create_task(_writer(url, rec, payloads, depth, max(trim_every, depth), rec.end))
             for _ in range(connections)]
    await asyncio.gather(*tasks)
    return summarize(rec, label=label, mode=f"xadd d{depth}x{connections}", concurrency=depth * connections,
                     chunk=payload_size, seconds=seconds)


def start_valkey(fsync: str):
    """An embedded Valkey in a temp folder; fsync is no-aof, no, everysec or always."""
    from unggah.valkey import EmbeddedValkey
    data_dir = tempfile.mkdtemp(prefix="xadd-valkey-")
    v = EmbeddedValkey(data_dir, appendfsync="everysec" if fsync == "no-aof" else fsync).start()
    if fsync == "no-aof":
        import redis
        c = redis.Redis.from_url(v.url)
        c.config_set("appendonly", "no")
        c.close()
    return v, data_dir


def run_embedded(fsync: str, **kw) -> Result:
    v, data_dir = start_valkey(fsync)
    try:
        return _run(run_xadd(v.url, label=f"xadd {fsync}", **kw))
    finally:
        v.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


def _run(coro):
    try:
        import uvloop
        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_xadd", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", default=None, help="Redis URL; default: start an embedded Valkey per fsync mode")
    p.add_argument("--fsync", default="everysec",
                   help="embedded Valkey AOF modes, comma-separated: no-aof,no,everysec,always")
    p.add_argument("--payload", type=parse_size, default=256 * KiB)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--depth", type=int, default=16, help="XADDs per pipeline")
    p.add_argument("--connections", type=int, default=1)
    p.add_argument("--json", action="store_true")
    a = p.parse_args(argv)
    kw = dict(payload_size=a.payload, seconds=a.seconds, depth=a.depth,
              connections=a.connections, warmup=a.warmup)
    if a.url:
        results = [_run(run_xadd(a.url, label="xadd", **kw))]
    else:
        results = [run_embedded(mode.strip(), **kw) for mode in a.fsync.split(",") if mode.strip()]
    if a.json:
        for r in results:
            sys.stdout.write(msgspec.json.encode(r).decode() + "\n")
    else:
        print(HEADER)
        for r in results:
            print(r.row() + (f"  errors {r.errors}" if r.errors else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
