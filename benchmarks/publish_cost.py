"""What one node's writes to Redis cost: batches of room events through the publisher.

Usage: ``python benchmarks/publish_cost.py [--batches 2000] [--events 1,50] [--url URL]``

Runs the node's own :class:`~triochat.backplane.redis.publisher.Publisher` against a
Redis (start a private one: ``redis-server --port 6390 --save ''``), writing batches
of ``#lobby`` chat lines as a node does, one after another, and prints the time per
batch and per event. Run it under two trees (``PYTHONPATH=TREE``) in turn to compare
what a change to the write path costs, apart from everything else a node does.
"""

from __future__ import annotations

import argparse
import time
import uuid
from typing import Any

import coredis
import trio

from triochat.backplane.redis.keys import Keys
from triochat.backplane.redis.options import RedisOptions
from triochat.backplane.redis.publisher import Events, Publisher
from triochat.core.events import Said


class _Node:
    def hosts(self, room: str) -> bool:
        return True

    def local_members(self) -> list[Any]:
        return []


async def main(args: argparse.Namespace) -> None:
    cluster = "cost-" + uuid.uuid4().hex[:8]
    options = RedisOptions(url=args.url, cluster=cluster)
    publisher = Publisher("n1", Keys(cluster), options)
    async with coredis.Redis.from_url(args.url) as client:
        for size in (int(n) for n in args.events.split(",")):
            batch = tuple(Said("#lobby", 0, time.time(), "sender", "x" * 64) for _ in range(size))
            start = time.perf_counter()
            for _ in range(args.batches):
                await publisher.write(client, _Node(), [Events(batch)])  # type: ignore[arg-type]
            seconds = time.perf_counter() - start
            per = seconds / args.batches * 1e6
            print(f"events/batch={size} us/batch={per:.0f} us/event={per / size:.1f}")
        keys = [key async for key in client.scan_iter(match=f"triochat:{cluster}:*")]
        if keys:
            await client.delete(keys)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=2000)
    parser.add_argument("--events", default="1,50")
    parser.add_argument("--url", default="redis://127.0.0.1:6390/0")
    trio.run(main, parser.parse_args())
