"""The TCP server: listeners, one task per connection, graceful shutdown.

Each connection's task reads (and runs the hub's rules for each line) while
a writer task in the same per-connection nursery drains that connection's
bounded outbox. Whatever ends the connection, cleanup happens in one place:
the ``finally`` of :meth:`_Connection.run`.
"""

from __future__ import annotations

import logging
import math
import os
import socket
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from typing import Final

import trio

from . import protocol as p
from ._ratelimit import TokenBucket
from .backplane import Backplane, LocalBackplane
from .hub import Hub, Member

log: Final = logging.getLogger("triochat.server")

RECEIVE_SIZE: Final = 65536
SHUTDOWN_LINE: Final = "Server is shutting down. Bye!"


@dataclass(frozen=True, kw_only=True)
class ServerConfig:
    """Everything ``triochat serve`` can be told; each limit has a named option."""

    host: str = "127.0.0.1"
    port: int = 7007
    max_line: int = p.DEFAULT_MAX_LINE
    history: int = 20
    max_clients: int = 10_000
    rate: float = 20.0
    """Lines a second each client may send on average; 0 turns flood control off."""
    burst: int = 40
    """Lines a client may send at once before flood control paces it."""
    registration_timeout: float = 60.0
    send_queue: int = 1024
    """Lines queued for one client before it counts as a slow consumer."""
    linger: float = 5.0
    """Seconds a departing client gets to read its last lines."""
    shutdown_grace: float = 2.0
    """Seconds clients get to read the shutdown notice before they are cut off."""

    def __post_init__(self) -> None:
        if self.send_queue <= self.history + 8:
            raise ValueError("send_queue must exceed history by more than 8 lines")
        for field in ("max_line", "max_clients", "send_queue", "burst"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be at least 1")
        if self.history < 0 or self.rate < 0 or self.registration_timeout <= 0:
            raise ValueError("history and rate must be >= 0, registration_timeout > 0")


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
    """A triochat server: ``await nursery.start(server.serve)``, later :meth:`shutdown`."""

    def __init__(
        self,
        config: ServerConfig | None = None,
        *,
        hub: Hub | None = None,
        backplane: Backplane | None = None,
    ) -> None:
        self.config = config or ServerConfig()
        self.backplane = backplane or (hub.backplane if hub else LocalBackplane())
        self.hub = hub or Hub(history=self.config.history, backplane=self.backplane)
        self._connections: set[_Connection] = set()
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
            await nursery.start(self.backplane.run, self.hub)
            await self._serve_listeners(listeners, task_status=task_status)
            await self.backplane.leave_cluster()
            nursery.cancel_scope.cancel()

    async def _serve_listeners(
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

    def shutdown(self) -> None:
        """Stop accepting, tell every client, and give them ``shutdown_grace`` to read it."""
        self._shutdown.set()

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one client over any trio stream (a TCP socket, or a test's memory stream)."""
        if isinstance(stream, trio.SocketStream):
            _enable_keepalive(stream)
        if len(self._connections) >= self.config.max_clients:
            log.warning("refused a connection: server full (%d)", self.config.max_clients)
            with trio.move_on_after(1):
                await stream.send_all(p.format_error("Server full, try again later").encode())
            await trio.aclose_forcefully(stream)
            return
        connection = _Connection(self, stream)
        self._connections.add(connection)
        try:
            await connection.run()
        except Exception:
            # One client's bug must never take the server down.
            log.exception("connection %s failed", connection.peer)
        finally:
            self._connections.discard(connection)

    def _close_all(self, text: str) -> None:
        data = p.format_info(text).encode()
        for connection in list(self._connections):
            connection.close_with(data)
        self.hub.shutdown()


def format_address(listener: trio.SocketListener) -> str:
    host, port = listener.socket.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Connection:
    """One client: its stream, its outbox, and the reader/writer pair that serve it."""

    def __init__(self, server: ChatServer, stream: trio.abc.Stream) -> None:
        self.server = server
        self.stream = stream
        self.send = _Outbox(server.config.send_queue)
        self.member: Member | None = None
        self.reading = trio.CancelScope()
        self.scope = trio.CancelScope()
        self.reason = "connection lost"
        self.peer = _peer(stream)

    async def run(self) -> None:
        log.info("connection from %s", self.peer)
        try:
            with self.scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer)
                    with self.reading:
                        await self._reader()
                    # Whatever stopped the reader, the room hears of it now and
                    # the writer flushes what is queued and hangs up, within
                    # the linger time.
                    self._leave()
                    nursery.cancel_scope.deadline = min(
                        nursery.cancel_scope.deadline,
                        trio.current_time() + self.server.config.linger,
                    )
        finally:
            self._leave()
            await trio.aclose_forcefully(self.stream)
            log.info("%s closed (%s)", self.peer, self.reason)

    def _leave(self) -> None:
        if self.member is not None:
            self.server.hub.leave(self.member, self.reason)
        self.send.close()

    def close_with(self, data: bytes) -> None:
        """Queue a last line, stop reading, and let the writer flush and hang up."""
        self.reason = "server shutdown"
        self.reading.cancel()
        with suppress(trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError):
            self.send.send_nowait(data)
        self.send.close()

    def _disconnect(self) -> None:
        self.reason = "too slow"
        self.scope.cancel()

    def _tell(self, line: str | bytes) -> None:
        try:
            self.send.send_nowait(line.encode() if isinstance(line, str) else line)
        except trio.WouldBlock:
            self._disconnect()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    async def _reader(self) -> None:
        config = self.server.config
        hub = self.server.hub
        framer = p.LineFramer(config.max_line)
        bucket = (
            TokenBucket(config.rate, config.burst, trio.current_time()) if config.rate else None
        )
        # At most send_queue/64 lines queued per outbox per client between
        # yields: 64 clients flooding at once cannot evict a reader that keeps up.
        yield_every = max(1, config.send_queue // 64)
        for line in hub.welcome():
            self._tell(line)
        with trio.move_on_after(config.registration_timeout) as registration:
            while True:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return
                if not data:
                    return
                framer.receive_data(data)
                handled = 0
                while True:
                    event = framer.next_event()
                    if event is p.NEED_DATA:
                        break
                    # Yield every few lines: the writers drain what those lines
                    # queued, each with one send_all, so one client's burst
                    # neither overflows everyone's outbox nor costs a syscall
                    # per recipient per line.
                    handled += 1
                    if handled % yield_every == 0:
                        await trio.lowlevel.checkpoint()
                    if self.scope.cancel_called:
                        return  # evicted as a slow consumer by an earlier line
                    if bucket is not None:
                        delay = bucket.take(trio.current_time())
                        if delay:
                            await trio.sleep(delay)
                    if isinstance(event, p.LineTooLong):
                        self._tell(
                            p.format_error(
                                f"Line too long (limit {event.limit} bytes); it was discarded"
                            )
                        )
                        if self.member is None:
                            self._tell(p.format_info(p.NAME_QUESTION))
                        continue
                    assert isinstance(event, p.Line)
                    text = p.clean_text(event.text)
                    if self.member is None:
                        if isinstance(p.parse_command(text), p.Quit):
                            self.reason = "quit"
                            self._tell(p.format_info("Bye!"))
                            return
                        name = text.strip()
                        if name and self.server.backplane.remote and not await self._claim(name):
                            continue
                        self._register(name)
                        if self.member is not None:
                            registration.deadline = math.inf
                        continue
                    command = p.parse_command(text)
                    if command is None:
                        continue
                    if isinstance(command, p.Quit):
                        self.reason = command.reason or "quit"
                    if isinstance(command, p.Nick) and self.server.backplane.remote:
                        await self._nick(command)
                        continue
                    hub.handle(self.member, command)
                    if isinstance(command, p.Quit):
                        return
        if registration.cancelled_caught:
            self.reason = "no name given"
            self._tell(
                p.format_error(f"No name given within {config.registration_timeout:g} s, closing")
            )

    def _register(self, name: str) -> None:
        if not name:
            return
        result = self.server.hub.register(name, self.send, self._disconnect)
        if isinstance(result, str):
            self.server.backplane.unclaim(name)
            self._tell(p.format_error(result))
            self._tell(p.format_info(p.NAME_QUESTION))
        else:
            self.member = result
            result.hang_up = self.reading.cancel

    async def _claim(self, name: str) -> bool:
        """Claim ``name`` across the cluster before the hub sees it; tell the client if not."""
        error = self.server.hub.name_unavailable(name)
        if error is None:
            error = await self.server.backplane.claim(name)
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
            error = await self.server.backplane.claim(name)
            if error is None and self.member is not member:  # pragma: no cover - evicted meanwhile
                self.server.backplane.unclaim(name)
                return
        if error is not None:
            self._tell(p.format_error(error))
            return
        self.server.hub.handle(member, command)
        if member.key != p.name_key(name):
            self.server.backplane.unclaim(name)  # The hub refused it after all.

    async def _writer(self) -> None:
        outbox = self.send
        stream = self.stream
        # Only this task writes, and the stream is closed after it ends, so
        # it may write to the socket directly: trio's send_all costs two trips
        # through the scheduler per call, which a broadcast pays per recipient.
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        try:
            # One write for everything queued since the last one.
            while (data := await outbox.take_all()) is not None:
                if fd >= 0:
                    try:
                        sent = os.write(fd, data)
                    except BlockingIOError:
                        sent = 0
                    except OSError as exc:
                        raise trio.BrokenResourceError from exc
                    if sent == len(data):
                        continue
                    data = data[sent:]  # the socket buffer is full: wait in send_all
                await stream.send_all(data)
            if isinstance(stream, trio.abc.HalfCloseableStream):
                await stream.send_eof()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self.scope.cancel()
        finally:
            outbox.stop()


class _Outbox:
    """A connection's bounded queue of encoded lines, drained whole by its writer.

    It behaves like the send end of ``trio.open_memory_channel(capacity)``
    (the hub's :class:`~triochat.hub.Outbox`): ``send_nowait`` raises
    ``WouldBlock`` when full, ``ClosedResourceError`` after :meth:`close` and
    ``BrokenResourceError`` once the writer has stopped. But the writer takes
    everything queued in one call, so a broadcast costs one list append per
    recipient and each writer one join per batch, instead of a channel
    operation on each side for every line.
    """

    __slots__ = ("_broken", "_capacity", "_closed", "_lines", "_waiter")

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._lines: list[bytes] = []  # a list: an empty deque costs 600 bytes
        self._closed = False
        self._broken = False
        self._waiter: trio.lowlevel.Task | None = None

    def send_nowait(self, data: bytes, /) -> None:
        if self._closed:
            raise trio.ClosedResourceError
        if self._broken:
            raise trio.BrokenResourceError
        if len(self._lines) >= self._capacity:
            raise trio.WouldBlock
        self._lines.append(data)
        self._wake()

    def close(self) -> None:
        """No more lines; the writer sends what is queued, then stops."""
        self._closed = True
        self._wake()

    def stop(self) -> None:
        """The writer is gone: later lines are refused with ``BrokenResourceError``."""
        self._broken = True
        self._lines.clear()

    def _wake(self) -> None:
        if self._waiter is not None:
            trio.lowlevel.reschedule(self._waiter)
            self._waiter = None

    async def take_all(self) -> bytes | None:
        """Wait for lines; return them all joined, or None once closed and empty."""
        if not self._lines and not self._closed:
            self._waiter = trio.lowlevel.current_task()

            def abort(_: trio.lowlevel.RaiseCancelT) -> trio.lowlevel.Abort:
                self._waiter = None
                return trio.lowlevel.Abort.SUCCEEDED

            await trio.lowlevel.wait_task_rescheduled(abort)
        else:
            await trio.lowlevel.checkpoint()
        if not self._lines:
            return None
        data = self._lines[0] if len(self._lines) == 1 else b"".join(self._lines)
        self._lines.clear()
        return data


def _peer(stream: trio.abc.Stream) -> str:
    if isinstance(stream, trio.SocketStream):
        try:
            host, port = stream.socket.getpeername()[:2]
        except OSError:
            return "?"
        return f"{host}:{port}"
    return repr(stream)
