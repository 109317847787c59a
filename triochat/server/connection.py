"""One line-door client: the thin I/O driver of its session.

The connection reads, frames (:class:`~triochat.protocol.line.LineFramer`),
feeds the :class:`~triochat.core.session.Session` and carries out what it
asks (claim a name in the cluster, wait out a wrong password's delay, fetch
history from the store, close), and renders the session's events into the
client's outbox. Once the client is named, plain chat lines skip the session:
the reader collects consecutive ones and hands them to the hub in one call
(the hot path, ``docs/design.md``); only commands go through the session.

Whatever ends the connection, cleanup happens in one place: the ``finally`` of
:meth:`Connection.run`.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections.abc import Callable
from contextlib import suppress
from typing import TYPE_CHECKING, ClassVar, Final

import trio

from ..backplane.base import BackplaneError
from ..core import commands as c, session as s
from ..core._ratelimit import TokenBucket
from ..core.events import Dialect, Event, Notice
from ..core.resume import V2Session, token_digest
from ..protocol import line as p, v2
from .outbox import Outbox

if TYPE_CHECKING:
    from ..core.hub import Member
    from .listener import ChatServer

log: Final = logging.getLogger("triochat.server")

RECEIVE_SIZE: Final = 65536
BATCH_LINES: Final = 256
"""Most lines of one client's burst handled before other clients get a turn."""
TLS_CLOSE_TIMEOUT: Final = 0.5
"""Seconds to send a TLS close_notify; only a peer that stopped reading takes this long."""

_NEVER: Final = -math.inf


