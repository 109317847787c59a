"""A protocol v1 client connection, shared by ``join`` and ``bot``.

It knows the wire format and nothing of terminals: connect, register a
name, send lines, receive lines. Trio's errors are mapped to the few
:class:`ChatError` subclasses below, so callers can say plainly what went
wrong.
"""

from __future__ import annotations

import os
import socket
import ssl
import warnings
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import trio

from ..protocol import line as p

# Server lines are the client's line plus a prefix; be generous but bounded.
MAX_SERVER_LINE: Final = 1 << 20
_USERS_PREFIX: Final = "* Users in "
_PASSWORD_PROMPT: Final = p.format_info(p.PASSWORD_PROMPT).rstrip("\n")
_ACCOUNT_PROMPT: Final = "* " + p.ACCOUNT_PROMPT
_WRONG_ACCOUNT_PASSWORD: Final = "! " + p.WRONG_ACCOUNT_PASSWORD
_WRONG_PASSWORD: Final = p.format_error(p.WRONG_PASSWORD).rstrip("\n")
_TLS_REQUIRED: Final = p.format_error(p.TLS_REQUIRED).rstrip("\n")


class ChatError(Exception):
    """Base of every error this module raises."""


class ConnectFailed(ChatError):
    """The server could not be reached (refused, unknown host, timeout)."""


class NameRejected(ChatError):
    """The server refused the name; the message is the server's ``!`` line, without ``! ``."""


class ConnectionClosed(ChatError):
    """The server closed the connection, or the network broke it."""


class PasswordRequired(ChatError):
    """The server asks for a password and none was given (the connection stays open)."""


class WrongPassword(ChatError):
    """The server refused the password and is closing the connection."""


class InsecureConnectionWarning(UserWarning):
    """TLS without certificate verification (``--insecure``): anyone in between can listen."""


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

    async def register(
        self, name: str, password: str | Callable[[], Awaitable[str]] | None = None
    ) -> list[str]:
        """Claim ``name``; return the lines that followed, up to our own join notice.

        Those are the room's history, the user list and ``* NAME joined #lobby``.
        If the server asks ``* Password:``, ``password`` is sent (a callable is
        awaited for it only then, so a user is asked only if the server wants it).

        Raises:
          NameRejected: the name is invalid or taken (the connection stays open,
            so the caller may try another).
          PasswordRequired: the server wants a password and ``password`` is None.
          WrongPassword: the server refused the password (it then hangs up).
        """
        name = p.clean_text(name).strip()
        await self.send_line(name)
        received: list[str] = []
        joined = f"* {name} joined {p.LOBBY}"
        registered = False
        while True:
            line = await self.receive_line()
            if not registered:
                if line == _PASSWORD_PROMPT or line == _ACCOUNT_PROMPT.format(name):
                    # The server's password, or the registered name's (--db): the one given.
                    if password is None:
                        raise PasswordRequired("the server asks for a password")
                    given = password if isinstance(password, str) else await password()
                    await self.send_line(given)
                    continue
                if line == _WRONG_ACCOUNT_PASSWORD.format(name):
                    raise WrongPassword("wrong password")
                if line == _WRONG_PASSWORD:
                    raise WrongPassword("wrong password")
                if line == _TLS_REQUIRED:
                    raise ConnectionClosed(p.TLS_REQUIRED)
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


def tls_context(*, ca: str | Path | None = None, insecure: bool = False) -> ssl.SSLContext:
    """A client TLS context: the system's trust store, or ``ca`` only, or no checks at all.

    Raises:
      ConnectFailed: the ``ca`` file cannot be read.
    """
    try:
        context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    except (OSError, ssl.SSLError) as exc:
        raise ConnectFailed(f"cannot load CA file {ca}: {exc}") from None
    if insecure:
        warnings.warn(
            "TLS certificate verification is off (--insecure): the connection is "
            "encrypted but the server is not authenticated",
            InsecureConnectionWarning,
            stacklevel=2,
        )
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


async def open_chat_client(
    host: str = "127.0.0.1",
    port: int = 7007,
    *,
    connect_timeout: float = 10.0,
    tls: bool | ssl.SSLContext = False,
    ca: str | Path | None = None,
    insecure: bool = False,
) -> ChatClient:
    """Connect to a server. The caller registers with :meth:`ChatClient.register`.

    Args:
      tls: use TLS, verifying the server against the system's trust store
        (or pass a ready :class:`ssl.SSLContext`). ``ca`` or ``insecure``
        imply TLS.
      ca: trust only the certificates in this PEM file (``--ca``).
      insecure: skip certificate verification (``--insecure``); warns with
        :class:`InsecureConnectionWarning`.

    Raises:
      ConnectFailed: the server cannot be reached, or the TLS handshake
        failed (for example a server that does not speak TLS, or a
        certificate that does not verify).
    """
    context: ssl.SSLContext | None = None
    if isinstance(tls, ssl.SSLContext):
        context = tls
    elif tls or ca is not None or insecure:
        context = tls_context(ca=ca, insecure=insecure)
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
    if context is None:
        return ChatClient(stream)
    secure = trio.SSLStream(stream, context, server_hostname=host)
    try:
        with trio.fail_after(connect_timeout):
            await secure.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError) as exc:
        await trio.aclose_forcefully(stream)
        hint = "does the server use TLS?"
        if isinstance(exc, trio.TooSlowError):
            reason = "timed out"
        else:
            reason = str(exc.__cause__ or exc) or "connection closed"
            if isinstance(exc.__cause__, ssl.SSLCertVerificationError):
                # The server does speak TLS: its certificate is what failed.
                hint = (
                    "the server's certificate did not verify: give --ca FILE to trust "
                    "the CA that signed it, or --insecure to skip the check"
                )
        raise ConnectFailed(f"TLS handshake with {host}:{port} failed: {reason} ({hint})") from None
    return ChatClient(secure)


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectOptions:
    """Where a client connects and how: the settings ``join`` and ``bot`` share."""

    host: str = "127.0.0.1"
    port: int = 7007
    connect_timeout: float = 10.0
    """Seconds to reach the server, and as many again for the TLS handshake."""
    tls: bool = False
    """Use TLS, verifying the server against the system's trust store (or ``ca``)."""
    ca: str | None = None
    """Trust only the certificates in this PEM file (implies TLS)."""
    insecure: bool = False
    """Use TLS without verifying the server's certificate."""
    password: str | None = None
    """The server password, for the caller to send if the server asks for one."""

    @property
    def server(self) -> str:
        """``HOST:PORT``, with an IPv6 host in brackets."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    async def open_client(self) -> ChatClient:
        """Connect with :func:`open_chat_client`; the caller registers (each in its own way).

        Raises:
          ConnectFailed: as :func:`open_chat_client`.
        """
        return await open_chat_client(
            self.host,
            self.port,
            connect_timeout=self.connect_timeout,
            tls=self.tls,
            ca=self.ca,
            insecure=self.insecure,
        )
