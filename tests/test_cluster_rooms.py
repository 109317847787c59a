"""A big room spread over the nodes of a cluster: its count and first names on every node,
from each backplane's per-room index of remote users (two or three real hubs on a
MemoryCluster, no Redis; the same over real Redis: ``test_redis_link.py``)."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from test_memory_cluster import LINE, T0, settle

from triochat.backplane.memory import MemoryBackplane, MemoryCluster
from triochat.core.hub import USERS_SHOWN, Hub, Member
from triochat.core.modstate import Publishing, SharedModeration
from triochat.protocol import line as p

BIG = "#big"
QUIET_ABOVE = 59


class Node:
    """A hub with shared moderation on a MemoryBackplane, and its members (never drained:
    their outboxes are big enough)."""

    def __init__(self, cluster: MemoryCluster) -> None:
        self.backplane: MemoryBackplane = cluster.backplane()
        self.moderation = SharedModeration(clock=trio.current_time, wall=lambda: T0)
        self.moderation.sinks.append(Publishing(self.backplane.publish_state))
        self.hub = Hub(
            clock=lambda: T0,
            backplane=self.backplane,
            moderation=self.moderation,
            quiet_above=QUIET_ABOVE,
        )
        self.members: dict[str, Member] = {}
        self.inboxes: dict[str, trio.MemoryReceiveChannel[bytes]] = {}

    def add(self, name: str) -> Member:
        send, self.inboxes[name] = trio.open_memory_channel[bytes](10_000)
        member = self.hub.register(name, send, lambda: None, LINE)
        assert isinstance(member, Member), member
        self.hub.join(member, BIG)
        self.members[name] = member
        return member

    def here(self) -> list[str]:
        """The names of this node's members in the big room."""
        room = self.hub._rooms.get(BIG)
        return [m.name for m in room.members] if room is not None else []

    def last_line(self, name: str) -> str:
        lines = []
        while True:
            try:
                lines.append(self.inboxes[name].receive_nowait())
            except trio.WouldBlock:
                return lines[-1].decode().splitlines()[-1].split("] ", 1)[-1]


def _order(names: list[str]) -> list[str]:
    return sorted(names, key=lambda name: (p.name_sort_key(name), name))


def check(nodes: list[Node]) -> None:
    """Every node's index of the others, and its list of the room, against a full count."""
    everyone = _order([name for node in nodes for name in node.here()])
    for node in nodes:
        others = _order([name for other in nodes if other is not node for name in other.here()])
        backplane = node.backplane
        assert backplane.remote_users(BIG) == others
        assert backplane.remote_count_in(BIG) == len(others)
        assert [name for _, name in backplane.remote_first(BIG, 5)] == others[:5]
        rooms = [r for o in nodes if o is not node for m in o.members.values() for r in m.rooms]
        assert backplane.remote_rooms() == dict(Counter(rooms))
        if node.here():
            listed = node.hub._user_list(node.hub._rooms[BIG])
            # Past the threshold the first names only (there are more than that), else all.
            shown = everyone[:USERS_SHOWN] if len(everyone) > QUIET_ABOVE else everyone
            assert (listed.names, listed.total) == (tuple(shown), len(everyone))


@pytest.fixture
async def cluster(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> MemoryCluster:
    return MemoryCluster(history=5)


async def _start(cluster: MemoryCluster, nursery: trio.Nursery) -> Node:
    node = Node(cluster)
    await nursery.start(node.backplane.run)
    return node


def _name(i: int) -> str:
    return f"{'U' if i % 3 == 0 else 'u'}{i:02}"  # some capitals: listed case-insensitively


async def test_a_big_rooms_count_and_first_names_follow_the_cluster(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    for i in range(QUIET_ABOVE):  # just below the threshold, over both nodes
        (a if i % 2 else b).add(_name(i))
    await settle()
    check([a, b])
    b.add(_name(QUIET_ABOVE))  # just above it
    await settle()
    check([a, b])
    # A node that starts later reads who is where (as a Redis node's snapshot).
    c = await _start(cluster, nursery)
    check([a, b, c])
    c.add("cy")
    nodes = [a, b, c]
    check(nodes)
    # Renames: the first name becomes the last, one past the first names the first.
    # (A change of case keeps the name's key: the same user, listed under its new name.)
    for node, old, new in ((a, "u01", "zz01"), (a, "u53", "Aa53"), (b, "u04", "U04")):
        node.members[new] = node.members.pop(old)
        node.hub.rename(node.members[new], new)
    check(nodes)
    # Leaves: of the room (among the first names, and past them), and of the chat.
    a.hub.part(a.members["Aa53"], BIG, "bye")
    a.hub.part(a.members["u55"], BIG, "bye")
    b.hub.leave(b.members["u02"], "quit")
    del b.members["u02"]
    check(nodes)
    a.hub.join(a.members["u55"], BIG)
    check(nodes)
    # A node goes away: the others forget its users, room by room.
    b.backplane.crash()
    await settle()
    check([a, c])
    assert a.backplane.remote_rooms() == {BIG: 1}


async def test_a_big_room_lists_and_marks_an_operator_on_another_node(
    cluster: MemoryCluster, nursery: trio.Nursery
) -> None:
    a, b = await _start(cluster, nursery), await _start(cluster, nursery)
    for i in range(QUIET_ABOVE + 5):
        (a if i % 2 else b).add(_name(i))
    ann = a.add("ann")  # among the first names, on A
    olga = a.add("zolga")  # past them, on A
    for member in (ann, olga):
        a.hub.set_account(member, member.key)
        a.moderation.op(BIG, member.key)
    await settle()
    assert b.moderation.is_op(BIG, "ann")
    listed = b.hub._user_list(b.hub._rooms[BIG])
    assert listed.names[0] == "ann"
    assert "zolga" not in listed.names
    assert listed.ops == frozenset({"ann"})
    # IRC's auditorium list (NAMES, WHO): the member and every operator in the room,
    # wherever it is connected.
    b.hub.audience(b.members["U00"], BIG)
    assert b.last_line("U00").startswith(f"* Users in #big ({QUIET_ABOVE + 7}): @ann, U00, @zolga")
    a.hub.part(olga, BIG, "bye")
    b.hub.audience(b.members["U00"], BIG)
    assert b.last_line("U00").startswith(f"* Users in #big ({QUIET_ABOVE + 6}): @ann, U00,")
