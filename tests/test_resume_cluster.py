"""Resume across the nodes of a cluster, on MemoryCluster under trio's jumping clock.

Two whole servers (``serve``, their expiry of held members included) share one
``MemoryCluster``; clients reach either over memory streams. A v2 member cut on
node A comes back on node B.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio
import trio.testing
from _accounts import open_accounts
from _v2 import Client, Connect, ConnectV2, V2Client, resume, serving, v1_user

from triochat import ChatServer
from triochat.backplane.memory import MemoryBackplane, MemoryCluster
from triochat.client.connection import ChatClient, ConnectOptions
from triochat.client.resuming import ResumingClient
from triochat.core.accounts import Request
from triochat.core.resume import CANNOT_RESUME

Side = tuple[ChatServer, Connect, ConnectV2]


@asynccontextmanager
async def two_nodes(
    accounts: tuple[Path, Path] | None = None, **options: Any
) -> AsyncIterator[tuple[Side, Side]]:
    """Two servers on one MemoryCluster (``accounts``: each its own ``--db`` file)."""
    cluster = MemoryCluster(history=20)
    books = [open_accounts(path) for path in accounts] if accounts else [None, None]
    try:
        async with (
            serving(cluster.backplane(), books[0], **options) as a,
            serving(cluster.backplane(), books[1], **options) as b,
        ):
            yield a, b
    finally:
        for book in books:
            if book is not None:
                book.close()


def backplane(server: ChatServer) -> MemoryBackplane:
    assert isinstance(server.backplane, MemoryBackplane)
    return server.backplane


async def settle() -> None:
    await trio.testing.wait_all_tasks_blocked()


async def held_on(connect_v2: ConnectV2, name: str) -> V2Client:
    """A v2 member registered (in the lobby), then cut: held by its node."""
    client = await connect_v2()
    await client.register(name)
    await client.parsed("joined")  # its join, back from the cluster: the room's epoch first
    await client.cut()
    await settle()
    return client


async def resume_on(connect_v2: ConnectV2, old: V2Client, last: str = "resumed") -> V2Client:
    again = await resume(connect_v2, old)
    await again.parsed(last)
    return again


async def nothing_for(client: Client) -> list[str]:
    """The lines a client has been sent by now (everything else is blocked)."""
    await settle()
    lines = []
    while b"\n" in client._buffer or await _more(client):
        line = await client.line()
        assert line is not None
        lines.append(line)
    return lines


async def _more(client: Client) -> bool:
    with trio.move_on_after(0.001):
        data = await client.stream.receive_some()
        client._buffer += data
        return bool(data)
    return False


async def test_a_member_cut_on_one_node_resumes_on_another_silently_and_whole(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_nodes() as ((server_a, connect_a, v2_a), (server_b, connect_b, v2_b)):
        bob = await v1_user(connect_b, "bob")
        carol = await v1_user(connect_a, "carol")
        alice = await v2_a()
        await alice.register("alice")
        await alice.parsed("joined")
        await alice.send("/join #dev")
        await alice.parsed("room")
        # A room new to the cluster: its epoch is Redis's, told once its first event is
        # back from the cluster (a second room line), before that event.
        second = await alice.parsed("joined")
        assert [line.kind for line in second] == ["room", "joined"]
        await settle()
        await nothing_for(bob)
        await nothing_for(carol)
        await alice.cut()
        await settle()
        await bob.send("one", "/join #dev", "in dev")
        await carol.send("two", "/msg alice psst")
        await settle()
        kept = (
            "* alice's connection is down: your message is kept for them,"
            " and given if they are back in time"
        )
        told = await nothing_for(carol)
        assert told[-2].endswith("] -> *alice* psst")
        assert told[-1] == kept
        await nothing_for(bob)
        await bob.send("/msg alice from b")  # from the other node: told the same
        await settle()
        echo, notice = await nothing_for(bob)
        assert echo.endswith("] -> *alice* from b")
        assert notice == kept
        assert server_a.tokens.held == 1
        # The name stays the held member's, cluster-wide.
        taker = await v2_b()
        await taker.hello()
        await taker.send("alice")
        assert (await taker.until("error"))[-1] == "error :Name alice is taken, choose another"

        again = await resume(v2_b, alice)
        lines = await again.parsed("resumed")
        lines += await again.parsed("resumed")
        said = [(line["room"], line.text) for line in lines if line.kind == "said"]
        assert sorted(said) == [("#dev", "in dev"), ("#lobby", "one"), ("#lobby", "two")]
        assert [line["name"] for line in lines if line.kind == "joined"] == ["bob"]
        assert (lines[0].kind, lines[0]["name"]) == ("welcome", "alice")
        # The private message kept for it on node A follows it to node B, once.
        private = await again.parsed("private")
        private += await again.parsed("private")
        assert [(line["from"], line.text) for line in private] == [
            ("carol", "psst"),
            ("bob", "from b"),
        ]
        await again.send("/to #lobby back", "/to #dev back")
        assert (await again.parsed("said"))[-1].text == "back"
        assert (await again.parsed("said"))[-1].text == "back"
        await settle()
        # Nobody saw it leave or join: the next lines are its own.
        seen_by_bob = await nothing_for(bob)
        assert [line.split("] ", 1)[1] for line in seen_by_bob] == ["<alice> back"]
        seen_by_carol = await nothing_for(carol)
        assert [line.split("] ", 1)[1] for line in seen_by_carol][-1] == "<alice> back"
        assert not any("alice left" in line or "alice joined" in line for line in seen_by_carol)
        assert server_a.hub.member("alice") is None
        assert server_b.hub.member("alice") is not None
        assert server_a.tokens.held == server_b.tokens.held == 0
        assert backplane(server_a).cluster.names["alice"] is backplane(server_b)
        # Node A's grace passes: nothing happens, the member is node B's.
        await trio.sleep(40)
        assert await nothing_for(bob) == []
        await again.send("/quit")
        await settle()
        assert (await nothing_for(bob))[-1].endswith("* alice left #dev (quit)")
        assert backplane(server_a).cluster.resumables == {}


async def test_a_takeover_that_wins_the_race_with_the_grace_is_silent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_nodes(resume_grace=5) as ((server_a, _, v2_a), (_b, connect_b, v2_b)):
        bob = await v1_user(connect_b, "bob")
        alice = await held_on(v2_a, "alice")
        await nothing_for(bob)
        # Node A hears nothing of the cluster for a while: the takeover is done in the
        # cluster, but A's grace runs out before A learns of it.
        backplane(server_a).stall()
        again = await resume_on(v2_b, alice)
        await trio.sleep(10)
        assert server_a.hub.member("alice") is not None  # A asked the cluster: not its own
        backplane(server_a).flow()
        await settle()
        assert server_a.hub.member("alice") is None
        await again.send("still here")
        await settle()
        assert [line.split("] ", 1)[1] for line in await nothing_for(bob)] == ["<alice> still here"]


async def test_a_grace_that_wins_the_race_with_a_takeover_is_a_clear_leave(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_nodes(resume_grace=5) as ((_a, _, v2_a), (server_b, connect_b, v2_b)):
        bob = await v1_user(connect_b, "bob")
        alice = await held_on(v2_a, "alice")
        await nothing_for(bob)
        backplane(server_b).stall()  # B is slow: A's grace ends before B takes over
        await trio.sleep(6)
        backplane(server_b).flow()
        again = await v2_b()
        await again.hello()
        again.token, again.positions = alice.token, dict(alice.positions)
        await again.send(again.resume_line())
        assert (await again.until("notice :What is your name?"))[-2].startswith(
            "error :That resume token is not valid"
        )
        left = [line for line in await nothing_for(bob) if "alice" in line]
        assert [line.split("] ", 1)[1] for line in left] == [
            "* alice left #lobby (connection lost)"
        ]
        await again.send("alice")  # its name is free again, cluster-wide
        assert (await again.parsed("room"))[0]["name"] == "alice"
        assert server_b.hub.member("alice") is not None


async def test_in_a_cluster_a_member_resumes_on_its_own_node_too(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_nodes() as ((server_a, _a, v2_a), (_b, connect_b, _v2_b)):
        bob = await v1_user(connect_b, "bob")
        alice = await held_on(v2_a, "alice")
        await bob.send("meanwhile")
        await settle()
        await nothing_for(bob)
        again = await resume(v2_a, alice)
        lines = await again.parsed("resumed")
        assert [(line.kind, line.text) for line in lines] == [
            ("welcome", None),
            ("said", "meanwhile"),
            ("resumed", None),
        ]
        await again.send(f"/ack {again.token}", "same node")
        await settle()
        assert [line.split("] ", 1)[1] for line in await nothing_for(bob)] == ["<alice> same node"]
        assert server_a.hub.member("alice") is not None
        # Acknowledged: the first token is refused now, on any node.
        stale = await v2_a()
        await stale.hello()
        await stale.send(f"/resume {alice.token}")
        assert (await stale.until("error"))[-1].startswith("error :That resume token is not")


async def ann_registered_on_a(tmp_path: Path) -> tuple[Path, Path]:
    """Two nodes' ``--db`` files: A's has the account ann (password ann-pw), B's none (it
    takes the cluster's)."""
    first = open_accounts(tmp_path / "a.db")
    assert (await first.perform(Request("register", "ann", "ann-pw"))).ok
    first.close()
    return tmp_path / "a.db", tmp_path / "b.db"


