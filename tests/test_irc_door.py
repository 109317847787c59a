"""The IRC door over real TCP sockets, beside the line door on one hub.

IRC clients here are raw sockets speaking IRC through the door's own framer
(the library and irssi tests are in ``test_irc_clients.py``); line-door users
are the real :class:`~triochat.client.connection.ChatClient`.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import trio
import trio.testing
import trustme
from irc_support import RawIRC, close_clients, irc_client, line_client, line_until, opened

from triochat import ChatServer, ServerConfig
from triochat.client.connection import open_chat_client
from triochat.protocol import irc
from triochat.server.irc import IRCConfig, IRCDoor

Start = Callable[..., Awaitable[tuple[ChatServer, int, int]]]

_close_clients = pytest.fixture(autouse=True)(close_clients)


@pytest.fixture
async def start(nursery: trio.Nursery) -> Start:
    """``server, line_port, irc_port = await start(rate=0, ...)``: both doors, port 0."""

    async def start(
        irc_config: IRCConfig | None = None, **options: Any
    ) -> tuple[ChatServer, int, int]:
        options.setdefault("port", 0)
        server = ChatServer(ServerConfig(**options))
        line = await nursery.start(server.serve)
        door = IRCDoor(server, irc_config or IRCConfig(port=0, name="irc.test"))
        listeners = await nursery.start(door.serve)
        return server, line[0].socket.getsockname()[1], listeners[0].socket.getsockname()[1]

    return start


async def test_an_irc_user_and_an_nc_user_chat_in_one_room(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0)
    bob = await line_client(line_port, "bob")
    hub_said = await irc_client(irc_port, "zoë")
    zoe = hub_said
    await zoe.send("JOIN #lobby")
    await zoe.until("JOIN", "#lobby")
    names = await zoe.until("353")
    assert names.params[3].split() == ["bob", "zoë"]
    await zoe.until("366")
    await line_until(bob, "* zoë joined #lobby")

    await zoe.send("PRIVMSG #lobby :hello from IRC", "PRIVMSG bob :just you")
    await line_until(bob, "<zoë> hello from IRC")
    await line_until(bob, "*zoë* just you")
    await bob.send_line("hello from nc")
    said = await zoe.until("PRIVMSG", "#lobby")
    assert (said.source, said.params[1]) == ("bob!bob@irc.test", "hello from nc")
    await bob.send_line("/me waves")
    acted = await zoe.until("PRIVMSG", "#lobby")
    assert acted.params[1] == "\x01ACTION waves\x01"
    await bob.send_line("/msg zoë psst")
    private = await zoe.until("PRIVMSG", "zoë")
    assert private.params[1] == "psst"
    # Its own lines never came back: this client did not ask for echo-message.
    mine = [m for m in zoe.seen if m.command == "PRIVMSG" and (m.source or "").startswith("zoë!")]
    assert not mine

    # QUIT and gone at once: the room still hears why.
    await zoe.send("QUIT :bye now")
    await zoe.stream.aclose()
    await line_until(bob, "* zoë left #lobby (bye now)")
    await bob.aclose()


async def test_a_line_user_leaving_is_a_quit_or_a_part_on_irc(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0)
    zoe = await irc_client(irc_port, "zoe")
    await zoe.send("JOIN #lobby,#other")
    await zoe.until("366", "zoe", "#other")
    bob = await line_client(line_port, "bob")
    await zoe.until("JOIN", "#lobby")
    await bob.send_line("/join #other")
    part = await zoe.until("PART", "#lobby")
    assert part.params[1] == "joined #other"
    await zoe.until("JOIN", "#other")
    await bob.stream.aclose()  # a dead peer
    quit_ = await zoe.until("QUIT")
    assert (quit_.source, quit_.params) == ("bob!bob@irc.test", ("connection lost",))


async def test_a_nick_taken_on_the_line_door_is_433_and_an_irc_special_432(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0)
    bob = await line_client(line_port, "bob")
    client = await irc_client(irc_port)
    await client.send("NICK Bob", "USER u 0 * :x")
    taken = await client.until("433")
    assert taken.params[1] == "Bob"
    await client.send("NICK [bob]")
    await client.until("432", "*", "[bob]")
    await client.send("NICK bob2")
    await client.until("001", "bob2")
    await bob.aclose()


async def test_an_over_long_line_is_417_and_the_connection_stays(start: Start) -> None:
    _, _, irc_port = await start(rate=0)
    zoe = await irc_client(irc_port, "zoe")
    await zoe.send("PRIVMSG #lobby :" + "x" * 2000, "PING :after")
    await zoe.until("417")
    pong = await zoe.until("PONG")
    assert pong.params[-1] == "after"


async def test_no_parameter_can_inject_a_line_into_another_client(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0)
    zoe = await irc_client(irc_port, "zoe")
    ann = await irc_client(irc_port, "ann")
    for client in (zoe, ann):
        await client.send("JOIN #lobby")
        await client.until("366")
    bob = await line_client(line_port, "bob")
    await zoe.until("JOIN", "#lobby")
    # A line-door user cannot send CR or LF (they end its line) but may try NUL,
    # escapes and a CTCP; an IRC client's CR ends its message.
    await bob.send_line("hi\x00 KILL ann\x01VERSION\x01 \x1b[2J")
    got = await zoe.until("PRIVMSG", "#lobby")
    assert got.params[1] == "hi KILL annVERSION "
    # A lone CR does not end an IRC message either: it is one message, cleaned.
    await ann.send("PRIVMSG #lobby :one\rQUIT :injected")
    await line_until(bob, "<ann> oneQUIT :injected")
    await ann.send("PRIVMSG #lobby :still here")
    await zoe.until("PRIVMSG", "#lobby", "still here")
    assert [m.command for m in zoe.seen if m.source and m.source.startswith("ann!")] == [
        "JOIN",
        "PRIVMSG",
        "PRIVMSG",
    ]


async def test_the_server_password(start: Start) -> None:
    _, _, irc_port = await start(rate=0, password="sesame", password_delay=0)
    good = await irc_client(irc_port, "zoe", "PASS sesame")
    await good.send("PING x")
    await good.until("PONG")
    bad = await irc_client(irc_port)
    await bad.send("PASS wrong", "NICK ann", "USER u 0 * :x")
    await bad.until("464")
    error = await bad.until("ERROR")
    assert "wrong password" in error.params[0]
    assert await bad.closed() == []


async def test_max_per_address_counts_irc_connections(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0, max_per_address=1)
    first = await irc_client(irc_port, "zoe")
    second = await irc_client(irc_port)
    [error] = await second.closed()
    assert error.command == "ERROR"
    assert "Too many connections" in error.params[0]
    line = await open_chat_client("127.0.0.1", line_port)
    opened(line)
    with trio.fail_after(10):
        assert "Too many connections" in await line.receive_line()
    await first.stream.aclose()


async def test_shutdown_says_error_and_closes(start: Start) -> None:
    server, line_port, irc_port = await start(rate=0)
    zoe = await irc_client(irc_port, "zoe")
    bob = await line_client(line_port, "bob")
    server.shutdown()
    got = await zoe.closed()
    assert [(m.command, m.params) for m in got][-1:] == [("ERROR", ("Server shutting down",))]
    await line_until(bob, "Server is shutting down. Bye!")


async def test_flood_control_paces_irc_messages_and_loses_none(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    _, line_port, irc_port = await start(rate=5, burst=2)
    zoe = await irc_client(irc_port, "zoe")
    await zoe.send("JOIN #lobby")
    await zoe.until("366")
    bob = await line_client(line_port, "bob")
    await zoe.send(*(f"PRIVMSG #lobby :line {i}" for i in range(12)))
    for i in range(12):
        await line_until(bob, f"<zoe> line {i}")


async def test_an_idle_client_is_pinged_and_a_silent_one_dropped(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    _, line_port, irc_port = await start(rate=0, irc_config=IRCConfig(port=0, ping_interval=30))
    zoe = await irc_client(irc_port, "zoe")
    await zoe.send("JOIN #lobby")
    await zoe.until("366")
    bob = await line_client(line_port, "bob")
    ping = await zoe.until("PING", within=100)
    await zoe.send(f"PONG :{ping.params[0]}")
    await zoe.until("PING", within=100)  # still here: pinged again after the next quiet spell
    # No answer this time: dropped, and the room is told as for a dead peer.
    await line_until(bob, "* zoe left #lobby (connection lost)", within=100)
    rest = await zoe.closed()
    assert rest[-1].command == "ERROR"


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context and a client context that trusts it (trustme)."""
    ca = trustme.CA()
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(server)
    client = ssl.create_default_context()
    ca.configure_trust(client)
    return server, client


