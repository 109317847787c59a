"""The cluster's rules with real hubs on one fake channel (MemoryCluster): no Redis, no sockets.

Every node takes the channel in its backplane's own task, so a published event
reaches anyone (its sender's node too) only once that task has run:
``settle()`` lets every task run until all are blocked. The tests run under
``autojump_clock``, so nothing here waits for real time.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
import trio
import trio.testing
from _v1 import LineUser

from triochat.backplane import Claim
from triochat.backplane.memory import MemoryBackplane, MemoryCluster
from triochat.core import events as ev
from triochat.core.hub import Hub
from triochat.protocol import line as p

LINE = p.LineDialect()
T0 = 1_700_000_000.0


class User(LineUser):
    """A v1 member of one node's hub, and what it has been sent."""

    def say(self, *texts: str) -> None:
        room = self.member.room
        assert room is not None
        self.hub.say(self.member, room, texts)

    def lines(self) -> list[str]:
        """What arrived since last asked, without timestamps."""
        out: list[str] = []
        while True:
            try:
                data = self.inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                return out
            for line in data.decode().splitlines():
                out.append(line.split("] ", 1)[1] if line.startswith("[") else line)


class Node:
    """One hub on its MemoryBackplane, with the claim-then-register steps of a session."""

    def __init__(self, cluster: MemoryCluster, *, history: int = 5) -> None:
        self.backplane: MemoryBackplane = cluster.backplane()
        self.hub = Hub(history=history, clock=lambda: T0, backplane=self.backplane)

    async def join(self, name: str) -> User:
        assert await self.backplane.claim(name) is Claim.CLAIMED
        return User(self.hub, name, LINE)


async def settle() -> None:
    """Let every node take what the channel holds for it."""
    await trio.testing.wait_all_tasks_blocked()


StartNode = Callable[[], Awaitable[Node]]


@pytest.fixture
async def start(autojump_clock: trio.testing.MockClock, nursery: trio.Nursery) -> StartNode:
    """``node = await start()``: a hub on a backplane of the test's cluster, running."""
    cluster = MemoryCluster(history=5)

    async def start_node() -> Node:
        node = Node(cluster)
        await nursery.start(node.backplane.run)
        return node

    return start_node


async def two_nodes(start: StartNode) -> tuple[Node, Node]:
    return await start(), await start()


