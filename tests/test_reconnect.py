"""`triochat join` comes back by itself: a real server, a real subprocess, a proxy that cuts.

These run in real time (a subprocess cannot share trio's mock clock): the
client's first reconnect waits 0.25-0.5 s, so each cut costs about that.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial
from pathlib import Path

import trio
from _proxy import Proxy
from conftest import Connect, StartServer

from triochat import ChatServer, ServerConfig
from triochat.client.bot import BotConfig, BotRunner, Summary
from triochat.client.botscript import parse_script
from triochat.client.connection import ChatClient, ConnectOptions, open_chat_client
from triochat.client.resuming import ResumingClient
from triochat.protocol import line as p
from triochat.server.store import StoreConfig, open_history_store

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


class Output:
    """A process's stdout, line by line."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.framer = p.LineFramer(1 << 20)
        self.seen: list[str] = []

    async def until(self, suffix: str) -> None:
        while not (self.seen and self.seen[-1].endswith(suffix)):
            event = self.framer.next_event()
            if isinstance(event, p.Line):
                self.seen.append(event.text)
                continue
            data = await self.stream.receive_some(65536)
            assert data, f"EOF before {suffix!r}; seen {self.seen[-5:]}"
            self.framer.receive_data(data)


@asynccontextmanager
async def joined(port: int, name: str, *extra: str) -> AsyncIterator[tuple[trio.Process, Output]]:
    """``triochat join`` in line mode through ``port``, its stdin held open."""
    args = [sys.executable, "-m", "triochat", "join", "--port", str(port), "--name", name]
    args += extra
    async with trio.open_nursery() as nursery:
        run = partial(
            trio.run_process,
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            check=False,
            env=ENV,
        )
        proc: trio.Process = await nursery.start(run)
        assert proc.stdout is not None
        try:
            yield proc, Output(proc.stdout)
        finally:
            if proc.returncode is None:
                proc.kill()


async def lines_of(client: ChatClient, until: str) -> list[str]:
    lines: list[str] = []
    while not (lines and lines[-1].endswith(until)):
        lines.append(await client.receive_line())
    return lines


async def test_cuts_within_the_grace_lose_no_line_and_make_no_noise(
    start_server: StartServer, connect: Connect, nursery: trio.Nursery
) -> None:
    _server, port = await start_server(rate=0)
    proxy: Proxy = await nursery.start(Proxy(port).run)
    ann = await connect(port, "ann")
    ben = await connect(port, "ben")
    with trio.fail_after(30):
        async with joined(proxy.port, "dave") as (proc, out):
            await out.until("* dave joined #lobby")
            seen_by_ben = await lines_of(ben, "* dave joined #lobby")
            number = 0
            for _cut in range(4):
                for _ in range(150):
                    await ann.send_line(f"line {number}")
                    number += 1
                await out.until(f"<ann> line {number - 100}")  # mid-flood
                assert proxy.cut() == 1
            await ann.send_line("done")
            await out.until("<ann> done")
            seen_by_ben += await lines_of(ben, "<ann> done")
            assert proxy.accepted == 5  # it came back each time
            assert proc.stdin is not None
            await proc.stdin.aclose()  # EOF: it quits
            assert await proc.wait() == 0
    said = [line.split("> ", 1)[1] for line in out.seen if "<ann> " in line]
    assert said == [f"line {i}" for i in range(number)] + ["done"]
    comings_and_goings = [line for line in seen_by_ben if "* dave " in line]
    assert len(comings_and_goings) == 1  # its first join, nothing after
    assert comings_and_goings[0].endswith("* dave joined #lobby")


async def test_a_cut_longer_than_the_grace_is_announced_and_printed_as_a_gap(
    start_server: StartServer, connect: Connect, nursery: trio.Nursery
) -> None:
    _server, port = await start_server(rate=0, resume_grace=0.5, history=2)
    proxy: Proxy = await nursery.start(Proxy(port).run)
    ann = await connect(port, "ann")
    with trio.fail_after(30):
        async with joined(proxy.port, "dave") as (proc, out):
            await out.until("* dave joined #lobby")
            await lines_of(ann, "* dave joined #lobby")
            proxy.refusing = True
            proxy.cut()
            await lines_of(ann, "* dave left #lobby (connection lost)")
            for i in range(5):
                await ann.send_line(f"missed {i}")
            proxy.refusing = False
            await lines_of(ann, "* dave joined #lobby")
            await out.until("history no longer has them")
            await ann.send_line("after")
            await out.until("<ann> after")
            assert proc.stdin is not None
            await proc.stdin.aclose()
            assert await proc.wait() == 0
    gaps = [line for line in out.seen if "missed lines in #lobby" in line]
    assert len(gaps) == 1
    assert gaps[0].startswith("* about ")
    # the history a rejoiner is shown (the last 2 lines) is what it missed, shown once
    said = [line.split("> ", 1)[1] for line in out.seen if "<ann> " in line]
    assert said == ["missed 3", "missed 4", "after"]


