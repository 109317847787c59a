"""Several nodes as one chat over a real Redis (issue 5's "what must hold" list).

Each test runs under its own cluster name, so its keys never meet another
run's, and they are deleted afterwards. Without a reachable Redis these
tests skip (fail under CI=true).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _proxy import Proxy
from _v2 import V2Client, resume
from redis_support import (
    FAST,
    TEST_REDIS,
    RedisServer,
    answers,
    cluster_keys,
    coredis,
    delete_cluster_keys,
    expect,
    quiet,
    room_keys,
    room_keys_become,
    unavailable,
    unique_cluster,
    wait_until,
)
from test_reconnect import joined, lines_of

from triochat import ChatServer, ServerConfig
from triochat.backplane.redis import RedisBackplane, RedisOptions
from triochat.client.connection import ChatClient, ConnectionClosed, NameRejected, open_chat_client
from triochat.core.events import RoomState, Said
from triochat.core.hub import LINK_DOWN, LINK_UP
from triochat.core.resume import CANNOT_RESUME

REPO = Path(__file__).resolve().parent.parent


StartNode = Callable[..., Awaitable[tuple[ChatServer, int]]]
Join = Callable[..., Awaitable[ChatClient]]


@pytest.fixture(scope="session")
def redis_url() -> str:
    # Synchronous, so a skip keeps its reason (pytest-trio runs sync fixtures first).
    if not answers(TEST_REDIS):
        unavailable(f"no Redis answers at {TEST_REDIS} (set TRIOCHAT_TEST_REDIS)")
    return TEST_REDIS


@pytest.fixture
async def cluster(redis_url: str) -> AsyncIterator[str]:
    name = unique_cluster()
    yield name
    await delete_cluster_keys(redis_url, name)


@pytest.fixture
async def start_node(redis_url: str, cluster: str, nursery: trio.Nursery) -> StartNode:
    """``server, port = await start_node()``: a node on port 0, in the test's cluster."""

    async def start(**options: Any) -> tuple[ChatServer, int]:
        url = options.pop("url", redis_url)
        name = options.pop("cluster", cluster)
        backplane = RedisBackplane(RedisOptions(url=url, cluster=name, **{**FAST, **options}))
        server = ChatServer(ServerConfig(port=0, rate=0, history=5), backplane=backplane)
        listeners = await nursery.start(server.serve)
        return server, listeners[0].socket.getsockname()[1]

    return start


@pytest.fixture
async def join() -> AsyncIterator[Join]:
    """``client = await join(port, "name")``: a registered client, closed after the test."""
    clients: list[ChatClient] = []

    async def open_client(port: int, name: str | None = None) -> ChatClient:
        client = await open_chat_client("127.0.0.1", port)
        clients.append(client)
        if name is not None:
            with trio.fail_after(5):
                await client.register(name)
        return client

    yield open_client
    for client in clients:
        await client.aclose()


async def test_lines_reach_every_node(start_node: StartNode, join: Join) -> None:
    _, port_a = await start_node()
    _, port_b = await start_node()
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await expect(ann, "* ben joined #lobby")

    await ann.send_line("hello from a")
    await expect(ben, "<ann> hello from a")
    await ben.send_line("/me waves")
    await expect(ann, "* ben waves")

    # A sender sees its own lines, private echoes included, in the order sent.
    for line in ("one", "/msg BEN psst", "two"):
        await ann.send_line(line)
    mine = [await expect(ann, lambda line: "ann>" in line or "->" in line) for _ in range(3)]
    assert [line.split("] ", 1)[1] for line in mine] == ["<ann> one", "-> *ben* psst", "<ann> two"]
    await expect(ben, "*ann* psst")

    await ben.send_line("/nick benny")
    await expect(ann, "* ben is now known as benny")
    await ben.send_line("/join #side")
    await expect(ann, "* benny left #lobby (joined #side)")
    await ann.send_line("/join #side")
    await expect(benny := ben, "* ann joined #side")
    await benny.send_line("/quit gone fishing")
    await expect(ann, "* benny left #side (gone fishing)")


