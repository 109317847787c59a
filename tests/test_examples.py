"""Every script in examples/ runs to its end against a real server, with a name that has a ``-``."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio
import trio.testing
from conftest import Connect, StartServer

from triochat.client.bot import BotConfig, BotRunner, Summary
from triochat.client.botscript import parse_script
from triochat.client.connection import ConnectOptions
from triochat.protocol import line as p

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(EXAMPLES.glob("*.txt"))
TEXTS = {script: script.read_text() for script in SCRIPTS}
NAME = "my-bot"  # valid (letters, digits, _ and -), and not a \w+ word


async def run(script: Path, port: int, **options: object) -> Summary:
    steps = parse_script(TEXTS[script], source=str(script))
    config = BotConfig(connection=ConnectOptions(port=port), **options)  # type: ignore[arg-type]
    with trio.fail_after(20):
        return await BotRunner(steps, config).run()


def test_the_name_is_valid_and_every_example_is_tested() -> None:
    assert p.name_error(NAME) is None
    assert {s.name for s in SCRIPTS} == {
        "announcer.txt",
        "chatter.txt",
        "echo-check.txt",
        "greeter.txt",
    }


@pytest.mark.parametrize("script", SCRIPTS, ids=[s.stem for s in SCRIPTS])
async def test_each_example_ends_well_with_a_dashed_name(
    script: Path, start_server: StartServer, connect: Connect
) -> None:
    _, port = await start_server(rate=0)
    watcher = await connect(port, "watcher")  # someone to greet, for the greeter
    summary = await run(script, port, name=NAME)
    assert summary.failures == [], [str(f) for f in summary.failures]
    assert summary.sent > 0
    await watcher.aclose()


async def test_many_greeters_all_end(start_server: StartServer) -> None:
    # README: --count N. Alone together, each greeter greets the others and leaves.
    _, port = await start_server(rate=0)
    summary = await run(EXAMPLES / "greeter.txt", port, name=NAME, count=5)
    assert summary.failures == [], [str(f) for f in summary.failures]
    assert summary.bots == 5


async def test_a_greeter_waits_for_someone_to_join(
    start_server: StartServer, connect: Connect
) -> None:
    server, port = await start_server(rate=0)
    async with trio.open_nursery() as nursery:
        done: list[Summary] = []

        async def greeter() -> None:
            done.append(await run(EXAMPLES / "greeter.txt", port, name=NAME))

        nursery.start_soon(greeter)
        watcher = await connect(port, None)
        # Join only once the greeter is in and waits, having found itself alone.
        with trio.fail_after(10):
            while True:
                await trio.testing.wait_all_tasks_blocked()
                if server.hub.members == 1:
                    break
        await watcher.register("ann")
        with trio.fail_after(10):
            while not (await watcher.receive_line()).endswith(
                f"<{NAME}> hello, welcome to triochat!"
            ):
                pass
    (summary,) = done
    assert summary.failures == []
