"""The client side of protocol v2: a chat that comes back by itself when its link breaks.

A :class:`ResumingClient` opts into v2 (``docs/protocol.md``), registers, and
keeps what it needs to come back: the resume token and, per room, the epoch
and the last number it has shown. When the connection breaks it reconnects
with backoff (:class:`Backoff`) and resumes every room, so each line is shown
once, in order, across any number of reconnects; a room whose missed lines
the server no longer has gets one gap line (:func:`gap_line`) instead.

What it shows is v1's text: each v2 line is turned back into the hub's event
and rendered by :class:`~triochat.protocol.line.LineDialect`, so line mode
prints what it always printed.
"""

from __future__ import annotations

import calendar
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

import trio

from ..core import events as ev
from ..protocol import line as p, v2
from .connection import (
    ChatClient,
    ConnectFailed,
    ConnectionClosed,
    ConnectOptions,
    NameRejected,
    PasswordRequired,
    WrongPassword,
)

_NAME_QUESTION: Final = p.format_info(p.NAME_QUESTION).rstrip("\n")
_BAD_TOKEN: Final = "That resume token is not valid"
_CANNOT_RESUME: Final = "Cannot resume right now"
"""The node could not ask the rest of the chat: the token may be good, try again later."""
SHUTDOWN: Final = "* Server is shutting down. Bye!"
"""The server's goodbye: a close after it is the server's own, not a broken link."""

Show = Callable[[list[str]], Awaitable[None]]
Password = str | Callable[[], Awaitable[str]] | None

_KEPT: Final = frozenset({"said", "acted", "topic", "legacy"})
"""The kinds of line a joiner's history holds (``events.KEPT``)."""


def gap_line(room: str, lost: int | None) -> str:
    """The one line shown for a room whose missed lines cannot be replayed."""
    about = f"about {lost}" if lost else "some"
    return f"* {about} missed lines in {room}: history no longer has them"


@dataclass
class Backoff:
    """Seconds before each reconnect: ``first`` doubling to ``most``, each with jitter.

    The jitter (a random 50-100 % of the step) keeps clients that lost the same
    server from all coming back in the same instant.
    """

    first: float = 0.5
    most: float = 30.0
    attempt: int = 0
    rng: random.Random | None = None

    def next(self) -> float:
        step: float = min(self.most, self.first * 2.0**self.attempt)
        self.attempt += 1
        return step * (0.5 + 0.5 * (self.rng or random).random())

    def reset(self) -> None:
        self.attempt = 0


def parse_time(text: str) -> float:
    """``2026-12-01T21:05:38.123Z`` as seconds since the epoch."""
    whole: int = calendar.timegm(time.strptime(text[:19], "%Y-%m-%dT%H:%M:%S"))
    return whole + int(text[20:23] or 0) / 1000


def to_event(line: v2.ServerLine) -> ev.Event | None:
    """The hub's event a v2 line shows, or ``None`` for a line that shows nothing."""
    kind, get = line.kind, line.get
    text = line.text or ""
    if "seq" in line.fields and "room" in line.fields:
        room, seq, when = line["room"], line.number("seq"), parse_time(line["time"])
        match kind:
            case "said":
                return ev.Said(room, seq, when, line["name"], text)
            case "acted":
                return ev.Acted(room, seq, when, line["name"], text)
            case "joined":
                return ev.Joined(room, seq, when, line["name"])
            case "left":
                return ev.Left(room, seq, when, line["name"], text)
            case "renamed":
                return ev.Renamed(room, seq, when, line["old"], line["new"])
            case "topic":
                return ev.TopicSet(room, seq, when, line["name"], text)
            case "opped" | "deopped":
                return ev.RoleChanged(room, seq, when, line["name"], line["by"], kind == "opped")
            case "presence":
                return ev.Presence(
                    room, seq, when, int(get("joined")), int(get("left")), float(get("seconds"))
                )
            case "legacy":
                return ev.Legacy(room, seq, when, text)
    match kind:
        case "private" | "private-sent":
            when = parse_time(line["time"])
            return ev.Private(when, line["from"], line["to"], text, echo=kind == "private-sent")
        case "notice":
            return ev.Notice(text)
        case "error":
            return ev.Error(text)
        case "users":
            names = tuple(text.split())
            ops, away = (frozenset(filter(None, get(key).split(","))) for key in ("ops", "away"))
            return ev.UserList(line["room"], names, int(get("total") or len(names)), ops, away)
        case "rooms":
            rooms = []
            for pair in text.split():
                name, _, count = pair.rpartition("=")
                rooms.append((name, int(count)))
            return ev.RoomList(tuple(rooms))
    return None