async def test_room_order_is_the_same_everywhere(start_node: StartNode, join: Join) -> None:
    ports = [(await start_node())[1] for _ in range(3)]
    senders = [await join(ports[0], "s0"), await join(ports[1], "s1")]
    readers = [await join(port, f"r{i}") for i, port in enumerate(ports)]
    for reader in readers[:2]:
        await expect(reader, "* r2 joined #lobby")
    count = 60

    async def send(client: ChatClient, tag: str) -> None:
        for i in range(count):
            await client.send_line(f"{tag} {i}")

    seen: list[list[str]] = [[] for _ in readers]

    async def read(index: int) -> None:
        while len(seen[index]) < 2 * count:
            line = await expect(readers[index], lambda line: "> s" in line)
            seen[index].append(line.split("> ", 1)[1])

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            for index in range(len(readers)):
                nursery.start_soon(read, index)
            for number, sender in enumerate(senders):
                nursery.start_soon(send, sender, f"s{number}")
    assert seen[0] == seen[1] == seen[2]
    for tag in ("s0", "s1"):
        assert [text for text in seen[0] if text.startswith(tag)] == [
            f"{tag} {i}" for i in range(count)
        ]


async def test_names_are_unique_across_the_cluster(start_node: StartNode, join: Join) -> None:
    _, port_a = await start_node()
    _, port_b = await start_node()
    ann = await join(port_a, "Ann")
    other = await join(port_b)
    with pytest.raises(NameRejected, match="taken"):
        await other.register("aNN")
    # Renaming frees the old name and takes the new one everywhere.
    await ann.send_line("/nick Anna")
    await expect(ann, "* Ann is now known as Anna")
    with pytest.raises(NameRejected, match="taken"):
        await other.register("ANNA")
    await other.register("ann")
    # Leaving frees it.
    await ann.quit()
    await expect(other, "* Anna left #lobby (quit)")
    await (await join(port_b)).register("anna")


async def test_concurrent_claims_have_one_winner(start_node: StartNode, join: Join) -> None:
    ports = [(await start_node())[1] for _ in range(2)]
    clients = [await join(ports[i % 2]) for i in range(8)]
    won: list[ChatClient] = []

    async def claim(index: int, client: ChatClient) -> None:
        try:
            await client.register("Zed" if index % 2 else "zED")
            won.append(client)
        except NameRejected:
            pass

    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            for index, client in enumerate(clients):
                nursery.start_soon(claim, index, client)
    assert len(won) == 1


async def test_users_and_rooms_show_the_whole_cluster(start_node: StartNode, join: Join) -> None:
    _, port_a = await start_node()
    _, port_b = await start_node()
    ann = await join(port_a, "ann")
    await join(port_b, "ben")
    cat = await join(port_b, "cat")
    await cat.send_line("/join #side")
    await expect(cat, "* cat joined #side")
    await expect(ann, "* cat left #lobby (joined #side)")
    await ann.send_line("/users")
    await expect(ann, "* Users in #lobby: ann, ben")
    await ann.send_line("/rooms")
    await expect(ann, "* Rooms: #lobby (2), #side (1)")
    dan = await join(port_a)
    assert (await dan.receive_line()).startswith("* Welcome to triochat! 3 users online.")
    lines = await dan.register("dan")
    assert "* Users in #lobby: ann, ben, dan" in lines


async def test_history_is_shared_and_capped(start_node: StartNode, join: Join) -> None:
    _, port_a = await start_node()
    _, port_b = await start_node()
    ann = await join(port_a, "ann")
    for i in range(8):
        await ann.send_line(f"line {i}")
    await expect(ann, "<ann> line 7")
    from_b = await join(port_b)
    history_b = [line for line in await from_b.register("ben") if "<ann>" in line]
    # A node that starts now loads the history from Redis.
    _, port_c = await start_node()
    from_c = await join(port_c)
    history_c = [line for line in await from_c.register("cat") if "<ann>" in line]
    assert [line.split("> ")[1] for line in history_b] == [f"line {i}" for i in range(3, 8)]
    assert history_b == history_c


