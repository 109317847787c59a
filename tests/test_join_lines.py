"""`triochat join` in line mode, run as a real subprocess against a real server."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner
from conftest import Connect, StartServer

from triochat.cli import main
from triochat.client.connection import ChatClient
from triochat.protocol import line as p

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}


@asynccontextmanager
async def running(args: list[str]) -> AsyncIterator[trio.Process]:
    """A subprocess with pipes, killed if the test leaves before it exits."""
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
        try:
            yield proc
        finally:
            if proc.returncode is None:
                proc.kill()


def join_args(port: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "triochat", "join", "--port", str(port), *extra]


async def run_join(
    port: int, *extra: str, stdin: bytes, **options: Any
) -> subprocess.CompletedProcess[bytes]:
    """``triochat join`` run to its end on ``stdin``; stderr (and stdout, unless given) kept."""
    if "stdout" not in options:
        options["capture_stdout"] = True
    return await trio.run_process(
        join_args(port, *extra), stdin=stdin, capture_stderr=True, check=False, env=ENV, **options
    )


class Lines:
    """Lines read from a process's stdout, each wait bounded by the caller's deadline."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self.stream = stream
        self.framer = p.LineFramer(1 << 20)
        self.seen: list[str] = []

    async def until(self, suffix: str) -> str:
        while True:
            event = self.framer.next_event()
            if isinstance(event, p.Line):
                self.seen.append(event.text)
                if event.text.endswith(suffix):
                    return event.text
                continue
            data = await self.stream.receive_some(65536)
            assert data, f"EOF before {suffix!r}; seen {self.seen}"
            self.framer.receive_data(data)


async def until(client: ChatClient, suffix: str) -> str:
    while not (line := await client.receive_line()).endswith(suffix):
        pass
    return line


async def test_lines_go_both_ways_and_eof_quits(
    start_server: StartServer, connect: Connect
) -> None:
    _server, port = await start_server()
    ben = await connect(port, "ben")
    with trio.fail_after(10):
        async with running(join_args(port, "--name", "dave")) as proc:
            assert proc.stdin is not None
            assert proc.stdout is not None
            out = Lines(proc.stdout)
            await until(ben, "* dave joined #lobby")
            await out.until("* dave joined #lobby")
            await proc.stdin.send_all(b"hello ben\n")
            await until(ben, "<dave> hello ben")
            await ben.send_line("hi dave")
            line = await out.until("<ben> hi dave")
            assert line.startswith("[")  # printed as is, timestamp included
            await proc.stdin.aclose()  # EOF: /quit, wait for the close, exit 0
            await until(ben, "* dave left #lobby (quit)")
            await out.until("* Bye!")
            assert await proc.wait() == 0
    assert out.seen[0].startswith("* Welcome to triochat!")


async def test_a_script_joins_a_room_and_quit_ends_it(
    start_server: StartServer, connect: Connect
) -> None:
    _server, port = await start_server()
    ben = await connect(port, "ben")
    await ben.send_line("/join #den")
    await until(ben, "* ben joined #den")
    with trio.fail_after(10):
        result = await run_join(
            port, "--name", "dave", "--room", "den", stdin=b"one\n\n//two\nquit\nthree\n"
        )
        assert await until(ben, "<dave> one")
        assert await until(ben, "<dave> /two")
        assert (await ben.receive_line()).endswith("* dave left #den (quit)")
    assert result.returncode == 0, result.stderr
    out = result.stdout.decode()
    assert "* Users in #den: ben, dave\n" in out
    assert out.index("* dave joined #den") < out.index("<dave> one")
    assert "three" not in out
    assert out.endswith("* Bye!\n")
    assert result.stderr == b""


async def test_refused_connection_is_one_line_and_exit_3() -> None:
    listener = (await trio.open_tcp_listeners(0, host="127.0.0.1"))[0]
    port = listener.socket.getsockname()[1]
    await listener.aclose()  # nothing listens there now
    with trio.fail_after(10):
        result = await run_join(port, "--name", "dave", stdin=b"hello\n")
    assert result.returncode == 3
    assert result.stderr.decode() == (
        f"triochat: cannot connect to 127.0.0.1:{port}: Connection refused\n"
    )


async def test_taken_name_is_exit_4(start_server: StartServer, connect: Connect) -> None:
    _server, port = await start_server()
    await connect(port, "ben")
    with trio.fail_after(10):
        result = await run_join(port, "--name", "BEN", stdin=b"hello\n")
    assert result.returncode == 4
    assert result.stderr.decode() == (
        "triochat: name rejected: Name BEN is taken, choose another\n"
    )


async def test_server_going_away_is_exit_1(start_server: StartServer, connect: Connect) -> None:
    server, port = await start_server()
    ben = await connect(port, "ben")
    with trio.fail_after(10):
        async with running(join_args(port, "--name", "dave")) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            await until(ben, "* dave joined #lobby")
            server.shutdown()
            assert await proc.wait() == 1
            out = await proc.stdout.receive_some(1 << 20)
            err = await proc.stderr.receive_some(1 << 20)
    assert b"shutting down" in out
    assert err == b"triochat: connection closed by server\n"


def test_help_documents_exit_codes_and_bad_options_exit_2() -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["join", "--help"])
    assert result.exit_code == 0
    for code in ("0  you quit", "1  the server closed", "3  the server could not", "4  the name"):
        assert code in result.output
    result = runner.invoke(main, ["join", "--name", "dave", "--room", "no spaces"])
    assert result.exit_code == 2
    assert "--room" in result.output
    result = runner.invoke(main, ["join", "--name", "bad name"])
    assert result.exit_code == 2
    result = runner.invoke(main, ["join"], input="hello\n")  # not a terminal: --name needed
    assert result.exit_code == 2
    assert "--name" in result.output


async def test_sigterm_leaves_politely(start_server: StartServer, connect: Connect) -> None:
    _server, port = await start_server()
    ben = await connect(port, "ben")
    with trio.fail_after(10):
        async with running(join_args(port, "--name", "dave")) as proc:
            assert proc.stdout is not None
            await until(ben, "* dave joined #lobby")
            # Once it prints, signals are handled (before that, they act as usual).
            await Lines(proc.stdout).until("* dave joined #lobby")
            proc.terminate()
            await until(ben, "* dave left #lobby (quit)")
            assert await proc.wait() == 0


async def test_a_closed_stdout_quits_quietly(start_server: StartServer, connect: Connect) -> None:
    _server, port = await start_server()
    ben = await connect(port, "ben")
    with trio.fail_after(10):
        async with running(join_args(port, "--name", "dave")) as proc:
            assert proc.stdout is not None
            assert proc.stderr is not None
            await Lines(proc.stdout).until("* dave joined #lobby")
            await proc.stdout.aclose()  # as `| head` does once it has its lines
            await ben.send_line("anyone there?")
            await until(ben, "* dave left #lobby (quit)")
            assert await proc.wait() == 0
            assert await proc.stderr.receive_some(1 << 20) == b""


async def test_a_stdout_closed_before_the_welcome_exits_quietly(
    start_server: StartServer, connect: Connect
) -> None:
    _server, port = await start_server()
    ben = await connect(port, "ben")
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody will ever read: the first line printed breaks the pipe
    try:
        with trio.fail_after(10):
            result = await run_join(port, "--name", "dave", stdin=b"", stdout=write_end)
            await until(ben, "* dave joined #lobby")  # it did register, then printed
    finally:
        os.close(write_end)
    assert result.returncode == 0
    assert result.stderr == b""  # a reader going away is no error: no traceback, no message
