"""The server over real TCP on 127.0.0.1 (port 0), in-process: protocol v1 and its limits.

Every wait has a deadline. No test sleeps for real to let something happen:
each waits for the line or the state it expects.
"""

from __future__ import annotations

import logging
import random
import re
import socket
import struct
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import suppress

import pytest
import trio
import trio.testing
from conftest import Connect, StartServer

from triochat import ChatServer, ServerConfig
from triochat.client.connection import ChatClient, ConnectionClosed, NameRejected
from triochat.protocol import line as p
from triochat.server.listener import HANDLER_NAME, SHUTDOWN_LINE

STAMP = re.compile(r"^\[\d\d:\d\d:\d\d\] ")
WAIT = 10  # seconds: the deadline for anything a test waits on


@pytest.fixture(autouse=True)
def no_errors_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    """Whatever a client does, the server must not log an error (a crashed connection)."""
    yield
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, [r.getMessage() for r in errors]


def unstamp(line: str) -> str:
    """``[12:34:56] rest`` becomes ``[T] rest``, so tests can compare whole lines."""
    return STAMP.sub("[T] ", line)


async def receive(client: ChatClient) -> str:
    with trio.fail_after(WAIT):
        return unstamp(await client.receive_line())


async def expect(client: ChatClient, *lines: str) -> None:
    """The next lines ``client`` receives are exactly ``lines`` (timestamps as ``[T]``)."""
    for line in lines:
        assert await receive(client) == line


async def expect_eof(client: ChatClient) -> None:
    with trio.fail_after(WAIT):
        try:
            line = await client.receive_line()
        except ConnectionClosed:
            return
    raise AssertionError(f"expected EOF, got {line!r}")


async def receive_all(client: ChatClient) -> list[str]:
    """Every line until the server hangs up."""
    lines = []
    with trio.fail_after(WAIT):
        while True:
            try:
                lines.append(unstamp(await client.receive_line()))
            except ConnectionClosed:
                return lines


async def receive_until(client: ChatClient, last: str) -> list[str]:
    """Every line up to and including ``last``."""
    lines = []
    while (line := await receive(client)) != last:
        lines.append(line)
    return [*lines, line]


async def wait_for(predicate: Callable[[], bool]) -> None:
    """Poll a server-side condition that no client can see, with a deadline."""
    with trio.fail_after(WAIT):
        while not predicate():  # noqa: ASYNC110 - server state with no event to wait on
            await trio.sleep(0.005)


RawConnect = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
async def raw_connect() -> AsyncIterator[RawConnect]:
    """``await raw_connect(port, rcvbuf=4096)``: a client socket set up before it connects.

    A small receive buffer makes a client that stops reading a slow consumer quickly.
    """
    clients: list[ChatClient] = []

    async def open_client(port: int, *, rcvbuf: int | None = None) -> ChatClient:
        sock = trio.socket.socket()
        if rcvbuf is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        clients.append(client := ChatClient(trio.SocketStream(sock)))
        with trio.fail_after(WAIT):
            await sock.connect(("127.0.0.1", port))
        return client

    yield open_client
    for client in clients:
        await client.aclose()


async def reset(client: ChatClient) -> None:
    """Vanish abruptly: close with an RST instead of a FIN."""
    assert isinstance(client.stream, trio.SocketStream)
    client.stream.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    await client.aclose()


# --- the protocol, end to end ----------------------------------------------------