async def test_an_identified_member_resumed_on_another_node_keeps_its_account_and_rights(
    tmp_path: Path,
) -> None:
    # The real clock: a password is checked in a worker thread, which a jumping clock
    # would not wait for.
    files = await ann_registered_on_a(tmp_path)
    async with two_nodes(files, password_delay=0.01) as (
        (_a, connect_a, v2_a),
        (server_b, connect_b, v2_b),
    ):
        ann = await v2_a()
        await ann.log_in("ann")
        await ann.operator_away("#den", "lunch")
        bob = await v1_user(connect_b, "bob")
        await bob.send("/join #den")
        await bob.until("* Users in #den: @ann (away), bob")
        await ann.parsed("joined")
        await ann.cut()
        await settle()

        again = await resume(v2_b, ann)
        await again.parsed("resumed")
        await again.parsed("resumed")
        member = server_b.hub.member("ann")
        assert member is not None
        assert (member.account, member.away) == ("ann", "lunch")
        # Marked on every node as before, and an operator of #den on its new node.
        await bob.send("/users")
        assert (await bob.until("* Users in #den"))[-1] == "* Users in #den: @ann (away), bob"
        await again.send("/topic Be kind")
        assert (await bob.until("["))[-1].endswith("* ann set the topic of #den: Be kind")
        carl = await v1_user(connect_a, "carl")
        await carl.send("/msg ann hi")
        assert (await carl.until("* ann is away"))[-1] == "* ann is away: lunch"


