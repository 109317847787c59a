"""The TCP server: listeners, one task per connection, graceful shutdown.

Each connection's task reads (and runs the hub's rules for each line). Lines
for the client wait in its bounded outbox until the server's one flusher task
writes them to the socket, one write per client per round (``_outbox.py``);
what the kernel will not take is sent by a writer task in the same
per-connection nursery, started when needed. Whatever ends the connection,
cleanup happens in one place: the ``finally`` of :meth:`_Connection.run`.
"""

from __future__ import annotations

import logging
import socket
import ssl
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from ..backplane import Backplane, Claim, LocalBackplane
from ..core import events as ev, oneroom
from ..core._auth import FailureDelays, password_matches
from ..core._ratelimit import TokenBucket
from ..core.hub import Hub, Member
from ..protocol import line as p
from .outbox import Flusher, Outbox
from .stats import ServerStats

if TYPE_CHECKING:
    from .store import HistoryStore

log: Final = logging.getLogger("triochat.server")

RECEIVE_SIZE: Final = 65536
SHUTDOWN_LINE: Final = "Server is shutting down. Bye!"
BATCH_LINES: Final = 256
"""Most lines of one client's burst handled before other clients get a turn."""
TLS_CLOSE_TIMEOUT: Final = 0.5
"""Seconds to send a TLS close_notify; only a peer that stopped reading takes this long."""


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
        if self.tls_handshake_timeout <= 0 or self.password_delay < 0:
            raise ValueError("tls_handshake_timeout must be > 0, password_delay >= 0")


