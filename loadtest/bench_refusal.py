"""What a refusal costs the gateway: CPU per refused PATCH (a benchmark, not a test).

    python -m loadtest.bench_refusal [--rounds 5] [--body 0 262144] [--against REV]

Under a surge most requests are refused, so the price of saying no is what decides how
many refusals a gateway process can give before it has no CPU left for the uploads it
lets in, and how long a burst of refusals keeps the event loop busy. Per round, a fresh
stack (`unggah serve`, embedded Valkey) with its buffer marked full, so admission refuses
every PATCH on arrival (`buffer-full`, the path every refusal takes: refusal, problem
response, audit record, metrics, log); `--connections` keep-alive clients each send
`--requests` PATCHes of each body size one after another. Reported: the gateway process's
CPU time (user + system, /proc) per refusal, the median over rounds. A refused body is
still read and discarded (keep-alive), so a body size shows what draining it adds.

`--against REV` runs a worktree of REV beside this tree, alternating every round, and
reports the ratio (its gateway imports REV's code through PYTHONPATH).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
import urllib.request
from contextlib import nullcontext
from pathlib import Path
from urllib.parse import urlparse

import redis as sync_redis

from buffer import keys
from loadtest.benchstack import Stack, gateway_stack, log, machine, worktree

def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def mark_buffer_full(st: Stack) -> str:
    """Create one upload, then set every partition's buffered bytes far above the budget:
    from the gateway's next buffer refresh on, every PATCH is refused on arrival."""
    req = urllib.request.Request(st.files, method="POST", headers={
        "Tus-Resumable": "1.0.0", "Upload-Length": str(1 << 30), "Authorization": f"Bearer {st.tokens['bench']}"})
    with urllib.request.urlopen(req) as resp:
        path = urlparse(resp.headers["Location"]).path
    r = sync_redis.Redis.from_url(st.redis_url)
    r.mset({keys.buffered_bytes(p): 1 << 40 for p in range(keys.MAX_PARTITIONS)})
    r.close()
    time.sleep(1.0)  # the gateway refreshes its view of the buffer every 0.2 s
    return path


async def _client(port: int, path: str, token: str, body: bytes, n: int, statuses: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = (f"PATCH {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nTus-Resumable: 1.0.0\r\n"
               f"Authorization: Bearer {token}\r\nContent-Type: application/offset+octet-stream\r\n"
               f"Upload-Offset: 0\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    try:
        for _ in range(n):
            writer.write(request)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                          if line.lower().startswith(b"content-length:"))
            await reader.readexactly(length)
            statuses[status] = statuses.get(status, 0) + 1
    finally:
        writer.close()


async def _refuse(port: int, path: str, token: str, body: bytes, connections: int, n: int) -> dict[int, int]:
    statuses: dict[int, int] = {}
    await asyncio.gather(*(_client(port, path, token, body, n, statuses) for _ in range(connections)))
    return statuses


def measure(st: Stack, path: str, body_size: int, connections: int, requests: int) -> float:
    """Gateway CPU microseconds per refusal over connections x requests refused PATCHes."""
    port = urlparse(st.files).port
    body = os.urandom(body_size)
    asyncio.run(_refuse(port, path, st.tokens["bench"], body, connections, 20))  # warm up
    before = cpu_seconds(st.gateway_pid)
    statuses = asyncio.run(_refuse(port, path, st.tokens["bench"], body, connections, requests))
    used = cpu_seconds(st.gateway_pid) - before
    if set(statuses) != {503}:
        raise RuntimeError(f"expected only refusals (503), got {statuses}")
    return used / sum(statuses.values()) * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m loadtest.bench_refusal", description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--body", type=int, nargs="+", default=[0, 262144], help="body sizes of the refused PATCHes, bytes")
    p.add_argument("--connections", type=int, default=8)
    p.add_argument("--requests", type=int, default=500, help="refused PATCHes per connection and body size")
    p.add_argument("--against", metavar="REV", help="also run this git revision's gateway, alternating rounds")
    a = p.parse_args(argv)

    def run(label: str, env: dict[str, str], results: dict) -> None:
        with gateway_stack(UNGGAH_BUFFER_BUDGET_BYTES=str(1 << 20), **env) as st:
            path = mark_buffer_full(st)
            for size in a.body:
                us = measure(st, path, size, a.connections, a.requests)
                results.setdefault((label, size), []).append(us)
                log(f"  {label}, body {size} B: {us:.0f} µs per refusal")

    results: dict[tuple[str, int], list[float]] = {}
    labels = ["this tree"]
    with worktree(a.against) if a.against else nullcontext() as rev_path:
        if rev_path:
            labels.append(a.against)
        for n in range(a.rounds):
            log(f"round {n + 1}")
            order = labels if n % 2 == 0 else labels[::-1]  # neither always runs first
            for label in order:
                run(label, {"PYTHONPATH": str(rev_path)} if label != "this tree" else {}, results)

    print(f"Machine: {machine()}; {a.rounds} rounds, {a.connections} connections x {a.requests} refused PATCHes "
          "per body size\n")
    print("| code | body | gateway CPU per refusal (median) | rounds | against the first |")
    print("|---|---:|---:|---|---:|")
    for size in a.body:
        base = statistics.median(results[(labels[0], size)])
        for label in labels:
            runs = results[(label, size)]
            med = statistics.median(runs)
            print(f"| {label} | {size} B | {med:.0f} µs | {', '.join(f'{r:.0f}' for r in runs)} | {med / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