async def test_protocol_walk_through(start_server: StartServer, connect: Connect) -> None:
    _, port = await start_server(rate=0)
    raw = await connect(port)
    welcome = [await receive(raw), await receive(raw)]
    assert welcome[0].startswith("* Welcome to triochat! 0 users online.")
    assert welcome[-1] == "* What is your name?"
    await raw.send_line("")  # empty lines are not names
    await raw.send_line("  ann  ")
    await expect(raw, "* Users in #lobby: ann", "[T] * ann joined #lobby")
    ann = raw

    ben = await connect(port)
    assert [unstamp(x) for x in await ben.register("ben")] == [
        "* Users in #lobby: ann, ben",
        "[T] * ben joined #lobby",
    ]
    await expect(ann, "[T] * ben joined #lobby")

    await ann.send_line("hello ben")
    await expect(ann, "[T] <ann> hello ben")  # the sender's confirmation
    await expect(ben, "[T] <ann> hello ben")
    await ben.send_line("/me waves")
    for c in (ann, ben):
        await expect(c, "[T] * ben waves")
    await ann.send_line("/msg BEN psst")
    await expect(ben, "[T] *ann* psst")
    await expect(ann, "[T] -> *ben* psst")
    await ann.send_line("/whisper nobody hello?")
    await expect(ann, "! No such user: nobody")
    await ben.send_line("/nick benny")
    for c in (ann, ben):
        await expect(c, "[T] * ben is now known as benny")
    for command in ("/users", "/who", "/names"):
        await ann.send_line(command)
        await expect(ann, "* Users in #lobby: ann, benny")

    await ann.send_line("/join #Dev")
    await expect(ben, "[T] * ann left #lobby (joined #dev)")
    await expect(ann, "* Users in #dev: ann", "[T] * ann joined #dev")
    for command in ("/rooms", "/list"):
        await ann.send_line(command)
        await expect(ann, "* Rooms: #dev (1), #lobby (1)")
    await ann.send_line("/help")
    await expect(ann, *(f"* {line}" for line in p.HELP))
    await ann.send_line("/bogus stuff")
    await expect(ann, "! Unknown command /bogus. Try /help.")
    await ann.send_line("")
    await ann.send_line("//slash")
    await expect(ann, "[T] <ann> /slash")

    await ben.send_line("/join #dev")
    await expect(ann, "[T] * benny joined #dev")
    # The joiner gets the room's history, then who is there, then its own arrival.
    await expect(ben, "[T] <ann> /slash", "* Users in #dev: ann, benny", "[T] * benny joined #dev")

    assert await ann.quit("see you") == ["* Bye!"]  # then EOF
    await expect(ben, "[T] * ann left #dev (see you)")

    cat = await connect(port, "cat")
    await ben.send_line("/join #lobby")
    await expect(
        ben,
        "[T] <ann> hello ben",  # the lobby's history
        "[T] * ben waves",
        "* Users in #lobby: benny, cat",
        "[T] * benny joined #lobby",
    )
    await expect(cat, "[T] * benny joined #lobby")
    await cat.send_line("/exit")
    await expect(cat, "* Bye!")
    await expect_eof(cat)
    await expect(ben, "[T] * cat left #lobby (quit)")

    dan = await connect(port, "dan")
    await expect(ben, "[T] * dan joined #lobby")
    await dan.aclose()  # just hangs up
    await expect(ben, "[T] * dan left #lobby (connection lost)")
    eve = await connect(port, "eve")
    await expect(ben, "[T] * eve joined #lobby")
    await reset(eve)  # the connection breaks
    await expect(ben, "[T] * eve left #lobby (connection lost)")


async def test_shutdown_says_goodbye_then_eof_to_every_client(raw_connect: RawConnect) -> None:
    server = ChatServer(ServerConfig(port=0))
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            port = listeners[0].socket.getsockname()[1]
            ann = await raw_connect(port)
            await ann.register("ann")
            ben = await raw_connect(port)
            await ben.register("ben")
            await ben.send_line("/join #dev")
            await expect(ben, "* Users in #dev: ben", "[T] * ben joined #dev")
            unnamed = await raw_connect(port)
            await expect(
                unnamed,
                "* Welcome to triochat! 2 users online. Commands start with /, try /help.",
                "* What is your name?",
            )
            await expect(ann, "[T] * ben joined #lobby", "[T] * ben left #lobby (joined #dev)")

            server.shutdown()
            for client in (ann, ben, unnamed):
                await expect(client, f"* {SHUTDOWN_LINE}")
                await expect_eof(client)
        # serve() has returned; nobody is listening any more.
    with pytest.raises(OSError, match="all attempts to connect"):
        await trio.open_tcp_stream("127.0.0.1", port)


