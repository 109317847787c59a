"""Options shared by the commands, declared once; defaults come from the config dataclasses.

An option that sets a dataclass field (:func:`field_option`) parses to
``None`` when it is not given, and is then left out of the dataclass's
constructor: the field's own default applies, so no default is written twice.
Help shows that default, looked up only when help is shown (the Redis options
live in an optional extra that ``import`` would otherwise load every time).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..client.connection import ConnectOptions, InsecureConnectionWarning

ENV_PREFIX = "TRIOCHAT_"

Owner = type | Callable[[], type]
"""A config dataclass, or a function importing it (for one in an optional extra)."""

F = TypeVar("F", bound=Callable[..., Any])


class Range(click.FloatRange):
    """A ``FloatRange`` that also refuses ``nan``, which compares false with any bound."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{number} is not in the range {self._describe_range()}.", param, ctx)
        return number


def envvar_for(flag: str) -> str:
    """``--max-clients`` is ``TRIOCHAT_MAX_CLIENTS``."""
    return ENV_PREFIX + flag.lstrip("-").upper().replace("-", "_")


def field_default(owner: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``owner`` (``MISSING`` if it has none)."""
    for field in dataclasses.fields(owner):
        if field.name == name:
            if field.default_factory is not dataclasses.MISSING:
                return field.default_factory()
            return field.default
    raise LookupError(f"{owner.__name__} has no field {name!r}")


class Option(click.Option):
    """An option a ``serve --config`` file may set too, under ``file_key``.

    ``file_key`` is ``"name"`` for a top-level key or ``"section.name"``; it
    defaults to the option's name without the dashes.
    """

    def __init__(
        self, param_decls: list[str], *, file_key: str | None = None, **attrs: Any
    ) -> None:
        super().__init__(param_decls, **attrs)
        longest = max(self.opts, key=len)
        self.file_key = file_key or longest.lstrip("-")


class FieldOption(Option):
    """An option for one field of a config dataclass; ``None`` (not given) leaves it out."""

    def __init__(
        self,
        param_decls: list[str],
        *,
        owner: Owner,
        field: str | None = None,
        **attrs: Any,
    ) -> None:
        super().__init__(param_decls, **attrs)
        assert self.name is not None
        self.owner = owner
        self.field = field or self.name
        if isinstance(owner, type):
            field_default(owner, self.field)  # a misspelt field fails at import, not at use

    def owner_class(self) -> type | None:
        """The dataclass, or ``None`` if its optional extra is not installed."""
        if isinstance(self.owner, type):
            return self.owner
        try:
            return self.owner()
        except ImportError:
            return None

    def get_help_extra(self, ctx: click.Context) -> Any:
        extra = super().get_help_extra(ctx)
        if "default" not in extra:
            owner = self.owner_class()
            if owner is None:
                extra["default"] = "(needs an extra)"
            else:
                value = field_default(owner, self.field)
                if value not in (None, dataclasses.MISSING, "") and value is not False:
                    extra["default"] = str(value)
        return extra


def field_option(owner: Owner, *decls: str, **attrs: Any) -> Callable[[F], F]:
    """``@field_option(ServerConfig, "--max-clients", type=...)``: an option for that field.

    The field is the option's name (``max_clients``) unless ``field=`` says otherwise.
    """
    return click.option(*decls, cls=FieldOption, owner=owner, **attrs)


def given_fields(ctx: click.Context, owner: Owner) -> dict[str, Any]:
    """The fields of ``owner`` that the command's options set, for its constructor."""
    values: dict[str, Any] = {}
    for param in ctx.command.params:
        if isinstance(param, FieldOption) and param.owner is owner:
            assert param.name is not None
            value = ctx.params.get(param.name)
            if value is not None:
                values[param.field] = value
    return values


# --- the client commands' shared options ------------------------------------------


def client_options(*, name_owner: Owner, name_help: str) -> Callable[[F], F]:
    """``--host``, ``--port``, ``--name``, ``--tls``, ``--ca``, ``--insecure`` and ``--password``.

    The same for ``join`` and ``bot``, with the same environment variables;
    only ``--name`` has its own help and default (``name_owner``'s ``name``).
    """
    options = (
        field_option(
            ConnectOptions,
            "--host",
            envvar=envvar_for("--host"),
            show_envvar=True,
            help="Server address.",
        ),
        field_option(
            ConnectOptions,
            "--port",
            envvar=envvar_for("--port"),
            show_envvar=True,
            type=click.IntRange(1, 65535),
            help="Server port.",
        ),
        field_option(
            name_owner, "--name", envvar=envvar_for("--name"), show_envvar=True, help=name_help
        ),
        click.option(
            "--tls", is_flag=True, help="Use TLS, checking the server with the system's CAs."
        ),
        click.option(
            "--ca",
            type=click.Path(exists=True, dir_okay=False),
            help="Use TLS, checking the server with this CA certificate (PEM).",
        ),
        click.option(
            "--insecure",
            is_flag=True,
            help="Use TLS without checking the server's certificate (not recommended).",
        ),
        click.option(
            "--password",
            envvar=envvar_for("--password"),
            show_envvar=True,
            help="The server password (prefer TRIOCHAT_PASSWORD: not seen in ps).",
        ),
    )

    def decorate(command: F) -> F:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def connect_options(ctx: click.Context) -> ConnectOptions:
    """The :class:`ConnectOptions` that :func:`client_options` (and ``--connect-timeout``) set."""
    params = ctx.params
    if params["insecure"]:
        click.echo(
            "triochat: warning: --insecure: the server's certificate is not checked, "
            "so anyone in between could read and change the chat",
            err=True,
        )
        warnings.filterwarnings("ignore", category=InsecureConnectionWarning)
    return ConnectOptions(
        **given_fields(ctx, ConnectOptions),
        tls=params["tls"] or params["ca"] is not None or params["insecure"],
        ca=params["ca"],
        insecure=params["insecure"],
        password=params["password"] or None,
    )


log_level = click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar=envvar_for("--log-level"),
    cls=Option,
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
    help="Log messages at least this severe on stderr.",
)