async def test_tls_with_the_servers_certificate(
    nursery: trio.Nursery, tls: tuple[ssl.SSLContext, ssl.SSLContext]
) -> None:
    server_context, client_context = tls
    server = ChatServer(ServerConfig(port=0, rate=0), ssl_context=server_context)
    await nursery.start(server.serve)
    door = IRCDoor(server, IRCConfig(port=0, name="irc.test"))
    [listener] = await nursery.start(door.serve)
    port = listener.socket.getsockname()[1]
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), client_context, server_hostname="127.0.0.1"
    )
    opened(stream)
    client = RawIRC(stream)  # type: ignore[arg-type]
    await client.send("NICK zoe", "USER u 0 * :x")
    welcome = await client.until("001")
    assert welcome.params[0] == "zoe"
    # A plain-text client is told, as IRC says it (an ERROR), and closed.
    plain = RawIRC(await trio.open_tcp_stream("127.0.0.1", port))
    opened(plain.stream)
    await plain.send("NICK ann", "USER u 0 * :x")
    told: list[object] = []
    with trio.fail_after(10):
        while (event := await plain.next_event()) is not None:
            told.append(event)
    assert told == [
        irc.message("ERROR", "Closing link: this server speaks TLS only: connect with TLS")
    ]
    assert server.stats.tls_handshake_failures == 1