async def test_a_client_whose_handler_starts_after_shutdown_still_gets_the_goodbye() -> None:
    server = ChatServer(ServerConfig())
    server.shutdown()
    client, server_side = trio.testing.memory_stream_pair()
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_side)
            data = await read_until_closed(client)
    assert data == f"* {SHUTDOWN_LINE}\n".encode()
    assert server.connections == 0


async def test_the_writer_coalesces_queued_lines_into_one_send() -> None:
    server = ChatServer(ServerConfig(rate=0))
    # A lockstep stream: each send_all waits until the client has read all of
    # it, so every chunk the client reads is exactly one send_all.
    client, server_side = trio.testing.lockstep_stream_pair()
    ben_outbox, _ben_inbox = trio.open_memory_channel[bytes](100)
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(server.handle_stream, server_side)
            await client.send_all(b"ann\n")
            await trio.testing.wait_all_tasks_blocked()
            # The writer is stuck sending the first welcome line; meanwhile the
            # room says a lot.
            ben = server.hub.register("ben", ben_outbox, lambda: None, server.dialect)
            assert not isinstance(ben, str)
            server.hub.join(ben, p.LOBBY)
            for i in range(50):
                server.hub.say(ben, p.LOBBY, [f"line {i}"])
            chunks = []
            data = b""
            while not data.endswith(b"line 49\n"):
                chunks.append(await client.receive_some())
                data = b"".join(chunks)
            nursery.cancel_scope.cancel()
    lines = [unstamp(line) for line in data.decode().splitlines()]
    assert lines[-51:] == ["[T] * ben joined #lobby"] + [f"[T] <ben> line {i}" for i in range(50)]
    assert len(lines) == 55  # welcome (2), users, ann joined, ben joined, 50 lines
    assert len(chunks) == 2  # the first welcome line, then everything else at once


async def test_tcp_keepalive_finds_dead_peers_within_about_a_minute(
    start_server: StartServer, connect: Connect
) -> None:
    server, port = await start_server()
    await connect(port, "ann")
    await connect(port)
    assert server.connections == 2
    for connection in server._connections:
        assert isinstance(connection.stream, trio.SocketStream)
        sock = connection.stream.socket
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE)
        idle = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE)
        interval = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL)
        probes = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT)
        assert idle + interval * probes <= 60
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) <= 60_000


async def test_an_idle_connection_is_its_handler_task_alone_with_no_name_or_callback_of_its_own(
    start_server: StartServer, connect: Connect
) -> None:
    """Memory per idle connection (docs/benchmarks.md): each client's task runs the
    handler itself (no wrapper coroutine), all share one name, and the hub's callbacks
    for the member are the connection itself, not a bound method each."""
    server, port = await start_server()
    await connect(port, "ann")
    await connect(port, "ben")

    def tasks(task: trio.lowlevel.Task) -> Iterator[trio.lowlevel.Task]:
        for nursery in task.child_nurseries:
            for child in nursery.child_tasks:
                yield child
                yield from tasks(child)

    root = trio.lowlevel.current_root_task()
    assert root is not None
    handlers = [t for t in tasks(root) if t.name == HANDLER_NAME]
    assert len(handlers) == 2
    assert handlers[0].name is handlers[1].name
    assert all(t.coro.cr_code is ChatServer.handle_stream.__code__ for t in handlers)
    for connection in server._connections:
        member = connection.member
        assert member is not None
        assert member.hang_up is connection
        assert member.disconnect is connection


# --- bad input and limits ------------------------------------------------------


