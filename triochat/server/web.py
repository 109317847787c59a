"""The web door: the chat page and its WebSocket endpoint, on one port, on the same hub.

HTTP is parsed by h11 and WebSocket frames by wsproto (both sans-IO, as our own
protocols are); this module only moves bytes and carries out commands. A web
member's outbox is the line door's :class:`~triochat.server.outbox.Outbox`
(bounded, written by a flusher once per scheduler round), and what goes into
it is already framed: :class:`~triochat.protocol.web.WebDialect` renders a
burst as finished WebSocket frames once for every web member, so fan-out to
a browser costs what it costs to an ``nc`` user (``docs/design.md``).

Each connection is one task in the door's handler nursery: it serves HTTP
requests (``GET /`` and the page's files) until one asks to upgrade to a
WebSocket at ``/ws``; then it reads messages and drives the member's
:class:`~triochat.core.session.Session` (the line door's, with multi-room
rules). One task of the door (:meth:`WebDoor.keep_time`) pings every
WebSocket and keeps its registration deadline, so an idle one is its reader's
task alone (docs/benchmarks.md, the web door's idle connection).
"""

from __future__ import annotations

import ipaddress
import logging
import math
import mimetypes
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from functools import partial
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

import h11
import trio
from wsproto.connection import Connection as WsConnection, ConnectionState, ConnectionType
from wsproto.events import (
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    TextMessage,
)
from wsproto.utilities import generate_accept_token

from ..backplane.base import BackplaneError
from ..core import commands as c, events as ev, session as s
from ..core._ratelimit import TokenBucket
from ..core.resume import BAD_TOKEN, CANNOT_RESUME, TOO_MANY, ResumableSession, token_digest
from ..protocol import line as p, v2, web as w
from .connection import read_nowait
from .outbox import Flusher, Outbox

if TYPE_CHECKING:
    from ..core.hub import Member
    from .listener import ChatServer

log: Final = logging.getLogger("triochat.web")

RECEIVE_SIZE: Final = 65536
LINGER: Final = 1.0
"""Seconds a closing connection waits for its last frames to go and the peer's close."""
WS_PATH: Final = "/ws"
CSP: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
"""The page's Content-Security-Policy: its own files only, no inline script, no framing."""


@dataclass(frozen=True, kw_only=True)
class WebConfig:
    """The web door's own settings; the chat's limits are the server's (:class:`ServerConfig`)."""

    host: str | None = None
    """The address to listen on; ``None``: the server's (``--host``)."""
    port: int = 8080
    origins: tuple[str, ...] = ()
    """Page origins allowed to open the WebSocket; empty: the page's own origin only."""
    max_message: int = w.DEFAULT_MAX_MESSAGE
    """Most bytes in one client message; past it the connection closes with 1009."""
    max_request: int = 16384
    """Most bytes in an HTTP request's head."""
    request_timeout: float = 10.0
    """Seconds a connection may take to send an HTTP request (and stay idle between them)."""
    ping_interval: float = 20.0
    """Seconds between the server's pings."""
    ping_timeout: float = 20.0
    """Seconds a client has to answer a ping before it is closed (4003)."""

    def __post_init__(self) -> None:
        if self.max_message < 1024 or self.max_request < 1024:
            raise ValueError("max_message and max_request must be at least 1024")
        if min(self.request_timeout, self.ping_interval, self.ping_timeout) <= 0:
            raise ValueError("request_timeout, ping_interval and ping_timeout must be > 0")
        for origin in self.origins:
            if "://" not in origin or origin.endswith("/"):
                raise ValueError(f"an origin is scheme://host[:port], not {origin!r}")


def _load_page() -> dict[str, tuple[bytes, str]]:
    """The page's files, read once: path -> (body, content type)."""
    static = resources.files("triochat.web") / "static"
    files: dict[str, tuple[bytes, str]] = {}
    for entry in static.iterdir():
        if entry.is_file() and not entry.name.startswith("."):
            kind = mimetypes.guess_type(entry.name)[0] or "application/octet-stream"
            if kind.startswith("text/") or kind.endswith(("javascript", "json", "svg+xml")):
                kind += "; charset=utf-8"
            files["/" + entry.name] = (entry.read_bytes(), kind)
    files["/"] = files["/index.html"]
    return files


