"""``triochat serve``: options (command line, environment, a TOML file) into :func:`run_server`."""

from __future__ import annotations

import dataclasses
import difflib
import logging
import resource
import sys
import tomllib
from collections.abc import Callable, Iterator, Mapping
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import trio
from click.core import ParameterSource

from ..core.names import NAME_POLICIES
from ..server.listener import ServerConfig, format_address
from ..server.run import REDIS_EXTRA, RunningServer, ServeConfig, StartError, run_server
from ..server.store import StoreConfig
from .options import (
    F,
    Option,
    Range,
    envvar_for,
    field_default,
    field_option as _field_option,
    given_fields,
    log_level as log_level_option,
)

if TYPE_CHECKING:
    from ..backplane.redis import RedisOptions
    from ..server.irc import IRCConfig
    from ..server.web import WebConfig

log = logging.getLogger("triochat")

# Descriptors the process needs besides its clients: listeners, stdio, logs.
_SPARE_FDS = 64

_CONFIG_FILE = "triochat.config_file"
"""Where ``ctx.meta`` keeps the ``--config`` file's path, for error messages."""


def _web_config() -> type[WebConfig]:
    """:class:`WebConfig`, imported when needed: without --web-port no HTTP stack loads."""
    from ..server.web import WebConfig

    return WebConfig


def _redis_options() -> type[RedisOptions]:
    """:class:`RedisOptions`, imported when needed: it lives with coredis, an optional extra."""
    from ..backplane.redis import RedisOptions

    return RedisOptions


_SECTIONS = {
    "db": "path",
    "redis": "url",
    "tls": None,
    "metrics": None,
    "web": None,
    "irc": "port",
}
"""The config file's sections, and the key in each that is the option of that name alone."""


def _irc_options() -> type[IRCConfig]:
    """:class:`IRCConfig`, imported when needed: without --irc-port the IRC door is not loaded."""
    from ..server.irc import IRCConfig

    return IRCConfig


def file_key(flag: str, section: str | None = None) -> str:
    """Where a config file sets ``flag``: ``--max-clients`` is ``max-clients``,
    ``--db-queue`` is ``queue`` in ``[db]``, ``--db`` is ``path`` there."""
    name = flag.removeprefix("--")
    for prefix, whole in _SECTIONS.items():
        if name == prefix and whole is not None:
            return f"{prefix}.{whole}"
        if name.startswith(f"{prefix}-"):
            return f"{prefix}.{name.removeprefix(f'{prefix}-')}"
    return name if section is None else f"{section}.{name}"


def _field(owner: Any, *decls: str, section: str | None = None, **attrs: Any) -> Callable[[F], F]:
    """A ``serve`` option for a field: it has an environment variable and a config-file key."""
    attrs.setdefault("envvar", envvar_for(decls[0]))
    attrs.setdefault("file_key", file_key(decls[0], section))
    return _field_option(owner, *decls, **attrs)


def serve_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option for a :class:`ServeConfig` field (TLS files, the metrics endpoint)."""
    return _field(ServeConfig, *decls, **attrs)


def server_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option for a :class:`ServerConfig` field of the same name (``--max-clients``)."""
    return _field(ServerConfig, *decls, **attrs)


def store_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option for a :class:`StoreConfig` field: ``--db-batch-max`` sets ``batch_max``."""
    name = decls[0].removeprefix("--db").removeprefix("-")
    attrs.setdefault("field", name.replace("-", "_") or "path")
    return _field(StoreConfig, *decls, **attrs)


def irc_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option for an ``IRCConfig`` field, in the file's ``[irc]``: ``--irc-ping`` is ``ping``."""
    return _field(_irc_options, *decls, **attrs)


