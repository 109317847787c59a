"""The ``triochat`` command: a click group; each command parses, then calls ``trio.run``."""

from __future__ import annotations

import json
import logging
import math
import os
import resource
import signal
import ssl
import sys
import warnings
from collections.abc import Callable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import click
import trio
from click.core import ParameterSource

from .. import __version__
from ..backplane import Backplane
from ..client.bot import BotConfig, BotRunner, Summary, check_names
from ..client.botscript import ScriptError, Step, parse_script
from ..client.connection import ConnectOptions, InsecureConnectionWarning
from ..protocol import line as protocol
from ..server.listener import ChatServer, ServerConfig, format_address

if TYPE_CHECKING:
    from ..server.irc import IRCConfig
    from ..server.store import StoreConfig

log = logging.getLogger("triochat")

# Descriptors the process needs besides its clients: listeners, stdio, logs.
_SPARE_FDS = 64


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="triochat")
def main() -> None:
    """triochat: a realtime multi-user chat on Trio. `nc HOST 7007` is a complete client."""


def _tls_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--tls``, ``--ca`` and ``--insecure``, shared by the client commands."""
    for option in reversed(
        (
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
        )
    ):
        command = option(command)
    return command


def _warn_insecure() -> None:
    click.echo(
        "triochat: warning: --insecure: the server's certificate is not checked, "
        "so anyone in between could read and change the chat",
        err=True,
    )
    warnings.filterwarnings("ignore", category=InsecureConnectionWarning)


class _Range(click.FloatRange):
    """A ``FloatRange`` that also refuses ``nan``, which compares false with any bound."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        number = super().convert(value, param, ctx)
        if math.isnan(number):
            self.fail(f"{number} is not in the range {self._describe_range()}.", param, ctx)
        return number


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