async def test_a_tls_client_that_answers_its_pings_stays(
    nursery: trio.Nursery,
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A TLS client keeps its own PING timer; the door's task for plain sockets leaves it be
    (two PINGs for one quiet spell would drop a client that answers)."""
    server_context, client_context = tls
    server = ChatServer(ServerConfig(port=0, rate=0), ssl_context=server_context)
    await nursery.start(server.serve)
    door = IRCDoor(server, IRCConfig(port=0, name="irc.test", ping_interval=30))
    [listener] = await nursery.start(door.serve)
    port = listener.socket.getsockname()[1]
    stream = trio.SSLStream(
        await trio.open_tcp_stream("127.0.0.1", port), client_context, server_hostname="127.0.0.1"
    )
    opened(stream)
    zoe = RawIRC(stream)  # type: ignore[arg-type]
    await zoe.send("NICK zoe", "USER u 0 * :x", "JOIN #lobby")
    await zoe.until("366")
    for _ in range(3):  # three quiet spells, each PING answered
        ping = await zoe.until("PING", within=100)
        await zoe.send(f"PONG :{ping.params[0]}")
    await zoe.send("PRIVMSG #lobby :still here")
    await trio.testing.wait_all_tasks_blocked()
    assert server.hub.member("zoe") is not None


async def test_a_client_that_does_not_read_is_evicted_as_too_slow(start: Start) -> None:
    server, line_port, irc_port = await start(rate=0, history=0, send_queue=32)
    sock = trio.socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    await sock.connect(("127.0.0.1", irc_port))
    slow = RawIRC(trio.SocketStream(sock))
    opened(slow.stream)
    await slow.send("NICK slow", "USER u 0 * :x", "JOIN #lobby")  # and never reads again
    zoe = await irc_client(irc_port, "zoe")
    await zoe.send("JOIN #lobby")
    await zoe.until("JOIN", "#lobby")
    bob = await line_client(line_port, "bob")
    text = "x" * 400
    with trio.fail_after(30):
        for i in range(400):
            await bob.send_line(f"{i} {text}")
            got = await zoe.until("PRIVMSG", "#lobby")
            assert got.params[1] == f"{i} {text}"
            if server.hub.slow_evictions:
                break
    gone = await zoe.until("QUIT")
    assert (gone.source, gone.params) == ("slow!slow@irc.test", ("too slow",))


async def test_a_client_that_never_registers_is_closed_after_the_timeout(
    start: Start, autojump_clock: trio.testing.MockClock
) -> None:
    _, _, irc_port = await start(rate=0, registration_timeout=5)
    client = await irc_client(irc_port)
    await client.send("NICK zoe")  # and no USER
    [error] = await client.closed()
    assert error.command == "ERROR"
    assert "5 s" in error.params[0]


async def test_max_clients_counts_both_doors(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0, max_clients=2)
    await line_client(line_port, "bob")
    await irc_client(irc_port, "zoe")
    third = await irc_client(irc_port)
    [error] = await third.closed()
    assert (error.command, error.params) == ("ERROR", ("Server full, try again later",))


async def test_the_door_has_its_own_metric(start: Start) -> None:
    from triochat.server.metrics import ChatCollector

    server, line_port, irc_port = await start(rate=0)
    await line_client(line_port, "bob")
    zoe = await irc_client(irc_port, "zoe")

    def gauges() -> dict[str, float]:
        return {m.name: m.samples[0].value for m in ChatCollector(server).collect()}

    assert gauges()["triochat_irc_connected_clients"] == 1
    assert gauges()["triochat_connected_clients"] == 2
    await zoe.send("QUIT")
    await zoe.closed()
    await trio.testing.wait_all_tasks_blocked()  # the server's side ends after the client's
    assert gauges()["triochat_irc_connected_clients"] == 0
    assert gauges()["triochat_connected_clients"] == 1


async def test_labeled_responses_over_a_socket(start: Start) -> None:
    _, line_port, irc_port = await start(rate=0)
    bob = await line_client(line_port, "bob")
    caps = "CAP REQ :labeled-response batch echo-message"
    zoe = await irc_client(irc_port, "zoe", "CAP LS 302", caps, "CAP END")
    await zoe.send("@label=j1 JOIN #lobby")
    start_ = await zoe.until("BATCH")
    assert (start_.params[1], start_.tag("label")) == ("labeled-response", "j1")
    joined = await zoe.until("JOIN", "#lobby")
    assert joined.tag("batch") == start_.params[0][1:]
    await zoe.until("BATCH", f"-{start_.params[0][1:]}")
    await zoe.send("@label=m1 PRIVMSG #lobby :hello", "@label=p1 PONG x")
    echo = await zoe.until("PRIVMSG", "#lobby")
    assert (echo.params[1], echo.tag("label")) == ("hello", "m1")
    ack = await zoe.until("ACK")
    assert ack.tag("label") == "p1"
    await line_until(bob, "<zoe> hello")


async def test_irc_sessions_share_their_door_and_keep_their_own_dialects(start: Start) -> None:
    """Memory per idle client (docs/benchmarks.md): one Door for the door's sessions, and
    no set of the door's own: the server's connections are the ones it PINGs."""
    from triochat.server.irc import IRCConnection

    server, _, irc_port = await start(rate=0)
    zoe = await irc_client(irc_port, "zoe")
    eve = await irc_client(irc_port, "eve")
    connections = [c for c in server.each_connection() if isinstance(c, IRCConnection)]
    assert len(connections) == 2
    one, two = (c.irc for c in connections)
    assert one._door is two._door
    assert one.dialect is not two.dialect
    for session in (one, two):
        assert session.member is not None
        assert session.member.dialect is session.dialect  # not the door's
    await zoe.stream.aclose()
    await eve.stream.aclose()