class WebDoor:
    """The web door of a :class:`ChatServer`: ``await nursery.start(door.serve)``.

    It shares the server's hub, limits, password and TLS context; its WebSockets
    count with the other doors' connections against ``--max-clients`` and
    ``--max-per-address``.
    """

    def __init__(self, server: ChatServer, config: WebConfig | None = None) -> None:
        self.server = server
        self.config = config or WebConfig()
        self.dialect = w.WebDialect()
        """How the web door renders the hub's events (one for all its members)."""
        self.flusher = Flusher(server.stats)
        self.sessions: s.Door[Member] = s.Door(
            hub=server.hub,
            rules=s.Rules(
                password=server.config.password,
                registration_timeout=server.config.registration_timeout,
                claim_names=server.backplane.remote,
                store_history=server.store is not None,
                # Never more than half an outbox, or the asker becomes a slow consumer.
                history_limit=min(p.HISTORY_MAX, server.config.send_queue // 2),
                one_room=False,
                arrival_rooms=(),  # the page names them in its register
            ),
            dialect=self.dialect,
            delays=server.password_delays,
            clock=trio.current_time,
            accounts=server.accounts,
            moderation=server.hub.moderation,
        )
        """What the web door's sessions share: the same rules as the line door's, multi-room."""
        self.files = _load_page()
        self._connections: set[_WebSocket] = set()
        self._http_open = 0
        self._shutdown = trio.Event()
        # The door's timers, for all its WebSockets (see keep_time): each queue holds
        # (when, socket) in the order of when, as every entry is now plus one constant.
        self._registering: _Timers = deque()
        self._pinging: _Timers = deque()
        self._answering: _Timers = deque()
        self._alarm: trio.CancelScope | None = None
        # The doors share one --max-clients and one --max-per-address.
        server.add_door(self.__len__)

    @property
    def connections(self) -> int:
        """Open WebSocket connections."""
        return len(self._connections)

    def __len__(self) -> int:
        return len(self._connections)

    def shutdown(self) -> None:
        """Stop accepting, tell every page (1001), give them ``shutdown_grace`` to read it."""
        self._shutdown.set()

    async def serve(
        self,
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on the configured port, serve until :meth:`shutdown`, then return."""
        host = self.config.host or self.server.config.host
        listeners = await trio.open_tcp_listeners(self.config.port, host=host)
        await self.serve_listeners(listeners, task_status=task_status)

    async def serve_listeners(
        self,
        listeners: list[trio.SocketListener],
        *,
        task_status: trio.TaskStatus[list[trio.SocketListener]] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Like :meth:`serve`, on listeners the caller opened."""
        async with trio.open_nursery() as flushing:
            flushing.start_soon(self.flusher.run)
            flushing.start_soon(self.keep_time)
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
                    task_status.started(listeners)
                    await self._shutdown.wait()
                    acceptors.cancel_scope.cancel()
                for connection in list(self._connections):
                    connection.close(w.CLOSE_GOING_AWAY, "Server is shutting down. Bye!")
                handlers.cancel_scope.deadline = (
                    trio.current_time() + self.server.config.shutdown_grace
                )
            flushing.cancel_scope.cancel()

    async def keep_time(self) -> None:
        """Run every WebSocket's timers, in this one task: the registration deadline,
        the pings, and the time a ping has to be answered in.

        A sleeping task per connection for each of these cost every idle
        connection about 5 KB (docs/benchmarks.md); here each waiting timer is
        an entry in a queue. The times are exactly those that per-connection
        timers would keep: this task sleeps until the earliest entry is due
        (a new entry that is due sooner moves its alarm forward).
        :meth:`serve_listeners` runs it; a caller of :meth:`handle_stream`
        runs it beside.
        """
        queues: tuple[tuple[_Timers, Callable[[_WebSocket, float], None]], ...] = (
            (self._registering, _WebSocket.deadline_passed),
            (self._pinging, _WebSocket.ping),
            (self._answering, _WebSocket.unanswered),
        )
        while True:
            now = trio.current_time()
            for queue, due in queues:
                while queue and queue[0][0] <= now:
                    when, socket = queue.popleft()
                    try:
                        due(socket, when)
                    except Exception:
                        # One connection's bug must not stop every connection's timers.
                        log.exception("web %s: a timer failed", socket.address)
            soonest = min((queue[0][0] for queue, _ in queues if queue), default=math.inf)
            with trio.CancelScope(deadline=soonest) as alarm:
                self._alarm = alarm
                await trio.sleep_forever()
            self._alarm = None

    def _schedule(self, queue: _Timers, when: float, socket: _WebSocket) -> None:
        """Call ``socket``'s timer of ``queue`` at ``when`` (now plus that queue's constant)."""
        queue.append((when, socket))
        alarm = self._alarm
        if alarm is not None and when < alarm.deadline:
            alarm.deadline = when

    async def handle_stream(self, stream: trio.abc.Stream) -> None:
        """Serve one HTTP connection (maybe upgraded to a WebSocket); never raises."""
        address = _peer_host(stream)
        # Connections still speaking HTTP are bounded too (WebSockets in refusal()).
        if self._http_open >= self.server.config.max_clients:
            self.server.stats.refused_full += 1
            await trio.aclose_forcefully(stream)
            return
        self._http_open += 1
        socket: _WebSocket | None = None
        try:
            try:
                if self.server.ssl_context is not None:
                    secure = await self._handshake(stream, self.server.ssl_context)
                    if secure is None:
                        return
                    stream = secure
                # The HTTP side (h11's state, the request) is gone once this returns:
                # an open WebSocket keeps none of it.
                socket = await _Http(self, stream, address).run()
            finally:
                self._http_open -= 1
            if socket is None:
                return
            # Counted against --max-per-address by refusal(); run here, not in a
            # coroutine of its own: a frame fewer for every idle WebSocket.
            self._connections.add(socket)
            try:
                await socket.run()
            finally:
                self._connections.discard(socket)
                self.server.release_address(address)
        except Exception:
            # One client's bug must never take the server down.
            log.exception("web connection from %s failed", address)
        finally:
            await trio.aclose_forcefully(stream)

    def refusal(self, address: str) -> str | None:
        """Why a new WebSocket from ``address`` is refused (a limit), or ``None``: then it is
        counted against ``--max-per-address``, and :meth:`handle_stream` gives the count back."""
        config = self.server.config
        if self._shutdown.is_set():
            return "Server is shutting down. Bye!"
        if self.server.open_connections >= config.max_clients:
            self.server.stats.refused_full += 1
            return "Server full, try again later"
        if not self.server.admit_address(address):
            return "Too many connections from your address"
        return None

    async def _handshake(
        self, stream: trio.abc.Stream, context: ssl.SSLContext
    ) -> trio.SSLStream[trio.abc.Stream] | None:
        secure = trio.SSLStream(stream, context, server_side=True)
        with trio.move_on_after(self.server.config.tls_handshake_timeout):
            try:
                await secure.do_handshake()
            except trio.BrokenResourceError as exc:
                log.info("TLS handshake failed: %s", exc.__cause__ or exc)
                self.server.stats.tls_handshake_failures += 1
                return None
            return secure
        self.server.stats.tls_handshake_failures += 1
        return None


class _Http:
    """One connection's HTTP requests, until one upgrades to a WebSocket."""

    def __init__(self, door: WebDoor, stream: trio.abc.Stream, address: str) -> None:
        self.door = door
        self.stream = stream
        self.address = address
        self.http = h11.Connection(h11.SERVER, max_incomplete_event_size=door.config.max_request)
        self.socket: _WebSocket | None = None

    async def run(self) -> _WebSocket | None:
        """Answer requests until the connection ends, or one upgrades to a WebSocket: then
        the socket to run, counted against ``--max-per-address`` (the caller gives it back)."""
        while True:
            request = None  # a request not complete in time: hang up
            with trio.move_on_after(self.door.config.request_timeout):
                request = await self._request()
            if request is None:
                return None
            if not await self._answer(request):
                return self.socket
            if self.http.our_state is not h11.DONE or self.http.their_state is not h11.DONE:
                return None
            self.http.start_next_cycle()

    async def _request(self) -> h11.Request | None:
        """The next request's head (its body, if any, is read and dropped); None to hang up."""
        request: h11.Request | None = None
        while True:
            try:
                event = self.http.next_event()
            except h11.RemoteProtocolError as exc:
                await self._send_error(exc.error_status_hint, str(exc))
                return None
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(RECEIVE_SIZE)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    return None
                self.http.receive_data(bytes(data))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.EndOfMessage) or event is h11.PAUSED:
                return request
            elif isinstance(event, h11.ConnectionClosed):
                return None

    async def _answer(self, request: h11.Request) -> bool:
        """Answer one request; False once the connection is done with HTTP."""
        headers = _headers(request.headers)
        path = request.target.decode("ascii", "replace").partition("?")[0]
        if path == WS_PATH and headers.get("upgrade", "").lower() == "websocket":
            await self._upgrade(headers)
            return False
        if request.method not in (b"GET", b"HEAD"):
            await self._send(405, b"Only GET here\n", "text/plain", [("Allow", "GET, HEAD")])
            return True
        found = self.door.files.get(path)
        if found is None:
            await self._send(404, b"Not found\n", "text/plain")
            return True
        body, kind = found
        await self._send(200, body, kind, head=request.method == b"HEAD")
        return True

    async def _upgrade(self, headers: Mapping[str, str]) -> None:
        key = headers.get("sec-websocket-key")
        if key is None or headers.get("sec-websocket-version") != "13":
            await self._send_error(426, "A WebSocket version 13 handshake is needed")
            return
        origin = headers.get("origin")
        if origin is not None and not self._origin_allowed(origin, headers.get("host", "")):
            log.warning("refused a WebSocket from %s: origin %s", self.address, origin)
            await self._send_error(403, f"Origin {origin} may not connect here")
            return
        refusal = self.door.refusal(self.address)  # None: counted for its address
        counted = refusal is None
        try:
            response = h11.InformationalResponse(
                status_code=101,
                reason=b"Switching Protocols",
                headers=[
                    ("Upgrade", "websocket"),
                    ("Connection", "Upgrade"),
                    ("Sec-WebSocket-Accept", generate_accept_token(key.encode()).decode()),
                ],
            )
            if not await self._write(self.http.send(response)):
                return
            trailing, _ = self.http.trailing_data
            socket = _WebSocket(self.door, self.stream, self.address, bytes(trailing))
            if refusal is not None:
                # A refused browser only sees a close code if the upgrade succeeded.
                code = w.CLOSE_GOING_AWAY if "shutting down" in refusal else w.CLOSE_TRY_LATER
                await socket.refuse(code, refusal)
                return
            counted = False  # the door gives the count back when the socket ends
            self.socket = socket
        finally:
            if counted:
                self.door.server.release_address(self.address)

    def _origin_allowed(self, origin: str, host: str) -> bool:
        allowed = self.door.config.origins
        if allowed:
            return origin.lower() in (o.lower() for o in allowed)
        # A page on another site whose name was made to point at 127.0.0.1
        # (DNS rebinding) has its own name as Host and Origin: a connection
        # that came in on a loopback address must name it as one.
        if _is_loopback(_local_host(self.stream)) and not _is_loopback(_host_name(host)):
            return False
        # The page's own origin, however the browser named the host.
        scheme = "https" if self.door.server.ssl_context is not None else "http"
        return bool(host) and origin.lower() == f"{scheme}://{host}".lower()

    async def _send(
        self,
        status: int,
        body: bytes,
        kind: str,
        extra: list[tuple[str, str]] | None = None,
        *,
        head: bool = False,
    ) -> bool:
        headers = [
            ("Content-Type", kind),
            ("Content-Length", str(len(body))),
            ("Content-Security-Policy", CSP),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "no-referrer"),
            ("Cache-Control", "no-cache"),
            *(extra or []),
        ]
        try:
            data = self.http.send(h11.Response(status_code=status, headers=headers))
            data += b"" if head else (self.http.send(h11.Data(data=body)) or b"")
            data += self.http.send(h11.EndOfMessage()) or b""
        except h11.LocalProtocolError:
            return False
        return await self._write(data)

    async def _send_error(self, status: int, text: str) -> None:
        if self.http.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            await self._send(status, f"{text}\n".encode(), "text/plain", [("Connection", "close")])

    async def _write(self, data: bytes | None) -> bool:
        with trio.move_on_after(self.door.config.request_timeout):
            try:
                await self.stream.send_all(data or b"")
                return True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return False
        return False


