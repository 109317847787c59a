"""The IRC door: a second listener on the server's hub, for irssi, WeeChat, HexChat and bots.

:class:`IRCDoor` accepts connections as the line door does, under the same
limits (``--max-clients`` and ``--max-per-address`` count both doors), with the
same TLS context, and hands each to an :class:`IRCConnection`: the thin I/O
driver of its :class:`~triochat.core.irc_session.IRCSession`. It reads, frames
(``protocol/irc/wire.py``), paces with the same flood control, carries out the
session's effects (claim a name, wait out a wrong password, fetch history) and
PINGs an idle client. Outgoing bytes go through the server's outboxes and its
one flusher, so the slow-consumer policy is the line door's.

The door runs beside :meth:`ChatServer.serve <triochat.server.listener.ChatServer.serve>`
(in the same nursery) and uses only the server's interface for doors
(``add_connection``, ``handshake``, ``flusher``, ``shutting_down``, ``wait_shutdown``, the address
limits): its connections are the server's, so the server's shutdown reaches them
too; each gets ``ERROR :Server shutting down``.
"""

from __future__ import annotations

import logging
from contextlib import suppress
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING, Final

import trio

from .. import __version__
from ..core import session as s
from ..core._ratelimit import TokenBucket
from ..core.irc_session import IRCRules, IRCSession
from ..core.session import Door
from ..protocol import line as p
from ..protocol.irc import wire
from ..protocol.irc.render import IRCDialect
from .connection import DoorConnection, close_stream, peer_host, peer_name, read_nowait
from .listener import enable_keepalive, format_address, serve_listeners
from .outbox import Outbox

if TYPE_CHECKING:
    from ..core.hub import Member
    from .listener import ChatServer

log: Final = logging.getLogger("triochat.irc")

BATCH_MESSAGES: Final = 256
"""Most messages of one client's burst handled before other clients get a turn."""
SHUTDOWN_TEXT: Final = "Server shutting down"
TLS_REFUSAL: Final = wire.serialize(
    wire.message("ERROR", "Closing link: this server speaks TLS only: connect with TLS")
)
"""What a client that speaks plain text to a TLS port is told, before it is closed."""
HANDLER_NAME: Final = "triochat.server.irc.IRCDoor.handle_stream"
"""The IRC door's connection tasks' name (one string for all)."""


@dataclass(frozen=True, kw_only=True)
class IRCConfig:
    """The IRC door's own options; the rest (limits, TLS, password) are the server's."""

    port: int = 6667
    host: str | None = None
    """Where to listen; ``None``: the server's ``--host``."""
    name: str = "triochat"
    """The server's name on IRC: the source of numerics, and every user's host."""
    network: str = "triochat"
    motd: tuple[str, ...] = ()
    ping_interval: float = 120.0
    """Seconds of silence before the server PINGs a client; as long again, and it is dropped."""
    chathistory: int = 100
    """The most messages one ``CHATHISTORY`` answer carries."""

    def __post_init__(self) -> None:
        if not self.ping_interval > 0:
            raise ValueError("ping_interval must be > 0")
        if not self.name or any(c in self.name for c in " !@\r\n\0"):
            raise ValueError("the IRC server name must be one word, without ! or @")
        if self.chathistory < 1:
            raise ValueError("chathistory must be at least 1")