async def test_a_line_from_one_node_reaches_the_other(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    await settle()
    assert ann.lines()[-1] == "* ben joined #lobby"
    ben.lines()
    ann.say("hello from a")
    # Not even its sender sees it before it has come back through the channel.
    assert ann.lines() == []
    await settle()
    assert ann.lines() == ben.lines() == ["<ann> hello from a"]
    ben.do(p.Me("waves"))
    await settle()
    assert ann.lines() == ben.lines() == ["* ben waves"]


async def test_every_node_sees_one_order(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    await settle()
    ann.lines(), ben.lines()
    for i in range(5):
        ann.say(f"a{i}")
        ben.say(f"b{i}", f"b{i}'")
    await settle()
    seen = ann.lines()
    assert seen == ben.lines()
    assert [line for line in seen if "<ann>" in line] == [f"<ann> a{i}" for i in range(5)]
    assert len(seen) == 15


async def test_names_are_unique_across_nodes(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann = await a.join("Ann")
    await settle()
    assert await b.backplane.claim("aNN") is Claim.TAKEN
    assert b.hub.name_unavailable("ANN") == "Name ANN is taken, choose another"
    # A claim not yet used holds the name too, on its own node as on others.
    assert await b.backplane.claim("cat") is Claim.CLAIMED
    assert await a.backplane.claim("CAT") is Claim.TAKEN
    b.backplane.unclaim("cat")
    assert await a.backplane.claim("cat") is Claim.CLAIMED
    # Leaving frees the name everywhere.
    ann.hub.leave(ann.member, "quit")
    await settle()
    assert await b.backplane.claim("ann") is Claim.CLAIMED


async def test_a_rename_frees_the_old_name_and_takes_the_new_one(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    assert await a.backplane.claim("anna") is Claim.CLAIMED  # The session claims first.
    ann.do(p.Nick("anna"))
    await settle()
    assert ben.lines()[-1] == "* ann is now known as anna"
    assert b.hub.name_unavailable("anna") is not None
    assert await b.backplane.claim("ann") is Claim.CLAIMED


async def test_users_rooms_and_private_messages_span_the_nodes(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    cat = await b.join("cat")
    cat.do(p.Join("#side"))
    await settle()
    ann.lines()
    ann.do(p.Users())
    ann.do(p.Rooms())
    assert ann.lines() == ["* Users in #lobby: ann, ben", "* Rooms: #lobby (2), #side (1)"]
    assert a.hub.online() == 3
    ben.lines()
    ann.say("one")
    ann.do(p.Msg("BEN", "psst"))
    ann.say("two")
    await settle()
    # The echo comes back through the channel too: in order with the sender's lines.
    assert ann.lines() == ["<ann> one", "-> *ben* psst", "<ann> two"]
    assert ben.lines() == ["<ann> one", "*ann* psst", "<ann> two"]


async def test_a_dead_nodes_users_are_announced_as_left(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann = await a.join("ann")
    ann.do(p.Join("#side"))
    ben = await b.join("ben")
    ben.do(p.Join("#side"))
    ben.say("only this once")
    await settle()
    ann.lines()
    b.backplane.crash()
    await settle()
    assert ann.lines() == ["* ben left #side (connection lost)"]
    ann.do(p.Users())
    assert ann.lines() == ["* Users in #side: ann"]
    assert a.hub.online() == 1
    assert await a.backplane.claim("ben") is Claim.CLAIMED
    # The dead node hears nothing more.
    ann.say("anyone?")
    await settle()
    assert "<ann> anyone?" not in ben.lines()


async def test_a_node_that_shuts_down_announces_its_users(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, _ = await a.join("ann"), await b.join("ben")
    await settle()
    ann.lines()
    await b.backplane.leave_cluster()
    await settle()
    assert ann.lines() == ["* ben left #lobby (server shutdown)"]
    assert a.hub.online() == 1
    assert await a.backplane.claim("ben") is Claim.CLAIMED


async def test_a_node_that_starts_later_gets_the_shared_history(start: StartNode) -> None:
    a = await start()
    ann = await a.join("ann")
    for i in range(7):
        ann.say(f"line {i}")
    await settle()
    c = await start()
    cat = await c.join("cat")
    said = [line for line in cat.lines() if line.startswith("<ann>")]
    assert said == [f"<ann> line {i}" for i in range(2, 7)]  # Capped at the history length.


async def test_a_rooms_history_goes_with_its_last_member_anywhere(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    for user in (ann, ben):
        user.do(p.Join("#tmp"))
    ann.say("said in #tmp")
    await settle()
    # Its last member on node A leaves, one on node B stays: the history stays everywhere.
    ann.do(p.Join(p.LOBBY))
    await settle()
    assert a.hub.history_rooms() == b.hub.history_rooms() == ["#lobby", "#tmp"]
    # Its last member anywhere leaves: gone from both nodes.
    ben.do(p.Join(p.LOBBY))
    await settle()
    assert a.hub.history_rooms() == b.hub.history_rooms() == ["#lobby"]
    ben.lines()
    ben.do(p.Join("#tmp"))
    assert ben.lines()[0] == "* Users in #tmp: ben"


async def test_a_join_that_overtakes_the_drop_keeps_the_history(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    ann.do(p.Join("#tmp"))
    ann.say("worth keeping")
    await settle()
    # Ann leaves (no node holds #tmp: the drop goes out) and Ben joins before node B
    # has taken the drop from the channel: B finds a member in the room, and undoes it.
    ann.do(p.Join(p.LOBBY))
    ben.do(p.Join("#tmp"))
    await settle()
    for node in (a, b):
        kept = [e for e in node.hub.recent("#tmp", 5) if isinstance(e, ev.Said)]
        assert [(e.name, e.text) for e in kept] == [("ann", "worth keeping")]
    cat = await a.join("cat")
    cat.do(p.Join("#tmp"))
    assert "<ann> worth keeping" in cat.lines()


async def test_the_cluster_numbers_each_rooms_events_once_in_one_epoch(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    for i in range(3):  # Both nodes publish at once, as fast as they can.
        ann.say(f"a{i}")
        ben.say(f"b{i}", f"b{i}'")
    await settle()
    states = [node.hub.room_state(p.LOBBY) for node in (a, b)]
    assert states[0] == states[1]
    assert states[0] is not None
    assert states[0].seq == 2 + 9  # two joins, nine lines: each number given once
    seen = [[e.seq for e in node.hub.recent(p.LOBBY, 5)] for node in (a, b)]
    assert seen[0] == seen[1] == list(range(7, 12))
    # The cluster lost its data (a Redis restarted without persistence): a new epoch,
    # so a client's old numbers can never be taken for the new ones.
    a.backplane.cluster.lose_data()
    ann.say("after")
    await settle()
    after = a.hub.room_state(p.LOBBY)
    assert after == b.hub.room_state(p.LOBBY)
    assert after is not None
    assert after.epoch != states[0].epoch
    assert after.seq == 1


async def test_away_changes_take_no_number_in_the_cluster(start: StartNode) -> None:
    a, b = await two_nodes(start)
    ann, ben = await a.join("ann"), await b.join("ben")
    await settle()
    before = a.hub.room_state(p.LOBBY)
    assert before is not None
    ann.say("one")
    a.hub.set_away(ann.member, "lunch")  # an Away event, through the channel like the lines
    ben.say("two")
    await settle()
    after = b.hub.room_state(p.LOBBY)
    assert after == a.hub.room_state(p.LOBBY)
    assert after is not None
    assert after.seq == before.seq + 2  # the two lines; the away change took no number
    said = [e.seq for e in b.hub.recent(p.LOBBY, 5)]
    assert said == [before.seq + 1, before.seq + 2]
    assert all(e.seq for e in a.backplane.cluster.tails[p.LOBBY])  # nor is it kept to resume