async def test_invalid_utf8_is_replaced_not_fatal(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server()
    ben = await connect(port, "ben")
    raw = await connect(port)
    await expect(raw, "* Welcome to triochat! 1 user online. Commands start with /, try /help.")
    await expect(raw, "* What is your name?")
    await raw.stream.send_all(b"\xff\xfe\n")
    await expect(raw, f"! Invalid name '\ufffd\ufffd': {p.NAME_RULES}", "* What is your name?")
    await raw.stream.send_all(b"Zo\xc3\xab\n")
    await expect(raw, "* Users in #lobby: ben, Zoë", "[T] * Zoë joined #lobby")
    await expect(ben, "[T] * Zoë joined #lobby")
    await raw.stream.send_all(b"caf\xc3 \xed\xa0\x80 \xc0\xaf ok\r\n")
    for c in (raw, ben):
        await expect(c, "[T] <Zoë> caf\ufffd \ufffd\ufffd\ufffd \ufffd\ufffd ok")


async def test_random_binary_bytes(start_server: StartServer, connect: Connect) -> None:
    server, port = await start_server(rate=0, max_line=200)
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    await expect(ann, "[T] * ben joined #lobby")
    # No accidental commands (a random /nick or /quit): this test is about the bytes.
    noise = b"x" + random.Random(7).randbytes(64 * 1024).replace(b"\n/", b"\n.")
    received: dict[str, list[str]] = {}

    async def collect(name: str, client: ChatClient) -> None:
        received[name] = await receive_until(client, "[T] <ann> after the noise")

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, "ann", ann)
            nursery.start_soon(collect, "ben", ben)
            await ann.stream.send_all(noise + b"\nafter the noise\n")

    said = [line for line in received["ben"] if line.startswith("[T] <ann> ")]
    assert len(said) > 50
    assert received["ann"].count("! Line too long (limit 200 bytes); it was discarded") > 10
    for line in received["ann"] + received["ben"]:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line)
    assert server.hub.members == 2


