"""A whole server in one call: listeners, history store, backplane, TLS and metrics.

``triochat serve`` is a thin layer over :func:`run_server`; a program can run
the same server in its own nursery::

    running = await nursery.start(run_server, ServeConfig(server=ServerConfig(port=0)))
    print(running.listeners)
    running.shutdown()  # graceful: clients get the shutdown notice

Everything that can be wrong with the settings or the machine (a certificate
that does not load, a database that cannot be used, an address in use) is
raised as :class:`StartError` before ``task_status.started()``, and before any
nursery is open, so it arrives as itself rather than inside an exception group.
"""

from __future__ import annotations

import logging
import signal
import ssl
import urllib.parse
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final

import trio

from ..backplane import Backplane
from .listener import ChatServer, ServerConfig, format_address

if TYPE_CHECKING:
    from ..backplane.redis import RedisOptions
    from .irc import IRCConfig
    from .store import StoreConfig
    from .web import WebConfig, WebDoor

log: Final = logging.getLogger("triochat")

REDIS_EXTRA: Final = "python3 -m pip install '.[redis]'"
"""How to install the Redis extra, from triochat's source tree (as the README says)."""


class StartError(Exception):
    """The server could not start: a setting, a file or an address; the message is one line."""


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    """Everything :func:`run_server` assembles; ``triochat serve`` builds one from its options."""

    server: ServerConfig = field(default_factory=ServerConfig)
    store: StoreConfig | None = None
    """Keep history in SQLite (``--db``); ``None`` keeps it in memory."""
    redis: RedisOptions | None = None
    """Join a cluster through Redis (``--redis``); needs the ``redis`` extra."""
    tls_cert: Path | None = None
    """Serve TLS with this PEM certificate chain."""
    tls_key: Path | None = None
    """The certificate's private key, if it is not in ``tls_cert``."""
    metrics_port: int | None = None
    """Serve Prometheus metrics over HTTP on this port (0 picks one); ``None``: no metrics."""
    metrics_host: str = "127.0.0.1"
    """The metrics endpoint's address."""
    web: WebConfig | None = None
    """Serve the chat page and its WebSocket (``--web-port``); ``None``: no web door."""
    irc: IRCConfig | None = None
    """Also open the IRC door (``--irc-port``, ``docs/irc.md``); ``None``: not even loaded."""

    def __post_init__(self) -> None:
        if self.tls_key is not None and self.tls_cert is None:
            raise ValueError("tls_key needs tls_cert")


@dataclass(frozen=True, eq=False)
class RunningServer:
    """What :func:`run_server` hands to ``task_status.started()``: the server and its listeners."""

    chat: ChatServer
    listeners: list[trio.SocketListener]
    """The chat listeners (with port 0, ask them for the port)."""
    metrics_listeners: list[trio.SocketListener]
    """The metrics endpoint's listeners; empty without ``metrics``."""
    web: WebDoor | None = None
    """The web door, with ``ServeConfig.web``."""
    web_listeners: list[trio.SocketListener] = field(default_factory=list)
    """The web door's listeners; empty without it."""
    irc_listeners: list[trio.SocketListener] = field(default_factory=list)
    """The IRC door's listeners; empty without ``ServeConfig.irc``."""

    @property
    def web_urls(self) -> list[str]:
        """Where the page is: ``http://HOST:PORT/`` (``https`` with TLS), one per listener."""
        scheme = "https" if self.chat.ssl_context is not None else "http"
        return [f"{scheme}://{format_address(listener)}/" for listener in self.web_listeners]

    def shutdown(self) -> None:
        """Tell everyone, close every connection, and let :func:`run_server` return."""
        self.chat.shutdown()
        if self.web is not None:
            self.web.shutdown()