@main.command()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    envvar="TRIOCHAT_HOST",
    help="Address to listen on (0.0.0.0 for every interface).",
)
@click.option(
    "--port",
    default=7007,
    show_default=True,
    envvar="TRIOCHAT_PORT",
    type=click.IntRange(0, 65535),
    help="TCP port; 0 picks a free one.",
)
@click.option(
    "--max-line",
    default=4096,
    show_default=True,
    envvar="TRIOCHAT_MAX_LINE",
    type=click.IntRange(64),
    help="Longest line accepted, in bytes.",
)
@click.option(
    "--history",
    default=20,
    show_default=True,
    envvar="TRIOCHAT_HISTORY",
    type=click.IntRange(0, 1000),
    help="Recent lines a room replays to joiners.",
)
@click.option(
    "--max-clients",
    default=10_000,
    show_default=True,
    envvar="TRIOCHAT_MAX_CLIENTS",
    type=click.IntRange(1),
    help="Most connections at once.",
)
@click.option(
    "--rate",
    default=20.0,
    show_default=True,
    envvar="TRIOCHAT_RATE",
    type=_Range(0),
    help="Lines/s per client; 0 turns flood control off.",
)
@click.option(
    "--burst",
    default=40,
    show_default=True,
    envvar="TRIOCHAT_BURST",
    type=click.IntRange(1),
    help="Lines a client may send at once before being paced.",
)
@click.option(
    "--registration-timeout",
    default=60.0,
    show_default=True,
    envvar="TRIOCHAT_REGISTRATION_TIMEOUT",
    type=_Range(0, min_open=True),
    help="Seconds a new connection has to give its name.",
)
@click.option(
    "--send-queue",
    default=4096,
    show_default=True,
    envvar="TRIOCHAT_SEND_QUEUE",
    type=click.IntRange(64),
    help="Lines waiting for a client whose socket buffer is full before it is dropped.",
)
@click.option(
    "--redis",
    "redis_url",
    default=None,
    envvar="TRIOCHAT_REDIS",
    metavar="redis://HOST:PORT/DB",
    help="Join a cluster of nodes through this Redis (needs the 'redis' extra).",
)
@click.option(
    "--cluster",
    default="triochat",
    show_default=True,
    envvar="TRIOCHAT_CLUSTER",
    help="With --redis: nodes on one Redis with the same cluster name are one chat.",
)
@click.option(
    "--heartbeat",
    default=2.0,
    show_default=True,
    envvar="TRIOCHAT_HEARTBEAT",
    type=_Range(0, min_open=True),
    help="With --redis: seconds between this node's heartbeats.",
)
@click.option(
    "--node-ttl",
    default=6.0,
    show_default=True,
    envvar="TRIOCHAT_NODE_TTL",
    type=_Range(0, min_open=True),
    help="With --redis: seconds without a heartbeat before a node's users are dropped.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    envvar="TRIOCHAT_DB",
    help="Keep history in this SQLite file (created if missing), across restarts.",
)
@click.option(
    "--db-batch-interval",
    default=0.05,
    show_default=True,
    envvar="TRIOCHAT_DB_BATCH_INTERVAL",
    type=_Range(0, 10, min_open=True),
    help="With --db: seconds the writer collects lines before committing them (a kill -9 "
    "loses about this much).",
)
@click.option(
    "--db-batch-max",
    default=500,
    show_default=True,
    envvar="TRIOCHAT_DB_BATCH_MAX",
    type=click.IntRange(1),
    help="With --db: most lines in one commit; a full batch is committed without waiting.",
)
@click.option(
    "--db-queue",
    default=10_000,
    show_default=True,
    envvar="TRIOCHAT_DB_QUEUE",
    type=click.IntRange(1),
    help="With --db: lines waiting for the writer; when full, new lines are delivered but "
    "not saved (counted).",
)
@click.option(
    "--db-cache-rooms",
    default=1000,
    show_default=True,
    envvar="TRIOCHAT_DB_CACHE_ROOMS",
    type=click.IntRange(1),
    help="With --db: rooms whose recent lines stay in memory for joiners (the most recently "
    "active); others replay nothing until spoken in.",
)
@click.option(
    "--tls-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TRIOCHAT_TLS_CERT",
    help="Serve TLS with this PEM certificate chain.",
)
@click.option(
    "--tls-key",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    envvar="TRIOCHAT_TLS_KEY",
    help="The certificate's PEM private key (if not in --tls-cert).",
)
@click.option(
    "--tls-handshake-timeout",
    default=10.0,
    show_default=True,
    envvar="TRIOCHAT_TLS_HANDSHAKE_TIMEOUT",
    type=_Range(0, min_open=True),
    help="Seconds a client has to finish the TLS handshake.",
)
@click.option(
    "--password",
    envvar="TRIOCHAT_PASSWORD",
    help="Require this password after the name (prefer TRIOCHAT_PASSWORD: not seen in ps).",
)
@click.option(
    "--max-per-address",
    default=0,
    show_default=True,
    envvar="TRIOCHAT_MAX_PER_ADDRESS",
    type=click.IntRange(0),
    help="Most connections at once from one IP address; 0: no limit.",
)
@click.option(
    "--metrics-port",
    envvar="TRIOCHAT_METRICS_PORT",
    type=click.IntRange(0, 65535),
    help="Serve Prometheus metrics over HTTP on this port (0 picks one).",
)
@click.option(
    "--metrics-host",
    default="127.0.0.1",
    show_default=True,
    envvar="TRIOCHAT_METRICS_HOST",
    help="Address for the metrics endpoint.",
)
@click.option(
    "--irc-port",
    envvar="TRIOCHAT_IRC_PORT",
    type=click.IntRange(0, 65535),
    help="Also serve IRC clients (irssi, WeeChat, HexChat) on this port (0 picks one); "
    "see docs/irc.md.",
)
@click.option(
    "--irc-name",
    default="triochat",
    show_default=True,
    envvar="TRIOCHAT_IRC_NAME",
    help="The server's name on IRC (also every user's host). With --irc-port.",
)
@click.option(
    "--irc-motd",
    envvar="TRIOCHAT_IRC_MOTD",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A UTF-8 file whose lines are the IRC message of the day. With --irc-port.",
)
@click.option(
    "--irc-ping",
    default=120.0,
    show_default=True,
    envvar="TRIOCHAT_IRC_PING",
    type=_Range(min=1),
    help="Seconds of silence before an IRC client is PINGed; as long again without an "
    "answer and it is dropped. With --irc-port.",
)
@click.option(
    "--log-level",
    default="info",
    show_default=True,
    envvar="TRIOCHAT_LOG_LEVEL",
    type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False),
)
def serve(
    host: str,
    port: int,
    max_line: int,
    history: int,
    max_clients: int,
    rate: float,
    burst: int,
    registration_timeout: float,
    send_queue: int,
    redis_url: str | None,
    cluster: str,
    heartbeat: float,
    node_ttl: float,
    db: Path | None,
    db_batch_interval: float,
    db_batch_max: int,
    db_queue: int,
    db_cache_rooms: int,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_handshake_timeout: float,
    password: str | None,
    max_per_address: int,
    metrics_port: int | None,
    metrics_host: str,
    irc_port: int | None,
    irc_name: str,
    irc_motd: Path | None,
    irc_ping: float,
    log_level: str,
) -> None:
    """Run a chat server until SIGINT or SIGTERM.

    Every option can also be set from the environment: TRIOCHAT_PORT,
    TRIOCHAT_MAX_CLIENTS, and so on. The --db-* limits are an error without --db,
    and --cluster, --heartbeat and --node-ttl without --redis.
    """
    logging.basicConfig(
        level=log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if send_queue <= history + 8:
        raise click.BadParameter("must exceed --history by more than 8", param_hint="--send-queue")
    if password == "":
        raise click.BadParameter("must not be empty", param_hint="--password/TRIOCHAT_PASSWORD")
    store_config = _store_config(
        db,
        history=history,
        batch_interval=db_batch_interval,
        batch_max=db_batch_max,
        queue=db_queue,
        cache_rooms=db_cache_rooms,
    )
    ssl_context = _server_tls(tls_cert, tls_key)
    config = ServerConfig(
        host=host,
        port=port,
        max_line=max_line,
        history=history,
        max_clients=_raise_fd_limit(max_clients),
        rate=rate,
        burst=burst,
        registration_timeout=registration_timeout,
        send_queue=send_queue,
        max_per_address=max_per_address,
        password=password,
        tls_handshake_timeout=tls_handshake_timeout,
    )
    metrics = None if metrics_port is None else (metrics_host, metrics_port)
    backplane = None
    if not redis_url:
        _refuse_without("--redis", lambda name: name in ("cluster", "heartbeat", "node_ttl"))
    else:
        backplane = _backplane(
            redis_url, cluster=cluster, history=history, heartbeat=heartbeat, node_ttl=node_ttl
        )
    irc = _irc_config(irc_port, name=irc_name, motd=irc_motd, ping_interval=irc_ping)
    try:
        trio.run(_serve, config, backplane, store_config, ssl_context, metrics, irc)
    except OSError as exc:
        reason = exc.strerror or exc
        raise click.ClickException(f"cannot listen on {host}:{port}: {reason}") from None


def _irc_config(port: int | None, *, motd: Path | None, **settings: Any) -> IRCConfig | None:
    """The IRC door's settings, or ``None`` without ``--irc-port`` (then it is not loaded)."""
    if port is None:
        _refuse_without("--irc-port", lambda name: name.startswith("irc_"))
        return None
    from ..server.irc import IRCConfig

    lines: tuple[str, ...] = ()
    if motd is not None:
        try:
            lines = tuple(motd.read_text(encoding="utf-8").splitlines())
        except (OSError, UnicodeDecodeError) as exc:
            raise click.BadParameter(
                f"cannot read {motd}: {exc}", param_hint="--irc-motd"
            ) from None
    try:
        return IRCConfig(port=port, motd=lines, **settings)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--irc-name") from None


def _store_config(db: Path | None, **settings: Any) -> StoreConfig | None:
    """The history store's settings, or ``None`` without ``--db``.

    A ``--db-*`` limit given (on the command line or in the environment)
    without ``--db`` is an error rather than ignored: it would otherwise look
    as if history were being saved.
    """
    if db is None:
        _refuse_without("--db", lambda name: name.startswith("db_"))
        return None
    from ..server.store import StoreConfig

    return StoreConfig(path=db, **settings)


def _refuse_without(option: str, belongs: Callable[[str], bool]) -> None:
    """Refuse a feature's settings given while it is off: ignoring them would hide a mistake."""
    ctx = click.get_current_context()
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


def _backplane(url: str, **options: Any) -> Backplane:
    try:
        from ..backplane.redis import RedisBackplane, RedisOptions
    except ImportError:
        raise click.ClickException("--redis needs coredis: pip install 'triochat[redis]'") from None
    try:
        return RedisBackplane(RedisOptions(url=url, **options))
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--redis/--cluster") from None


def _server_tls(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        if key is not None:
            raise click.BadParameter("needs --tls-cert too", param_hint="--tls-key")
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise click.ClickException(f"cannot load TLS certificate {cert}: {exc}") from None
    return context


async def _serve(
    config: ServerConfig,
    backplane: Backplane | None = None,
    store_config: StoreConfig | None = None,
    ssl_context: ssl.SSLContext | None = None,
    metrics: tuple[str, int] | None = None,
    irc: IRCConfig | None = None,
) -> None:
    # Enter the signal receiver before listening, so a signal never lands as
    # a KeyboardInterrupt in the middle of start-up.
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        # Listen outside any nursery (the store runs one): a port in use is
        # then a plain OSError, which serve() reports in one line, not an
        # exception group.
        listeners = await trio.open_tcp_listeners(config.port, host=config.host)
        metrics_listeners = [] if metrics is None else await _listen_metrics(*metrics)
        irc_listeners = [] if irc is None else await _listen_irc(config.host, irc.port)
        async with AsyncExitStack() as stack:
            store = None
            if store_config is not None:
                from ..server.store import StoreError, open_history_store

                try:
                    store = await stack.enter_async_context(open_history_store(store_config))
                except StoreError as exc:
                    raise click.ClickException(str(exc)) from None
            server = ChatServer(config, backplane=backplane, store=store, ssl_context=ssl_context)
            async with trio.open_nursery() as extras:
                if metrics is not None:
                    from ..server.metrics import serve_metrics

                    await extras.start(serve_metrics, server, metrics_listeners)
                    for listener in metrics_listeners:
                        address = format_address(listener)
                        print(f"triochat metrics on http://{address}/metrics", flush=True)
                async with trio.open_nursery() as nursery:
                    await nursery.start(server.serve_listeners, listeners)
                    for listener in listeners:
                        print(f"triochat listening on {format_address(listener)}", flush=True)
                    if irc is not None:
                        from ..server.irc import IRCDoor

                        await nursery.start(IRCDoor(server, irc).serve_listeners, irc_listeners)
                        for listener in irc_listeners:
                            address = format_address(listener)
                            print(f"triochat irc listening on {address}", flush=True)
                    async for signum in signals:
                        log.info("received %s", signal.Signals(signum).name)
                        server.shutdown()
                        break
                extras.cancel_scope.cancel()


async def _listen_irc(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or exc
        raise click.ClickException(f"cannot listen for IRC on {host}:{port}: {reason}") from None


async def _listen_metrics(host: str, port: int) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or exc
        raise click.ClickException(
            f"cannot listen for metrics on {host}:{port}: {reason}"
        ) from None


@main.command(
    epilog="""\b
Exit codes:
  0  you quit (quit, exit, /quit, Ctrl-D, Ctrl-C, or EOF on stdin)
  1  the server closed the connection, or the network broke it
  2  bad usage
  3  the server could not be reached (refused, unknown host, timeout)
  4  the name was taken or invalid (line mode; the terminal UI asks again)
  5  the server wants a password and TRIOCHAT_PASSWORD is unset, or it is wrong (line mode)

\b
A server password is read from TRIOCHAT_PASSWORD; without it the terminal
UI asks (without echo) if the server wants one."""
)
@click.option("--name", envvar="TRIOCHAT_NAME", help="Your name (the terminal UI asks if omitted).")
@click.option("--host", default="127.0.0.1", show_default=True, help="Server address.")
@click.option(
    "--port",
    default=7007,
    show_default=True,
    envvar="TRIOCHAT_PORT",
    type=click.IntRange(1, 65535),
    help="Server port.",
)
@click.option("--room", default="#lobby", show_default=True, help="Room to join after connecting.")
@click.option(
    "--plain",
    is_flag=True,
    help="Line mode even in a terminal (the default when stdin is not one).",
)
@click.option(
    "--connect-timeout",
    default=10.0,
    show_default=True,
    type=_Range(0, min_open=True),
    help="Seconds to wait for the connection.",
)
@click.option(
    "--quit-timeout",
    default=5.0,
    show_default=True,
    type=_Range(0),
    help="Seconds to wait for the server to close after /quit.",
)
@_tls_options
@click.option(
    "--scrollback",
    default=5000,
    show_default=True,
    type=click.IntRange(10),
    help="Lines the terminal UI keeps.",
)
def join(
    name: str | None,
    host: str,
    port: int,
    room: str,
    plain: bool,
    connect_timeout: float,
    quit_timeout: float,
    scrollback: int,
    tls: bool,
    ca: str | None,
    insecure: bool,
) -> None:
    """Chat on a server: a terminal UI, or line mode when stdin is not a terminal.

    Line mode sends each stdin line and prints each server line to stdout,
    so `printf 'hello\\n' | triochat join --name dave` works in scripts.
    """
    from ..client import join as join_mod  # urwid is only loaded for this command

    canonical = protocol.normalize_room(room)
    if canonical is None:
        raise click.BadParameter(protocol.ROOM_RULES, param_hint="--room")
    if name is not None and protocol.name_error(name) is not None:
        raise click.BadParameter(protocol.NAME_RULES, param_hint="--name")
    connection = ConnectOptions(
        host=host,
        port=port,
        connect_timeout=connect_timeout,
        tls=tls,
        ca=ca,
        insecure=insecure,
        password=os.environ.get("TRIOCHAT_PASSWORD") or None,
    )
    config = join_mod.JoinConfig(
        name=name,
        connection=connection,
        room=canonical,
        quit_timeout=quit_timeout,
        scrollback=scrollback,
    )
    if insecure:
        _warn_insecure()
    interactive = not plain and sys.stdin.isatty() and sys.stdout.isatty()
    if not interactive and not name:
        raise click.BadParameter("required when stdin is not a terminal", param_hint="--name")
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


@main.command()
@click.option(
    "--script",
    "script_file",
    required=True,
    type=click.File("r", encoding="utf-8"),
    help="Script to run (see docs/bots.md); - reads stdin.",
)
@click.option(
    "--name", default="bot", show_default=True, help="Bot name; NAME1..NAMEN with --count."
)
@click.option(
    "--count", default=1, show_default=True, type=click.IntRange(1, 100_000), help="Bots to run."
)
@click.option("--host", default="127.0.0.1", show_default=True, envvar="TRIOCHAT_HOST")
@click.option(
    "--port", default=7007, show_default=True, envvar="TRIOCHAT_PORT", type=click.IntRange(1, 65535)
)
@click.option(
    "--rate",
    default=0.0,
    show_default=True,
    type=_Range(0),
    help="Lines/s each bot sends at most; 0 for no pacing.",
)
@click.option(
    "--loop", default=1, show_default=True, type=click.IntRange(1), help="Times to run the script."
)
@click.option(
    "--connect-timeout",
    default=10.0,
    show_default=True,
    type=_Range(0, min_open=True),
    help="Seconds to connect and register.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON on stdout.")
@_tls_options
@click.option(
    "--password",
    envvar="TRIOCHAT_PASSWORD",
    help="The server password (prefer TRIOCHAT_PASSWORD: not seen in ps).",
)
def bot(
    script_file: TextIO,
    name: str,
    count: int,
    host: str,
    port: int,
    rate: float,
    loop: int,
    connect_timeout: float,
    as_json: bool,
    tls: bool,
    ca: str | None,
    insecure: bool,
    password: str | None,
) -> None:
    """Run scripted users against a server, then summarize (latency of their own lines).

    Exits 0 if every bot finished its script, 1 if any failed (one line each on
    stderr), 130 if interrupted.
    """
    source = "<stdin>" if script_file.name == "<stdin>" else script_file.name
    try:
        steps = parse_script(script_file.read(), source=source)
    except ScriptError as exc:
        raise click.BadParameter(str(exc), param_hint="--script") from None
    connection = ConnectOptions(
        host=host,
        port=port,
        connect_timeout=connect_timeout,
        tls=tls or ca is not None or insecure,
        ca=ca,
        insecure=insecure,
        password=password or None,
    )
    config = BotConfig(connection=connection, name=name, count=count, loop=loop, rate=rate)
    if insecure:
        _warn_insecure()
    error = check_names(config)
    if error is not None:
        raise click.BadParameter(error, param_hint="--name/--count")
    summary = trio.run(_run_bots, steps, config)
    for failure in summary.failures:
        click.echo(str(failure), err=True)
    click.echo(summary.format(), err=True)
    if as_json:
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