async def test_line_over_max_line_is_refused_and_the_next_one_works(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(max_line=100)
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    await expect(ann, "[T] * ben joined #lobby")
    await ann.send_line("x" * 100)
    for c in (ann, ben):
        await expect(c, "[T] <ann> " + "x" * 100)
    await ann.send_line("y" * 101)
    await expect(ann, "! Line too long (limit 100 bytes); it was discarded")
    await ann.send_line("next")
    for c in (ann, ben):
        await expect(c, "[T] <ann> next")  # ben never saw the long line


async def test_megabyte_line_without_newline_is_refused_in_bounded_memory(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server()
    ann = await connect(port, "ann")
    megabyte = b"A" * (1 << 20)
    tracemalloc.start()
    try:
        with trio.fail_after(WAIT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(ann.stream.send_all, megabyte)
                # The error comes while the line is still unfinished: nobody waits
                # for its newline, and nothing buffers it.
                await expect(ann, "! Line too long (limit 4096 bytes); it was discarded")
        await ann.stream.send_all(b"\nstill here\n")
        await expect(ann, "[T] <ann> still here")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < len(megabyte) // 4


async def test_a_client_that_disconnects_before_its_name(
    start_server: StartServer, connect: Connect, raw_connect: RawConnect
) -> None:
    server, port = await start_server()
    ann = await connect(port, "ann")
    quick = await raw_connect(port)
    await quick.aclose()  # before even the welcome
    partial = await raw_connect(port)
    await expect(partial, "* Welcome to triochat! 1 user online. Commands start with /, try /help.")
    await partial.stream.send_all(b"ben")  # no newline: not a name yet
    await partial.aclose()
    rejected = await raw_connect(port)
    await rejected.send_line("ANN")
    await reset(rejected)
    await wait_for(lambda: server.connections == 1)
    assert server.hub.members == 1
    ben = await connect(port, "ben")  # the half-sent name was never claimed
    await expect(ann, "[T] * ben joined #lobby")
    assert ben.name == "ben"


async def test_before_registration_quit_leaves_and_a_long_line_asks_again(
    start_server: StartServer, raw_connect: RawConnect
) -> None:
    server, port = await start_server(max_line=64)
    client = await raw_connect(port)
    await receive_until(client, "* What is your name?")
    await client.stream.send_all(b"x" * 100 + b"\n")
    await expect(
        client, "! Line too long (limit 64 bytes); it was discarded", "* What is your name?"
    )
    await client.send_line("/quit")
    await expect(client, "* Bye!")
    await expect_eof(client)
    assert server.hub.members == 0


async def read_until_closed(stream: trio.abc.ReceiveStream) -> bytes:
    data = b""
    with trio.fail_after(WAIT):
        while True:
            try:
                chunk = await stream.receive_some()
            except trio.BrokenResourceError:
                return data
            if not chunk:
                return data
            data += chunk


async def test_registration_timeout(autojump_clock: trio.testing.MockClock) -> None:
    server = ChatServer(ServerConfig(registration_timeout=60))
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        await client.send_all(b"\n  \nno spaces allowed\n")  # empty lines, an invalid name
        await trio.sleep(59)
        assert server.connections == 1
        await client.send_all(b"still<invalid>\n")  # errors do not extend the deadline
        received = await read_until_closed(client)
    assert trio.current_time() == pytest.approx(60)
    lines = received.decode().splitlines()
    assert lines[-1] == "! No name given within 60 s, closing"
    assert lines.count("* What is your name?") == 3
    assert server.connections == 0
    assert server.hub.members == 0


async def test_registered_idle_clients_are_never_kicked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    server = ChatServer(ServerConfig(registration_timeout=60))
    client, server_side = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(server.handle_stream, server_side)
        await trio.sleep(59)
        await client.send_all(b"ann\n")
        await trio.sleep(24 * 3600)
        assert server.connections == 1
        await client.send_all(b"still here\n/quit\n")
        received = await read_until_closed(client)
    lines = [unstamp(line) for line in received.decode().splitlines()]
    assert lines[2:] == [
        "* Users in #lobby: ann",
        "[T] * ann joined #lobby",
        "[T] <ann> still here",
        "* Bye!",
    ]


async def test_slow_consumer_is_evicted_others_receive_promptly_memory_stays_bounded(
    start_server: StartServer, connect: Connect, raw_connect: RawConnect
) -> None:
    server, port = await start_server(rate=0, history=0, send_queue=32)
    slow = await raw_connect(port, rcvbuf=4096)
    await slow.register("slow")  # and never reads again
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    await expect(ann, "[T] * ben joined #lobby")
    text = "x" * 4000
    left = "[T] * slow left #lobby (too slow)"
    seen_left = 0

    async def say(i: int) -> None:
        # Lockstep: line i reaches both readers before line i + 1 is sent, so
        # at no point does anyone wait for the client that is not reading.
        nonlocal seen_left
        await ann.send_line(f"{i} {text}")
        for client in (ann, ben):
            line = await receive(client)
            if line == left:
                seen_left += 1
                line = await receive(client)
            assert line == f"[T] <ann> {i} {text}"

    tracemalloc.start()
    try:
        for i in range(100):
            await say(i)
        assert seen_left == 2
        assert server.hub.slow_evictions == 1
        # What its socket would not take waited in its outbox, up to the bound.
        assert server.stats.queue_high_water == 32
        await wait_for(lambda: server.connections == 2)
        before, _ = tracemalloc.get_traced_memory()
        for i in range(100, 400):  # 1.2 MB more traffic
            await say(i)
        after, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # Nothing of that traffic is held for anyone: memory does not grow with it.
    assert after - before < 300 * len(text) // 4

    # The slow client got a prefix of the room's lines, in order, then was cut off.
    lines = (await read_until_closed(slow.stream)).decode(errors="replace").split("\n")[:-1]
    numbers = [int(line.split()[2]) for line in lines if "<ann>" in line]
    assert numbers == list(range(len(numbers)))
    assert len(numbers) < 100


async def test_a_writer_task_runs_only_while_a_client_has_a_backlog(
    start_server: StartServer, connect: Connect, raw_connect: RawConnect
) -> None:
    server, port = await start_server(rate=0, history=0)
    behind = await raw_connect(port, rcvbuf=4096)
    await behind.register("behind")
    ann = await connect(port, "ann")
    await expect(behind, "[T] * ann joined #lobby")
    (connection,) = [c for c in server._connections if c.member and c.member.name == "behind"]
    nursery = connection._nursery
    assert nursery is not None
    assert not nursery.child_tasks  # everything so far went straight into its socket

    # Its socket fills while it does not read: what is left waits for a writer.
    text = "y" * 1000
    for i in range(40):
        await ann.send_line(f"{i} {text}")
        await expect(ann, f"[T] <ann> {i} {text}")
    assert len(nursery.child_tasks) == 1
    assert server.stats.queue_high_water > 0

    # It reads everything: the writer sends the backlog and ends.
    await expect(behind, *[f"[T] <ann> {i} {text}" for i in range(40)])
    await wait_for(lambda: not nursery.child_tasks)
    await ann.send_line("and now?")
    await expect(behind, "[T] <ann> and now?")
    assert not nursery.child_tasks


async def test_a_slow_consumer_that_floods_is_evicted_cleanly(
    start_server: StartServer, connect: Connect, raw_connect: RawConnect
) -> None:
    server, port = await start_server(rate=0, history=0, send_queue=32)
    ann = await connect(port, "ann")
    slow = await raw_connect(port, rcvbuf=4096)
    await slow.register("slow")
    await expect(ann, "[T] * slow joined #lobby")
    # Its own echoes fill its socket and outbox in the middle of this batch;
    # the rest of the batch must not reach the hub as lines from a member
    # that is no longer there.
    flood = b"".join(b"%d %s\n" % (i, b"z" * 1000) for i in range(300))
    lines: list[str] = []

    async def collect() -> None:
        lines.extend(await receive_until(ann, "[T] * slow left #lobby (too slow)"))

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect)
            with suppress(trio.BrokenResourceError):  # the server may hang up first
                await slow.stream.send_all(flood)
    numbers = [int(line.split()[2]) for line in lines[:-1]]
    assert numbers == list(range(len(numbers)))
    assert server.hub.slow_evictions == 1
    await wait_for(lambda: server.connections == 1)


async def test_a_flood_is_paced_and_nothing_is_lost(
    start_server: StartServer, connect: Connect
) -> None:
    rate, burst, count = 50, 5, 40
    _, port = await start_server(rate=rate, burst=burst)
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    cat = await connect(port, "cat")
    await expect(ann, "[T] * ben joined #lobby", "[T] * cat joined #lobby")
    await expect(ben, "[T] * cat joined #lobby")
    start = trio.current_time()
    await ann.stream.send_all(b"".join(b"flood %d\n" % i for i in range(count)))

    received: list[str] = []
    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(receive_until, ann, f"[T] <ann> flood {count - 1}")
            while len(received) < count + 1:
                received.append(await receive(ben))
                if received[-1] == "[T] <ann> flood 10":
                    # Others are not held up behind the flood.
                    await cat.send_line("me too")
    elapsed = trio.current_time() - start
    flood = [line for line in received if "flood" in line]
    assert flood == [f"[T] <ann> flood {i}" for i in range(count)]
    assert received.index("[T] <cat> me too") < received.index(f"[T] <ann> flood {count - 1}")
    # The reader slept for the token bucket: at least (count - burst) / rate seconds.
    assert elapsed >= (count - burst) / rate * 0.99


async def test_a_burst_with_flood_control_off_does_not_evict_readers_that_keep_up(
    start_server: StartServer, connect: Connect
) -> None:
    # --rate 0 (benchmarks, bots): thousands of lines arrive in one read. The
    # readers keep up, so none of them may count as a slow consumer.
    count = 3000
    server, port = await start_server(rate=0)
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    await expect(ann, "[T] * ben joined #lobby")
    received: dict[str, list[str]] = {}

    async def collect(name: str, client: ChatClient) -> None:
        received[name] = await receive_until(client, f"[T] <ann> {count - 1}")

    with trio.fail_after(WAIT):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(collect, "ann", ann)
            nursery.start_soon(collect, "ben", ben)
            await ann.stream.send_all(b"".join(b"%d\n" % i for i in range(count)))
    expected = [f"[T] <ann> {i}" for i in range(count)]
    assert received == {"ann": expected, "ben": expected}
    assert server.hub.slow_evictions == 0


async def test_max_clients(
    start_server: StartServer, connect: Connect, raw_connect: RawConnect
) -> None:
    server, port = await start_server(max_clients=2)
    ann = await connect(port, "ann")
    unnamed = await connect(port)
    await expect(unnamed, "* Welcome to triochat! 1 user online. Commands start with /, try /help.")
    for _ in range(3):
        extra = await raw_connect(port)
        await extra.send_line("eager")  # a bot sends its name at once
        await expect(extra, "! Server full, try again later")
        await expect_eof(extra)
        await extra.aclose()
    assert server.hub.members == 1
    await unnamed.aclose()
    await wait_for(lambda: server.connections == 1)
    ben = await connect(port, "ben")
    await expect(ann, "[T] * ben joined #lobby")
    assert ben.name == "ben"


async def test_ansi_escapes_in_names_and_text_are_removed(
    start_server: StartServer, connect: Connect, raw_connect: RawConnect
) -> None:
    _, port = await start_server(rate=0)
    ben = await raw_connect(port)
    await ben.register("ben")
    evil = await raw_connect(port)
    await expect(evil, "* Welcome to triochat! 1 user online. Commands start with /, try /help.")
    await expect(evil, "* What is your name?")
    await evil.stream.send_all(b"\x1b[31m<red>\x1b[0m\n")  # the whole sequence goes
    await expect(evil, f"! Invalid name '<red>': {p.NAME_RULES}", "* What is your name?")
    await evil.stream.send_all(b"e\x1b[1mv\x07i\xc2\x9b0ml\n")
    await expect(evil, "* Users in #lobby: ben, evil", "[T] * evil joined #lobby")
    csi = "\x9b".encode()
    lines = [
        b"\x1b[2J\x1b]0;owned\x07clear\tscreen\x1b[0m",
        b"/me \x1b[5mblinks" + csi + b"1m",
        b"/msg ben \x1b[8mhidden\x1bc",
        b"/nick e\x1b[1m vil2",
        b"/nick e\x1b[1mvil2",
        b"/nick ev\x1b(il3",
        b"/quit \x1b[31mbye\x08\x08\x08",
    ]
    await evil.stream.send_all(b"\n".join(lines) + b"\n")
    to_evil = await receive_all(evil)
    to_ben = await receive_until(ben, "[T] * evl3 left #lobby (bye)")
    for line in to_evil + to_ben:
        assert not any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in line), line
        assert "[" not in line.partition("] ")[2], line  # no sequence's remains
    assert to_ben == [
        "[T] * evil joined #lobby",
        "[T] <evil> clear screen",
        "[T] * evil blinks",
        "[T] *evil* hidden",
        "[T] * evil is now known as evil2",
        "[T] * evil2 is now known as evl3",
        "[T] * evl3 left #lobby (bye)",
    ]
    assert f"! Invalid name 'e vil2': {p.NAME_RULES}" in to_evil
    assert to_evil[-1] == "* Bye!"


async def test_a_name_taken_in_another_case(start_server: StartServer, connect: Connect) -> None:
    _, port = await start_server()
    await connect(port, "Ann")
    other = await connect(port)
    for name in ("ann", "ANN", "aNN"):
        with pytest.raises(NameRejected, match=f"^Name {name} is taken, choose another$"):
            await other.register(name)
    # The connection stayed open and is asked again; another name works.
    assert [unstamp(x) for x in await other.register("ann2")] == [
        "* Users in #lobby: Ann, ann2",
        "[T] * ann2 joined #lobby",
    ]