class DoorConnection:
    """What a connection does the same way on every door: run its reader in a nursery
    of its own, write a backlog the kernel would not take, end, and clean up once.

    A door's connection class gives the reading (``_register_in_time``, ``_chat``),
    how its member leaves (``_leave``) and the attributes annotated here.
    """

    __slots__ = ("_nursery", "peer", "reason", "send", "server", "stream")

    _log: ClassVar[logging.Logger] = log
    _kind: ClassVar[str] = ""
    """How the log names the connection ("IRC " for the IRC door's)."""

    _nursery: trio.Nursery | None
    send: Outbox
    server: ChatServer
    stream: trio.abc.Stream
    peer: str
    reason: str

    async def _register_in_time(self) -> bool:
        raise NotImplementedError

    async def _chat(self) -> None:
        raise NotImplementedError

    def _leave(self) -> None:
        raise NotImplementedError

    def _disconnect(self) -> None:
        raise NotImplementedError

    def _hang_up(self, reason: str) -> None:
        raise NotImplementedError

    def __call__(self, reason: str | None = None) -> None:
        """The hub ends this connection's member: ``connection()`` at once (too slow, or
        resumed elsewhere), ``connection(reason)`` once its last lines are out.

        The connection itself is its member's ``disconnect`` and ``hang_up``: a bound
        method for each, kept by every member, cost 160 bytes (docs/benchmarks.md).
        """
        if reason is None:
            self._disconnect()
        else:
            self._hang_up(reason)

    @property
    def member(self) -> Member | None:
        """The client's member in the hub, once it is named."""
        raise NotImplementedError

    def close_with(self, data: bytes) -> None:
        """The server is shutting down: say goodbye (``data``: the line door's line), then end."""
        raise NotImplementedError

    async def run(self) -> None:
        self._log.info("%sconnection from %s", self._kind, self.peer)
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
            await close_stream(self.stream)
            self._log.info("%s closed (%s)", self.peer, self.reason)

    def end(self) -> None:
        """End the connection now: its last line is out, or it was evicted or broke."""
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    @property
    def _ended(self) -> bool:
        return self._nursery is not None and self._nursery.cancel_scope.cancel_called

    async def _receive_data(self) -> bytes | bytearray:
        """The client's next bytes; ``b""`` at EOF or once the connection broke.

        On a plain socket (the outbox writes it with ``os.write``) this waits in
        epoll itself and reads with ``os.read``, checkpointing as trio's own
        ``receive_some`` does: that call keeps five more coroutine frames and a
        context manager alive for every idle client, about 1.7 KB each
        (docs/benchmarks.md, memory per connection).
        """
        fd = self.send.fd
        if fd < 0:
            try:
                return await self.stream.receive_some(RECEIVE_SIZE)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return b""
        await trio.lowlevel.checkpoint_if_cancelled()
        data = read_nowait(fd)
        if data is not None:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return data
        while data is None:
            try:
                await trio.lowlevel.wait_readable(fd)
            except trio.ClosedResourceError:
                return b""
            data = read_nowait(fd)
        return data

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
        try:
            await outbox.write_backlog(self.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            outbox.stop()
            self.end()
            return
        if outbox.closed:
            self.end()  # its last line is out


class Connection(DoorConnection):
    """One client: its stream, outbox and session, and the reader (and writer) serving it."""

    # Slots: thousands of these live at once (docs/benchmarks.md, memory per client).
    __slots__ = (
        "_bucket",
        "_framer",
        "_opening",
        "_paced_until",
        "_parse",
        "dialect",
        "session",
    )

    def __init__(self, server: ChatServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        config = server.config
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.send = Outbox(self, server._flusher, config.send_queue, fd)
        self._nursery: trio.Nursery | None = None  # the connection's, once it runs
        self._framer = p.LineFramer(config.max_line)
        self._bucket: TokenBucket | None = None
        self._paced_until = _NEVER  # until then, flood control need not say so again
        self.reason = "connection lost"
        self.peer = peer_name(stream)
        self.dialect: Dialect = server.dialect
        """How this client's lines are rendered: v1, or v2 once it opted in."""
        self._parse: Callable[[str], c.Command | v2.Ack | None] = p.parse_command
        self._opening = True  # no line read yet: the first may opt into v2
        self.session: s.Session[Member] = s.Session(
            server.door,
            outbox=self.send,
            disconnect=self,  # see __call__
            # Only the passwords' failure delays (and bans) are kept per address.
            address=peer_host(stream)
            if config.password is not None or server.accounts is not None
            else "",
        )

    @property
    def member(self) -> Member | None:
        """The client's member in the hub, once it is named."""
        return self.session.member

    def _leave(self) -> None:
        self.session.close(self.reason)
        self.send.close()

    def close_with(self, data: bytes) -> None:
        """Send a last line and hang up once it is out (see :meth:`Outbox.close`)."""
        self.reason = "server shutdown"
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.send.send_nowait(data)
        self.send.close()

    def _disconnect(self) -> None:
        session = self.session
        handed_over = isinstance(session, V2Session) and session.handed_over
        self.reason = "resumed on another connection" if handed_over else "too slow"
        self.end()

    def _hang_up(self, reason: str) -> None:
        """The hub sent this member away (``reason``): its last lines go out, then it ends."""
        self.reason = reason
        self.send.close()

    def _tell(self, data: bytes) -> None:
        try:
            self.send.send_nowait(data)
        except trio.WouldBlock:
            self._disconnect()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    # --- the session's inputs and effects ---------------------------------------

    async def _carry_out(self, outputs: list[s.Output]) -> bool:
        """Send the session's events and carry out its effects, in order; False once it is closed.

        An async effect's outcome is the session's next input, whose outputs
        are carried out in turn.
        """
        session = self.session
        events: list[Event] = []
        for output in outputs:
            if not isinstance(output, s.EFFECTS):
                events.append(output)
                continue
            if events:
                self._tell(self.dialect.render(events))
                events = []
            match output:
                case s.ClaimName(name):
                    claim = await self.server.backplane.claim(name)
                    await self._carry_out(session.claim_result(claim))
                case s.Unclaim(name):
                    self.server.backplane.unclaim(name)
                case s.Wait(seconds, what):
                    if what == "password":
                        self.server.stats.wrong_passwords += 1
                    log.warning("wrong %s from %s (next answer in %g s)", what, self.peer, seconds)
                    await trio.sleep(seconds)
                    await self._carry_out(session.delay_elapsed())
                case s.TakeOver(token, positions):
                    assert isinstance(session, V2Session)
                    try:
                        handover = await self.server.backplane.take_over(
                            token_digest(token), positions, self.dialect
                        )
                    except BackplaneError:
                        await self._carry_out(session.cluster_unreachable())
                    else:
                        await self._carry_out(session.taken_over(handover))
                case s.FetchHistory(room, count):
                    store = self.server.store
                    assert store is not None
                    await self._carry_out(session.fetched(room, await store.fetch(room, count)))
                case s.AccountCall(request):
                    accounts = self.server.accounts
                    assert accounts is not None
                    outcome = await accounts.perform(request)
                    await self._carry_out(session.account_result(outcome))
                case s.Close(reason):
                    self.reason = reason
        if events:
            self._tell(self.dialect.render(events))
        return session.state is not s.State.CLOSED

    async def _register_in_time(self) -> bool:
        """Welcome the client and read until it is named (True), gone or out of time."""
        config = self.server.config
        if config.rate:
            self._bucket = TokenBucket(config.rate, config.burst, trio.current_time())
        if not await self._carry_out(self.session.start()):
            return False  # refused at the door (a server-wide ban)
        # The registration deadline covers only registration, so a named
        # client carries no timer (nor its cancel scope) for the rest of its life.
        with trio.move_on_after(config.registration_timeout):
            return await self._registration()
        await self._carry_out(self.session.deadline_passed())
        return False

    async def _registration(self) -> bool:
        """Read lines until the client is named (True) or gone (False)."""
        session = self.session
        while (event := await self._next_event()) is not None:
            if self.send.closed:
                return False  # shutting down: its goodbye is on the way
            opening, self._opening = self._opening, False
            if isinstance(event, p.LineTooLong):
                outputs = session.line_too_long(event.limit)
            elif opening and event.text.strip() == v2.HELLO and self.server.door_v2 is not None:
                session = self._speak_v2()
                outputs = session.hello()
            else:
                outputs = session.receive_line(event.text)
            if not await self._carry_out(outputs):
                return False
            if session.member is not None:
                session.member.hang_up = self  # see __call__
                return True
        return False

    def _speak_v2(self) -> V2Session:
        """The client opted into protocol v2: a v2 session from now on."""
        server = self.server
        assert server.door_v2 is not None
        session = V2Session(
            server.door_v2,
            server.hub,
            server.tokens,
            outbox=self.send,
            disconnect=self,  # see __call__
            # Bad tokens are delayed per address, as wrong passwords are.
            address=self.session.address or peer_host(self.stream),
            resume_max=server.config.resume_max,
            attempts=server.config.resume_attempts,
        )
        self.session = session
        self.dialect = server.door_v2.dialect
        self._parse = v2.parse_command
        return session

    # --- reading ----------------------------------------------------------------

    async def _receive(self) -> bool:
        """Feed the framer the client's next bytes; False at EOF or if the stream broke."""
        data = await self._receive_data()
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

    def _pace(self, delay: float) -> None:
        """Flood control holds the next line back ``delay`` s: say so, once per burst.

        A burst is over once the bucket could have filled up again since the
        last held-back line; only then is the client told a second time.
        """
        bucket = self._bucket
        assert bucket is not None
        now = trio.current_time()
        if now >= self._paced_until:
            self._tell(self.dialect.render([Notice(s.pacing_text(bucket.rate))]))
        self._paced_until = now + delay + bucket.burst / bucket.rate

    async def _next_event(self) -> p.Line | p.LineTooLong | None:
        """The client's next line before it is named, paced by flood control; None at EOF."""
        while True:
            event = self._framer.next_event()
            if event is p.NEED_DATA:
                if not await self._receive():
                    return None
                continue
            if delay := self._flood_delay():
                self._pace(delay)
                await trio.sleep(delay)
            assert isinstance(event, p.Line | p.LineTooLong)
            return event

    async def _chat(self) -> None:
        """Carry out the named client's lines until it quits, goes, or is evicted.

        The lines of each read are handled by :meth:`_lines`, which returns
        before the next wait: what they left (the last line, the burst's list)
        and the locals they need are not kept while the client is idle, and
        this frame, the one an idle client waits in, stays small (about 250
        bytes per idle client in all).
        """
        framer = self._framer
        fd = self.send.fd
        handled = 0
        while True:
            lines = await self._lines(handled)
            if lines is None:
                return
            handled = lines
            # What _receive_data does, here rather than in a coroutine of its
            # own: one frame (224 bytes) fewer for every idle client.
            data: bytes | bytearray | None
            if fd < 0:
                data = await self._receive_data()
            else:
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
            if not data:
                return
            framer.receive_data(data)
            data = None  # not kept while the client is idle: a read can be 64 KiB

    async def _lines(self, handled: int) -> int | None:
        """Carry out the lines read so far; how many since the last yield, or ``None``
        once the client quit.

        Chat lines are collected and handed to the hub together before any
        wait and before any command, so a burst reaches each recipient in one
        write, in the order it was sent.
        """
        bucket = self._bucket
        clean_text, chat_text = p.clean_text, p.chat_text  # the per-line path
        # Yield every so many lines of a burst, so other clients get their
        # turn. Only what a recipient's kernel would not take at once stays in
        # its outbox, so even several clients flooding together do not fill
        # the outbox of a reader that keeps up.
        every = max(1, min(BATCH_LINES, self.server.config.send_queue // 4))
        says: list[str] = []
        # If this client is evicted (by the hub, while it handles our lines or
        # another client's), its scope is cancelled: the next wait raises,
        # and the hub ignores whatever we hand it meanwhile.
        for event in self._framer.events():
            handled += 1
            if handled == every:
                handled = 0
                self._say(says)
                await trio.lowlevel.checkpoint()
            if bucket is not None and (delay := self._flood_delay()):
                self._say(says)
                self._pace(delay)
                await trio.sleep(delay)
            if not isinstance(event, str):
                self._say(says)
                await self._carry_out(self.session.line_too_long(event.limit))
                continue
            text = clean_text(event)
            chat = chat_text(text)
            if chat is not None:
                says.append(chat)
                continue
            self._say(says)  # before anything else this client asked for
            command = self._parse(text)
            if command is not None and not await self._command(command):
                return None
        self._say(says)
        return handled

    async def _command(self, command: c.Command | v2.Ack) -> bool:
        """Carry out one command; False if the client quit (or was evicted meanwhile)."""
        if self._ended:
            return False
        session = self.session
        if isinstance(session, V2Session):
            return await self._carry_out(session.command(command))
        assert not isinstance(command, v2.Ack)
        return await self._carry_out(session.command(command))

    def _say(self, says: list[str]) -> None:
        if says:
            session = self.session
            member, room = session.member, session.room
            if member is not None and room is not None:
                self.server.hub.say(member, room, says)
            says.clear()


def read_nowait(fd: int) -> bytes | None:
    """What the socket ``fd`` holds (``b""``: EOF or broken), or ``None`` if nothing yet."""
    try:
        return os.read(fd, RECEIVE_SIZE)
    except BlockingIOError:
        return None
    except OSError:  # reset by the peer, or the like
        return b""


async def close_stream(stream: trio.abc.Stream) -> None:
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


def peer_host(stream: trio.abc.Stream) -> str:
    """The peer's IP address, the key for per-address limits ("" if unknown).

    Interned: the connections from one address share one string (58 bytes each
    otherwise, kept by every IRC connection's frame).
    """
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            return sys.intern(str(stream.socket.getpeername()[0]))
        except OSError:
            return ""
    return ""


def peer_name(stream: trio.abc.Stream) -> str:
    """``host:port`` of the peer, for the log."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"
    return repr(stream)