@dataclass
class IRCDoor:
    """The IRC listener of ``server``: ``await nursery.start(door.serve)`` beside the server."""

    server: ChatServer
    config: IRCConfig = field(default_factory=IRCConfig)

    def __post_init__(self) -> None:
        config, server = self.config, self.server
        rules = server.config
        self.rules = IRCRules(
            server=config.name,
            network=config.network,
            version=f"triochat-{__version__}",
            motd=config.motd,
            max_rooms=server.hub.max_rooms_per_member,
            chathistory=min(config.chathistory, rules.send_queue // 2),
            session=s.Rules(
                password=rules.password,
                registration_timeout=rules.registration_timeout,
                claim_names=server.backplane.remote,
                store_history=server.store is not None,
                history_limit=min(p.HISTORY_MAX, rules.send_queue // 2),
                one_room=False,
                arrival_rooms=(),
            ),
        )
        self.door: Door[Member] = Door(
            hub=server.hub,
            rules=self.rules.session,
            # Unused: each session registers its member with its own dialect.
            dialect=IRCDialect(config.name),
            delays=server.password_delays,
            clock=trio.current_time,
            accounts=server.accounts,
            moderation=server.hub.moderation,
        )
        """What the door's IRC sessions share."""

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on the door's port until the server shuts down."""
        host = self.config.host if self.config.host is not None else self.server.config.host
        listeners = await trio.open_tcp_listeners(self.config.port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like :meth:`serve`, on listeners the caller opened."""
        server = self.server
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
                acceptors.start_soon(self._ping_quiet)
                for listener in listeners:
                    log.info("irc listening on %s", format_address(listener))
                task_status.started(listeners)
                await server.wait_shutdown()
                acceptors.cancel_scope.cancel()
            # The server tells every connection, this door's too (they are its).
            handlers.cancel_scope.deadline = trio.current_time() + server.config.shutdown_grace

    async def _ping_quiet(self) -> None:
        """PING the clients on plain sockets that were quiet for ``ping_interval``, and drop
        those that did not answer the last PING; one task for all of them.

        A timer per client (a cancel scope around every read) cost each idle
        client about 1.3 KB; this task looks at them every quarter interval, so a
        PING goes out after 1 to 1.25 intervals of silence. TLS and test streams
        keep the timer (:meth:`IRCConnection._receive`).
        """
        interval = self.config.ping_interval
        while True:
            await trio.sleep(interval / 4)
            now = trio.current_time()
            # The server's connections: a set of its own here cost every IRC client
            # its share of one more table (about 60 bytes).
            for connection in self.server.each_connection():
                if (
                    isinstance(connection, IRCConnection)
                    and connection.door is self
                    and connection.send.fd >= 0  # the others keep their own timer
                    and now - connection._heard >= interval
                ):
                    connection.quiet(now)

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one IRC client over any trio stream, and close it."""
        server = self.server
        address: str | None = None
        # The connection runs in this frame, not in one more below it: a
        # coroutine frame costs every idle client about 250 bytes.
        try:
            if isinstance(stream, trio.SocketStream):
                enable_keepalive(stream)
            address = peer_host(stream)
            if not server.admit_address(address):
                limit = server.config.max_per_address
                log.warning("refused an IRC connection from %s: %d already open", address, limit)
                address = None  # not counted
                await self._refuse(stream, "Too many connections from your address")
                return
            connection = await self._admit(stream)
            if connection is None:
                return
            server.stats.irc_connections += 1
            server.add_connection(connection)
            try:
                await connection.run()
            except Exception:
                log.exception("IRC connection %s failed", connection.peer)
            finally:
                server.stats.irc_connections -= 1
                server.remove_connection(connection)
        finally:
            if address is not None:
                server.release_address(address)
            await trio.aclose_forcefully(stream)  # closed already, unless it failed early

    async def _refuse(self, stream: trio.abc.Stream, text: str) -> None:
        if self.server.ssl_context is not None:
            stream = trio.SSLStream(stream, self.server.ssl_context, server_side=True)
        with trio.move_on_after(1), suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(wire.serialize(wire.message("ERROR", text)))
        await close_stream(stream)

    async def _admit(self, stream: trio.abc.Stream) -> IRCConnection | None:
        """The client's connection, once it is let in (and through its TLS handshake);
        ``None`` if it was refused."""
        server = self.server
        if server.shutting_down:
            await self._refuse(stream, SHUTDOWN_TEXT)
            return None
        if server.open_connections >= server.config.max_clients:
            server.stats.refused_full += 1
            log.warning("refused an IRC connection: server full (%d)", server.config.max_clients)
            await self._refuse(stream, "Server full, try again later")
            return None
        if server.ssl_context is not None:
            secure = await server.handshake(stream, refusal=TLS_REFUSAL)
            if secure is None:
                return None
            if server.shutting_down:
                await self._refuse(secure, SHUTDOWN_TEXT)
                return None
            stream = secure
        return IRCConnection(self, stream)


class IRCConnection(DoorConnection):
    """One IRC client: its stream, outbox and session, and the reader (and writer) serving it."""

    __slots__ = (
        "_bucket",
        "_framer",
        "_heard",
        "door",
        "irc",
    )

    def __init__(self, door: IRCDoor, stream: trio.abc.Stream) -> None:
        self.door = door
        self.server = server = door.server
        self.stream = stream
        config = server.config
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.send = Outbox(self, server.flusher, config.send_queue, fd)
        self._nursery: trio.Nursery | None = None
        self._framer = wire.IRCFramer()
        self._bucket: TokenBucket | None = None
        self._heard = trio.current_time()
        """When the client last sent something (the door's PINGs go by it)."""
        self.reason = "connection lost"
        self.peer = peer_name(stream)
        self.irc = IRCSession(
            server.hub,
            door.rules,
            outbox=self.send,
            disconnect=self,  # see DoorConnection.__call__
            address=peer_host(stream)
            if config.password is not None or server.accounts is not None
            else "",
            delays=server.password_delays,
            clock=trio.current_time,
            accounts=server.accounts,
            moderation=server.hub.moderation,
            door=door.door,
        )

    @property
    def member(self) -> Member | None:
        return self.irc.member

    _log = log
    _kind = "IRC "

    def _leave(self) -> None:
        self.irc.connection_lost(self.reason)
        self.irc.outbox.close()  # ERROR first, unless the hub closed it already

    def close_with(self, data: bytes) -> None:
        """The server is shutting down: ``ERROR``, then hang up once it is out."""
        self.reason = "server shutdown"
        self.irc.outbox.farewell = SHUTDOWN_TEXT
        self.irc.outbox.close()

    def _disconnect(self) -> None:
        self.reason = "too slow"
        self.end()

    def _hang_up(self, *reason: str) -> None:
        """The hub sent this member away: its last lines go out, then it ends."""
        if reason:
            self.reason = reason[0]
        self.send.close()

    # --- the session's effects ---------------------------------------------------

    async def _carry_out(self, outputs: list[s.Output]) -> bool:
        """Carry out the session's effects, in turn; False once it is closed."""
        irc = self.irc
        while outputs:
            effect, *rest = outputs
            outputs = rest
            match effect:
                case s.ClaimName(name):
                    outputs += irc.claim_result(await self.server.backplane.claim(name))
                case s.Unclaim(name):
                    self.server.backplane.unclaim(name)
                case s.Wait(seconds):
                    self.server.stats.wrong_passwords += 1
                    log.warning("wrong password from %s (next answer in %g s)", self.peer, seconds)
                    await trio.sleep(seconds)
                    outputs += irc.delay_elapsed()
                case s.FetchHistory(room, count):
                    store = self.server.store
                    assert store is not None
                    outputs += irc.fetched(room, await store.fetch(room, count))
                case s.AccountCall(request):
                    accounts = self.server.accounts
                    assert accounts is not None
                    outputs += irc.account_result(await accounts.perform(request))
                case s.Close(reason):
                    self.reason = reason
        return not irc.closed

    async def _register_in_time(self) -> bool:
        config = self.server.config
        if config.rate:
            self._bucket = TokenBucket(config.rate, config.burst, trio.current_time())
        with trio.move_on_after(config.registration_timeout):
            return await self._registration()
        self.reason = "no name given"
        await self._carry_out(self.irc.deadline_passed())
        return False

    async def _registration(self) -> bool:
        irc = self.irc
        while True:
            events = await self._next_events()
            if events is None or self.send.closed:
                return False
            for i, event in enumerate(events):
                if delay := self._flood_delay():
                    await trio.sleep(delay)
                if not await self._carry_out(irc.receive([event])):
                    return False
                if irc.registered:
                    member = irc.member
                    assert member is not None
                    member.hang_up = self  # see DoorConnection.__call__
                    # What came after the registration in the same read is a chat matter.
                    return await self._handle(events[i + 1 :])

    # --- reading --------------------------------------------------------------------

    def quiet(self, now: float) -> None:
        """The client on a plain socket was quiet for ``ping_interval``: PING it, or, if it
        did not answer the last PING, stop reading as at EOF (its ERROR is still sent)."""
        self._heard = now
        outputs = self.irc.idle()
        if not outputs:
            return  # PINGed; or closed before, and then its socket may be gone already
        # It did not answer: the session closed just now, while its reader still waits.
        for output in outputs:
            match output:
                case s.Unclaim(name):
                    self.server.backplane.unclaim(name)
                case s.Close(reason):
                    self.reason = reason
        trio.lowlevel.notify_closing(self.send.fd)  # the reader's wait ends

    async def _receive(self) -> bool:
        """The next bytes, or a PING when the client is quiet; False once it is gone."""
        if self.send.fd >= 0:
            # The door's _ping_quiet keeps the time: no timer here.
            return self._got(b"" if self.irc.closed else await self._receive_data())
        while True:
            with trio.move_on_after(self.door.config.ping_interval):
                data = await self._receive_data()
                if not data:
                    return False
                self._framer.receive_data(data)
                return True
            if not await self._carry_out(self.irc.idle()):
                return False

    def _got(self, data: bytes | bytearray) -> bool:
        """Read ``data`` from a plain socket; False at its end."""
        if not data:
            return False
        self._heard = trio.current_time()
        self._framer.receive_data(data)
        return True

    async def _next_events(self) -> list[wire.Received] | None:
        while not (events := self._framer.events()):
            if not await self._receive():
                return None
        return events

    def _flood_delay(self) -> float:
        if self._bucket is None:
            return 0.0
        delay = self._bucket.take(trio.current_time())
        if delay:
            self.server.stats.flood_delays += 1
        return delay

    async def _chat(self) -> None:
        """Read and carry out the registered client's messages until it is gone.

        On a plain socket an idle client waits in epoll in this frame itself, not
        in ``_receive_data`` or two coroutines deeper still (``_next_events``,
        ``_receive``): about 670 bytes less per idle client.
        """
        framer = self._framer
        while True:
            if events := framer.events():
                if not await self._handle(events):
                    return
                continue
            del events  # not even the empty list is kept while the client waits
            fd = self.send.fd
            if fd < 0:
                if not await self._receive():
                    return
                continue
            if self.irc.closed:
                return
            # What _receive_data does, here rather than in a coroutine of its own:
            # one frame (240 bytes) fewer for every idle client.
            await trio.lowlevel.checkpoint_if_cancelled()
            data = read_nowait(fd)
            if data is None:
                while data is None:
                    try:
                        await trio.lowlevel.wait_readable(fd)
                    except trio.ClosedResourceError:
                        return
                    data = read_nowait(fd)
            else:
                await trio.lowlevel.cancel_shielded_checkpoint()
            if not self._got(data):
                return
            data = None  # not kept while the client is idle

    async def _handle(self, events: list[wire.Received]) -> bool:
        """Hand ``events`` to the session in runs that flood control lets through."""
        irc = self.irc
        if self._bucket is None:  # no flood control: runs of BATCH_MESSAGES
            for start in range(0, len(events), BATCH_MESSAGES):
                if start:
                    await trio.lowlevel.checkpoint()
                if self._ended or not await self._receive_run(
                    events[start : start + BATCH_MESSAGES]
                ):
                    return False
            return bool(events) or not irc.closed
        run: list[wire.Received] = []
        for event in events:
            if self._ended:
                return False
            delay = self._flood_delay()
            if delay or len(run) >= BATCH_MESSAGES:
                if not await self._receive_run(run):
                    return False
                run = []
                if delay:
                    await trio.sleep(delay)
                else:
                    await trio.lowlevel.checkpoint()
            run.append(event)
        return await self._receive_run(run) if run else not irc.closed

    async def _receive_run(self, run: list[wire.Received]) -> bool:
        """Hand ``run`` to the session, and what waited behind an awaited effect after it."""
        irc = self.irc
        going = await self._carry_out(irc.receive(run))
        while going and irc.pending:
            going = await self._carry_out(irc.resume())
        return going
