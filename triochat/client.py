"""A protocol v1 client connection, shared by ``join`` and ``bot``.

It knows the wire format and nothing of terminals: connect, register a
name, send lines, receive lines. Trio's errors are mapped to the few
:class:`ChatError` subclasses below, so callers can say plainly what went
wrong.
"""

from __future__ import annotations

import os
import socket
from typing import Final

import trio

from . import protocol as p

# Server lines are the client's line plus a prefix; be generous but bounded.
MAX_SERVER_LINE: Final = 1 << 20
_USERS_PREFIX: Final = "* Users in "


class ChatError(Exception):
    """Base of every error this module raises."""


class ConnectFailed(ChatError):
    """The server could not be reached (refused, unknown host, timeout)."""


class NameRejected(ChatError):
    """The server refused the name; the message is the server's ``!`` line, without ``! ``."""


class ConnectionClosed(ChatError):
    """The server closed the connection, or the network broke it."""


class ChatClient:
    """One connection to a triochat server. Use :func:`open_chat_client` to make one."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.name: str | None = None
        self.welcome: list[str] = []  # the server's ``* `` lines before registration
        self._framer = p.LineFramer(MAX_SERVER_LINE)
        self._send_lock = trio.Lock()

    async def __aenter__(self) -> ChatClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self.stream.aclose()

    async def send_line(self, text: str) -> None:
        """Send one line (a newline is added; embedded newlines are not allowed)."""
        if "\n" in text:
            raise ValueError("a line cannot contain a newline")
        data = (text + "\n").encode()
        try:
            async with self._send_lock:
                await self.stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise ConnectionClosed("connection lost") from exc

    async def receive_line(self) -> str:
        """Return the next line from the server, without its newline.

        Raises:
          ConnectionClosed: the server closed the connection or it broke.
        """
        while True:
            event = self._framer.next_event()
            if isinstance(event, p.Line):
                return event.text
            if isinstance(event, p.LineTooLong):  # pragma: no cover - a broken server
                continue
            try:
                data = await self.stream.receive_some(65536)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise ConnectionClosed("connection lost") from exc
            if not data:
                raise ConnectionClosed("connection closed by server")
            self._framer.receive_data(data)

    async def register(self, name: str) -> list[str]:
        """Claim ``name``; return the lines that followed, up to our own join notice.

        Those are the room's history, the user list and ``* NAME joined #lobby``.

        Raises:
          NameRejected: the name is invalid or taken (the connection stays open,
            so the caller may try another).
        """
        name = p.clean_text(name).strip()
        await self.send_line(name)
        received: list[str] = []
        joined = f"* {name} joined {p.LOBBY}"
        registered = False
        while True:
            line = await self.receive_line()
            if not registered:
                if line.startswith("! "):
                    raise NameRejected(line[2:])
                if line.startswith("* ") and not line.startswith(_USERS_PREFIX):
                    self.welcome.append(line)
                    continue
                registered = line.startswith(_USERS_PREFIX)
            received.append(line)
            if registered and line.endswith(joined):
                self.name = name
                return received

    async def quit(self, reason: str = "") -> list[str]:
        """Send ``/quit``; return every line received until the server hangs up."""
        await self.send_line(f"/quit {reason}".rstrip())
        lines: list[str] = []
        try:
            while True:
                lines.append(await self.receive_line())
        except ConnectionClosed:
            return lines


async def open_chat_client(
    host: str = "127.0.0.1", port: int = 7007, *, connect_timeout: float = 10.0
) -> ChatClient:
    """Connect to a server. The caller registers with :meth:`ChatClient.register`."""
    try:
        with trio.fail_after(connect_timeout):
            stream = await trio.open_tcp_stream(host, port)
    except trio.TooSlowError:
        raise ConnectFailed(f"timed out connecting to {host}:{port}") from None
    except socket.gaierror as exc:
        raise ConnectFailed(f"unknown host {host}: {exc.strerror}") from None
    except OSError as exc:
        # trio reports "all attempts ... failed" and chains the real reason.
        reason = exc.strerror or str(exc)
        if isinstance(exc.__cause__, BaseExceptionGroup):
            errnos = [e.errno for e in exc.__cause__.exceptions if isinstance(e, OSError)]
            reason = next((os.strerror(n) for n in errnos if n), reason)
        raise ConnectFailed(f"cannot connect to {host}:{port}: {reason}") from None
    return ChatClient(stream)
