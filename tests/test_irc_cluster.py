"""The IRC door on one node of a Redis cluster, a line-door user on another.

In a cluster a room's lines come back from Redis after the hub call that sent
them, so this is where the door's "not your own lines back" rule is tested
with the echo arriving late. Needs a Redis (``TRIOCHAT_TEST_REDIS``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
from irc_support import RawIRC, close_clients, irc_client, line_client, line_until
from redis_support import (
    FAST,
    TEST_REDIS,
    answers,
    delete_cluster_keys,
    unavailable,
    unique_cluster,
)

from triochat import ChatServer, ServerConfig
from triochat.backplane.redis import RedisBackplane, RedisOptions
from triochat.server.irc import IRCConfig, IRCDoor

Node = Callable[..., Awaitable[tuple[int, int]]]

_close_clients = pytest.fixture(autouse=True)(close_clients)


@pytest.fixture(scope="session")
def redis_url() -> str:
    if not answers(TEST_REDIS):
        unavailable(f"no Redis answers at {TEST_REDIS} (set TRIOCHAT_TEST_REDIS)")
    return TEST_REDIS


@pytest.fixture
async def node(redis_url: str, nursery: trio.Nursery) -> AsyncIterator[Node]:
    """``line_port, irc_port = await node()``: a node of a fresh cluster, with both doors."""
    name = unique_cluster()

    async def start() -> tuple[int, int]:
        options: dict[str, Any] = {"url": redis_url, "cluster": name, **FAST}
        backplane = RedisBackplane(RedisOptions(**options))
        server = ChatServer(ServerConfig(port=0, rate=0, history=5), backplane=backplane)
        line = await nursery.start(server.serve)
        door = IRCDoor(server, IRCConfig(port=0, name="irc.test"))
        irc = await nursery.start(door.serve)
        return line[0].socket.getsockname()[1], irc[0].socket.getsockname()[1]

    yield start
    await delete_cluster_keys(redis_url, name)


async def test_irc_and_line_users_on_two_nodes(node: Node) -> None:
    _, irc_a = await node()
    line_b, _ = await node()
    ann = await line_client(line_b, "ann")
    zoe = await irc_client(irc_a, "zoe")
    await zoe.send("JOIN #lobby")
    join = await zoe.until("JOIN", "#lobby")
    assert join.source == "zoe!zoe@irc.test"
    names = await zoe.until("353")
    assert names.params[3].split() == ["ann", "zoe"]
    await line_until(ann, "* zoe joined #lobby")

    await zoe.send("PRIVMSG #lobby :from node a", "PRIVMSG ann :psst")
    await line_until(ann, "<zoe> from node a")
    await line_until(ann, "*zoe* psst")
    await ann.send_line("from node b")
    said = await zoe.until("PRIVMSG", "#lobby")
    assert (said.source, said.params[1]) == ("ann!ann@irc.test", "from node b")
    # Its own JOIN once, its own line never: both came back late, through Redis.
    mine = [m for m in zoe.seen if (m.source or "").startswith("zoe!")]
    assert [m.command for m in mine] == ["JOIN"]

    # A name held on the other node is taken here too.
    client = await irc_client(irc_a)
    await client.send("NICK Ann", "USER u 0 * :x")
    await client.until("433")
    await zoe.send("QUIT :bye")
    await line_until(ann, "* zoe left #lobby (bye)")


async def test_a_second_message_is_not_mistaken_for_the_echo(node: Node) -> None:
    _, irc_a = await node()
    zoe: RawIRC = await irc_client(irc_a, "zoe")
    ben: RawIRC = await irc_client(irc_a, "ben")
    for client in (zoe, ben):
        await client.send("JOIN #lobby")
        await client.until("366")
    await zoe.send(*(f"PRIVMSG #lobby :{i}" for i in range(5)))
    for i in range(5):
        got = await ben.until("PRIVMSG", "#lobby")
        assert got.params[1] == str(i)
    await ben.send("PRIVMSG #lobby :from ben")
    got = await zoe.until("PRIVMSG", "#lobby")
    assert got.params[1] == "from ben"


async def test_messages_behind_a_cluster_name_claim_are_handled_after_it(node: Node) -> None:
    line_a, irc_a = await node()
    ann = await line_client(line_a, "ann")
    zoe = await irc_client(irc_a, "zoe")
    await zoe.send("NICK zed", "JOIN #lobby", "PRIVMSG #lobby :renamed and here")
    nick = await zoe.until("NICK")
    assert nick.params == ("zed",)
    await zoe.until("JOIN", "#lobby")
    await line_until(ann, "* zed joined #lobby")
    await line_until(ann, "<zed> renamed and here")


async def test_away_notify_across_nodes(node: Node) -> None:
    _, irc_a = await node()
    line_b, _ = await node()
    ann = await line_client(line_b, "ann")
    zoe = await irc_client(irc_a, "zoe", "CAP LS 302", "CAP REQ :away-notify", "CAP END")
    await zoe.send("JOIN #lobby,#x")
    await zoe.until("366", "zoe", "#x")
    await ann.send_line("/join #x")  # a line user is in one room: #x
    await zoe.until("JOIN", "#x")
    await ann.send_line("/away lunch")
    await line_until(ann, "You are away: lunch")
    away = await zoe.until("AWAY")
    assert (away.source, away.params) == ("ann!ann@irc.test", ("lunch",))
    # Away, it moves on: the JOIN, then its AWAY, carried by Redis with it.
    await ann.send_line("/join #lobby")
    joined = await zoe.until("JOIN", "#lobby")
    assert joined.source == "ann!ann@irc.test"
    nxt = await zoe.next()
    assert nxt is not None
    assert (nxt.command, nxt.params) == ("AWAY", ("lunch",))
    await ann.send_line("/away")
    back = await zoe.until("AWAY")
    assert back.params == ()
    await ann.send_line("after")
    said = await zoe.until("PRIVMSG", "#lobby")
    assert said.params[1] == "after"
    assert [m.command for m in zoe.seen].count("AWAY") == 3


async def test_a_labeled_line_is_answered_by_its_echo_from_the_cluster(node: Node) -> None:
    line_a, irc_a = await node()
    ann = await line_client(line_a, "ann")
    caps = "CAP REQ :labeled-response batch echo-message"
    zoe = await irc_client(irc_a, "zoe", "CAP LS 302", caps, "CAP END")
    await zoe.send("JOIN #lobby")
    await zoe.until("366")
    await ann.send_line("before")
    await zoe.until("PRIVMSG", "#lobby")
    long = "word " * 98  # echoed as two lines: a batch
    await zoe.send("@label=a PRIVMSG #lobby :one", f"@label=b PRIVMSG #lobby :{long}")
    echo = await zoe.until("PRIVMSG", "#lobby")
    assert (echo.params[1], echo.tag("label")) == ("one", "a")
    start = await zoe.until("BATCH")
    assert (start.params[1], start.tag("label")) == ("labeled-response", "b")
    first = await zoe.until("PRIVMSG", "#lobby")
    assert first.tag("batch") == start.params[0][1:]
    await zoe.until("BATCH", f"-{start.params[0][1:]}")
    assert "ACK" not in [m.command for m in zoe.seen]
    await line_until(ann, "<zoe> one")


async def test_a_user_away_on_another_node_is_away_in_who_whois_and_privmsg(node: Node) -> None:
    _, irc_a = await node()
    line_b, _ = await node()
    ann = await line_client(line_b, "ann")
    await ann.send_line("/away lunch")
    await line_until(ann, "You are away: lunch")
    zoe = await irc_client(irc_a, "zoe")
    await zoe.send("JOIN #lobby")
    await zoe.until("366", "zoe", "#lobby")
    await zoe.send("WHO #lobby")
    who = await zoe.until("352", "zoe", "#lobby", "ann")
    assert who.params[6].startswith("G")
    await zoe.send("WHOIS ann")
    assert (await zoe.until("301", "zoe", "ann")).params[2] == "lunch"
    await zoe.until("318")
    await zoe.send("PRIVMSG ann :psst", "NOTICE ann :no answer to this", "USERHOST ann")
    assert (await zoe.until("301", "zoe", "ann")).params[2] == "lunch"
    assert (await zoe.until("302")).params[1] == "ann=-ann@irc.test"
    await line_until(ann, "*zoe* no answer to this")
    assert [m.command for m in zoe.seen].count("301") == 2  # a NOTICE is never answered