def _parse(text: str) -> v2.ServerLine:
    """A v2 line; a v1 one (the shutdown notice, sent to all alike) is kept as ``raw``."""
    try:
        return v2.parse_line(text)
    except v2.V2ParseError:
        return v2.ServerLine("raw", {}, text)


class ResumingClient:
    """A v2 connection that outlives its sockets.

    Args:
      options: where to connect.
      name: the name to register (and take back after a long outage).
      show: prints the lines to show (v1 text), in order.
      reconnect: whether to come back after a break at all.
      backoff: the delays between attempts.
      opener: how to reach the server (default: ``options.open_client``; tests
        hand over memory streams).
    """

    def __init__(
        self,
        options: ConnectOptions,
        name: str,
        show: Show,
        *,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        opener: Callable[[], Awaitable[ChatClient]] | None = None,
    ) -> None:
        self.options = options
        self._opener = opener or options.open_client
        self.name = name
        self._show = show
        self.reconnect = reconnect
        self.after_shutdown = False
        """Come back after the server said it was shutting down, too (a bot outliving a
        restart); otherwise that close ends the session."""
        self.backoff = backoff or Backoff()
        self.client: ChatClient | None = None
        self.token = ""
        self.positions: dict[str, tuple[str, int]] = {}
        """Each room the member is in: its epoch and the last number shown."""
        self.rooms: list[str] = []
        self.current = p.LOBBY
        self.reconnects = 0
        self.gaps = 0
        self.quitting = False
        self.connected = trio.Event()
        self.status: Callable[[str], None] = lambda text: None
        """Told "reconnecting in N s" and the like (the terminal UI's status line)."""
        self._dialect = p.LineDialect()
        self._history: int | None = None  # the count of a /history answer being shown

    # --- connecting ---------------------------------------------------------------

    async def open_link(self) -> tuple[ChatClient, list[str]]:
        """Connect and opt into v2; the v1 welcome lines the server sent first."""
        client = await self._opener()
        welcome: list[str] = []
        try:
            while (line := await client.receive_line()) != _NAME_QUESTION:
                if line.startswith("! "):
                    raise ConnectionClosed(line[2:])
                welcome.append(line)
            welcome.append(line)
            await client.send_line(v2.HELLO)
            while True:
                line = await client.receive_line()
                if line.startswith("! "):
                    raise ConnectionClosed(
                        "the server does not speak protocol v2: use --no-reconnect"
                    )
                if line.startswith("hello "):
                    break
            await self._expect(client, "notice")
        except BaseException:
            await client.aclose()
            raise
        return client, welcome

    @staticmethod
    async def _expect(client: ChatClient, kind: str) -> v2.ServerLine:
        while True:
            line = _parse(await client.receive_line())
            if line.kind == kind:
                return line

    async def start(self, password: Password = None) -> list[str]:
        """Connect and register: the lines to show first (the welcome, the room's history).

        Raises:
          ConnectFailed, NameRejected, PasswordRequired, WrongPassword, ConnectionClosed.
        """
        client, welcome = await self.open_link()
        try:
            lines = await self.register_on(client, password)
        except BaseException:
            await client.aclose()
            raise
        self.client = client
        self.connected.set()
        return [*welcome, *lines]

    async def register_on(
        self,
        client: ChatClient,
        password: Password,
        pending: list[v2.ServerLine] | None = None,
    ) -> list[str]:
        """Give the name (and the password, if asked: a callable is awaited only then) on
        ``client``; the lines to show, or into ``pending`` if given.

        Raises:
          NameRejected (the connection stays open: the caller may try another name),
          PasswordRequired, WrongPassword, ConnectionClosed.
        """
        await client.send_line(self.name)
        shown: list[str] = []
        while True:
            line = _parse(await client.receive_line())
            if line.kind == "notice" and line.text in (
                p.PASSWORD_PROMPT,
                p.ACCOUNT_PROMPT.format(self.name),
            ):
                # The server's password, or the registered name's (--db): the one given.
                if password is None:
                    raise PasswordRequired("the server asks for a password")
                given = password if isinstance(password, str) else await password()
                await client.send_line(given)
            elif line.kind == "error" and line.text in (
                p.WRONG_PASSWORD,
                p.WRONG_ACCOUNT_PASSWORD.format(self.name),
            ):
                raise WrongPassword("wrong password")
            elif line.kind == "error" and not self.token:
                raise NameRejected(line.text or "")
            elif line.kind == "welcome":
                self.token, self.name = line["token"], line["name"]
            elif line.kind == "room":
                self._track(line)
                if line["room"] not in self.rooms:
                    self.rooms.append(line["room"])
                return shown
            elif pending is not None:
                pending.append(line)
            else:
                shown.extend(self._lines(line))

    async def _resume(self, client: ChatClient) -> list[str] | None:
        """Take the member back on ``client``: the lines to show, or ``None`` (token refused)."""
        marks = " ".join(f"{room}={epoch}:{seq}" for room, (epoch, seq) in self.positions.items())
        await client.send_line(f"/resume {self.token} {marks}".rstrip())
        shown: list[str] = []
        waiting = set(self.positions)
        while True:
            line = _parse(await client.receive_line())
            if line.kind == "error" and (line.text or "").startswith(_BAD_TOKEN):
                await self._expect(client, "notice")  # the name question
                return None
            if line.kind == "error" and (line.text or "").startswith(_CANNOT_RESUME):
                raise ConnectionClosed(line.text)  # the server closes; come back later
            if line.kind == "welcome":
                self.token = line["token"]
                await client.send_line(f"/ack {self.token}")
            elif line.kind == "resumed":
                self._track(line)
                waiting.discard(line["room"])
            elif line.kind == "resume-failed":
                room = line["room"]
                waiting.discard(room)
                self.gaps += 1
                shown.append(gap_line(room, line.number("lost")))
                if line["epoch"] != "-":
                    self.positions[room] = (line["epoch"], line.number("seq"))
            else:
                shown.extend(self._lines(line))
            if not waiting:
                return shown

    async def _come_back(self, password: Password) -> None:
        """Reconnect (with backoff) until the member is back, or give up (raises)."""
        self.connected = trio.Event()
        while True:
            delay = self.backoff.next()
            self.status(f"reconnecting in {delay:.0f} s")
            await trio.sleep(delay)
            self.status("reconnecting…")
            try:
                client, _welcome = await self.open_link()
            except (ConnectFailed, ConnectionClosed, OSError):
                continue
            try:
                shown = await self._resume(client)
                if shown is None:  # the grace is over: a new member with the same name
                    shown = await self._again(client, password)
            except (ConnectionClosed, OSError):
                await client.aclose()
                continue
            except BaseException:
                await client.aclose()
                raise
            self.client = client
            self.reconnects += 1
            self.backoff.reset()
            self.status("")
            self.connected.set()
            await self._show(shown)
            return

    async def _again(self, client: ChatClient, password: Password) -> list[str]:
        """Register anew after the grace: the rooms are joined again, each with its gap.

        The joiner's history is held until each room's epoch is known: with the
        same epoch, what was shown already is left out (and if the history
        reaches back to it, nothing was lost); with another, all of it is new.
        """
        before = dict(self.positions)
        rooms = list(self.rooms)
        self.token = ""
        self.rooms = []
        self.positions = {}
        pending: list[v2.ServerLine] = []
        try:
            await self.register_on(client, password, pending)
        except NameRejected as exc:
            raise NameRejected(f"cannot take back the name {self.name}: {exc}") from None
        for room in rooms:
            if room not in self.rooms:
                await client.send_line(f"/join {room}")
                while (line := _parse(await client.receive_line())).kind != "room":
                    pending.append(line)
                self._lines(line)
        shown: list[str] = []
        oldest: dict[str, int] = {}
        for line in pending:
            where, seq = line.fields.get("room"), line.fields.get("seq")
            if where is None or seq is None or seq == "0":
                shown.extend(self._lines(line))
                continue
            old_epoch, old_seq = before.get(where, ("", 0))
            if self.positions.get(where, ("", 0))[0] == old_epoch:
                if line.kind in _KEPT:
                    oldest.setdefault(where, int(seq))
                if int(seq) <= old_seq:
                    continue  # shown before the break
            shown.extend(self._render(line))
        for room in rooms:
            epoch, seq_now = self.positions.get(room, ("", 0))
            old_epoch, old_seq = before.get(room, ("", 0))
            if epoch == old_epoch and oldest.get(room, seq_now + 1) <= old_seq:
                continue  # the joiner's history reaches back to what was shown: no gap
            lost = seq_now - old_seq if epoch == old_epoch else None
            self.gaps += 1
            shown.append(gap_line(room, lost))
        return shown

    # --- running --------------------------------------------------------------------

    async def receive(self, password: Password = None) -> str | None:
        """Show every line until the member quits (``None``) or the link is given up (why)."""
        while True:
            client = self.client
            assert client is not None
            goodbye = False
            try:
                while True:
                    line = _parse(await client.receive_line())
                    goodbye = line.kind == "raw" and line.text == SHUTDOWN
                    await self._show(self._lines(line))
            except ConnectionClosed as exc:
                await client.aclose()
                if self.quitting:
                    return None
                if not self.reconnect or (goodbye and not self.after_shutdown):
                    return str(exc)
            try:
                await self._come_back(password)
            except (NameRejected, WrongPassword, PasswordRequired) as exc:
                return str(exc)

    async def aclose(self) -> None:
        """Close the connection, if one is open."""
        if self.client is not None:
            await self.client.aclose()

    async def quit(self) -> None:
        """Say ``/quit`` and read (showing nothing) until the server hangs up."""
        self.quitting = True
        client = self.client
        if client is None:
            return
        try:
            await client.send_line("/quit")
            while True:
                await client.receive_line()
        except ConnectionClosed:
            pass

    async def send_line(self, text: str) -> None:
        """Send a line once connected (waiting out a reconnect); ``/join`` moves, as in v1."""
        command = p.parse_command(text)
        if isinstance(command, p.Join) and command.room != self.current:
            # v1's /join moves: leave the room first, as the one-room door does.
            await self._send(f"/part {self.current} joined {command.room}")
            self.current = command.room
        await self._send(text)

    async def _send(self, text: str) -> None:
        while True:
            await self.connected.wait()
            client = self.client
            assert client is not None
            try:
                await client.send_line(text)
                return
            except ConnectionClosed:
                if not self.reconnect or self.quitting:
                    raise
                await trio.lowlevel.checkpoint()
                if self.client is client:
                    self.connected = trio.Event()  # the receiver will reconnect

    # --- lines -------------------------------------------------------------------------

    def _track(self, line: v2.ServerLine) -> None:
        self.positions[line["room"]] = (line["epoch"], line.number("seq"))

    def _lines(self, line: v2.ServerLine) -> list[str]:
        """What one v2 line shows, and what it tells of the rooms' positions."""
        kind = line.kind
        if kind == "raw":
            return [line.text or ""]
        if kind == "notice" and line.text == p.NAME_QUESTION:
            return []  # asked again after a refused name: the caller asks in its own way
        if kind == "history":
            self._history = line.number("count")
            return [p.format_history_header(line["room"], self._history).rstrip("\n")]
        if kind == "history-end":
            count, self._history = self._history, None
            return [p.format_history_footer(line["room"]).rstrip("\n")] if count else []
        if kind == "room":
            self._track(line)
            if line["room"] not in self.rooms:
                self.rooms.append(line["room"])
            return []
        seq = line.fields.get("seq")
        if seq is not None and self._history is None:
            room = line["room"]
            if seq == "0":  # unnumbered: only this member sees it
                if kind == "left" and line["name"] == self.name:
                    if room in self.rooms:
                        self.rooms.remove(room)
                    self.positions.pop(room, None)
                    return []  # a v1 client never sees its own move
            elif room in self.positions:
                # The server replays exactly what follows the number given, so a live
                # line is never one shown before; the highest number is where to resume.
                epoch, last = self.positions[room]
                self.positions[room] = (epoch, max(last, int(seq)))
        return self._render(line)

    def _render(self, line: v2.ServerLine) -> list[str]:
        event = to_event(line)
        if event is None:
            return []
        return self._dialect.line(event).rstrip("\n").split("\n")
