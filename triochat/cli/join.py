"""``triochat join``: a terminal UI, or line mode for scripts (:mod:`triochat.client.join`)."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
import trio

from ..client.connection import ConnectOptions
from ..protocol import line as protocol
from .options import (
    Range,
    client_options,
    connect_options,
    field_default,
    field_option,
    given_fields,
)

if TYPE_CHECKING:
    from ..client.join import JoinConfig


def _join_config() -> type[JoinConfig]:
    """:class:`JoinConfig`, imported when needed: its module loads urwid, slow to import."""
    from ..client.join import JoinConfig

    return JoinConfig


@click.command(
    epilog="""\b
Exit codes:
  0  you quit (quit, exit, /quit, Ctrl-D, Ctrl-C, or EOF on stdin)
  1  the server closed the connection, or the network broke it
  2  bad usage
  3  the server could not be reached (refused, unknown host, timeout)
  4  the name was taken or invalid (line mode; the terminal UI asks again)
  5  the server wants a password and none was given, or it is wrong (line mode)

\b
Without --password (or TRIOCHAT_PASSWORD) the terminal UI asks (without
echo) if the server wants one."""
)
@client_options(name_owner=_join_config, name_help="Your name (the terminal UI asks if omitted).")
@field_option(_join_config, "--room", help="Room to join after connecting.")
@click.option(
    "--plain",
    is_flag=True,
    help="Line mode even in a terminal (the default when stdin is not one).",
)
@field_option(
    ConnectOptions,
    "--connect-timeout",
    type=Range(0, min_open=True),
    help="Seconds to wait for the connection.",
)
@field_option(
    _join_config,
    "--quit-timeout",
    type=Range(0),
    help="Seconds to wait for the server to close after /quit.",
)
@field_option(
    _join_config, "--scrollback", type=click.IntRange(10), help="Lines the terminal UI keeps."
)
def join(**params: Any) -> None:
    """Chat on a server: a terminal UI, or line mode when stdin is not a terminal.

    Line mode sends each stdin line and prints each server line to stdout,
    so `printf 'hello\\n' | triochat join --name dave` works in scripts.
    """
    from ..client import join as join_mod

    ctx = click.get_current_context()
    name = params["name"]
    fields = given_fields(ctx, _join_config)
    room = fields.pop("room", field_default(join_mod.JoinConfig, "room"))
    canonical = protocol.normalize_room(room)
    if canonical is None:
        raise click.BadParameter(protocol.ROOM_RULES, param_hint="--room")
    if name is not None and protocol.name_error(name) is not None:
        raise click.BadParameter(protocol.NAME_RULES, param_hint="--name")
    interactive = not params["plain"] and sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive and not name:
        raise click.BadParameter("required when stdin is not a terminal", param_hint="--name")
    fields.pop("name", None)
    config = join_mod.JoinConfig(
        name=name, connection=connect_options(ctx), room=canonical, **fields
    )
    try:
        if interactive:
            code = trio.run(join_mod.run_interactive, config)
        else:
            code = trio.run(join_mod.run_line_mode, config)
    except join_mod.JoinError as exc:
        click.echo(f"triochat: {exc}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)
    sys.exit(code)
