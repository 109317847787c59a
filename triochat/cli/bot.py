"""``triochat bot``: scripted users (:mod:`triochat.client.bot`), then a summary."""

from __future__ import annotations

import json
import signal
import sys
from typing import Any, TextIO

import click
import trio

from ..client.bot import BotConfig, BotRunner, Summary, check_names
from ..client.botscript import ScriptError, Step, parse_script
from ..client.connection import ConnectOptions
from .options import Range, client_options, connect_options, field_option, given_fields


@click.command()
@click.option(
    "--script",
    "script_file",
    required=True,
    type=click.File("r", encoding="utf-8"),
    help="Script to run (see docs/bots.md); - reads stdin.",
)
@client_options(name_owner=BotConfig, name_help="Bot name; NAME1..NAMEN with --count.")
@field_option(BotConfig, "--count", type=click.IntRange(1, 100_000), help="Bots to run.")
@field_option(
    BotConfig, "--rate", type=Range(0), help="Lines/s each bot sends at most; 0 for no pacing."
)
@field_option(BotConfig, "--loop", type=click.IntRange(1), help="Times to run the script.")
@field_option(
    ConnectOptions,
    "--connect-timeout",
    type=Range(0, min_open=True),
    help="Seconds to connect and register.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
def bot(**params: Any) -> None:
    """Run scripted users against a server, then summarize (latency of their own lines).

    Exits 0 if every bot finished its script, 1 if any failed (one line each on
    stderr), 130 if interrupted.
    """
    ctx = click.get_current_context()
    script_file: TextIO = params["script_file"]
    source = "<stdin>" if script_file.name == "<stdin>" else script_file.name
    try:
        steps = parse_script(script_file.read(), source=source)
    except ScriptError as exc:
        raise click.BadParameter(str(exc), param_hint="--script") from None
    config = BotConfig(connection=connect_options(ctx), **given_fields(ctx, BotConfig))
    error = check_names(config)
    if error is not None:
        raise click.BadParameter(error, param_hint="--name/--count")
    summary = trio.run(_run_bots, steps, config)
    for failure in summary.failures:
        click.echo(str(failure), err=True)
    click.echo(summary.format(), err=True)
    if params["as_json"]:
        click.echo(json.dumps(summary.as_dict()))
    if summary.interrupted:
        sys.exit(130)
    if summary.failures:
        sys.exit(1)


async def _run_bots(steps: list[Step], config: BotConfig) -> Summary:
    runner = BotRunner(steps, config)
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:

            async def stop_on_signal() -> None:
                async for _ in signals:
                    if runner.interrupted:
                        nursery.cancel_scope.cancel()  # a second Ctrl-C: no more waiting
                    runner.stop()

            nursery.start_soon(stop_on_signal)
            summary = await runner.run()
            nursery.cancel_scope.cancel()
    return summary