def web_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option for a ``WebConfig`` field: ``--web-ping-timeout`` sets ``ping_timeout``."""
    name = decls[0].removeprefix("--web-")
    attrs.setdefault("field", name.replace("-", "_"))
    return _field(_web_config, *decls, **attrs)


def redis_option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """An option for a ``RedisOptions`` field of the same name, in the file's ``[redis]``."""
    return _field(_redis_options, *decls, section="redis", **attrs)


@click.command()
@click.option(
    "--config",
    "config_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TRIOCHAT_CONFIG",
    is_eager=True,
    expose_value=False,
    callback=lambda ctx, _param, path: _read_config_file(ctx, path),
    help="Read settings from this TOML file (docs/operations.md); the command line and the "
    "environment override it.",
)
@server_option("--host", help="Address to listen on (0.0.0.0 for every interface).")
@server_option("--port", type=click.IntRange(0, 65535), help="TCP port; 0 picks a free one.")
@server_option("--max-line", type=click.IntRange(64), help="Longest line accepted, in bytes.")
@server_option(
    "--history", type=click.IntRange(0, 1000), help="Recent lines a room replays to joiners."
)
@server_option("--max-clients", type=click.IntRange(1), help="Most connections at once.")
@server_option(
    "--max-rooms-per-member",
    type=click.IntRange(1),
    help="Most rooms one user can be in at once (doors where users join several).",
)
@server_option(
    "--quiet-above",
    type=click.IntRange(0),
    help="Past this many members a room tells joins and leaves only as a summary; 0: never.",
)
@server_option(
    "--presence-interval",
    type=Range(0, min_open=True),
    help="Seconds between a big room's summaries of who came and went.",
)
@server_option(
    "--names",
    type=click.Choice(NAME_POLICIES),
    help="Names people may take: unicode (one script, no look-alikes) or ascii only.",
)
@server_option("--rate", type=Range(0), help="Lines/s per client; 0 turns flood control off.")
@server_option(
    "--burst", type=click.IntRange(1), help="Lines a client may send at once before being paced."
)
@server_option(
    "--registration-timeout",
    type=Range(0, min_open=True),
    help="Seconds a new connection has to give its name.",
)
@server_option(
    "--resume-max",
    type=click.IntRange(0),
    help="Recent events each room keeps for v2 clients to resume from (in Redis too, "
    "with --redis); the most one resume replays, and the most private messages kept for "
    "a held v2 client.",
)
@server_option(
    "--resume-grace",
    type=Range(0),
    help="Seconds a v2 client whose connection broke keeps its name and rooms unannounced.",
)
@server_option(
    "--resume-attempts",
    type=click.IntRange(1),
    help="Bad resume tokens one connection may give before it is closed.",
)
@server_option(
    "--send-queue",
    type=click.IntRange(64),
    help="Lines waiting for a client whose socket buffer is full before it is dropped.",
)
@redis_option(
    "--redis",
    "redis_url",
    field="url",
    metavar="redis://HOST:PORT/DB",
    help="Join a cluster of nodes through this Redis (needs the 'redis' extra).",
)
@redis_option(
    "--cluster",
    help="With --redis: nodes on one Redis with the same cluster name are one chat.",
)
@redis_option(
    "--heartbeat",
    type=Range(0, min_open=True),
    help="With --redis: seconds between this node's heartbeats.",
)
@redis_option(
    "--node-ttl",
    type=Range(0, min_open=True),
    help="With --redis: seconds without a heartbeat before a node's users are dropped.",
)
@store_option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    callback=lambda _ctx, _param, path: _not_empty(path),
    help="Keep history in this SQLite file (created if missing), across restarts.",
)
@store_option(
    "--db-batch-interval",
    type=Range(0, 10, min_open=True),
    help="With --db: seconds the writer collects lines before committing them (a kill -9 "
    "loses about this much).",
)
@store_option(
    "--db-batch-max",
    type=click.IntRange(1),
    help="With --db: most lines in one commit; a full batch is committed without waiting.",
)
@store_option(
    "--db-queue",
    type=click.IntRange(1),
    help="With --db: lines waiting for the writer; when full, new lines are delivered but "
    "not saved (counted).",
)
@store_option(
    "--db-moderation-queue",
    type=click.IntRange(1),
    help="With --db: moderation changes (ops, topics, bans, mutes) waiting for the writer; "
    "when full, a change holds in memory but is not saved (logged).",
)
@store_option(
    "--db-cache-rooms",
    type=click.IntRange(1),
    help="With --db: rooms whose recent lines stay in memory for joiners (the most recently "
    "active); others replay nothing until spoken in.",
)
@store_option(
    "--db-flush-timeout",
    type=Range(0),
    help="With --db: seconds a shutdown waits for the last lines to be committed; what is "
    "left then is logged as not saved.",
)
@serve_option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve TLS with this PEM certificate chain.",
)
@serve_option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The certificate's PEM private key (if not in --tls-cert).",
)
@server_option(
    "--tls-handshake-timeout",
    type=Range(0, min_open=True),
    help="Seconds a client has to finish the TLS handshake.",
)
@server_option(
    "--password",
    help="Require this password after the name (prefer TRIOCHAT_PASSWORD: not seen in ps).",
)
@server_option(
    "--motd",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Show this text file's lines as the message of the day (at registration, /motd).",
)
@server_option(
    "--max-password",
    type=click.IntRange(1),
    help="With --db: the longest account password, in characters.",
)
@server_option(
    "--max-per-address",
    type=click.IntRange(0),
    help="Most connections at once from one IP address; 0: no limit.",
)
@serve_option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics over HTTP on this port (0 picks one).",
)
@serve_option(
    "--metrics-host",
    help="Address for the metrics endpoint.",
)
@click.option(
    "--web-port",
    cls=Option,
    type=click.IntRange(0, 65535),
    envvar=envvar_for("--web-port"),
    file_key="web.port",
    help="Serve the chat page and its WebSocket on this port (0 picks one).",
)
@web_option("--web-host", help="With --web-port: the address to listen on (else --host's).")
@click.option(
    "--web-origin",
    "web_origins",
    cls=Option,
    multiple=True,
    envvar=envvar_for("--web-origin"),
    file_key="web.origin",
    help="With --web-port: a page origin (https://chat.example.org) that may open the "
    "WebSocket; repeatable. Without it, only the page's own origin.",
)
@web_option(
    "--web-max-message",
    type=click.IntRange(1024),
    help="With --web-port: most bytes in one WebSocket message; a bigger one closes the "
    "connection (1009).",
)
@web_option(
    "--web-ping-interval",
    type=Range(0, min_open=True),
    help="With --web-port: seconds between pings (proxies drop idle WebSockets).",
)
@web_option(
    "--web-ping-timeout",
    type=Range(0, min_open=True),
    help="With --web-port: seconds a WebSocket client has to answer a ping.",
)
@click.option(
    "--irc-port",
    cls=Option,
    type=click.IntRange(0, 65535),
    envvar=envvar_for("--irc-port"),
    file_key=file_key("--irc-port"),
    help="Also serve IRC clients (irssi, WeeChat, HexChat) on this port (0 picks one; "
    "IRC's usual are 6667, and 6697 with TLS); docs/irc.md.",
)
@irc_option("--irc-name", field="name", help="With --irc-port: the server's name on IRC.")
@click.option(
    "--irc-motd",
    cls=Option,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar=envvar_for("--irc-motd"),
    file_key=file_key("--irc-motd"),
    help="With --irc-port: a UTF-8 file whose lines are the message of the day.",
)
@irc_option(
    "--irc-ping",
    field="ping_interval",
    type=Range(1),
    help="With --irc-port: seconds of silence before a client is PINGed; as long again "
    "without an answer and it is dropped.",
)
@log_level_option
def serve(**params: Any) -> None:
    """Run a chat server until SIGINT or SIGTERM.

    Every option can also be set from the environment (TRIOCHAT_PORT,
    TRIOCHAT_MAX_CLIENTS, ...) or in a --config file. The --db-* limits are
    an error without --db, and --cluster, --heartbeat and --node-ttl without
    --redis.
    """
    ctx = click.get_current_context()
    logging.basicConfig(
        level=params["log_level"].upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config = _serve_config(ctx)
    error = trio.run(_serve, config)
    if error is not None:
        raise click.ClickException(str(error))


def _serve_config(ctx: click.Context) -> ServeConfig:
    """What the options describe, checked; a bad combination is a usage error (exit 2)."""
    params = ctx.params
    server_fields = given_fields(ctx, ServerConfig)
    history = server_fields.get("history", field_default(ServerConfig, "history"))
    send_queue = server_fields.get("send_queue", field_default(ServerConfig, "send_queue"))
    if send_queue <= history + 8:
        raise click.BadParameter("must exceed --history by more than 8", param_hint="--send-queue")
    if params["password"] == "":
        raise click.BadParameter("must not be empty", param_hint="--password/TRIOCHAT_PASSWORD")
    try:
        server = ServerConfig(**server_fields)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    server = dataclasses.replace(server, max_clients=_raise_fd_limit(server.max_clients))

    store = None
    if params["db"] is None:
        _refuse_without(ctx, "--db", lambda name: name.startswith("db_"))
    else:
        store = StoreConfig(history=server.history, **given_fields(ctx, StoreConfig))

    redis = None
    if not params["redis_url"]:
        _refuse_without(ctx, "--redis", lambda name: name in ("cluster", "heartbeat", "node_ttl"))
    else:
        try:
            options = _redis_options()
        except ImportError:
            raise click.ClickException(f"--redis needs coredis: {REDIS_EXTRA}") from None
        try:
            redis = options(
                history=server.history,
                resume_max=server.resume_max,
                **given_fields(ctx, _redis_options),
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--redis/--cluster") from None

    web = None
    if params["web_port"] is None:
        _refuse_without(ctx, "--web-port", lambda name: name.startswith("web_"))
    else:
        fields = given_fields(ctx, _web_config)
        try:
            web = _web_config()(
                port=params["web_port"], origins=tuple(params["web_origins"]), **fields
            )
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--web-origin") from None

    if params["tls_key"] is not None and params["tls_cert"] is None:
        raise click.BadParameter("needs --tls-cert too", param_hint="--tls-key")
    irc = _irc_config(ctx)
    return ServeConfig(
        server=server,
        store=store,
        redis=redis,
        web=web,
        irc=irc,
        **given_fields(ctx, ServeConfig),
    )


def _irc_config(ctx: click.Context) -> IRCConfig | None:
    """The IRC door's settings, or ``None`` without ``--irc-port`` (the others are refused)."""
    port = ctx.params["irc_port"]
    if port is None:
        _refuse_without(ctx, "--irc-port", lambda name: name.startswith("irc_"))
        return None
    motd: tuple[str, ...] = ()
    path = ctx.params["irc_motd"]
    if path is not None:
        try:
            motd = tuple(path.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(
                f"cannot read {path}: {exc}", param_hint="--irc-motd"
            ) from None
    try:
        return _irc_options()(port=port, motd=motd, **given_fields(ctx, _irc_options))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--irc-name/--irc-ping") from None


async def _serve(config: ServeConfig) -> StartError | None:
    """Run the server, printing its addresses once it listens; a start-up failure is returned."""
    async with trio.open_nursery() as nursery:
        try:
            running: RunningServer = await nursery.start(
                partial(run_server, config, stop_on_signals=True)
            )
        except StartError as exc:
            return exc
        # Scripts parse these lines: their form does not change.
        for listener in running.metrics_listeners:
            print(f"triochat metrics on http://{format_address(listener)}/metrics", flush=True)
        for listener in running.listeners:
            print(f"triochat listening on {format_address(listener)}", flush=True)
        for url in running.web_urls:
            print(f"triochat web listening on {url}", flush=True)
        for listener in running.irc_listeners:
            print(f"triochat irc listening on {format_address(listener)}", flush=True)
    return None


def _not_empty(path: Path | None) -> Path | None:
    # Path("") is Path("."), which would be reported as the directory ".".
    if path is not None and str(path) in ("", "."):
        raise click.BadParameter("is empty: give the database's file name")
    return path


def _raise_fd_limit(max_clients: int) -> int:
    """Raise the open-file soft limit as far as allowed; return the client cap that fits."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_clients + _SPARE_FDS
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError):
            pass
    if max_clients + _SPARE_FDS > soft:
        fitted = max(1, soft - _SPARE_FDS)
        log.warning(
            "open-file limit is %d: lowering --max-clients from %d to %d", soft, max_clients, fitted
        )
        return fitted
    return max_clients


def _refuse_without(ctx: click.Context, option: str, belongs: Callable[[str], bool]) -> None:
    """Refuse a feature's settings given while it is off: ignoring them would hide a mistake."""
    for param in ctx.command.params:
        if param.name is None or not belongs(param.name):
            continue
        source = ctx.get_parameter_source(param.name)
        if source is ParameterSource.COMMANDLINE:
            raise click.BadParameter(f"applies only with {option}", ctx=ctx, param=param)
        if source is ParameterSource.ENVIRONMENT:
            raise click.BadParameter(
                f"set by {param.envvar}, but applies only with {option}", ctx=ctx, param=param
            )
        if source is ParameterSource.DEFAULT_MAP:
            raise click.BadParameter(
                f"set in {ctx.meta.get(_CONFIG_FILE, 'the defaults')}, but applies only with"
                f" {option}",
                ctx=ctx,
                param=param,
            )


# --- serve --config FILE ---------------------------------------------------------------


def _read_config_file(ctx: click.Context, path: Path | None) -> None:
    """Make the file's settings the defaults: the environment and the command line beat them."""
    if path is None:
        return
    try:
        document = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise click.BadParameter(f"{path} is not valid TOML: {exc}") from None
    options = {
        param.file_key: param
        for param in ctx.command.params
        if isinstance(param, Option) and param.name is not None
    }
    settings: dict[str, Any] = {}
    for key, value in _flatten(document, path):
        if key not in options:
            raise click.BadParameter(f"unknown key {_shown(key)} in {path}{_hint(key, options)}")
        option = options[key]
        if isinstance(option.type, click.types.IntParamType) and not _is_whole(value):
            # click would turn 2.5 into 2 (and true into 1) without a word.
            raise click.BadParameter(
                f"{_shown(key)} in {path} must be a whole number, not {value!r}"
            )
        assert option.name is not None
        settings[option.name] = value
    ctx.meta[_CONFIG_FILE] = path
    ctx.default_map = {**(ctx.default_map or {}), **settings}


def _flatten(document: dict[str, Any], path: Path) -> Iterator[tuple[str, Any]]:
    for key, value in document.items():
        if not isinstance(value, dict):
            yield key, value
            continue
        for inner, setting in value.items():
            if isinstance(setting, dict):
                raise click.BadParameter(f"unknown table [{key}.{inner}] in {path}")
            yield f"{key}.{inner}", setting


def _is_whole(value: object) -> bool:
    """An integer in the file (a quoted number is left to click, which parses it)."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def _shown(key: str) -> str:
    """``db.queue`` as the file spells it: ``queue`` in ``[db]``."""
    section, _, name = key.rpartition(".")
    return f"'{name}' in [{section}]" if section else f"'{name}'"


def _hint(key: str, names: Mapping[str, object]) -> str:
    spelled = key.replace("_", "-")
    close = difflib.get_close_matches(spelled, list(names), n=1)
    return f" (did you mean {_shown(close[0])}?)" if close else ""
