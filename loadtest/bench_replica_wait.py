"""What waiting for a replica costs per write, on a local Valkey Cluster (a benchmark, not a test).

    python -m loadtest.bench_replica_wait [--writes 30] [--size 102400]

Why: a write that must survive its primary's death has to be on the replica before it is
answered. Valkey offers two waits: WAIT numreplicas (the replica has the write in memory)
and WAITAOF numlocal numreplicas (the replica has also fsynced it to its AOF). This runs
each, after a SET of `--size` bytes on one connection, against a primary of an
EmbeddedCluster (3 primaries x 1 replica, appendfsync always), and prints the median and the
slowest write for each. The first row (no wait) is the floor.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

from unggah.valkey import EmbeddedCluster

WAITS = {
    "no wait (the floor)": ("PING",),
    "WAIT 1": ("WAIT", 1, 2000),
    "WAITAOF 1 0 (local fsync)": ("WAITAOF", 1, 0, 2000),
    "WAITAOF 1 1 (replica fsync)": ("WAITAOF", 1, 1, 2000),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writes", type=int, default=30)
    ap.add_argument("--size", type=int, default=100 * 1024)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as base, EmbeddedCluster(base, appendfsync="always") as cluster:
        key = "{bench}x"
        primary = cluster.primary_for(key)
        r = primary.client()
        body = b"x" * args.size
        print(f"{args.writes} writes of {args.size} bytes each to one primary (appendfsync always), ms:")
        print("| wait | median | slowest | last reply |\n|---|---:|---:|---|")
        for name, cmd in WAITS.items():
            times, reply = [], None
            for i in range(args.writes):
                pipe = r.pipeline(transaction=False)
                pipe.set(f"{key}{i}", body)
                pipe.execute_command(*cmd)
                t = time.perf_counter()
                reply = pipe.execute()[1]
                times.append((time.perf_counter() - t) * 1000)
            print(f"| {name} | {statistics.median(times):.2f} | {max(times):.2f} | {reply} |")


if __name__ == "__main__":
    main()