async def test_a_guest_resumed_on_another_node_is_no_operator_there(tmp_path: Path) -> None:
    # An attacker's way in: a guest held on A resumes on B. The account comes from the
    # cluster's record of it (none), so it gains no rights on B.
    files = await ann_registered_on_a(tmp_path)
    async with two_nodes(files, password_delay=0.01) as ((_a, _, v2_a), (server_b, _b, v2_b)):
        ann = await v2_a()
        await ann.log_in("ann")
        await ann.operator_away("#den", "busy")
        mal = await v2_a()
        await mal.register("mal")
        await mal.parsed("joined")
        await mal.send("/join #den")
        await mal.parsed("joined")
        await mal.cut()
        await settle()
        again = await resume(v2_b, mal)
        await again.parsed("resumed")
        await again.parsed("resumed")
        member = server_b.hub.member("mal")
        assert member is not None
        assert member.account is None
        await again.send("/topic mine now")
        assert (await again.until("error"))[-1].startswith("error :")
        assert server_b.hub.moderation.topics.get("#den") is None


async def test_a_resume_on_a_node_cut_off_from_the_cluster_is_told_to_come_back_later(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_nodes() as ((server_a, _a, v2_a), (server_b, _b, v2_b)):
        alice = await held_on(v2_a, "alice")
        backplane(server_b).link_down = True  # B cannot ask the cluster about the token
        again = await resume(v2_b, alice)
        assert (await again.until("error"))[-1] == f"error :{CANNOT_RESUME}"
        assert await again.line() is None  # closed: the client comes back later
        assert len(server_b.password_delays) == 0  # no bad try, no growing delay
        assert server_a.tokens.held == 1  # still held on A, its token still good
        backplane(server_b).link_down = False
        await resume_on(v2_b, alice)
        assert server_b.hub.member("alice") is not None
        assert server_a.hub.member("alice") is None


async def test_triochat_join_comes_back_later_to_a_node_cut_off_from_the_cluster(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with two_nodes() as ((_a, connect_a, _), (server_b, connect_b, _)):
        bob = await v1_user(connect_b, "bob")
        opened: list[str] = []

        async def opener() -> ChatClient:
            """Node A first; then B, whose link is down on the first try there."""
            opened.append("B" if opened else "A")
            backplane(server_b).link_down = len(opened) == 2
            raw = await (connect_b if len(opened) > 1 else connect_a)()
            return ChatClient(raw.stream)

        shown: list[str] = []

        async def show(lines: list[str]) -> None:
            shown.extend(lines)

        dave = ResumingClient(ConnectOptions(), "dave", show, opener=opener)
        await dave.start()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(dave.receive)
            await settle()
            await nothing_for(bob)  # its join
            assert dave.client is not None
            await dave.client.stream.aclose()  # the network goes
            await settle()
            await bob.send("while you were away")
            with trio.fail_after(100):
                await dave.connected.wait()  # a new event since the cut: back
            await settle()
            nursery.cancel_scope.cancel()
        assert opened == ["A", "B", "B"]
        assert (dave.reconnects, dave.gaps) == (1, 0)
        assert [line for line in shown if "while you were away" in line] != []
        assert not [line for line in shown if "missed" in line or "not valid" in line]
        assert server_b.hub.member("dave") is not None
        assert len(server_b.password_delays) == 0
        assert not [line for line in await nothing_for(bob) if "dave" in line]