async def run_server(
    config: ServeConfig,
    *,
    stop_on_signals: bool = False,
    task_status: trio.TaskStatus[RunningServer] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the server ``config`` describes until :meth:`RunningServer.shutdown`.

    With ``stop_on_signals`` (what ``triochat serve`` does), SIGINT and SIGTERM
    also shut it down gracefully; the receiver is entered before listening, so
    a signal never lands as a KeyboardInterrupt in the middle of start-up.

    Raises:
      StartError: before ``started()``, if anything in ``config`` cannot be used.
    """
    async with AsyncExitStack() as stack:
        signals = None
        if stop_on_signals:
            signals = stack.enter_context(trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM))
        ssl_context = await _tls_context(config.tls_cert, config.tls_key)
        backplane = _backplane(config.redis)
        # Listen outside any nursery (the store runs one), so that a failure is
        # raised as itself, not inside an exception group.
        what = config.server
        listeners = await _listen(what.host, what.port, "")
        stack.push_async_callback(_close_all, listeners)
        metrics_listeners = []
        if config.metrics_port is not None:
            metrics_listeners = await _listen(
                config.metrics_host, config.metrics_port, " for metrics"
            )
            stack.push_async_callback(_close_all, metrics_listeners)
        web_listeners = []
        if config.web is not None:
            host = config.web.host or what.host
            web_listeners = await _listen(host, config.web.port, " for the web door")
            stack.push_async_callback(_close_all, web_listeners)
        irc_listeners = []
        if config.irc is not None:
            host = config.irc.host if config.irc.host is not None else what.host
            irc_listeners = await _listen(host, config.irc.port, " for IRC")
            stack.push_async_callback(_close_all, irc_listeners)
        store = None
        if config.store is not None:
            from .store import StoreError, open_history_store

            try:
                store = await stack.enter_async_context(open_history_store(config.store))
            except StoreError as exc:
                raise StartError(str(exc)) from None
        chat = ChatServer(what, backplane=backplane, store=store, ssl_context=ssl_context)
        door = None
        if config.web is not None:
            from .web import WebDoor  # only with a web port: h11 and wsproto load here

            door = WebDoor(chat, config.web)
        running = RunningServer(
            chat, listeners, metrics_listeners, door, web_listeners, irc_listeners
        )
        async with trio.open_nursery() as extras:
            if metrics_listeners:
                from .metrics import serve_metrics

                await extras.start(partial(serve_metrics, chat, metrics_listeners, web=door))
            async with trio.open_nursery() as nursery:
                await nursery.start(chat.serve_listeners, listeners)
                if door is not None:
                    await nursery.start(door.serve_listeners, web_listeners)
                if config.irc is not None:
                    from .irc import IRCDoor  # only with an IRC port

                    await nursery.start(IRCDoor(chat, config.irc).serve_listeners, irc_listeners)
                log.info(
                    "%s",
                    describe(config, metrics_listeners, running.web_urls, running.irc_listeners),
                )
                task_status.started(running)
                if signals is not None:
                    async for signum in signals:
                        log.info("received %s", signal.Signals(signum).name)
                        running.shutdown()
                        break
            extras.cancel_scope.cancel()


def describe(
    config: ServeConfig,
    metrics_listeners: list[trio.SocketListener],
    web_urls: list[str] | None = None,
    irc_listeners: list[trio.SocketListener] | None = None,
) -> str:
    """One line saying which features are on, for the log at start-up."""
    parts = [
        "TLS on" if config.tls_cert is not None else "TLS off",
        "password required" if config.server.password is not None else "no password",
        f"history in {config.store.path}" if config.store is not None else "history in memory",
    ]
    if config.redis is None:
        parts.append("no Redis (single node)")
    else:
        parts.append(f"Redis {_without_secrets(config.redis.url)} cluster {config.redis.cluster}")
    if metrics_listeners:
        addresses = ", ".join(f"http://{format_address(m)}/metrics" for m in metrics_listeners)
        parts.append(f"metrics on {addresses}")
    else:
        parts.append("no metrics")
    if web_urls:
        parts.append(f"the web door on {', '.join(web_urls)}")
    if irc_listeners:
        where = ", ".join(format_address(listener) for listener in irc_listeners)
        parts.append(f"the IRC door on {where}")
    return "serving with " + ", ".join(parts)


def _without_secrets(url: str) -> str:
    """A Redis URL without its user and password, fit for a log."""
    parts = urllib.parse.urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", ""))


async def _listen(host: str, port: int, purpose: str) -> list[trio.SocketListener]:
    try:
        return await trio.open_tcp_listeners(port, host=host)
    except OSError as exc:
        reason = exc.strerror or exc
        raise StartError(f"cannot listen{purpose} on {host}:{port}: {reason}") from None


async def _close_all(listeners: list[trio.SocketListener]) -> None:
    for listener in listeners:
        await listener.aclose()


def _backplane(options: RedisOptions | None) -> Backplane | None:
    if options is None:
        return None
    try:
        from ..backplane.redis import RedisBackplane
    except ImportError:
        raise StartError(f"--redis needs coredis: {REDIS_EXTRA}") from None
    return RedisBackplane(options)


async def _tls_context(cert: Path | None, key: Path | None) -> ssl.SSLContext | None:
    if cert is None:
        return None
    # Reading the files is blocking I/O: off the event loop.
    return await trio.to_thread.run_sync(_load_tls, cert, key)


def _load_tls(cert: Path, key: Path | None) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except ssl.SSLError as exc:
        if key is None and not _holds_private_key(cert):
            raise StartError(f"no private key in {cert}; give --tls-key") from None
        raise StartError(f"cannot load TLS certificate {cert}: {exc}") from None
    except OSError as exc:
        raise StartError(f"cannot load TLS certificate {cert}: {exc}") from None
    return context


def _holds_private_key(path: Path) -> bool:
    try:
        return b"PRIVATE KEY-----" in path.read_bytes()
    except OSError:
        return False