class _WsConnection(WsConnection):
    """wsproto's server side of a WebSocket, without a queue of its own for made-up events.

    wsproto keeps a deque (760 bytes, empty) for the one event it makes up
    itself: the close that ``receive_data(None)`` (a lost connection) reports.
    The door never passes ``None``, so every connection shares one empty
    deque instead (``maxlen=0``: nothing can be put in it).
    """

    def __init__(self) -> None:
        super().__init__(ConnectionType.SERVER)
        if isinstance(getattr(self, "_events", None), deque) and not self._events:
            self._events = _NO_EVENTS

    def receive_data(self, data: bytes | None) -> None:
        if data is None:  # pragma: no cover (the door never loses a connection this way)
            raise ValueError("the door reads EOF itself")
        super().receive_data(data)


_NO_EVENTS: Final[deque[Event]] = deque(maxlen=0)


class _WebSocket:
    """One WebSocket member: its wsproto state, its outbox, its reader."""

    # Slots: thousands of these live at once (docs/benchmarks.md, memory per client).
    __slots__ = (
        "_broken",
        "_bucket",
        "_closing",
        "_flushed",
        "_message_size",
        "_nursery",
        "_out",
        "_parts",
        "_ping_due",
        "_pinged",
        "_reading",
        "_says",
        "_says_room",
        "_trailing",
        "address",
        "door",
        "hub",
        "reason",
        "send",
        "session",
        "stream",
        "ws",
    )

    def __init__(
        self, door: WebDoor, stream: trio.abc.Stream, address: str, trailing: bytes
    ) -> None:
        self.door = door
        self.hub = door.server.hub
        self.stream = stream
        self.address = address
        self.ws = _WsConnection()
        self._trailing = trailing
        fd = stream.socket.fileno() if isinstance(stream, trio.SocketStream) else -1
        self.send = Outbox(self, door.flusher, door.server.config.send_queue, fd)
        config = door.server.config
        self.session = ResumableSession(
            door.sessions,
            self.hub,
            door.server.tokens,
            outbox=self.send,
            disconnect=self,  # see __call__
            address=address,
            resume_max=config.resume_max,
            attempts=config.resume_attempts,
        )
        self.reason = "connection lost"
        self._nursery: trio.Nursery | None = None
        self._closing = False
        self._broken = False
        self._reading = True
        self._out = False
        """The outbox's last bytes are out (it was closed)."""
        self._flushed: trio.Event | None = None
        """What the reader's end waits on for ``_out``, made only then."""
        self._ping_due = math.inf
        """When the next ping goes, or, once it went (``_pinged``), when it must be answered;
        ``inf``: no more pings."""
        self._pinged = False
        self._bucket: TokenBucket | None = None
        self._says: list[str] | None = None
        self._says_room: str | None = None
        self._parts: list[str] | None = None
        """The frames so far of a message that came in several."""
        self._message_size = 0

    @property
    def member(self) -> Member | None:
        return self.session.member

    # --- the Outbox's owner -------------------------------------------------------

    def start_writer(self) -> None:
        if self._nursery is None:
            raise trio.BrokenResourceError("the connection is not open")
        try:
            self._nursery.start_soon(self._writer)
        except RuntimeError as exc:
            raise trio.BrokenResourceError from exc

    def end(self) -> None:
        """The outbox's last bytes are out: hang up, once the peer answered a close frame."""
        self._out = True
        if self._flushed is not None:
            self._flushed.set()
        if self._nursery is None:
            return
        scope = self._nursery.cancel_scope
        if self._closing and self._reading and not self._broken:
            # Give the peer a moment to answer the close frame, so it reads it
            # before the socket goes (a reset could discard it).
            scope.deadline = min(scope.deadline, trio.current_time() + LINGER)
        else:
            scope.cancel()

    def _hang_up_now(self) -> None:
        self._broken = True
        self.send.stop()
        if self._nursery is not None:
            self._nursery.cancel_scope.cancel()

    async def _writer(self) -> None:
        outbox = self.send
        try:
            await outbox.write_backlog(self.stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            self._hang_up_now()
            return
        if outbox.closed:
            self.end()

    # --- life -----------------------------------------------------------------

    async def refuse(self, code: int, reason: str) -> None:
        """Close at once with ``code`` (a limit was reached), without joining the chat."""
        with trio.move_on_after(1), suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await self.stream.send_all(self.ws.send(CloseConnection(code, reason)))

    async def run(self) -> None:
        """Serve the WebSocket until the peer closes or goes, or the server closes it.

        The reader is this frame, not a coroutine below it (a frame fewer for
        every idle page). On a plain socket (the outbox writes it with
        ``os.write``) it waits in epoll itself and reads with ``os.read``,
        checkpointing as trio's ``receive_some`` does, as the line door's
        reader does: trio's stream stack keeps five more frames and a context
        manager alive for every idle client (about 1.7 KB; docs/benchmarks.md).
        TLS and test streams read through ``receive_some``.
        """
        log.info("web connection from %s", self.address)
        config = self.door.server.config
        if config.rate:
            self._bucket = TokenBucket(config.rate, config.burst, trio.current_time())
        fd = self.send.fd
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                door, now = self.door, trio.current_time()
                timeout = door.server.config.registration_timeout
                door._schedule(door._registering, now + timeout, self)
                self._ping_due = now + door.config.ping_interval
                door._schedule(door._pinging, self._ping_due, self)
                self._tell_raw(self._hello())
                data: bytes | None = self._trailing  # what came with the upgrade request
                self._trailing = b""
                while await self._received(data):
                    data = b""  # nothing of the last read is kept while the page is idle
                    # try, not contextlib.suppress: its object would be kept while
                    # the page is idle (192 bytes).
                    if fd < 0:
                        try:
                            data = bytes(await self.stream.receive_some(RECEIVE_SIZE))
                        except (trio.BrokenResourceError, trio.ClosedResourceError):
                            break
                    else:
                        await trio.lowlevel.checkpoint_if_cancelled()
                        data = read_nowait(fd)
                        if data is None:
                            while data is None:
                                try:
                                    await trio.lowlevel.wait_readable(fd)
                                except trio.ClosedResourceError:
                                    break
                                data = read_nowait(fd)
                        else:
                            await trio.lowlevel.cancel_shielded_checkpoint()
                    if not data:
                        break
                # The peer closed or went: let what is queued out (briefly), then hang up.
                self._reading = False
                if not self._broken:
                    self.send.close()
                    if not self._out:
                        self._flushed = trio.Event()
                        with trio.move_on_after(LINGER):
                            await self._flushed.wait()
                nursery.cancel_scope.cancel()
        finally:
            self._ping_due = math.inf  # no more pings
            self.session.close(self.reason)
            self.send.stop()
            log.info("web %s closed (%s)", self.address, self.reason)

    def close(self, code: int, reason: str, *, why: str | None = None) -> None:
        """Send a close frame with ``code`` once what is queued is out, then hang up."""
        if self._closing:
            return
        self._closing = True
        if why is not None:
            self.reason = why
        elif code == w.CLOSE_GOING_AWAY:
            self.reason = "server shutdown"
        if self.ws.state in (ConnectionState.OPEN, ConnectionState.REMOTE_CLOSING):
            frame = self.ws.send(CloseConnection(code, reason))
            if self.send.closed:  # the hub sent the member away: its last words are queued
                self.send.send_last(frame)
            else:
                self._tell_raw(frame)
        # After the close frame: leaving the hub closes the outbox. The server sends
        # the member away, unless its peer only went silent (it may come back).
        self.session.close(self.reason, hold=code == w.CLOSE_PING_TIMEOUT)
        self.send.close()

    def __call__(self, reason: str | None = None) -> None:
        """The hub ends this connection's member: ``socket()`` at once (too slow, or
        resumed elsewhere), ``socket(reason)`` once it is told why (it was sent away).

        The socket itself is its member's ``disconnect`` and ``hang_up``, as the line
        door's connection is: a bound method for each cost 128 bytes per member.
        """
        if reason is None:
            self._disconnect()
        else:
            self._hang_up(reason)

    def _hang_up(self, reason: str) -> None:
        """The hub sent this member away (``reason``): close with 4004 once it is told."""
        self.close(w.CLOSE_EXPELLED, "Session ended by the server", why=reason)

    def _disconnect(self) -> None:
        """Evicted by the hub (too slow: the peer is not reading), or the member was taken
        back by a newer connection (this one is dead but had not noticed): hang up now."""
        handed_over = self.session.handed_over
        self.reason = "resumed on another connection" if handed_over else "too slow"
        self._hang_up_now()

    def _tell_raw(self, data: bytes) -> None:
        try:
            self.send.send_nowait(data)
        except trio.WouldBlock:
            self._disconnect()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass

    def _tell(self, *events: ev.Event) -> None:
        if self.member is not None:
            self.hub.tell(self.member, *events)
            self.hub.flush()
        else:
            self._tell_raw(self.door.dialect.render(events))

    def _hello(self) -> bytes:
        server = self.door.server
        return self.door.dialect.render_one(
            {
                "type": "hello",
                "server": "triochat",
                "password": server.config.password is not None,
                "online": self.hub.online(),
                "notice": self.hub.notice,
                "limits": {"text": server.config.max_line, "message": self.door.config.max_message},
            }
        )

    # --- the door's timers (WebDoor.keep_time) --------------------------------------

    def deadline_passed(self, when: float) -> None:
        """Close the connection with 4002 unless it registered by now."""
        session = self.session
        if s.Input.DEADLINE not in s.TRANSITIONS[session.state]:
            return
        for output in session.deadline_passed():
            if isinstance(output, s.Close):
                self.close(*_CLOSE_CODES[output.reason], why=output.reason)
            else:
                assert not isinstance(output, s.EFFECTS), output
                self._tell_raw(self.door.dialect.render([output]))

    def ping(self, when: float) -> None:
        """Ping the peer, if this is the ping due ``when`` and the connection is still open."""
        if self._pinged or when != self._ping_due:
            return  # an older ping's entry, or the connection is over
        if self.ws.state is not ConnectionState.OPEN:
            self._ping_due = math.inf
            return
        self._tell_raw(self.ws.send(Ping(b"triochat")))
        door = self.door
        self._pinged = True
        self._ping_due = when + door.config.ping_timeout
        door._schedule(door._answering, self._ping_due, self)

    def unanswered(self, when: float) -> None:
        """The ping's time to be answered, due ``when``, is up: close with 4003 if it was not."""
        if not self._pinged or when != self._ping_due:
            return  # answered in time (or the connection is over)
        self._ping_due = math.inf
        timeout = self.door.config.ping_timeout
        log.info("web %s did not answer a ping in %g s", self.address, timeout)
        self.close(w.CLOSE_PING_TIMEOUT, "No answer to ping", why="ping timeout")

    def _ponged(self) -> None:
        """The peer answered: the next ping goes ``ping_interval`` from now."""
        if not self._pinged or self._ping_due == math.inf:
            return  # a pong no ping asked for
        door = self.door
        self._pinged = False
        self._ping_due = trio.current_time() + door.config.ping_interval
        door._schedule(door._pinging, self._ping_due, self)

    # --- reading ------------------------------------------------------------------

    async def _received(self, data: bytes | None) -> bool:
        """Carry out the messages ``data`` completes; False once the peer closed.

        A coroutine of its own, which returns before the next wait: the last
        event and message are not kept while the client is idle.
        """
        ws = self.ws
        if data:
            ws.receive_data(data)
        for event in ws.events():
            if isinstance(event, TextMessage):
                if self._closing:
                    continue
                self._message_size += len(event.data.encode())
                limit = self.door.config.max_message
                if self._message_size > limit:
                    self.close(w.CLOSE_TOO_BIG, f"Message too big (limit {limit} bytes)")
                    continue
                if not event.message_finished:
                    if self._parts is None:
                        self._parts = []
                    self._parts.append(event.data)
                    continue
                text = event.data
                if self._parts is not None:
                    self._parts.append(text)
                    text = "".join(self._parts)
                    self._parts = None
                self._message_size = 0
                await self._message(text)
            elif isinstance(event, BytesMessage):
                self.close(w.CLOSE_UNSUPPORTED, "Messages are JSON text")
            elif isinstance(event, Ping):
                self._tell_raw(ws.send(event.response()))
            elif isinstance(event, Pong):
                self._ponged()
            elif isinstance(event, CloseConnection):
                self._say()
                if ws.state is ConnectionState.REMOTE_CLOSING:
                    self._tell_raw(ws.send(event.response()))
                if not self._closing:
                    # The page closed on purpose (a quit, a reload, a closed tab):
                    # it is not coming back with its token, so it leaves at once.
                    self.reason = "quit" if event.code == w.CLOSE_NORMAL else self.reason
                    self.session.close(self.reason, hold=False)
                self._closing = True
                self.send.close()
                return False
        self._say()  # before any wait, what this read brought
        return True

    async def _message(self, text: str) -> None:
        """Carry out one client message, after flood control's pause if any."""
        if self._bucket is not None and (delay := self._bucket.take(trio.current_time())):
            self.door.server.stats.flood_delays += 1
            self._say()
            await trio.sleep(delay)
        config = self.door.server.config
        message = w.parse_message(
            text, max_text=config.max_line, max_rooms=self.hub.max_rooms_per_member
        )
        if self._closing:
            return
        if isinstance(message, c.Say) and self.member is not None and message.room:
            # Chat lines skip the session (the hot path) and those to one room
            # are handed over together, as on the line door: a burst is
            # rendered once and reaches each recipient in one write.
            if message.room != self._says_room:
                self._say()
                self._says_room = message.room
            if self._says is None:
                self._says = []
            self._says.append(message.text)
            return
        self._say()  # before anything else this client asked for
        if isinstance(message, w.Register):
            await self._register(message)
        elif isinstance(message, c.Quit):
            self.close(w.CLOSE_NORMAL, "Bye!", why=message.reason or "quit")
        elif self.member is None:
            text = message.message if isinstance(message, c.Invalid) else "Register first"
            self._tell(ev.Error(text))
        else:
            await self._command(self.member, message)

    def _say(self) -> None:
        """Hand the collected chat lines to the hub."""
        if self._says:
            member, room = self.member, self._says_room
            if member is not None and room is not None and not self._closing:
                self.hub.say(member, room, self._says)
                self.hub.flush()
            self._says = None

    async def _register(self, message: w.Register) -> None:
        """A name (and the password) for the session; then the rooms the client asked for."""
        session = self.session
        if session.state is not s.State.AWAITING_NAME:
            name = self.member.name if self.member is not None else message.name
            self._tell(ev.Error(f"You are already registered as {name}"))
            return
        resumption = message.resumption()
        if resumption is not None:
            if await self._resume(resumption):
                return
            if session.state is not s.State.AWAITING_NAME:
                return  # too many bad tokens: closed
        outputs = session.receive_line(message.name)
        if session.state in _ASKING_PASSWORD:
            # The page sends the password with the name: no prompt to show.
            outputs = session.receive_line(message.password or "")
        if session.state in _ASKING_ACCOUNT:
            # A registered name: the page sends its password with the name, or is asked.
            asked = ev.Notice(s.account_prompt(message.name))
            outputs = [output for output in outputs if output != asked]
            outputs += session.receive_line(message.account_password or "")
            if message.account_password is None:
                self._tell_raw(
                    self.door.dialect.render_one({"type": "account_password", "name": message.name})
                )
        await self._carry_out(outputs)
        member = self.member
        if member is None or self._closing:
            return
        member.hang_up = self  # see __call__
        self._tell_raw(self._registered(member, resumed=False))
        for room in message.rooms:
            # Through the session, which checks bans and makes a room's creator its operator.
            if self.session.state is s.State.CHATTING:
                await self._carry_out(self.session.command(c.Join(room)))
        self.hub.flush()

    async def _resume(self, resumption: v2.Resume) -> bool:
        """Take the held member of a token back, each room from where the page was;
        False if the token is not valid (the page registers anew, or is closed)."""
        # The welcome and the replay are in the outbox when the session is done (no
        # await comes between them, so nothing live can); a bad token waits its delay.
        await self._carry_out(self.session.resume(resumption))
        member = self.member
        if member is None or self.session.state is not s.State.CHATTING:
            return False
        member.hang_up = self  # see __call__
        self._tell_raw(self._registered(member, resumed=True))
        self.hub.flush()
        return True

    def _registered(self, member: Member, *, resumed: bool) -> bytes:
        """The page is in as ``member`` (its token came just before, in ``welcome``)."""
        message = {"type": "registered", "name": member.name, "resumed": resumed}
        return self.door.dialect.render_one(message)

    async def _command(self, member: Member, command: c.Command | v2.Ack) -> None:
        if isinstance(command, c.Help):
            self.hub.tell(member, *(ev.Notice(line) for line in w.HELP))
        elif isinstance(command, c.History) and command.room not in member.rooms:
            # The session replays the room it is given: only a room the member is in.
            self.hub.tell(member, ev.Error(f"You are not in {command.room}"))
        elif self.session.state is s.State.CHATTING:
            if isinstance(command, c.Part) and not command.reason:
                command = c.Part(command.room, "bye")
            await self._carry_out(self.session.command(command))
        self.hub.flush()

    async def _carry_out(self, outputs: list[s.Output]) -> None:
        """Send the session's events and carry out its effects, in order.

        An async effect's outcome is the session's next input, unless the
        connection closed meanwhile (the session is then closed too).
        """
        session = self.session
        events: list[ev.Event] = []
        for output in outputs:
            if output == ev.Error(BAD_TOKEN):
                # The name question is for line clients: this register's name answers it.
                output = ev.Error(BAD_TOKEN.partition(";")[0])
            if not isinstance(output, s.EFFECTS):
                # Prompts are for line clients; the page has its own fields.
                if not (isinstance(output, ev.Notice) and output.text in _PROMPTS):
                    events.append(output)
                continue
            if events:
                self._tell_raw(self.door.dialect.render(events))
                events = []
            server = self.door.server
            match output:
                case s.ClaimName(name):
                    claim = await server.backplane.claim(name)
                    if session.state is s.State.CLOSED:
                        server.backplane.unclaim(name)
                        return
                    await self._carry_out(session.claim_result(claim))
                case s.Unclaim(name):
                    server.backplane.unclaim(name)
                case s.Wait(seconds, what):
                    if what == "password":
                        server.stats.wrong_passwords += 1
                    log.warning("wrong %s from web %s (next in %g s)", what, self.address, seconds)
                    await trio.sleep(seconds)
                    if session.state is not s.State.CLOSED:
                        await self._carry_out(session.delay_elapsed())
                case s.TakeOver(token, positions):
                    try:
                        handover = await server.backplane.take_over(
                            token_digest(token), positions, self.door.dialect
                        )
                    except BackplaneError:
                        await self._carry_out(session.cluster_unreachable())
                    else:
                        await self._carry_out(session.taken_over(handover))
                case s.AccountCall(request):
                    assert server.accounts is not None
                    outcome = await server.accounts.perform(request)
                    if session.state is not s.State.CLOSED:
                        await self._carry_out(session.account_result(outcome))
                case s.FetchHistory(room, count):
                    assert server.store is not None
                    fetched = await server.store.fetch(room, count)
                    if session.state is not s.State.CLOSED:
                        await self._carry_out(session.fetched(room, fetched))
                case s.Close(reason):
                    if events:
                        self._tell_raw(self.door.dialect.render(events))
                        events = []
                    self.close(*_CLOSE_CODES.get(reason, (w.CLOSE_NORMAL, "Bye!")), why=reason)
        if events:
            self._tell_raw(self.door.dialect.render(events))


_Timers = deque[tuple[float, "_WebSocket"]]
"""One of the door's timer queues: (when, socket), in the order of when."""
_PROMPTS: Final = frozenset({p.NAME_QUESTION, p.PASSWORD_PROMPT})
_ASKING_PASSWORD: Final = frozenset({s.State.AWAITING_PASSWORD})
_ASKING_ACCOUNT: Final = frozenset({s.State.AWAITING_ACCOUNT})
_CLOSE_CODES: Final = {
    "wrong password": (w.CLOSE_WRONG_PASSWORD, p.WRONG_PASSWORD),
    "no name given": (w.CLOSE_NO_NAME, "No name given in time"),
    "bad resume tokens": (w.CLOSE_BAD_TOKENS, TOO_MANY),
    "cannot resume now": (w.CLOSE_TRY_LATER, CANNOT_RESUME),
}
"""The close code and reason for the session's :class:`~triochat.core.session.Close` reasons."""


def _headers(headers: Any) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in headers:
        key = name.decode("latin-1").lower()
        text = value.decode("latin-1")
        found[key] = f"{found[key]}, {text}" if key in found else text
    return found


def _host_name(host: str) -> str:
    """The name in a ``Host`` header, without its port or IPv6 brackets."""
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _is_loopback(name: str) -> bool:
    name = name.lower()
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _local_host(stream: trio.abc.Stream) -> str:
    """The address the connection came in on ("" if not a socket)."""
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        with suppress(OSError):
            return str(stream.socket.getsockname()[0])
    return ""


def _peer_host(stream: trio.abc.Stream) -> str:
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if isinstance(stream, trio.SocketStream):
        try:
            return str(stream.socket.getpeername()[0])
        except OSError:
            return ""
    return ""
