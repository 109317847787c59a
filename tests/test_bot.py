"""Bots against a real server on 127.0.0.1, in-process and through the CLI."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import trio
from click.testing import CliRunner
from conftest import Connect, StartServer

from triochat.cli import main
from triochat.client.bot import BotConfig, BotRunner, Summary, percentile
from triochat.client.botscript import parse_script
from triochat.client.connection import ChatClient, ConnectOptions

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10


async def run(script: str, port: int, **options: Any) -> tuple[BotRunner, Summary]:
    runner = BotRunner(
        parse_script(script), BotConfig(connection=ConnectOptions(port=port), **options)
    )
    with trio.fail_after(DEADLINE):
        summary = await runner.run()
    return runner, summary


async def lines_until(client: ChatClient, ending: str) -> list[str]:
    """Lines received up to and including the first that ends with ``ending``."""
    lines = []
    with trio.fail_after(DEADLINE):
        while True:
            lines.append(await client.receive_line())
            if lines[-1].endswith(ending):
                return lines


def free_port() -> int:
    """A port nobody listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_script_with_sleep_and_expect_passes(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(rate=0)
    watcher = await connect(port, "watcher")
    script = (
        "# wait for the go, greet, wait for bot2's greeting, then leave\n"
        "@expect <watcher> go\n"
        "hello from a bot\n"
        "@sleep 0.05\n"
        "@expect <bot2> hello from a bot 5\n"
        "/me leaves\n"
        "/quit done\n"
    )
    async with trio.open_nursery() as nursery:
        done: list[Summary] = []

        async def bots() -> None:
            done.append((await run(script, port, count=2))[1])

        nursery.start_soon(bots)
        # Both bots are in: every line from now on reaches both.
        seen = await lines_until(watcher, "joined #lobby")
        seen += await lines_until(watcher, "joined #lobby")
        await watcher.send_line("go")
    (summary,) = done
    assert summary.failures == []
    assert (summary.bots, summary.sent) == (2, 6)
    seen = await lines_until(watcher, "bot2 left #lobby (done)")
    assert any(line.endswith("<bot1> hello from a bot") for line in seen)
    assert any(line.endswith("* bot1 leaves") for line in seen)


async def test_expect_that_never_matches_fails_with_its_line(start_server: StartServer) -> None:
    _, port = await start_server(rate=0)
    _, summary = await run("hi\n\n@expect nobody says this 0.2\nnot sent\n", port, name="ann")
    (failure,) = summary.failures
    expected = "ann: line 3 (@expect nobody says this 0.2): no line matched within 0.2 s"
    assert str(failure) == expected
    assert summary.sent == 1


async def test_expect_sees_a_line_that_arrived_before_it(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(rate=0)
    _, summary = await run("ping\n@sleep 0.1\n@expect <bot> ping 1\n", port)
    assert summary.failures == []


async def test_fifty_bots_join_and_latency_is_measured(
    start_server: StartServer, connect: Connect
) -> None:
    server, port = await start_server(rate=0)
    watcher = await connect(port, "watcher")
    joined: set[str] = set()

    async def watch() -> None:
        while len(joined) < 50:
            line = await watcher.receive_line()
            if line.endswith(" joined #lobby"):
                joined.add(line.split()[2])

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        _, summary = await run("one\ntwo\n@expect <load\\d+> two\n", port, name="load", count=50)
    assert joined == {f"load{i}" for i in range(1, 51)}
    assert summary.failures == []
    assert summary.sent == 100
    assert summary.received >= 100
    latency = summary.latency()
    assert len(summary.latencies) == 100
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]  # type: ignore[index]
    assert latency["max"] == max(summary.latencies)  # type: ignore[index]
    assert server.hub.members == 1


def test_percentile_nearest_rank() -> None:
    samples = [float(i) for i in range(1, 101)]
    assert [percentile(samples, q) for q in (50, 90, 99, 100)] == [50, 90, 99, 100]
    assert percentile([3.0], 99) == 3.0


async def test_refused_connection_is_a_failure() -> None:
    _, summary = await run("hi\n", free_port(), count=2)
    assert [f.bot for f in summary.failures] == ["bot1", "bot2"]
    assert all("Connection refused" in str(f) for f in summary.failures)


async def test_taken_name_is_a_failure(start_server: StartServer, connect: Connect) -> None:
    _, port = await start_server(rate=0)
    await connect(port, "Ann")
    _, summary = await run("hi\n", port, name="ann")
    (failure,) = summary.failures
    assert str(failure) == "ann: name rejected: Name ann is taken, choose another"


async def test_loop_repeats_the_script_and_quits_once(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(rate=0)
    watcher = await connect(port, "watcher")
    _, summary = await run("tick\n/quit looped\n", port, loop=3)
    assert summary.sent == 4
    seen = await lines_until(watcher, "bot left #lobby (looped)")
    assert sum(line.endswith("<bot> tick") for line in seen) == 3


async def test_rate_paces_each_bot(start_server: StartServer) -> None:
    _, port = await start_server(rate=0)
    _, summary = await run("a\nb\nc\nd\ne\n", port, rate=50)
    assert summary.elapsed >= 4 / 50


async def test_stop_makes_every_bot_quit(start_server: StartServer, connect: Connect) -> None:
    _, port = await start_server(rate=0)
    watcher = await connect(port, "watcher")
    runner = BotRunner(
        parse_script("hi\n@sleep 60\nnever\n"),
        BotConfig(connection=ConnectOptions(port=port), count=2),
    )
    async with trio.open_nursery() as nursery:
        done: list[Summary] = []

        async def go() -> None:
            done.append(await runner.run())

        nursery.start_soon(go)
        said = await lines_until(watcher, "> hi")
        said += await lines_until(watcher, "> hi")
        assert {line.split()[1] for line in said if line.endswith("> hi")} == {"<bot1>", "<bot2>"}
        runner.stop()
    (summary,) = done
    assert summary.interrupted
    assert summary.failures == []
    seen = await lines_until(watcher, "left #lobby (quit)")
    seen += await lines_until(watcher, "left #lobby (quit)")
    assert sum("left #lobby (quit)" in line for line in seen) == 2


# --- the CLI -------------------------------------------------------------------


def bot_command(port: int, *options: str) -> list[str]:
    """``triochat bot`` reading its script from stdin, as a subprocess."""
    return [sys.executable, "-m", "triochat", "bot", "--script", "-", "--port", str(port), *options]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


async def test_cli_json_summary_and_exit_zero(start_server: StartServer) -> None:
    _, port = await start_server(rate=0)
    with trio.fail_after(DEADLINE):
        result = await trio.run_process(
            bot_command(port, "--count", "3", "--json"),
            stdin=b"hello\n@expect <bot[123]> hello$\n",
            capture_stdout=True,
            capture_stderr=True,
            env=_env(),
            check=False,
        )
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert (summary["bots"], summary["ok"], summary["sent"]) == (3, 3, 3)
    assert summary["latency_ms"]["samples"] == 3
    assert b"bots: 3 (3 ok, 0 failed)" in result.stderr


async def test_cli_failure_is_one_line_per_bot(start_server: StartServer) -> None:
    _, port = await start_server(rate=0)
    with trio.fail_after(DEADLINE):
        result = await trio.run_process(
            bot_command(port, "--count", "2", "--name", "t"),
            stdin=b"hi\n@expect never 0.2\n",
            capture_stderr=True,
            env=_env(),
            check=False,
        )
    assert result.returncode == 1
    errors = result.stderr.decode().splitlines()
    assert errors[:2] == [
        "t1: line 2 (@expect never 0.2): no line matched within 0.2 s",
        "t2: line 2 (@expect never 0.2): no line matched within 0.2 s",
    ]
    assert "Traceback" not in result.stderr.decode()


async def test_cli_ctrl_c_quits_and_prints_summary(
    start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(rate=0)
    watcher = await connect(port, "watcher")
    with trio.fail_after(DEADLINE):
        process = await trio.lowlevel.open_process(
            bot_command(port),
            stdin=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=_env(),
        )
        assert process.stdin is not None
        assert process.stderr is not None
        await process.stdin.send_all(b"waiting\n@sleep 60\n")
        await process.stdin.aclose()
        await lines_until(watcher, "<bot> waiting")
        process.send_signal(signal.SIGINT)
        await lines_until(watcher, "bot left #lobby (quit)")
        stderr = b""
        while chunk := await process.stderr.receive_some():
            stderr += chunk
        assert await process.wait() == 130
    assert "bots: 1 (1 ok, 0 failed, interrupted)" in stderr.decode()
    assert "Traceback" not in stderr.decode()


def test_cli_rejects_a_bad_script(tmp_path: Path) -> None:
    script = tmp_path / "bad.txt"
    script.write_text("hello\n@sleep soon\n")
    result = CliRunner().invoke(main, ["bot", "--script", str(script)])
    assert result.exit_code == 2
    assert f"{script}, line 2: @sleep needs seconds" in result.output


def test_cli_rejects_names_the_server_would(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["bot", "--script", "-", "--name", "bad name"], input="hi\n")
    assert result.exit_code == 2
    assert "'bad name'" in result.output


def test_echoes_and_renames_are_seen_with_a_dated_stamp_too() -> None:
    from triochat.client.bot import _Bot, _Counters

    counters = _Counters()
    bot = _Bot("my-bot", [], BotConfig(), counters)
    bot._sent_at.append(1.0)
    bot._observe("[2026-12-01 12:00:00] <my-bot> hi", 1.5)
    assert counters.latencies == [0.5]
    bot._observe("[2026-12-01 12:00:01] * my-bot is now known as my-bot2", 2.0)
    assert bot.name == "my-bot2"
