"""The ``triochat`` command: a click group; each command parses, then calls ``trio.run``.

One module per command (:mod:`.serve`, :mod:`.join`, :mod:`.bot`, :mod:`.admin`); the options
they share, and the rule that defaults come from the config dataclasses, are in
:mod:`.options`.
"""

from __future__ import annotations

import click

from .. import __version__
from . import admin, bot, join, serve


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="triochat")
def main() -> None:
    """triochat: a realtime multi-user chat on Trio. `nc HOST 7007` is a complete client."""


main.add_command(serve.serve)
main.add_command(join.join)
main.add_command(bot.bot)
main.add_command(admin.admin)
