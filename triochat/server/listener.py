"""The TCP server: listeners, one task per connection, graceful shutdown.

Each accepted stream (after its TLS handshake, within the per-address and
server-wide limits) gets a :class:`~triochat.server.connection.Connection`
task in the handlers nursery: the reader that drives its session. Lines for
the client wait in its bounded outbox until the server's one flusher task
writes them to the socket, one write per client per round (``outbox.py``).
"""

from __future__ import annotations

import errno
import logging
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from contextlib import suppress
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Final, NoReturn

import trio

from ..backplane import Backplane, LocalBackplane
from ..core._auth import FailureDelays
from ..core.accounts import MAX_PASSWORD
from ..core.hub import Hub, Member
from ..core.modstate import Publishing, SharedModeration
from ..core.resume import Tokens
from ..core.session import Door, Rules, answered_before_registration
from ..protocol import line as p
from ..protocol.v2 import V2Dialect
from .connection import Connection, DoorConnection, close_stream, peer_host, peer_name
from .outbox import Flusher
from .stats import ServerStats

if TYPE_CHECKING:
    from .accounts import AccountStore
    from .store import HistoryStore

log: Final = logging.getLogger("triochat.server")

SHUTDOWN_LINE: Final = "Server is shutting down. Bye!"
MOTD_MAX: Final = 16_384
"""The most bytes of ``--motd`` read: a message, not a book (it is sent to every newcomer)."""
HANDLER_NAME: Final = "triochat.server.listener.ChatServer.handle_stream"
"""The line door's connection tasks' name (one string for all: see :func:`serve_listeners`)."""
ACCEPT_CAPACITY_ERRNOS: Final = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})
"""What ``accept`` fails with when the system is out of descriptors or memory: retried."""
ACCEPT_RETRY: Final = 0.1
"""Seconds before accepting again after one of those."""


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything ``triochat serve`` can be told; each limit has a named option."""

    host: str = "127.0.0.1"
    port: int = 7007
    max_line: int = p.DEFAULT_MAX_LINE
    history: int = 20
    max_rooms_per_member: int = 50
    """The most rooms one member can be in at once (doors where members join several)."""
    quiet_above: int = 200
    """Past this many members a room announces joins, leaves and renames only as a summary;
    0 turns it off."""
    presence_interval: float = 30.0
    """Seconds between a big room's summaries of joins and leaves."""
    names: p.NamePolicy = "unicode"
    """Which names people may take: ``unicode`` (one script, no look-alikes) or ``ascii``."""
    max_clients: int = 10_000
    rate: float = 20.0
    """Lines a second each client may send on average; 0 turns flood control off."""
    burst: int = 40
    """Lines a client may send at once before flood control paces it."""
    registration_timeout: float = 60.0
    send_queue: int = 4096
    """Lines queued for one client before it counts as a slow consumer."""
    linger: float = 5.0
    """Seconds a departing client gets to read its last lines."""
    shutdown_grace: float = 2.0
    """Seconds clients get to read the shutdown notice before they are cut off."""
    max_per_address: int = 0
    """Most connections at once from one IP address; 0 means no limit."""
    password: str | None = None
    """If set, clients must send it after their name."""
    password_delay: float = 1.0
    """Seconds before answering the first wrong password from an address; doubles per failure."""
    password_delay_max: float = 30.0
    """The longest wait before answering a wrong password."""
    tls_handshake_timeout: float = 10.0
    """Seconds a TLS client has to finish its handshake."""
    resume_max: int = 1000
    """Recent events of every kind each room keeps so v2 clients can resume; the most one
    resume replays."""
    resume_grace: float = 30.0
    """Seconds a v2 client whose connection broke keeps its name and rooms, unannounced."""
    resume_attempts: int = 3
    """Bad resume tokens one connection may give before it is closed."""
    max_password: int = MAX_PASSWORD
    """The longest account password, in characters (accounts need ``--db``)."""
    motd: Path | None = None
    """A text file whose lines are the message of the day, shown at registration and by
    ``/motd`` (read once, at start; at most ``MOTD_MAX`` bytes)."""

    def __post_init__(self) -> None:
        if self.send_queue <= self.history + 8:
            raise ValueError("send_queue must exceed history by more than 8 lines")
        for field in ("max_line", "max_clients", "send_queue", "burst", "max_rooms_per_member"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        if self.history < 0 or self.rate < 0 or self.registration_timeout <= 0:
            raise ValueError("history and rate must be >= 0, registration_timeout > 0")
        if self.max_per_address < 0 or self.quiet_above < 0:
            raise ValueError("max_per_address and quiet_above must be >= 0 (0: no limit)")
        if not self.presence_interval > 0:
            raise ValueError("presence_interval must be > 0")
        if self.names not in p.NAME_POLICIES:
            raise ValueError(f"names must be one of {', '.join(p.NAME_POLICIES)}")
        if self.password == "":
            raise ValueError("password must not be empty (None: no password)")
        if self.password is not None and answered_before_registration(self.password):
            raise ValueError("password must not start with /help, /quit or /exit")
        if self.max_password < 1:
            raise ValueError("max_password must be at least 1")
        if self.tls_handshake_timeout <= 0 or self.password_delay < 0:
            raise ValueError("tls_handshake_timeout must be > 0, password_delay >= 0")
        if self.resume_max < 0 or self.resume_grace < 0 or self.resume_attempts < 1:
            raise ValueError("resume_max and resume_grace must be >= 0, resume_attempts >= 1")


def enable_keepalive(stream: trio.SocketStream) -> None:
    """Find dead peers in about a minute: keepalive after 20 s idle, then 4 probes 5 s apart.

    Idle but connected clients answer the probes, so they are never kicked.
    TCP_USER_TIMEOUT covers the other case, a peer that vanished while we had
    unacknowledged data for it.
    """
    stream.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, True)
    for name, value in (
        ("TCP_KEEPIDLE", 20),
        ("TCP_KEEPINTVL", 5),
        ("TCP_KEEPCNT", 4),
        ("TCP_USER_TIMEOUT", 60_000),
    ):
        option = getattr(socket, name, None)
        if option is not None:  # pragma: no branch - Linux has them all
            stream.setsockopt(socket.IPPROTO_TCP, option, value)