async def test_a_bot_with_reconnect_outlives_cuts_and_counts_them(
    start_server: StartServer, connect: Connect, nursery: trio.Nursery
) -> None:
    _server, port = await start_server(rate=0)
    proxy: Proxy = await nursery.start(Proxy(port).run)
    ann = await connect(port, "ann")
    script = "one\n@expect <ann> go\ntwo\n@expect <ann> again\nthree\n"
    runner = BotRunner(
        parse_script(script),
        BotConfig(connection=ConnectOptions(port=proxy.port), name="robo", reconnect=True),
    )
    summary: list[Summary] = []
    done = trio.Event()

    async def run() -> None:
        summary.append(await runner.run())
        done.set()

    with trio.fail_after(30):
        nursery.start_soon(run)
        await lines_of(ann, "<robo> one")
        proxy.cut()
        await ann.send_line("go")
        await lines_of(ann, "<robo> two")
        proxy.cut()
        await ann.send_line("again")
        seen = await lines_of(ann, "* robo left #lobby (quit)")
        await done.wait()
    assert next(line for line in seen if "robo" in line).endswith("<robo> three")
    assert summary[0].failures == []
    assert summary[0].reconnects == 2
    assert summary[0].gaps == 0
    assert "reconnects: 2, gaps: 0" in summary[0].format()


@asynccontextmanager
async def server_on(port: int, db: Path | None) -> AsyncIterator[int]:
    """A server on ``port`` (0: any), with history in ``db`` if given; its port."""
    config = ServerConfig(port=port, rate=0, shutdown_grace=0.5)
    async with AsyncExitStack() as stack:
        store = None
        if db is not None:
            store = await stack.enter_async_context(open_history_store(StoreConfig(path=db)))
        server = ChatServer(config, store=store)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            yield listeners[0].socket.getsockname()[1]
            server.shutdown()


async def _restart(db: Path | None) -> tuple[list[str], ResumingClient]:
    shown: list[str] = []
    seen = {"<ann> before 2": trio.Event(), "<ann> after": trio.Event()}

    async def show(lines: list[str]) -> None:
        shown.extend(lines)
        for end, event in seen.items():
            if any(line.endswith(end) for line in lines):
                event.set()

    async with trio.open_nursery() as nursery:
        async with server_on(0, db) as port:
            dave = ResumingClient(ConnectOptions(port=port), "dave", show)
            dave.after_shutdown = True  # as a bot: a restart is not the end
            shown.extend(await dave.start())
            nursery.start_soon(dave.receive)
            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann")
            await ann.send_line("before 1")
            await ann.send_line("before 2")
            await seen["<ann> before 2"].wait()
            await ann.aclose()
        async with server_on(port, db):
            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann")
            await ann.send_line("after")
            with trio.fail_after(20):
                await seen["<ann> after"].wait()
            await ann.aclose()
            dave.quitting = True
            await dave.send_line("/quit")
            nursery.cancel_scope.cancel()
    await dave.aclose()
    return shown, dave


async def test_across_a_restart_with_db_nothing_is_shown_twice_or_lost(tmp_path: Path) -> None:
    shown, dave = await _restart(tmp_path / "chat.db")
    said = [line.split("> ", 1)[1] for line in shown if "<ann> " in line]
    assert said == ["before 1", "before 2", "after"]
    assert not [line for line in shown if "missed lines" in line]
    assert dave.reconnects == 1


async def test_across_a_restart_without_db_the_gap_is_said(tmp_path: Path) -> None:
    shown, dave = await _restart(None)
    said = [line.split("> ", 1)[1] for line in shown if "<ann> " in line]
    assert said == ["before 1", "before 2", "after"]
    assert [line for line in shown if "missed lines" in line] == [
        "* some missed lines in #lobby: history no longer has them"
    ]
    assert dave.gaps == 1


async def test_no_reconnect_is_v1_and_a_cut_ends_it(
    start_server: StartServer, connect: Connect, nursery: trio.Nursery
) -> None:
    _server, port = await start_server(rate=0)
    proxy: Proxy = await nursery.start(Proxy(port).run)
    ben = await connect(port, "ben")
    with trio.fail_after(30):
        async with joined(proxy.port, "dave", "--no-reconnect") as (proc, out):
            await out.until("* dave joined #lobby")
            await lines_of(ben, "* dave joined #lobby")
            proxy.cut()
            await lines_of(ben, "* dave left #lobby (connection lost)")  # at once: no grace
            assert await proc.wait() == 1
            assert proc.stderr is not None
            assert (
                await proc.stderr.receive_some(1 << 20)
                == b"triochat: connection closed by server\n"
            )
    assert proxy.accepted == 1
