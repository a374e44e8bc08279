"""`unggah dead list|replay`: see what was given up on, and put it back after a fix."""

from __future__ import annotations

import argparse

from buffer import keys
from buffer.connection import connect
from buffer.queue import Queue
from unggah.config import Settings


async def main(settings: Settings, args: argparse.Namespace) -> int:
    if settings.embedded:
        print("set UNGGAH_REDIS_URL to the running stack's Redis (printed by 'unggah up')")
        return 2
    client = connect(settings.redis_url, cluster=settings.redis_cluster)
    q = Queue(client, settings.partitions)
    try:
        letters = [(p, i, d) for p in range(settings.partitions) for i, d in await q.dead_letters(p)]
        if args.upload:
            letters = [x for x in letters if x[2].u == args.upload]
        if args.action == "list":
            if not letters:
                print("no dead letters")
            for p, dead_id, d in letters:
                print(f"{dead_id}  partition {p}  upload {d.u}  kind {d.k}  offset {d.o}  "
                      f"deliveries {d.deliveries}  reason: {d.reason}")
            return 0
        chosen = [x for x in letters if not args.ids or x[1] in args.ids]
        missing = set(args.ids) - {x[1] for x in chosen}
        for dead_id in missing:
            print(f"no dead letter {dead_id}")
        for p, dead_id, d in chosen:
            await q.replay(p, dead_id, d.u)
            print(f"replayed {dead_id} (upload {d.u}) onto {keys.stream(p)}")
        return 1 if missing else 0
    finally:
        await client.aclose()