class ChatServer:
    """A triochat server: ``await nursery.start(server.serve)``, later :meth:`shutdown`.

    Args:
      config: the limits and options.
      hub: the chat's state (made from ``config`` if not given).
      backplane: what links this server to other nodes (default: none).
      store: persistent history (``--db``); the caller opens and closes it.
      ssl_context: serve TLS: every connection is wrapped in a
        :class:`trio.SSLStream` and must finish its handshake in time.
    """

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        hub: Hub | None = None,
        backplane: Backplane | None = None,
        store: HistoryStore | None = None,
        ssl_context: ssl.SSLContext | None = None,
        accounts: AccountStore | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.accounts = accounts if accounts is not None or store is None else store.accounts
        """Registered names (``--db``), or ``None``: no accounts."""
        self.backplane = backplane or (hub.backplane if hub else LocalBackplane())
        self.store = store
        self.hub = hub or Hub(
            history=self.config.history,
            backplane=self.backplane,
            archive=store,
            max_rooms_per_member=self.config.max_rooms_per_member,
            quiet_above=self.config.quiet_above,
            presence_interval=self.config.presence_interval,
            names=self.config.names,
            resume_max=self.config.resume_max,
            moderation=self._moderation(store),
        )
        if self.accounts is not None and hub is None:
            self.hub.accounts = self.accounts
            self.accounts.share(self.backplane, store.moderation if store is not None else None)
        self.ssl_context = ssl_context
        self.dialect = p.LineDialect()
        """How the line door renders the hub's events (one for all its members)."""
        self.stats = ServerStats()
        self._flusher = Flusher(self.stats)
        self.password_delays = FailureDelays(
            base=self.config.password_delay, cap=self.config.password_delay_max
        )
        self.door: Door[Member] = Door(
            hub=self.hub,
            rules=Rules(
                password=self.config.password,
                registration_timeout=self.config.registration_timeout,
                claim_names=self.backplane.remote,
                store_history=store is not None,
                # Never more than half an outbox, or the asker becomes a slow consumer.
                history_limit=min(p.HISTORY_MAX, self.config.send_queue // 2),
                max_password=self.config.max_password,
                motd=read_motd(self.config.motd),
            ),
            dialect=self.dialect,
            delays=self.password_delays,
            clock=trio.current_time,
            accounts=self.accounts,
            moderation=self.hub.moderation,
        )
        """What the line door's sessions share."""
        self.tokens = Tokens(
            self.config.resume_grace,
            trio.current_time,
            self.backplane if self.backplane.remote else None,
        )
        self.hub.handed_off = self.tokens.handed_off
        """The v2 members' resume tokens, and who is held."""
        self._holds_changed = trio.Event()
        self.tokens.changed = self._holds_changed.set
        self.door_v2: Door[Member] | None = Door(
            hub=self.hub,
            rules=replace(self.door.rules, one_room=False),
            dialect=V2Dialect(),
            delays=self.password_delays,
            clock=trio.current_time,
            accounts=self.accounts,
            moderation=self.hub.moderation,
        )
        """What the line door's v2 sessions share (``None``: the door speaks v1 only)."""
        # A dict, not a set: at 10,000 connections a set's table takes 52 bytes a
        # connection (it grows 4x at a time), a dict's 29 (docs/benchmarks.md).
        self._connections: dict[DoorConnection, None] = {}
        self._per_address: dict[str, int] = {}
        self._handshaking = 0
        self._doors: list[Callable[[], int]] = []
        self._shutdown = trio.Event()

    def _moderation(self, store: HistoryStore | None) -> SharedModeration:
        """The hub's moderation: loaded from and written to the ``--db`` file, and published
        to the cluster, as each applies."""
        moderation = SharedModeration(clock=trio.current_time)
        if store is not None and store.moderation is not None:
            moderation.load(store.moderation.initial)
            moderation.sinks.append(store.moderation)
        if self.backplane.remote:
            moderation.sinks.append(Publishing(self.backplane.publish_state))
        return moderation

    @property
    def connections(self) -> int:
        return len(self._connections)

    # --- what the other doors use ---------------------------------------------

    @property
    def flusher(self) -> Flusher:
        """The one task that writes every outbox of the line and IRC doors."""
        return self._flusher

    @property
    def shutting_down(self) -> bool:
        """Whether :meth:`shutdown` was called: a door accepts no one from then on."""
        return self._shutdown.is_set()

    async def wait_shutdown(self) -> None:
        """Return once :meth:`shutdown` is called."""
        await self._shutdown.wait()

    def add_connection(self, connection: DoorConnection) -> None:
        """``connection`` (of any door) is the server's: counted against ``--max-clients``,
        told when the server shuts down, until :meth:`remove_connection`."""
        self._connections[connection] = None

    def remove_connection(self, connection: DoorConnection) -> None:
        """``connection`` is over."""
        self._connections.pop(connection, None)

    def each_connection(self) -> list[DoorConnection]:
        """The open connections of the line and IRC doors, now."""
        return list(self._connections)

    def add_door(self, connections: Callable[[], int]) -> None:
        """Count another door's open connections against ``--max-clients`` too."""
        self._doors.append(connections)

    @property
    def open_connections(self) -> int:
        """Connections open, or in their TLS handshake, on every door (``--max-clients``)."""
        return len(self._connections) + self._handshaking + sum(count() for count in self._doors)

    def admit_address(self, address: str) -> bool:
        """Count one more connection from ``address`` on any door, unless that would pass
        ``--max-per-address`` (then ``False``, counted as refused)."""
        limit = self.config.max_per_address
        if limit and self._per_address.get(address, 0) >= limit:
            self.stats.refused_per_address += 1
            return False
        self._per_address[address] = self._per_address.get(address, 0) + 1
        return True

    def release_address(self, address: str) -> None:
        """A connection counted by :meth:`admit_address` is over."""
        left = self._per_address.pop(address) - 1
        if left:
            self._per_address[address] = left

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen, serve until :meth:`shutdown`, then say goodbye and return.

        ``task_status.started`` gets the listeners, once they are accepting.
        """
        listeners = await trio.open_tcp_listeners(self.config.port, host=self.config.host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like :meth:`serve`, on listeners the caller opened."""
        if not self.backplane.remote:
            await self._serve_listeners(listeners, task_status=task_status)
            return
        async with trio.open_nursery() as nursery:
            # Linked (or trying to be, with Redis down) before the first client arrives.
            await nursery.start(self.backplane.run)
            await self._serve_listeners(listeners, task_status=task_status)
            await self.backplane.leave_cluster()
            nursery.cancel_scope.cancel()

    async def _serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as flushing:
            flushing.start_soon(self._flusher.run)
            if self.config.quiet_above:
                flushing.start_soon(self._summarize_presence)
            flushing.start_soon(self._expire_holds)
            await self._serve_connections(listeners, task_status=task_status)
            flushing.cancel_scope.cancel()

    async def _serve_connections(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        async with trio.open_nursery() as handlers:
            async with trio.open_nursery() as acceptors:
                await acceptors.start(
                    partial(
                        serve_listeners,
                        self.handle_stream,
                        listeners,
                        handler_nursery=handlers,
                        name=HANDLER_NAME,
                    )
                )
                for listener in listeners:
                    log.info("listening on %s", format_address(listener))
                task_status.started(listeners)
                await self._shutdown.wait()
                acceptors.cancel_scope.cancel()
            log.info("shutting down: %d connections", len(self._connections))
            self._close_all(SHUTDOWN_LINE)
            handlers.cancel_scope.deadline = trio.current_time() + self.config.shutdown_grace

    async def _summarize_presence(self) -> None:
        """Tell big rooms of their joins and leaves, every ``presence_interval`` seconds."""
        while True:
            await trio.sleep(self.config.presence_interval)
            self.hub.summarize_presence()

    async def _expire_holds(self) -> None:
        """Held v2 members whose grace is over leave, ``(connection lost)``."""
        tokens = self.tokens
        while True:
            deadline = tokens.next_deadline()
            if deadline is None:
                await self._holds_changed.wait()
                self._holds_changed = trio.Event()
                tokens.changed = self._holds_changed.set
                continue
            await trio.sleep_until(deadline)
            for member, entry in tokens.expired():
                # In a cluster another node may have taken it over meanwhile: Redis decides.
                if await self.backplane.expire(entry):
                    self.hub.leave(member, "connection lost")

    def shutdown(self) -> None:
        """Stop accepting, tell every client, and give them ``shutdown_grace`` to read it."""
        self._shutdown.set()

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client over any trio stream (a TCP socket, or a test's memory stream),
        and close it."""
        # The connection runs in this frame, not in one more below it: a
        # coroutine frame costs every idle client about 250 bytes.
        address: str | None = None
        try:
            if isinstance(stream, trio.SocketStream):
                enable_keepalive(stream)
            limit = self.config.max_per_address
            address = peer_host(stream) if limit else None
            if address is not None and not self.admit_address(address):
                log.warning("refused a connection from %s: %d already open", address, limit)
                address = None  # not counted
                await self._refuse(stream, p.format_error("Too many connections from your address"))
                return
            connection = await self._admit(stream)
            if connection is None:
                return
            self._connections[connection] = None
            try:
                await connection.run()
            except Exception:
                # One client's bug must never take the server down.
                log.exception("connection %s failed", connection.peer)
            finally:
                self._connections.pop(connection, None)
        finally:
            if address is not None:
                self.release_address(address)
            await trio.aclose_forcefully(stream)  # closed already, unless it failed early

    async def _refuse(self, stream: trio.abc.Stream, line: str) -> None:
        """Send one line (briefly, the client may not read) and hang up.

        On a TLS port the line goes over TLS (``send_all`` does the handshake),
        so a TLS client can read it too.
        """
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        await _say_and_close(stream, line)

    async def _admit(self, stream: trio.abc.Stream) -> Connection | None:
        """The client's connection, once it is let in (and through its TLS handshake);
        ``None`` if it was refused."""
        # A client accepted as the server began shutting down: it would miss
        # the goodbye that the others get.
        goodbye = p.format_info(SHUTDOWN_LINE)
        if self._shutdown.is_set():
            await self._refuse(stream, goodbye)
            return None
        if self.open_connections >= self.config.max_clients:
            self.stats.refused_full += 1
            log.warning("refused a connection: server full (%d)", self.config.max_clients)
            await self._refuse(stream, p.format_error("Server full, try again later"))
            return None
        if self.ssl_context is not None:
            secure = await self.handshake(stream)
            if secure is None:
                return None
            if self._shutdown.is_set():  # it began during the handshake
                await _say_and_close(secure, goodbye)
                return None
            stream = secure
        return Connection(self, stream)

    async def handshake(
        self, stream: trio.abc.Stream, *, refusal: bytes | None = None
    ) -> trio.SSLStream[trio.abc.Stream] | None:
        """Do the server side of a TLS handshake (``ssl_context``), within the handshake
        timeout.

        A failure (a plain-text client, a bad certificate, a timeout) is
        logged and the connection dropped; it never reaches anyone else. A
        client whose first byte cannot start a TLS handshake is told so in
        plain text first (``refusal``; by default in the line door's words), so
        ``nc`` users learn why.
        """
        assert self.ssl_context is not None
        if refusal is None:
            refusal = p.format_error(p.TLS_REQUIRED).encode()
        secure = trio.SSLStream(stream, self.ssl_context, server_side=True)
        self._handshaking += 1
        try:
            with trio.move_on_after(self.config.tls_handshake_timeout):
                if not await _starts_tls(stream):
                    with trio.move_on_after(1), suppress(trio.BrokenResourceError):
                        await stream.send_all(refusal)
                    raise trio.BrokenResourceError("the client speaks plain text")
                await secure.do_handshake()
                return secure
            reason = f"timed out after {self.config.tls_handshake_timeout:g} s"
        except trio.BrokenResourceError as exc:
            cause = exc.__cause__
            reason = str(cause or exc) or type(exc).__name__
        finally:
            self._handshaking -= 1
        self.stats.tls_handshake_failures += 1
        log.info("TLS handshake with %s failed: %s", peer_name(stream), reason)
        await trio.aclose_forcefully(stream)
        return None

    def _close_all(self, text: str) -> None:
        data = p.format_info(text).encode()
        for connection in list(self._connections):
            connection.close_with(data)
        self.hub.shutdown()


async def serve_listeners(
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    listeners: list[trio.SocketListener],
    *,
    handler_nursery: trio.Nursery,
    name: str,
    task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
) -> NoReturn:
    """:func:`trio.serve_listeners`, without what it keeps for every connection: accept on
    every listener and run ``handler(stream)`` in a task of its own in ``handler_nursery``.

    ``handler`` owns the stream and closes it, whatever happens: trio's version
    runs each handler under a coroutine of its own that closes the stream
    afterwards (240 bytes for every idle client), and names each task with a
    string of its own (93 bytes); here every task is ``handler`` itself, named
    ``name``. As trio's does, accepting retries (and logs) the errors that mean
    the system is out of descriptors or memory and raises any other.
    """
    async with trio.open_nursery() as nursery:
        for listener in listeners:
            nursery.start_soon(_accept, listener, handler, handler_nursery, name)
        # The listeners already queue connections; one tick more and every loop is in accept.
        await trio.lowlevel.checkpoint()
        task_status.started(listeners)
    raise AssertionError("unreachable: the accept loops never return")  # pragma: no cover


async def _accept(
    listener: trio.SocketListener,
    handler: Callable[[trio.SocketStream], Awaitable[object]],
    handler_nursery: trio.Nursery,
    name: str,
) -> NoReturn:
    async with listener:
        while True:
            try:
                stream = await listener.accept()
            except OSError as exc:
                if exc.errno not in ACCEPT_CAPACITY_ERRNOS:
                    raise
                log.error(
                    "accept failed: %s; retrying in %g s", os.strerror(exc.errno), ACCEPT_RETRY
                )
                await trio.sleep(ACCEPT_RETRY)
            else:
                handler_nursery.start_soon(handler, stream, name=name)


def read_motd(path: Path | None) -> tuple[str, ...]:
    """The message of the day's lines, cleaned as chat text is (read once, at start)."""
    if path is None:
        return ()
    with path.open("rb") as file:
        data = file.read(MOTD_MAX)
    lines = data.decode("utf-8", "replace").splitlines()
    return tuple(p.clean_text(line) or " " for line in lines)


def format_address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def _say_and_close(stream: trio.abc.Stream, line: str) -> None:
    """Send ``line`` within 1 s (the client may not read), then hang up."""
    with trio.move_on_after(1):
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(line.encode())
    await close_stream(stream)


async def _starts_tls(stream: trio.abc.Stream) -> bool:
    """Peek at the first byte: a TLS handshake record starts with 0x16."""
    if not isinstance(stream, trio.SocketStream):
        return True
    try:
        first = await stream.socket.recv(1, socket.MSG_PEEK)
    except OSError:
        return True  # let the handshake report it
    return first in (b"", b"\x16")
