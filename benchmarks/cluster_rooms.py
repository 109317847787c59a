"""A node's CPU for the joiners of a big room whose other members are on another node.

Usage: ``python benchmarks/cluster_rooms.py [--remote 10000] [--joiners 2000] [--quiet-above 200]``

Two hubs on one :class:`~triochat.backplane.memory.MemoryCluster`, in this process:
node A puts ``--remote`` members in ``#big``, then ``--joiners`` members register on
node B and join it. Prints B's CPU (process time) per join, and per ``/users`` of the
room (the first 50 names and the count) and per ``_quiet`` check once they are all
in. The cluster's channel is never read: what the hubs publish waits in it (the hubs'
presence calls reach the other node at once, as the replica's would). Run it under two
trees (``PYTHONPATH=TREE``) in turn to compare them.
"""

from __future__ import annotations

import argparse
import time

import trio

from triochat.backplane.memory import MemoryCluster
from triochat.core.hub import Hub, Member
from triochat.protocol import line as p

ROOM = "#big"


def _member(hub: Hub, name: str) -> tuple[Member, trio.MemoryReceiveChannel[bytes]]:
    send, receive = trio.open_memory_channel[bytes](1000)
    member = hub.register(name, send, lambda: None, p.LineDialect())
    assert isinstance(member, Member), member
    return member, receive


def main(args: argparse.Namespace) -> None:
    cluster = MemoryCluster(backlog=10**7)
    a = Hub(backplane=cluster.backplane(), quiet_above=args.quiet_above)
    b = Hub(backplane=cluster.backplane(), quiet_above=args.quiet_above)
    keep = []  # the receiving ends: a closed one would make the hub drop its member
    for i in range(args.remote):
        member, inbox = _member(a, f"r{i:06d}")
        a.join(member, ROOM)
        keep.append(inbox)
    joiners = []
    start = time.process_time()
    for i in range(args.joiners):
        member, inbox = _member(b, f"j{i:06d}")
        b.join(member, ROOM)
        keep.append(inbox)
        joiners.append(member)
        while True:  # what it was told: a real outbox is drained by its writer
            try:
                inbox.receive_nowait()
            except trio.WouldBlock:
                break
    joins = time.process_time() - start
    member = joiners[-1]
    room = member.rooms[ROOM]
    start = time.process_time()
    for _ in range(args.repeat):
        b._user_list(room)
    lists = time.process_time() - start
    start = time.process_time()
    for _ in range(args.repeat):
        b._quiet(room)
    quiets = time.process_time() - start
    print(
        f"remote={args.remote} joiners={args.joiners} quiet_above={args.quiet_above}"
        f" join_us={joins / args.joiners * 1e6:.1f}"
        f" user_list_us={lists / args.repeat * 1e6:.1f}"
        f" quiet_us={quiets / args.repeat * 1e6:.2f}"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--remote", type=int, default=10_000)
    parser.add_argument("--joiners", type=int, default=2000)
    parser.add_argument("--quiet-above", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=200)
    main(parser.parse_args())
