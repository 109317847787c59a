"""Moderation and accounts across the nodes of a cluster, over a real Redis: a ban, a mute,
a kick or a topic made on node A holds on node B; a name registered on one node is
registered on every node, and of two registrations at once exactly one wins.

Each test runs under its own cluster name (keys deleted afterwards); without a
reachable Redis these tests skip (fail under CI=true).
"""

from __future__ import annotations

import logging
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from _accounts import dial, named, net_fixture, open_accounts  # noqa: F401 - the net fixture
from _proxy import Proxy
from _v2 import V2Client, resume
from irc_support import close_clients, irc_client
from redis_support import (
    FAST,
    TEST_REDIS,
    RedisServer,
    answers,
    cluster_keys,
    coredis,
    delete_cluster_keys,
    unavailable,
    unique_cluster,
    wait_until,
)
from test_irc_accounts import names_of
from test_moderation import join, login

from triochat import ChatServer, ServerConfig
from triochat.backplane.redis import RedisBackplane, RedisOptions
from triochat.core.accounts import Request
from triochat.core.names import name_key
from triochat.server.accounts import LINK_DOWN, AccountStore
from triochat.server.irc import IRCConfig, IRCDoor

Start = Callable[..., Awaitable[tuple[ChatServer, int]]]
OPTIONS: dict[str, Any] = FAST

_close_clients = pytest.fixture(autouse=True)(close_clients)


@pytest.fixture
async def cluster() -> AsyncIterator[str]:
    if not answers(TEST_REDIS):
        unavailable(f"no Redis answers at {TEST_REDIS} (set TRIOCHAT_TEST_REDIS)")
    name = unique_cluster()
    yield name
    await delete_cluster_keys(TEST_REDIS, name)


@pytest.fixture
async def start(
    cluster: str, nursery: trio.Nursery, tmp_path: Path, net: None
) -> AsyncIterator[Start]:
    """``server, port = await start(*registered, url=...)``: a node with its own accounts
    file (``registered`` in it, the first one a server admin), linked to the cluster."""
    opened: list[AccountStore] = []

    async def start_node(
        *registered: str, url: str = TEST_REDIS, **config: Any
    ) -> tuple[ChatServer, int]:
        accounts = open_accounts(tmp_path / f"node{len(opened)}.db")
        opened.append(accounts)
        for name in registered:
            assert (await accounts.perform(Request("register", name, f"{name}-pw"))).ok
        if registered:
            accounts.set_admin(registered[0], True)
        backplane = RedisBackplane(RedisOptions(url=url, cluster=cluster, **OPTIONS))
        server = ChatServer(
            ServerConfig(port=0, rate=0, password_delay=0.01, **config),
            backplane=backplane,
            accounts=accounts,
        )
        listeners = await nursery.start(server.serve)
        return server, listeners[0].socket.getsockname()[1]

    yield start_node
    for accounts in opened:
        accounts.close()