def _enable_keepalive(stream: trio.SocketStream) -> None:
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
    ) -> None:
        self.config = config or ServerConfig()
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
        )
        self.ssl_context = ssl_context
        self.dialect = p.LineDialect()
        """How the line door renders the hub's events (one for all its members)."""
        self.stats = ServerStats()
        self._flusher = Flusher(self.stats)
        self.password_delays = FailureDelays(
            base=self.config.password_delay, cap=self.config.password_delay_max
        )
        self._connections: set[_Connection] = set()
        self._per_address: dict[str, int] = {}
        self._handshaking = 0
        self._shutdown = trio.Event()

    @property
    def connections(self) -> int:
        return len(self._connections)

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
                        trio.serve_listeners,
                        self.handle_stream,
                        listeners,
                        handler_nursery=handlers,
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

    def shutdown(self) -> None:
        """Stop accepting, tell every client, and give them ``shutdown_grace`` to read it."""
        self._shutdown.set()

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client over any trio stream (a TCP socket, or a test's memory stream)."""
        if isinstance(stream, trio.SocketStream):
            _enable_keepalive(stream)
        limit = self.config.max_per_address
        if not limit:
            await self._handle_stream(stream)
            return
        address = _peer_host(stream)
        if self._per_address.get(address, 0) >= limit:
            self.stats.refused_per_address += 1
            log.warning("refused a connection from %s: %d already open", address, limit)
            await self._refuse(stream, p.format_error("Too many connections from your address"))
            return
        self._per_address[address] = self._per_address.get(address, 0) + 1
        try:
            await self._handle_stream(stream)
        finally:
            left = self._per_address.pop(address) - 1
            if left:
                self._per_address[address] = left

    async def _refuse(self, stream: trio.abc.Stream, line: str) -> None:
        """Send one line (briefly, the client may not read) and hang up.

        On a TLS port the line goes over TLS (``send_all`` does the handshake),
        so a TLS client can read it too.
        """
        if self.ssl_context is not None:
            stream = trio.SSLStream(stream, self.ssl_context, server_side=True)
        await _say_and_close(stream, line)

    async def _handle_stream(self, stream: trio.abc.Stream) -> None:
        # A client accepted as the server began shutting down: it would miss
        # the goodbye that the others get.
        goodbye = p.format_info(SHUTDOWN_LINE)
        if self._shutdown.is_set():
            await self._refuse(stream, goodbye)
            return
        if len(self._connections) + self._handshaking >= self.config.max_clients:
            self.stats.refused_full += 1
            log.warning("refused a connection: server full (%d)", self.config.max_clients)
            await self._refuse(stream, p.format_error("Server full, try again later"))
            return
        if self.ssl_context is not None:
            secure = await self._handshake(stream, self.ssl_context)
            if secure is None:
                return
            if self._shutdown.is_set():  # it began during the handshake
                await _say_and_close(secure, goodbye)
                return
            stream = secure
        connection = _Connection(self, stream)
        self._connections.add(connection)
        try:
            await connection.run()
        except Exception:
            # One client's bug must never take the server down.
            log.exception("connection %s failed", connection.peer)
        finally:
            self._connections.discard(connection)

    async def _handshake(
        self, stream: trio.abc.Stream, context: ssl.SSLContext
    ) -> trio.SSLStream[trio.abc.Stream] | None:
        """Do the server side of a TLS handshake, within the handshake timeout.

        A failure (a plain-text client, a bad certificate, a timeout) is
        logged and the connection dropped; it never reaches anyone else. A
        client whose first byte cannot start a TLS handshake is told so in
        plain text first, so ``nc`` users learn why.
        """
        secure = trio.SSLStream(stream, context, server_side=True)
        self._handshaking += 1
        try:
            with trio.move_on_after(self.config.tls_handshake_timeout):
                if not await _starts_tls(stream):
                    with trio.move_on_after(1), suppress(trio.BrokenResourceError):
                        await stream.send_all(p.format_error(p.TLS_REQUIRED).encode())
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
        log.info("TLS handshake with %s failed: %s", _peer(stream), reason)
        await trio.aclose_forcefully(stream)
        return None

    def _close_all(self, text: str) -> None:
        data = p.format_info(text).encode()
        for connection in list(self._connections):
            connection.close_with(data)
        self.hub.shutdown()


def format_address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection:
    """One client: its stream, its outbox, and the reader (and writer) that serve it."""

    # Slots: thousands of these live at once (docs/benchmarks.md, memory per client).
    __slots__ = (
        "_bucket",
        "_framer",
        "_nursery",
        "authenticated",
        "member",
        "peer",
        "pending_name",
        "reason",
        "send",
        "server",
        "stream",
    )

    def __init__(self, server: ChatServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.send = Outbox(self, server._flusher, server.config.send_queue, fd)
        self.member: Member | None = None
        self._nursery: trio.Nursery | None = None  # the connection's, once it runs
        self._framer = p.LineFramer(server.config.max_line)
        self._bucket: TokenBucket | None = None
        self.reason = "connection lost"
        self.peer = _peer(stream)
        self.authenticated = False
        self.pending_name: str | None = None

    async def run(self) -> None:
        log.info("connection from %s", self.peer)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                # Two steps rather than one reader coroutine: one frame fewer
                # per idle client.
                if await self._register_in_time():
                    await self._chat()
                # Whatever stopped the reader, the room hears of it now, and
                # what is queued goes out, within the linger time.
                self._leave()
                self.send.flush()
                nursery.cancel_scope.deadline = min(
                    nursery.cancel_scope.deadline,
                    trio.current_time() + self.server.config.linger,
                )
        finally:
            self._leave()
            self.send.stop()  # before the socket (and so its number) is released
            await _close(self.stream)
            log.info("%s closed (%s)", self.peer, self.reason)

    def _leave(self) -> None:
        if self.member is not None:
            self.server.hub.leave(self.member, self.reason)
        self.send.close()

    def close_with(self, data: bytes) -> None:
        """Send a last line and hang up once it is out (see :meth:`Outbox.close`)."""
        self.reason = "server shutdown"
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.send.send_nowait(data)
        self.send.close()

    def _disconnect(self) -> None:
        self.reason = "too slow"
        self.end()

    def _tell(self, line: str | bytes) -> None:
        try:
            self.send.send_nowait(line.encode() if isinstance(line, str) else line)
        except trio.WouldBlock:
            self._disconnect()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _register_in_time(self) -> bool:
        """Welcome the client and read until it is named (True), gone or out of time."""
        config = self.server.config
        if config.rate:
            self._bucket = TokenBucket(config.rate, config.burst, trio.current_time())
        self._tell(self.server.dialect.render(_welcome(self.server.hub)))
        # The registration deadline covers only registration, so a named
        # client carries no timer (nor its cancel scope) for the rest of its life.
        with trio.move_on_after(config.registration_timeout):
            return await self._registration()
        self.reason = "no name given"
        self._tell(
            p.format_error(f"No name given within {config.registration_timeout:g} s, closing")
        )
        return False

    async def _receive(self) -> bool:
        """Feed the framer the client's next bytes; False at EOF or if the stream broke."""
        try:
            data = await self.stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            return False
        if not data:
            return False
        self._framer.receive_data(data)
        return True

    def _flood_delay(self) -> float:
        """Flood control: how long to wait before the next line (nothing is dropped)."""
        if self._bucket is None:
            return 0.0
        delay = self._bucket.take(trio.current_time())
        if delay:
            self.server.stats.flood_delays += 1
        return delay

    def _too_long(self, event: p.LineTooLong) -> None:
        self._tell(p.format_error(f"Line too long (limit {event.limit} bytes); it was discarded"))
        if self.member is None:
            self._tell(p.format_info(p.NAME_QUESTION))

    async def _next_event(self) -> p.Line | None:
        """The client's next line before it is named, paced by flood control; None at EOF."""
        while True:
            event = self._framer.next_event()
            if event is p.NEED_DATA:
                if not await self._receive():
                    return None
                continue
            if delay := self._flood_delay():
                await trio.sleep(delay)
            if isinstance(event, p.LineTooLong):
                self._too_long(event)
                continue
            assert isinstance(event, p.Line)
            return event

    async def _registration(self) -> bool:
        """Read lines until the client is named (True) or gone (False)."""
        config = self.server.config
        while (event := await self._next_event()) is not None:
            if self.send.closed:
                return False  # shutting down: its goodbye is on the way
            if self.pending_name is not None:
                if not await self._check_password(event.text):
                    return False
                text = self.pending_name
                self.pending_name = None
            else:
                text = p.clean_text(event.text)
            if isinstance(p.parse_command(text), p.Quit):
                self.reason = "quit"
                self._tell(p.format_info("Bye!"))
                return False
            name = text.strip()
            if name and config.password is not None and not self.authenticated:
                # Ask before saying anything about the name, so strangers
                # learn nothing (not even who is online).
                self.pending_name = name
                self._tell(p.format_info(p.PASSWORD_PROMPT))
                continue
            if name and self.server.backplane.remote and not await self._claim(name):
                continue
            self._register(name)
            if self.member is not None:
                return True
        return False

    async def _chat(self) -> None:
        """Carry out the named client's lines until it quits, goes, or is evicted.

        Chat lines are collected and handed to the hub together before any
        wait and before any command, so a burst reaches each recipient in one
        write, in the order it was sent.
        """
        framer = self._framer
        bucket = self._bucket
        clean_text, chat_text = p.clean_text, p.chat_text  # the per-line path
        # Yield every so many lines of a burst, so other clients get their
        # turn. Only what a recipient's kernel would not take at once stays in
        # its outbox, so even several clients flooding together do not fill
        # the outbox of a reader that keeps up.
        every = max(1, min(BATCH_LINES, self.server.config.send_queue // 4))
        handled = 0
        says: list[str] = []
        # If this client is evicted (by the hub, while it handles our lines or
        # another client's), its scope is cancelled: the next wait raises,
        # and the hub ignores whatever we hand it meanwhile.
        while True:
            events = framer.events()
            if not events:
                self._say(says)
                if not await self._receive():
                    return
                continue
            for event in events:
                handled += 1
                if handled == every:
                    handled = 0
                    self._say(says)
                    await trio.lowlevel.checkpoint()
                if bucket is not None and (delay := self._flood_delay()):
                    self._say(says)
                    await trio.sleep(delay)
                if not isinstance(event, str):
                    self._say(says)
                    self._too_long(event)
                    continue
                text = clean_text(event)
                chat = chat_text(text)
                if chat is not None:
                    says.append(chat)
                    continue
                self._say(says)  # before anything else this client asked for
                command = p.parse_command(text)
                if command is not None and not await self._command(command):
                    return
            self._say(says)

    async def _command(self, command: p.Command) -> bool:
        """Carry out one command; False if the client quit (or was evicted meanwhile)."""
        member = self.member
        if member is None or self._ended:
            return False
        if isinstance(command, p.History) and self.server.store is not None:
            await self._history(self.server.store, command.count)
        elif isinstance(command, p.Nick) and self.server.backplane.remote:
            await self._nick(command)
        else:
            if isinstance(command, p.Quit):
                self.reason = command.reason or "quit"
            oneroom.handle(self.server.hub, member, command, p.HELP)
        return not isinstance(command, p.Quit)

    def _say(self, says: list[str]) -> None:
        if says:
            member = self.member
            if member is not None and (room := member.room) is not None:
                self.server.hub.say(member, room, says)
            says.clear()

    def _register(self, name: str) -> None:
        if not name:
            return
        hub = self.server.hub
        result = hub.register(name, self.send, self._disconnect, self.server.dialect)
        if isinstance(result, str):
            self.server.backplane.unclaim(name)
            self._tell(p.format_error(result))
            self._tell(p.format_info(p.NAME_QUESTION))
        else:
            self.member = result
            result.hang_up = self.send.close
            hub.join(result, p.LOBBY)

    async def _claim(self, name: str) -> bool:
        """Claim ``name`` across the cluster before the hub sees it; tell the client if not."""
        error = self.server.hub.name_unavailable(name)
        if error is None:
            error = _claim_error(name, await self.server.backplane.claim(name))
        if error is not None:
            self._tell(p.format_error(error))
            self._tell(p.format_info(p.NAME_QUESTION))
            return False
        return True

    async def _nick(self, command: p.Nick) -> None:
        """``/nick`` with a backplane: claim the new name cluster-wide, then rename."""
        member = self.member
        assert member is not None
        name = p.clean_text(command.name)
        error = self.server.hub.name_unavailable(name, member)
        if error is None and p.name_key(name) != member.key:
            error = _claim_error(name, await self.server.backplane.claim(name))
            if error is None and self.member is not member:  # pragma: no cover - evicted meanwhile
                self.server.backplane.unclaim(name)
                return
        if error is not None:
            self._tell(p.format_error(error))
            return
        oneroom.handle(self.server.hub, member, command, p.HELP)
        if member.key != p.name_key(name):
            self.server.backplane.unclaim(name)  # The hub refused it after all.

    async def _check_password(self, given: str) -> bool:
        """Let the client in, or answer ``! Wrong password`` after a growing delay."""
        config = self.server.config
        assert config.password is not None
        address = _peer_host(self.stream)
        if password_matches(given, config.password):
            self.authenticated = True
            self.server.password_delays.succeed(address)
            return True
        self.server.stats.wrong_passwords += 1
        delay = self.server.password_delays.fail(address, trio.current_time())
        log.warning("wrong password from %s (next answer in %g s)", self.peer, delay)
        # The verdict waits, so guessing fast on one connection gains nothing.
        await trio.sleep(delay)
        self.reason = "wrong password"
        self._tell(p.format_error(p.WRONG_PASSWORD))
        return False

    async def _history(self, store: HistoryStore, count: int) -> None:
        """Answer ``/history N`` from the database (the hub answers it from memory otherwise)."""
        member = self.member
        assert member is not None
        assert member.room is not None
        room = member.room.name
        # Never queue more than half an outbox, or the asker becomes a slow consumer.
        count = min(count, self.server.config.send_queue // 2)
        lines = await store.fetch(room, count)
        if self.member is member and member.room is not None:
            self.server.hub.lines_in += 1
            self.server.hub.replay(member, room, lines)

    def end(self) -> None:
        """End the connection now: its last line is out, or it was evicted or broke."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def _ended(self) -> bool:
        return self._nursery is not None and self._nursery.cancel_scope.cancel_called

    def start_writer(self) -> None:
        """Start the task that waits until the kernel takes the outbox's backlog."""
        if self._nursery is None:
            raise trio.BrokenResourceError("the connection is not open")
        try:
            self._nursery.start_soon(self._writer)
        except RuntimeError as exc:  # the nursery is closed: the connection is over
            raise trio.BrokenResourceError from exc

    async def _writer(self) -> None:
        outbox = self.send
        stats = self.server.stats
        try:
            # One write for everything queued since the last one.
            while (data := outbox.take()) is not None:
                stats.bytes_out += len(data)
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            outbox.stop()
            self.end()
            return
        if outbox.closed:
            self.end()  # its last line is out


def _welcome(hub: Hub) -> list[ev.Event]:
    n = hub.online()
    online = "1 user" if n == 1 else f"{n} users"
    notice = hub.notice
    return [
        ev.Notice(f"Welcome to triochat! {online} online. Commands start with /, try /help."),
        *([ev.Notice(notice)] if notice else []),
        ev.Notice(p.NAME_QUESTION),
    ]


def _claim_error(name: str, claim: Claim) -> str | None:
    if claim is Claim.TAKEN:
        return f"Name {name} is taken, choose another"
    if claim is Claim.LINK_DOWN:
        return "Cannot check that name with the rest of the chat right now; try again"
    return None


async def _say_and_close(stream: trio.abc.Stream, line: str) -> None:
    """Send ``line`` within 1 s (the client may not read), then hang up."""
    with trio.move_on_after(1):
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(line.encode())
    await _close(stream)


async def _close(stream: trio.abc.Stream) -> None:
    """Close ``stream`` at once; a TLS one first sends close_notify, in a short time.

    Without close_notify a TLS client cannot tell the server's goodbye from a
    cut connection (``openssl s_client``: "unexpected eof").
    """
    if isinstance(stream, trio.SSLStream):
        # Cleanup: shielded from the connection's cancellation, bounded by its own.
        with (
            trio.CancelScope(shield=True),
            trio.move_on_after(TLS_CLOSE_TIMEOUT),
            suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            await stream.aclose()
    await trio.aclose_forcefully(stream)


async def _starts_tls(stream: trio.abc.Stream) -> bool:
    """Peek at the first byte: a TLS handshake record starts with 0x16."""
    if not isinstance(stream, trio.SocketStream):
        return True
    try:
        first = await stream.socket.recv(1, socket.MSG_PEEK)
    except OSError:
        return True  # let the handshake report it
    return first in (b"", b"\x16")


def _peer_host(stream: trio.abc.Stream) -> str:
    """The peer's IP address, the key for per-address limits ("" if unknown)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            return str(stream.socket.getpeername()[0])
        except OSError:
            return ""
    return ""


def _peer(stream: trio.abc.Stream) -> str:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"
    return repr(stream)