async def test_a_rooms_history_goes_with_its_last_member_anywhere(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    server_a, port_a = await start_node()
    server_b, port_b = await start_node()
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await ann.send_line("said in the lobby")
    await expect(ben, "<ann> said in the lobby")
    for client in (ann, ben):
        await client.send_line("/join #tmp")
    await expect(ann, "* ben joined #tmp")
    await ann.send_line("said in #tmp")
    await expect(ben, "<ann> said in #tmp")

    # Its last member on node A leaves, but one on node B stays: the history stays everywhere.
    await ann.send_line("/join #other")
    await expect(ben, "* ann left #tmp (joined #other)")
    assert isinstance(server_b.backplane, RedisBackplane)
    kept = {
        "history:#tmp": set(),
        "holders:#tmp": {server_b.backplane.node_id},
        "rooms": {"#tmp"},
        "numbers:#tmp": set(),
        "resume:#tmp": set(),
    }
    await room_keys_become(redis_url, cluster, "#tmp", kept)
    assert server_a.hub.history_rooms() == ["#lobby", "#other", "#tmp"]
    assert server_b.hub.history_rooms() == ["#lobby", "#tmp"]

    # Its last member anywhere leaves: gone from both nodes' memory, and from Redis.
    await ben.quit()
    await room_keys_become(redis_url, cluster, "#tmp", {})
    await wait_until(lambda: server_a.hub.history_rooms() == ["#lobby", "#other"])
    assert server_b.hub.history_rooms() == ["#lobby"]
    newcomer = await join(port_b, "cat")
    await newcomer.send_line("/join #tmp")
    line = await expect(
        newcomer, lambda line: "<ann>" in line or line.startswith("* Users in #tmp")
    )
    assert line == "* Users in #tmp: cat"

    # #lobby had no member anywhere for a while: its history stays all the same.
    assert "history:#lobby" in await room_keys(redis_url, cluster, "#lobby")
    late = await join(port_a)
    assert any(line.endswith("<ann> said in the lobby") for line in await late.register("dan"))


async def test_a_join_that_races_the_drop_keeps_the_history(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    server_a, port_a = await start_node(undo_window=30)
    server_b, port_b = await start_node(undo_window=30)
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await ann.send_line("/join #tmp")
    await expect(ben, "* ann left #lobby (joined #tmp)")
    await ann.send_line("worth keeping")
    await expect(ann, "<ann> worth keeping")
    # Node B's writes wait (a slow link, made certain), so its hold on #tmp reaches
    # Redis only after node A's last member has left and A has dropped the history.
    backplane_b = server_b.backplane
    assert isinstance(backplane_b, RedisBackplane)
    async with backplane_b.publisher.lock:
        await ben.send_line("/join #tmp")
        await expect(ben, "* Users in #tmp: ann, ben")
        await ann.send_line("/join #lobby")
        await wait_until(lambda: "#tmp" not in server_a.hub.history_rooms())
        await wait_until(lambda: not server_b.hub.recent("#tmp", 5))  # B has seen the drop.
    # Ben was in the room all along, so node B undoes the drop, everywhere.
    kept = {
        "history:#tmp": set(),
        "holders:#tmp": {backplane_b.node_id},
        "rooms": {"#tmp"},
        "numbers:#tmp": set(),
        "resume:#tmp": set(),
    }
    await room_keys_become(redis_url, cluster, "#tmp", kept)
    for server in (server_a, server_b):
        await wait_until(lambda server=server: server.hub.history_rooms()[-1] == "#tmp")  # type: ignore[misc]
    first = server_b.hub.recent("#tmp", 5)[0]
    assert isinstance(first, Said)
    assert (first.name, first.text) == ("ann", "worth keeping")
    cat = await join(port_a, "cat")
    await cat.send_line("/join #tmp")
    await expect(cat, "<ann> worth keeping")


async def test_clusters_are_isolated(start_node: StartNode, join: Join, redis_url: str) -> None:
    other = unique_cluster()
    try:
        _, port_a = await start_node()
        _, port_b = await start_node(cluster=other)
        ann = await join(port_a, "ann")
        twin = await join(port_b, "ann")  # The same name is free in another cluster.
        await ann.send_line("only for cluster one")
        await expect(ann, "<ann> only for cluster one")
        assert not any("cluster one" in line for line in await quiet(twin))
        await twin.send_line("/users")
        await expect(twin, "* Users in #lobby: ann")
    finally:
        await delete_cluster_keys(redis_url, other)


async def test_shutdown_announces_departures_and_cleans_up(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    server_a, port_a = await start_node()
    server_b, port_b = await start_node()
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await ann.send_line("bye all")
    await expect(ben, "<ann> bye all")
    server_a.shutdown()
    await expect(ben, "* ann left #lobby (server shutdown)")
    await (await join(port_b)).register("ann")
    server_b.shutdown()
    # What stays is the shared history (and the list of rooms that have some), and the
    # lobby's numbering (its epoch, last number and resume list).
    stays = ("history:#lobby", "rooms", "numbers:#lobby", "resume:#lobby")
    kept = {f"triochat:{cluster}:{key}".encode() for key in stays}
    with trio.fail_after(5):
        while set(await cluster_keys(redis_url, cluster)) != kept:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_a_heartbeat_during_shutdown_does_not_bring_the_node_back(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    # Beats every few ms, so some fall while the node is leaving.
    for _ in range(10):
        server, port = await start_node(heartbeat=0.002)
        await join(port, "ann")
        server.shutdown()
        backplane = server.backplane
        await wait_until(lambda: not backplane.linked)  # type: ignore[attr-defined]  # noqa: B023 - awaited in this pass
    stays = ("history:#lobby", "rooms", "numbers:#lobby", "resume:#lobby")
    kept = {f"triochat:{cluster}:{key}".encode() for key in stays}
    with trio.fail_after(5):
        while set(await cluster_keys(redis_url, cluster)) - kept:  # noqa: ASYNC110
            await trio.sleep(0.05)


async def test_killed_node_is_dropped_within_the_ttl(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    server_a, port_a = await start_node()
    ann = await join(port_a, "ann")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "triochat", "serve", "--port", "0", "--rate", "0"]
    command += ["--redis", redis_url, "--cluster", cluster, "--heartbeat", "0.2"]
    command += ["--node-ttl", "1", "--log-level", "warning"]
    process = await trio.lowlevel.open_process(command, env=env, stdout=subprocess.PIPE)
    try:
        assert process.stdout is not None
        with trio.fail_after(10):
            banner = await process.stdout.receive_some(200)
        port_b = int(banner.decode().split(":")[-1])
        await join(port_b, "Ben")
        await expect(ann, "* Ben joined #lobby")
        cy = await join(port_b, "Cy")
        await cy.send_line("/join #side")
        await cy.send_line("only Cy was here")
        await expect(cy, "<Cy> only Cy was here")
        await wait_until(lambda: "#side" in server_a.hub.history_rooms())
        process.send_signal(signal.SIGKILL)
        start = trio.current_time()
        await expect(ann, "* Ben left #lobby (connection lost)", seconds=10)
        await ann.send_line("/users")
        await expect(ann, "* Users in #lobby: ann")
        await (await join(port_a)).register("ben")
        assert trio.current_time() - start < 10
        # Nobody else was in Cy's room: its history went when the node was reaped.
        await wait_until(lambda: server_a.hub.history_rooms() == ["#lobby"])
        await room_keys_become(redis_url, cluster, "#side", {})
    finally:
        process.kill()
        await process.wait()


@pytest.fixture
async def private_redis(redis_url: str) -> AsyncIterator[RedisServer]:
    """A redis-server of its own (after the reachability check, which skips or fails first)."""
    server = RedisServer()
    await server.start()
    yield server
    await server.stop()


async def test_redis_outage_and_recovery(
    start_node: StartNode, join: Join, private_redis: RedisServer
) -> None:
    _, port_a = await start_node(url=private_redis.url)
    _, port_b = await start_node(url=private_redis.url)
    ann = await join(port_a, "ann")
    ann2 = await join(port_a, "ann2")
    ben = await join(port_b, "ben")
    await expect(ann, "* ben joined #lobby")

    await private_redis.stop()
    await expect(ann, "* " + LINK_DOWN)
    await expect(ben, "* " + LINK_DOWN)
    # Each node keeps serving its own users.
    await ann.send_line("still here")
    await expect(ann2, "<ann> still here")
    await ben.send_line("/users")
    await expect(ben, "* Users in #lobby: ben")
    assert not any("still here" in line for line in await quiet(ben))

    await private_redis.start()  # Empty: presence and names are rebuilt by the nodes.
    await expect(ann, "* " + LINK_UP, seconds=5)
    await expect(ben, "* " + LINK_UP, seconds=5)
    await ben.send_line("back together")
    await expect(ann, "<ben> back together")
    await ann2.send_line("/users")
    await expect(ann2, "* Users in #lobby: ann, ann2, ben")
    with pytest.raises(NameRejected, match="taken"):
        await (await join(port_b)).register("ANN")


async def test_a_node_starts_while_redis_is_down(start_node: StartNode, join: Join) -> None:
    redis = RedisServer()  # Not started yet.
    _, port = await start_node(url=redis.url)
    ann = await join(port, "ann")
    await ann.send_line("alone")
    await expect(ann, "<ann> alone")
    await redis.start()
    try:
        await expect(ann, "* " + LINK_UP, seconds=5)
        _, port_b = await start_node(url=redis.url)
        with pytest.raises(NameRejected, match="taken"):
            await (await join(port_b)).register("Ann")
    finally:
        await redis.stop()


def test_bad_redis_url_is_a_usage_error() -> None:
    from click.testing import CliRunner

    from triochat.cli import main

    result = CliRunner().invoke(main, ["serve", "--redis", "http://nope"])
    assert result.exit_code == 2
    assert "not a Redis URL" in result.output


async def test_a_resume_on_a_node_whose_redis_is_down_is_told_to_try_later(
    start_node: StartNode,
) -> None:
    redis = RedisServer()  # Not started: the node's link is down.
    server, port = await start_node(url=redis.url)
    client = V2Client(await trio.open_tcp_stream("127.0.0.1", port))
    await client.hello()
    await client.send(f"/resume {'00' * 16} #lobby=3f2a9c01b7e4:1")
    assert (await client.until("error"))[-1] == f"error :{CANNOT_RESUME}"
    assert await client.line() is None  # closed, with no verdict on the token
    assert len(server.password_delays) == 0
    await client.cut()


async def test_a_hung_redis_counts_as_down(
    start_node: StartNode, join: Join, private_redis: RedisServer
) -> None:
    # Stopped, not dead: connections stay open and nothing answers, so only timeouts tell.
    _, port_a = await start_node(url=private_redis.url)
    _, port_b = await start_node(url=private_redis.url)
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await expect(ann, "* ben joined #lobby")
    assert private_redis.process is not None
    private_redis.process.send_signal(signal.SIGSTOP)
    try:
        await expect(ann, "* " + LINK_DOWN)
        await expect(ben, "* " + LINK_DOWN)
    finally:
        private_redis.process.send_signal(signal.SIGCONT)
    await expect(ann, "* " + LINK_UP)
    await expect(ben, "* " + LINK_UP)
    await ann.send_line("hello again")
    await expect(ben, "<ann> hello again")


async def test_names_taken_twice_during_an_outage_are_reconciled(
    start_node: StartNode, join: Join, private_redis: RedisServer
) -> None:
    _, port_a = await start_node(url=private_redis.url)
    _, port_b = await start_node(url=private_redis.url)
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await private_redis.stop()
    await expect(ann, "* " + LINK_DOWN)
    await expect(ben, "* " + LINK_DOWN)
    # Newcomers are told too; each node checks only its own users now, so both accept the name.
    zed_a = await join(port_a)
    await expect(zed_a, "* " + LINK_DOWN)
    await zed_a.register("zed")
    zed_b = await join(port_b, "ZED")
    await private_redis.start()
    await expect(ann, "* " + LINK_UP)
    await expect(ben, "* " + LINK_UP)
    outcomes = []
    for zed in (zed_a, zed_b):
        lines = await quiet(zed, 0.5)
        outcomes.append(any("was taken on another server" in line for line in lines))
    assert sorted(outcomes) == [False, True]
    loser = zed_a if outcomes[0] else zed_b
    with pytest.raises(ConnectionClosed), trio.fail_after(5):
        await loser.receive_line()  # And it was disconnected.
    await ann.send_line("/users")
    line = await expect(ann, lambda line: line.startswith("* Users in #lobby:"))
    assert line.lower().count("zed") == 1


async def test_redis_numbers_every_rooms_events_for_all_nodes(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    server_a, port_a = await start_node()
    server_b, port_b = await start_node()
    ann = await join(port_a, "ann")
    ben = await join(port_b, "ben")
    await expect(ann, "* ben joined #lobby")
    count = 30

    async def send(client: ChatClient, tag: str) -> None:
        for i in range(count):
            await client.send_line(f"{tag} {i}")

    async with trio.open_nursery() as nursery:  # Both nodes publish at once.
        nursery.start_soon(send, ann, "a")
        nursery.start_soon(send, ben, "b")
    await expect(ann, f"<ben> b {count - 1}")
    await expect(ben, f"<ann> a {count - 1}")
    await wait_until(lambda: server_a.hub.room_state("#lobby") == server_b.hub.room_state("#lobby"))
    state = server_a.hub.room_state("#lobby")
    assert state is not None
    assert state.seq == 2 + 2 * count  # two joins and the lines: each number once
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        numbers = await client.hgetall(f"triochat:{cluster}:numbers:#lobby")
        assert numbers == {"epoch": state.epoch, "seq": str(state.seq)}
        # As a Redis that lost its data: the room's numbering is made anew, in a new epoch.
        await client.delete([f"triochat:{cluster}:numbers:#lobby"])
    await ann.send_line("after the loss")
    await expect(ben, "<ann> after the loss")
    await wait_until(lambda: server_b.hub.room_state("#lobby") == server_a.hub.room_state("#lobby"))
    after = server_b.hub.room_state("#lobby")
    assert after is not None
    assert after.epoch != state.epoch
    assert after.seq == 1


async def test_a_v2_member_cut_on_one_node_resumes_on_another_over_redis(
    start_node: StartNode, join: Join, redis_url: str, cluster: str
) -> None:
    server_a, port_a = await start_node()
    server_b, port_b = await start_node()
    bob = await join(port_b, "bob")
    alice = V2Client(await trio.open_tcp_stream("127.0.0.1", port_a))
    await alice.register("alice")
    await alice.parsed("joined")  # after the room's epoch, as Redis gave it
    await expect(bob, "* alice joined #lobby")
    await alice.send("/join #solo")  # a room only it is in, on node A only
    await alice.parsed("joined")
    await alice.send("/to #solo a note")
    await alice.parsed("said")
    solo = alice.positions["#solo"]
    await alice.cut()
    await wait_until(lambda: server_a.tokens.held == 1)
    await bob.send_line("while you were away")
    await expect(bob, "<bob> while you were away")
    other = V2Client(await trio.open_tcp_stream("127.0.0.1", port_b))
    await other.hello()
    await other.send("alice")  # held on node A: the name is still taken, cluster-wide
    assert (await other.until("error"))[-1] == "error :Name alice is taken, choose another"

    async def connect_b() -> V2Client:
        return V2Client(await trio.open_tcp_stream("127.0.0.1", port_b))

    again = await resume(connect_b, alice)
    lines = await again.parsed("resumed")
    lines += await again.parsed("resumed")
    assert [(line.kind, line.text) for line in lines] == [
        ("welcome", None),
        ("said", "while you were away"),
        ("resumed", None),
        ("resumed", None),
    ]
    assert (lines[-1]["room"], lines[-1]["epoch"], lines[-1].number("seq")) == ("#solo", *solo)
    await again.send("/to #lobby back on b")
    seen = await expect(bob, lambda line: "alice" in line)
    assert seen.endswith("<alice> back on b")  # no left, no joined before it
    assert isinstance(server_a.backplane, RedisBackplane)
    assert isinstance(server_b.backplane, RedisBackplane)
    node_b = server_b.backplane.node_id
    await wait_until(lambda: server_a.hub.member("alice") is None)
    # Node B held #solo from the takeover on: node A letting go of it dropped nothing.
    solo_kept = {
        "history:#solo": set(),
        "holders:#solo": {node_b},
        "rooms": {"#solo"},
        "numbers:#solo": set(),
        "resume:#solo": set(),
    }
    await room_keys_become(redis_url, cluster, "#solo", solo_kept)
    assert server_b.hub.room_state("#solo") == RoomState("#solo", *solo)
    assert [e.text for e in server_b.hub.recent("#solo", 5)] == ["a note"]  # type: ignore[union-attr]
    async with coredis.Redis.from_url(redis_url, decode_responses=True) as client:
        prefix = f"triochat:{cluster}:"
        assert (await client.get(prefix + "name:alice") or "").startswith(node_b + ":")
        # Only digests: no key and no value holds a token.
        stored = [key async for key in client.scan_iter(match=prefix + "*")]
        for key in stored:
            assert alice.token not in key
            assert again.token not in key
            if await client.type(key) == "string":
                assert alice.token not in (await client.get(key) or "")
        (token_key,) = [key async for key in client.scan_iter(match=prefix + "token:*")][:1]
        entry = await client.get(token_key)
        assert entry is not None
        assert await client.hget(prefix + "resumable:" + entry, "node") == node_b
    # Node A's grace ending now finds the member another node's: it does nothing.
    assert await server_a.backplane.expire(entry) is False
    await again.send("/quit")
    await expect(bob, "* alice left #lobby (quit)")
    for client in (other, again):
        await client.cut()


async def test_triochat_join_cut_again_and_again_moves_between_nodes_without_a_gap(
    start_node: StartNode, join: Join, nursery: trio.Nursery
) -> None:
    _, port_a = await start_node()
    _, port_b = await start_node()
    proxy: Proxy = await nursery.start(Proxy(port_a).run)
    ann = await join(port_b, "ann")
    ben = await join(port_a, "ben")
    with trio.fail_after(60):
        async with joined(proxy.port, "dave") as (proc, out):
            await out.until("* dave joined #lobby")
            seen_by_ben = await lines_of(ben, "* dave joined #lobby")
            number = 0
            for cut in range(4):
                for _ in range(100):
                    await ann.send_line(f"line {number}")
                    number += 1
                await out.until(f"<ann> line {number - 50}")  # mid-flood
                proxy.target = port_b if cut % 2 == 0 else port_a  # it comes back elsewhere
                assert proxy.cut() == 1
            await ann.send_line("done")
            await out.until("<ann> done")
            seen_by_ben += await lines_of(ben, "<ann> done")
            assert proxy.accepted == 5
            assert proc.stdin is not None
            await proc.stdin.aclose()
            assert await proc.wait() == 0
    said = [line.split("> ", 1)[1] for line in out.seen if "<ann> " in line]
    assert said == [f"line {i}" for i in range(number)] + ["done"]
    comings_and_goings = [line for line in seen_by_ben if "* dave " in line]
    assert [line.split("] ", 1)[1] for line in comings_and_goings] == ["* dave joined #lobby"]
