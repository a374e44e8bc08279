"""A quiet client beside a load test: how fast does the gateway answer one operator?

    python -m loadtest.probe --url http://127.0.0.1:8080/files/ --seconds 8 [--delay 1.5] -H 'Authorization: Bearer ...'

The load generator's own event loop is busy with hundreds of uploads, and its
latencies include that. This probe runs in its own process with a few
connections and almost nothing else to do: each connection starts a one-chunk
upload (progress 0, the first to be refused under completion first), sends its
chunk, notes how long the answer took and whether it was a refusal, and starts
again after a short pause. Prints one JSON line: counts and percentiles of
refused and admitted answers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from urllib.parse import urljoin

import aiohttp
import msgspec

from loadtest.tusload import KiB, REFUSAL, TUS, parse_header, parse_size, percentile


class ProbeResult(msgspec.Struct):
    refused: int
    refused_p50_ms: float
    refused_p99_ms: float
    refused_max_ms: float
    admitted: int
    admitted_p50_ms: float
    errors: int
    refused_ms: list[float] = []  # every refusal's answer time, for pooling over rounds


async def probe(url: str, headers: dict[str, str], seconds: float, delay: float, connections: int,
                chunk: int, pause: float) -> ProbeResult:
    body = os.urandom(chunk)
    refused: list[float] = []
    admitted: list[float] = []
    errors = 0
    base = {**headers, "Tus-Resumable": TUS}

    async def one(http: aiohttp.ClientSession, end: float) -> None:
        nonlocal errors
        while time.perf_counter() < end:
            try:
                async with http.post(url, headers={**base, "Upload-Length": str(chunk)}) as resp:
                    location = resp.headers.get("Location")
                if resp.status != 201 or not location:
                    await asyncio.sleep(pause)
                    continue
                t0 = time.perf_counter()
                async with http.patch(urljoin(url, location), data=body,
                                      headers={**base, "Upload-Offset": "0",
                                               "Content-Type": "application/offset+octet-stream"}) as resp:
                    await resp.read()
                    took = time.perf_counter() - t0
                if resp.status in REFUSAL:
                    refused.append(took)
                elif resp.status == 204:
                    admitted.append(took)
                else:
                    errors += 1
            except (aiohttp.ClientError, asyncio.TimeoutError):
                errors += 1
            await asyncio.sleep(pause)

    await asyncio.sleep(delay)
    end = time.perf_counter() + seconds
    sessions = [aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) for _ in range(connections)]
    try:
        await asyncio.gather(*(one(http, end) for http in sessions))
    finally:
        await asyncio.gather(*(http.close() for http in sessions))
    refused.sort()
    admitted.sort()
    return ProbeResult(refused=len(refused), refused_p50_ms=percentile(refused, 0.5) * 1e3,
                       refused_p99_ms=percentile(refused, 0.99) * 1e3,
                       refused_max_ms=(refused[-1] * 1e3 if refused else 0.0),
                       admitted=len(admitted), admitted_p50_ms=percentile(admitted, 0.5) * 1e3, errors=errors,
                       refused_ms=[round(x * 1e3, 3) for x in refused])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.probe", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="creation URL, e.g. http://127.0.0.1:8080/files/")
    p.add_argument("--seconds", type=float, default=8.0, help="how long to probe")
    p.add_argument("--delay", type=float, default=0.0, help="wait this long first (the load's warm-up)")
    p.add_argument("--connections", type=int, default=4)
    p.add_argument("--chunk", type=parse_size, default=256 * KiB)
    p.add_argument("--pause", type=float, default=0.02, help="seconds between one connection's requests")
    p.add_argument("-H", "--header", type=parse_header, action="append", default=[])
    a = p.parse_args(argv)
    import uvloop
    result = uvloop.run(probe(a.url, dict(a.header), a.seconds, a.delay, a.connections, a.chunk, a.pause))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