async def test_a_ban_mute_kick_and_topic_on_one_node_hold_on_the_other(
    start: Start, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triochat.moderation")
    a, port_a = await start("root", "ann")
    b, port_b = await start()  # its file has no accounts: it takes the cluster's
    ann = await login(port_a, "ann")
    await ann.send("/join #den")
    await ann.until("* You are an operator of #den")
    await ann.send("/topic Be kind")
    await ann.until("[T] * ann set the topic of #den: Be kind")
    bob, carl, dave = [await named(port_b, name) for name in ("bob", "carl", "dave")]
    assert "* Topic of #den: Be kind (set by ann)" in await join(bob, "bob", "#den")
    await join(carl, "carl", "#den")
    await join(dave, "dave", "#den")
    assert b.hub.moderation.is_op("#den", "ann")

    await ann.send("/ban bob 1h spam")
    await bob.until("! You left #den (banned by ann: spam)")
    await bob.send("/join #den")  # through B, whose node did not ban
    await bob.until("! You are banned from #den for 1h more: spam")

    await ann.send("/mute carl")
    await ann.until("* carl is muted in #den until lifted")
    # The mute reaches B a Redis round trip later; nothing tells carl of it.
    await wait_until(lambda: b.hub.moderation.muted("#den", name_key("carl")) is not None)
    await carl.send("can you hear me")
    await carl.until("! You are muted in #den until lifted: not sent")

    await ann.send("/kick dave bye")
    await dave.until("! You left #den (kicked by ann: bye)")
    await ann.until("[T] * dave left #den (kicked by ann: bye)")
    await join(dave, "dave", "#den")  # a kick is no ban
    for logged in ("ban: bob by ann in #den (spam)", "kick: dave by ann in #den (bye)"):
        assert logged in caplog.text
    assert (a.hub.moderation.actions["ban"], a.hub.moderation.actions["kick"]) == (1, 1)

    # A server-wide ban made on A refuses the connection at B's door.
    root = await login(port_a, "root")
    await root.send("/gban mallory 1d trolling")
    await root.until("* mallory is banned from this server for 1d more")
    await wait_until(lambda: b.hub.moderation.banned("*", name_key("mallory")) is not None)
    mallory = await dial(port_b)
    await mallory.until("* What is your name?")
    await mallory.send("mallory")
    await mallory.until("! You are banned from this server for 1d more: trolling")


async def test_a_name_registered_on_one_node_is_registered_on_the_other(start: Start) -> None:
    a, port_a = await start("root")
    b, port_b = await start()
    assert b.accounts is not None
    assert b.accounts.registered("root")  # seeded by A, taken by B
    zed = await named(port_b, "zed")
    await zed.send("/register zed-pw")
    await zed.until("* zed is registered to you now")
    assert a.accounts is not None
    await wait_until(lambda: a.accounts is not None and a.accounts.registered("zed"))
    await zed.send("/quit")
    # Its name is free once A hears it left (the release goes with that).
    await wait_until(lambda: a.backplane.remote_name(name_key("zed")) is None)
    again = await dial(port_a)
    await again.until("* What is your name?")
    await again.send("zed")
    await again.until("* zed is registered: its password?")
    await again.send("zed-pw")
    await again.until("[T] * zed joined #lobby")


async def test_of_two_registrations_of_one_name_on_two_nodes_exactly_one_wins(
    start: Start, cluster: str
) -> None:
    a, _ = await start()
    b, _ = await start()
    assert a.accounts is not None
    assert b.accounts is not None
    outcomes = []

    async def register(server: ChatServer, password: str) -> None:
        assert server.accounts is not None
        outcomes.append(await server.accounts.perform(Request("register", "zed", password)))

    async with trio.open_nursery() as both:
        both.start_soon(register, a, "password-on-a")
        both.start_soon(register, b, "password-on-b")
    assert sorted(o.ok for o in outcomes) == [False, True]
    assert [o.error for o in outcomes if not o.ok] == ["zed is registered already"]
    winner = next(o.request.password for o in outcomes if o.ok)
    await wait_until(lambda: all(s.accounts and s.accounts.registered("zed") for s in (a, b)))
    for server in (a, b):
        assert server.accounts is not None
        assert (await server.accounts.perform(Request("verify", "zed", winner))).ok
    async with coredis.Redis.from_url(TEST_REDIS) as client:
        stored = await client.hgetall(f"triochat:{cluster}:accounts")
    assert list(stored) == [b"zed"]
    assert b"$argon2" in stored[b"zed"]
    assert b"password-on" not in stored[b"zed"]  # only the hash


async def test_a_forged_change_on_the_channel_is_skipped(
    start: Start, cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    b, port_b = await start()
    bob = await named(port_b, "bob")
    forged = b'evil\t1\n["X",["ban","#den","bob",true,"x","y"]]\n'
    async with coredis.Redis.from_url(TEST_REDIS) as client:
        await client.publish(f"triochat:{cluster}:events", forged)
    await wait_until(lambda: "ignoring a malformed batch" in caplog.text)
    assert b.hub.moderation.banned("#den", "bob") is None
    await join(bob, "bob", "#den")  # the node carries on


async def test_after_redis_loses_its_data_the_nodes_seed_it_again(
    start: Start, cluster: str
) -> None:
    redis = RedisServer()
    await redis.start()
    try:
        a, port_a = await start("ann", url=redis.url)
        b, _ = await start(url=redis.url)
        ann = await login(port_a, "ann", "#den")
        await ann.send("/ban bob 1h spam")
        await ann.until("* bob is banned from #den for 1h more")
        await wait_until(lambda: b.hub.moderation.banned("#den", "bob") is not None)
        await redis.stop()  # no disk: it comes back empty
        await wait_until(lambda: a.backplane.link_down and b.backplane.link_down)
        # Down: each node keeps enforcing what it knows.
        assert b.hub.moderation.banned("#den", "bob") is not None
        # No registration without Redis to decide who wins; checks go on from memory.
        assert b.accounts is not None
        refused = await b.accounts.perform(Request("register", "zed", "zed-pw"))
        assert (refused.ok, refused.error) == (False, LINK_DOWN)
        assert (await b.accounts.perform(Request("verify", "ann", "ann-pw"))).ok
        await redis.start()
        await wait_until(lambda: not a.backplane.link_down and not b.backplane.link_down)
        async with coredis.Redis.from_url(redis.url) as client:
            assert await client.hexists(f"triochat:{cluster}:moderation", "ban\t#den\tbob")
            assert await client.hexists(f"triochat:{cluster}:accounts", "ann")
        assert b.hub.moderation.banned("#den", "bob") is not None
        assert b.accounts.registered("ann")
    finally:
        await redis.stop()


def topic(server: ChatServer) -> str | None:
    held = server.hub.moderation.topics.get("#den")
    return held.text if held is not None else None


async def test_a_ban_made_while_the_link_is_down_holds_there_and_reaches_the_cluster_after(
    start: Start, cluster: str, nursery: trio.Nursery
) -> None:
    redis_port = urllib.parse.urlsplit(TEST_REDIS).port or 6379
    proxy: Proxy = await nursery.start(Proxy(redis_port).run)
    a, port_a = await start("ann", url=f"redis://127.0.0.1:{proxy.port}/0")
    b, _ = await start()
    ann = await login(port_a, "ann", "#den")
    proxy.refusing = True
    proxy.cut()  # only node A loses Redis; B and Redis carry on
    await wait_until(lambda: a.backplane.link_down)
    await ann.send("/ban bob 1h spam")
    await ann.until("* bob is banned from #den for 1h more")
    await ann.send("/topic made during the outage")
    await ann.until("[T] * ann set the topic of #den: made during the outage")
    proxy.refusing = False
    await wait_until(lambda: not a.backplane.link_down)
    # Not undone by Redis's state when the link came back: written to it instead.
    await wait_until(lambda: b.hub.moderation.banned("#den", "bob") is not None)
    assert a.hub.moderation.banned("#den", "bob") is not None
    await wait_until(lambda: topic(a) == topic(b) == "made during the outage")
    async with coredis.Redis.from_url(TEST_REDIS) as client:
        assert await client.hexists(f"triochat:{cluster}:moderation", "ban\t#den\tbob")


async def test_operators_and_away_members_on_another_node_are_marked_there(
    start: Start, cluster: str, caplog: pytest.LogCaptureFixture
) -> None:
    a, port_a = await start("root", "ann")
    b, port_b = await start()
    ann = await login(port_a, "ann", "#den")  # its creator: an operator of #den
    await wait_until(lambda: b.hub.moderation.is_op("#den", "ann"))
    await ann.send("/away lunch")
    await ann.until("* You are away: lunch")
    bob = await named(port_b, "bob")
    await join(bob, "bob", "#den")
    await wait_until(lambda: b.hub.away_of("ann") == "lunch")
    await bob.send("/users")
    await bob.until("* Users in #den: @ann (away), bob")
    await bob.send("/msg ann are you there")
    await bob.until("* ann is away: lunch")

    # Someone else on the channel says mallory, identified as ann, is on A: not A's word.
    node_a = a.backplane.node_id  # type: ignore[attr-defined]
    forged = f'evil\t1\n["P","{node_a}","mallory","mallory",["#den"],"ann",null]\n'
    async with coredis.Redis.from_url(TEST_REDIS) as client:
        await client.publish(f"triochat:{cluster}:events", forged.encode())
    await wait_until(lambda: "ignoring node evil's word on a user of node" in caplog.text)
    await bob.send("/users")
    await bob.until("* Users in #den: @ann (away), bob")


async def test_a_big_rooms_irc_names_and_who_list_an_operator_on_another_node(
    start: Start, nursery: trio.Nursery
) -> None:
    _, port_a = await start("root", "ann", quiet_above=3)
    b, _ = await start(quiet_above=3)
    door = IRCDoor(b, IRCConfig(port=0, name="irc.test"))
    irc_b = (await nursery.start(door.serve))[0].socket.getsockname()[1]
    await login(port_a, "ann", "#den")  # its creator: an operator of #den, on node A
    await wait_until(lambda: b.hub.moderation.is_op("#den", "ann"))
    await wait_until(lambda: b.hub.rooms().get("#den") == 1)
    bob, cat, dan = [await irc_client(irc_b, nick) for nick in ("bob", "cat", "dan")]
    await bob.send("JOIN #den")
    await names_of(bob, "#den")
    # Just below the threshold (3 members over two nodes): every name.
    await cat.send("JOIN #den")
    assert await names_of(cat, "#den") == (["@ann", "bob", "cat"], "End of /NAMES list")
    # Past it: the joiner and the operator, wherever it is connected, and the cluster's count.
    await dan.send("JOIN #den")
    big = "End of /NAMES list (4 users: a big room lists you and its operators)"
    assert await names_of(dan, "#den") == (["@ann", "dan"], big)
    await bob.send("NAMES #den")
    assert await names_of(bob, "#den") == (["@ann", "bob"], big)
    await dan.send("WHO #den")
    flags = {}
    while (who := await dan.next()) is not None and who.command != "315":
        if who.command == "352":
            flags[who.params[5]] = who.params[6]
    assert flags == {"ann": "H@", "dan": "H"}


def _admin(*args: str, **env: str) -> Any:
    """``triochat admin ARGS`` as a host would run it, its output and exit code."""
    from click.testing import CliRunner

    from triochat.cli import main

    return CliRunner().invoke(main, ["admin", *args], env=env or None)


async def test_triochat_admin_with_redis_changes_the_clusters_accounts_on_every_running_node(
    start: Start, cluster: str
) -> None:
    a, _ = await start("root", "ann")
    b, port_b = await start()  # its file has no accounts: it takes the cluster's
    on = ["--redis", TEST_REDIS, "--cluster", cluster]
    assert a.accounts is not None
    await wait_until(lambda: b.accounts is not None and b.accounts.registered("ann"))

    done = await trio.to_thread.run_sync(lambda: _admin(*on, "grant", "ANN"))
    assert (done.exit_code, done.output) == (0, "ANN is a server admin.\n")
    # Published as a change: the running nodes take it at once, and keep it when they link.
    await wait_until(lambda: b.accounts is not None and b.accounts.admin("ann"))
    assert a.accounts.admin("ann")
    listed = await trio.to_thread.run_sync(lambda: _admin(*on, "accounts"))
    assert [line.split("\t")[:2] for line in listed.output.splitlines()] == [
        ["ann", "admin"],
        ["root", "admin"],
    ]

    reset = await trio.to_thread.run_sync(
        lambda: _admin(*on, "reset-password", "ann", TRIOCHAT_NEW_PASSWORD="fresh-pw")
    )
    assert reset.exit_code == 0, reset.output
    assert "fresh-pw" not in reset.output
    ann = await dial(port_b)
    await ann.until("* What is your name?")
    await ann.send("ann")
    await ann.until("* ann is registered: its password?")
    await ann.send("fresh-pw")
    await ann.until("[T] * ann joined #lobby")
    await ann.send("/gban mallory 1h")  # the role granted through Redis
    await ann.until("* mallory is banned from this server for 1h more")

    revoked = await trio.to_thread.run_sync(lambda: _admin(*on, "revoke", "ann"))
    assert revoked.exit_code == 0, revoked.output
    await wait_until(lambda: a.accounts is not None and not a.accounts.admin("ann"))
    missing = await trio.to_thread.run_sync(lambda: _admin(*on, "grant", "carl"))
    assert (missing.exit_code, "carl is not registered" in missing.output) == (1, True)


async def test_triochat_admin_against_a_wrong_cluster_name_changes_nothing(
    start: Start, cluster: str
) -> None:
    await start("root", "ann")
    wrong = unique_cluster()
    for args in (["grant", "ann"], ["accounts"]):
        command = ["--redis", TEST_REDIS, "--cluster", wrong, *args]
        done = await trio.to_thread.run_sync(_admin, *command)
        assert done.exit_code == 1
        assert f"cluster {wrong!r} keeps no accounts" in done.output
    # Nothing was written there, which the next node of that name would take as the truth.
    assert await cluster_keys(TEST_REDIS, wrong) == []


async def test_an_admin_change_never_overwrites_an_account_changed_since_it_was_read(
    start: Start, cluster: str
) -> None:
    from triochat.backplane.redis.accounts import UPDATE
    from triochat.backplane.redis.keys import Keys
    from triochat.backplane.redis.shared import SharedKeys

    a, _ = await start("root", "ann")
    await wait_until(lambda: bool(a.backplane.linked))  # type: ignore[attr-defined]
    keys = SharedKeys(Keys(cluster))
    async with coredis.Redis.from_url(TEST_REDIS) as client:
        now = await client.hget(keys.accounts, "ann")
        assert now is not None
        # Read before ann changed her password: the write is refused, nothing published.
        stale = now.replace(b'"ann",', b'"ann" ,', 1)
        args = ["ann", stale, b'["account","ann","ann","x",true,0.0]', b"admin-t\t1\n"]
        done: Any = await UPDATE(
            keys=[keys.accounts, keys.seeded, keys.keys.channel], args=args, client=client
        )
        assert done == 0
        assert await client.hget(keys.accounts, "ann") == now


async def test_an_identified_member_resumed_on_another_node_is_identified_there(
    start: Start,
) -> None:
    # Over Redis the account and away text travel in the T record, which the TAKE script
    # builds from the member's presence (written by its old node), never from the client.
    a, port_a = await start("root", "ann")
    b, port_b = await start()
    ann = V2Client(await trio.open_tcp_stream("127.0.0.1", port_a))
    await ann.log_in("ann")
    await ann.parsed("joined")  # back from Redis, after the room's epoch
    await ann.operator_away("#den", "lunch")
    bob = await named(port_b, "bob")
    await join(bob, "bob", "#den")
    await ann.parsed("joined")
    await ann.cut()
    await wait_until(lambda: a.tokens.held == 1)

    async def connect_b() -> V2Client:
        return V2Client(await trio.open_tcp_stream("127.0.0.1", port_b))

    again = await resume(connect_b, ann)
    await again.parsed("resumed")
    await again.parsed("resumed")
    member = b.hub.member("ann")
    assert member is not None
    assert (member.account, member.away) == ("ann", "lunch")
    await bob.send("/users")
    await bob.until("* Users in #den: @ann (away), bob")
    await again.send("/topic Be kind")
    await bob.until("[T] * ann set the topic of #den: Be kind")
    await again.send("/quit")
    await again.cut()
