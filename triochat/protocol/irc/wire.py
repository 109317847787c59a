"""IRC messages on the wire, sans-IO: framing, parsing and serializing, with IRCv3 tags.

The grammar is the Modern IRC one (modern.ircdocs.horse), RFC 2812 where it is
silent: ``[@tags SPACE] [:source SPACE] command *(SPACE param) [SPACE :trailing]``.
Tag values are escaped as the IRCv3 message-tags spec says (``\\:`` ``\\s``
``\\\\`` ``\\r`` ``\\n``). Serializing can never produce a second line: CR, LF
and NUL are removed from every parameter and from the source, and a tag value
carries them only escaped.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from ..line import _ESCAPE_SEQUENCE  # the line door's rule, shared

# A client's line: 512 bytes including the CR LF, plus 8191 bytes of tags
# including the leading "@" and the space after them (IRCv3 message-tags).
MAX_LINE: Final = 512
MAX_TAGS: Final = 8191
MAX_PARAMS: Final = 15

_TAG_KEY_RE: Final = re.compile(r"\+?(?:[A-Za-z0-9.-]+/)?[A-Za-z0-9-]+")
_COMMAND_RE: Final = re.compile(r"[A-Za-z]+|[0-9]{3}")
_CHAT_STARTS: Final = ("PRIVMSG ", "NOTICE ")

_ESCAPE: Final = str.maketrans({";": "\\:", " ": "\\s", "\\": "\\\\", "\r": "\\r", "\n": "\\n"})
_UNESCAPE: Final = {":": ";", "s": " ", "\\": "\\", "r": "\r", "n": "\n"}
_UNSAFE: Final[dict[int, None]] = {ord("\r"): None, ord("\n"): None, 0: None}

# Commands whose last parameter is text: it is always written with its ":", as
# servers conventionally do, so a one-word text looks like any other.
_TEXT_LAST: Final = frozenset(
    {"PRIVMSG", "NOTICE", "PART", "QUIT", "TOPIC", "ERROR", "AWAY", "KICK", "KILL"}
)


class IRCError(ValueError):
    """A message that cannot be written: a bug in the caller, never the peer's doing."""


def escape_tag_value(value: str) -> str:
    """``value`` as it is written after ``key=`` in a tag (a NUL, which has no escape, goes)."""
    return value.translate(_ESCAPE).replace("\0", "")


def unescape_tag_value(raw: str) -> str:
    """The value of a tag as written; an unknown escape is the character itself."""
    if "\\" not in raw:
        return raw
    out: list[str] = []
    chars = iter(raw)
    for char in chars:
        if char != "\\":
            out.append(char)
            continue
        following = next(chars, None)
        if following is not None:  # a trailing lone backslash is dropped
            out.append(_UNESCAPE.get(following, following))
    return "".join(out)


@dataclass(frozen=True, slots=True)
class Message:
    """One IRC message: ``tags`` in the order written (a value of ``""`` is no value)."""

    command: str
    params: tuple[str, ...] = ()
    source: str | None = None
    tags: tuple[tuple[str, str], ...] = ()

    def tag(self, key: str) -> str | None:
        """The value of tag ``key``, or ``None`` if the message does not carry it."""
        for name, value in self.tags:
            if name == key:
                return value
        return None


# A frozen dataclass's __init__ sets each field through object.__setattr__, which
# costs about 1 us a message; the parser's fast path (one a chat line) sets the slots
# directly instead.
_new_message = object.__new__
_set_command, _set_params, _set_source, _set_tags = (
    Message.__dict__[name].__set__ for name in ("command", "params", "source", "tags")
)


def _chat_message(command: str, target: str, text: str) -> Message:
    """``Message(command, (target, text))``, made without the frozen ``__init__``."""
    msg = _new_message(Message)
    _set_command(msg, command)
    _set_params(msg, (target, text))
    _set_source(msg, None)
    _set_tags(msg, ())
    return msg


def message(
    command: str, *params: str, source: str | None = None, tags: Iterable[tuple[str, str]] = ()
) -> Message:
    """Shorthand for :class:`Message`: ``message("PRIVMSG", "#a", "hi", source=...)``."""
    return Message(command, params, source, tuple(tags))


# --- Parsing -------------------------------------------------------------------


class MalformedMessage(ValueError):
    """A line that is not an IRC message (no command, or a command that is not a word)."""


def parse(line: str) -> Message | None:
    """The message in one line (without its line ending); ``None`` for a blank line.

    Raises:
      MalformedMessage: the line has tags or a source but no valid command.
    """
    if line.startswith(_CHAT_STARTS):
        # The common line, ``PRIVMSG #room :text``: what the general parse gives it.
        command, _, rest = line.partition(" ")
        target, _, text = rest.partition(" ")
        if target and target[0] != ":" and text[:1] == ":":
            return _chat_message(command, target, text[1:])
    rest = line.lstrip(" ")
    if not rest:
        return None
    tags: list[tuple[str, str]] = []
    if rest.startswith("@"):
        raw_tags, _, rest = rest[1:].partition(" ")
        tags = _parse_tags(raw_tags)
        rest = rest.lstrip(" ")
    source = None
    if rest.startswith(":"):
        source, _, rest = rest[1:].partition(" ")
        rest = rest.lstrip(" ")
    command, _, rest = rest.partition(" ")
    if not command:
        raise MalformedMessage("no command")
    if _COMMAND_RE.fullmatch(command) is None:
        raise MalformedMessage(f"not a command: {command[:32]!r}")
    params: list[str] = []
    while rest:
        rest = rest.lstrip(" ")
        if not rest:
            break
        if rest.startswith(":") or len(params) == MAX_PARAMS - 1:
            params.append(rest.removeprefix(":"))
            break
        param, _, rest = rest.partition(" ")
        params.append(param)
    return Message(command.upper(), tuple(params), source, tuple(tags))


def _parse_tags(raw: str) -> list[tuple[str, str]]:
    # A repeated key keeps its last value (message-tags spec); keys that break
    # the grammar are skipped rather than failing the whole message.
    found: dict[str, str] = {}
    for item in raw.split(";"):
        key, _, value = item.partition("=")
        if _TAG_KEY_RE.fullmatch(key) is not None:
            found[key] = unescape_tag_value(value)
    return list(found.items())


# --- Serializing -----------------------------------------------------------------


def scrub(text: str) -> str:
    """``text`` without CR, LF and NUL, the characters that could end or cut a line."""
    if "\r" in text or "\n" in text or "\0" in text:
        return text.translate(_UNSAFE)
    return text


def token(text: str) -> str:
    """``text`` fit to be a middle parameter: up to its first space, never empty or ``:``-led.

    For echoing what a client sent (a nick, a channel) in a reply: whatever it
    was, the reply keeps its shape.
    """
    word = scrub(text).split(" ", 1)[0].lstrip(":")
    return word or "*"


def serialize(msg: Message) -> bytes:
    """The bytes of ``msg``, ending in CR LF.

    Raises:
      IRCError: the command, a tag key, the source or a middle parameter cannot be
        written as given (a space in a nick, an empty middle parameter, ...).
    """
    return format_message(msg).encode()


def format_message(msg: Message) -> str:
    """:func:`serialize` as text."""
    parts: list[str] = []
    if msg.tags:
        parts.append("@" + ";".join(_format_tag(k, v) for k, v in msg.tags))
    if msg.source is not None:
        source = scrub(msg.source)
        if not source or " " in source:
            raise IRCError(f"cannot write source {msg.source!r}")
        parts.append(":" + source)
    if _COMMAND_RE.fullmatch(msg.command) is None:
        raise IRCError(f"not a command: {msg.command!r}")
    parts.append(msg.command)
    params = msg.params
    if len(params) > MAX_PARAMS:
        raise IRCError(f"{len(params)} parameters, at most {MAX_PARAMS}")
    for param in params[:-1]:
        param = scrub(param)
        if not param or " " in param or param.startswith(":"):
            raise IRCError(f"cannot write middle parameter {param!r}")
        parts.append(param)
    if params:
        last = scrub(params[-1])
        if (
            not last
            or " " in last
            or last.startswith(":")
            or (len(params) > 1 and (msg.command in _TEXT_LAST or msg.command.isdigit()))
        ):
            last = ":" + last
        parts.append(last)
    return " ".join(parts) + "\r\n"


def _format_tag(key: str, value: str) -> str:
    if _TAG_KEY_RE.fullmatch(key) is None:
        raise IRCError(f"cannot write tag key {key!r}")
    return f"{key}={escape_tag_value(value)}" if value else key


# --- Framing ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputTooLong:
    """A line over the limits (512 bytes, plus 8191 of tags); it was dropped (417)."""


@dataclass(frozen=True, slots=True)
class Malformed:
    """A line that is not a message; ``reason`` says why (the door answers it)."""

    line: str
    reason: str


class _NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()
"""Returned by :meth:`IRCFramer.next_event` when more bytes are needed."""

Received = Message | InputTooLong | Malformed
"""What the framer gives: a message, or a line it could not take."""
FramerEvent = Received | _NeedData


def decode(raw: bytes) -> str:
    """A line's text: UTF-8, an invalid byte becoming U+FFFD (visible, not dropped)."""
    return raw.decode("utf-8", "replace")


class IRCFramer:
    """Splits a client's byte stream into IRC messages, in bounded time and space.

    A line ends in LF, with or without a CR before it; blank lines are skipped.
    At most ``max_tags + max_line`` bytes of an unfinished line are kept: past
    that, or when a finished line's tags or the rest are over their limits, one
    :class:`InputTooLong` is reported and the line dropped, and the stream goes
    on with the next line. Each byte is scanned for LF once.
    """

    __slots__ = ("_buf", "_discarding", "_scanned", "max_line", "max_tags")

    def __init__(self, max_line: int = MAX_LINE, max_tags: int = MAX_TAGS) -> None:
        if max_line < 3 or max_tags < 2:
            raise ValueError("max_line must be at least 3 and max_tags at least 2")
        self.max_line = max_line
        self.max_tags = max_tags
        self._buf = bytearray()
        self._scanned = 0
        self._discarding = False

    def receive_data(self, data: bytes | bytearray) -> None:
        """Feed bytes received from the peer."""
        self._buf += data

    @property
    def buffered(self) -> int:
        """Bytes held for an unfinished line."""
        return len(self._buf)

    def next_event(self) -> FramerEvent:
        """The next message, :class:`InputTooLong`, :class:`Malformed`, or ``NEED_DATA``."""
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end < 0:
                if self._discarding:
                    self._buf.clear()
                    self._scanned = 0
                elif len(self._buf) - self._buf.endswith(b"\r") > self.max_tags + self.max_line - 2:
                    self._buf.clear()
                    self._scanned = 0
                    self._discarding = True
                    return InputTooLong()
                else:
                    self._scanned = len(self._buf)
                return NEED_DATA
            raw = bytes(self._buf[:end])
            del self._buf[: end + 1]
            self._scanned = 0
            if self._discarding:
                self._discarding = False
                continue
            event = self._line(raw.removesuffix(b"\r"))
            if event is not None:
                return event

    def events(self) -> list[Received]:
        """Every event complete so far, in order (empty when more bytes are needed).

        The same events as calling :meth:`next_event` until ``NEED_DATA``, but the
        complete lines of a read are split in one call rather than found one by one.
        """
        buf = self._buf
        end = buf.rfind(b"\n")
        found: list[Received] = []
        if end >= 0 and not self._discarding:
            chunk = bytes(buf[:end])
            del buf[: end + 1]
            self._scanned = 0
            short = self.max_line - 2
            for raw in chunk.split(b"\n"):
                if raw[-1:] == b"\r":
                    raw = raw[:-1]
                if len(raw) <= short and raw[:1] != b"@":
                    # Within the limit, no tags: _line's checks would pass.
                    text = raw.decode("utf-8", "replace")
                    try:
                        msg = parse(text)
                    except MalformedMessage as error:
                        found.append(Malformed(text, str(error)))
                        continue
                    if msg is not None:
                        found.append(msg)
                elif (checked := self._line(raw)) is not None:
                    found.append(checked)
        while not isinstance(event := self.next_event(), _NeedData):
            found.append(event)
        return found

    def _line(self, raw: bytes) -> Message | InputTooLong | Malformed | None:
        # Measured as sent (leading spaces count), so that a line within the
        # limits always fits under the unfinished-line bound above.
        if raw.startswith(b"@"):
            space = raw.find(b" ")
            tags_len = len(raw) + 1 if space < 0 else space + 1
            # The line's own limit counts the CR LF that ends it.
            if tags_len > self.max_tags or len(raw) - tags_len + 2 > self.max_line:
                return InputTooLong()
        elif len(raw) + 2 > self.max_line:
            return InputTooLong()
        text = decode(raw)
        try:
            return parse(text)
        except MalformedMessage as error:
            return Malformed(text, str(error))


def split_utf8(text: str, limit: int) -> Sequence[str]:
    """``text`` in pieces of at most ``limit`` bytes of UTF-8, cut between characters.

    Pieces are cut at the last space within the limit when there is one in its
    second half, so long lines wrap between words where they can.
    """
    if limit < 4:
        raise ValueError("limit must be at least 4 bytes")
    data = text.encode()
    if len(data) <= limit:
        return (text,)
    pieces: list[str] = []
    while len(data) > limit:
        cut = limit
        while cut > 0 and (data[cut] & 0xC0) == 0x80:  # not inside a character
            cut -= 1
        space = data.rfind(b" ", limit // 2, cut + 1)
        if space > 0:
            pieces.append(data[:space].decode())
            data = data[space + 1 :]
        else:
            pieces.append(data[:cut].decode())
            data = data[cut:]
    if data:
        pieces.append(data.decode())
    return pieces


# --- Text ------------------------------------------------------------------------

FORMATTING: Final = "\x02\x03\x04\x0f\x11\x16\x1d\x1e\x1f"
"""IRC's formatting codes (bold, colour, hex colour, reset, monospace, reverse,
italic, strikethrough, underline): they pass, as IRC clients expect."""

# Every other C0 control, DEL and the C1 controls go, after the terminal escape
# sequences they start are removed whole (the line door's rule, protocol.md), and
# so do the bidirectional overrides, which could reorder another user's line.
_IRC_CONTROLS: Final[dict[int, str | None]] = {
    c: None
    for c in [
        *range(0x00, 0x20),
        *range(0x7F, 0xA0),
        *range(0x202A, 0x202F),
        *range(0x2066, 0x206A),
    ]
    if chr(c) not in FORMATTING
}
_IRC_CONTROLS.update((c, None) for c in range(0x2066, 0x206A))
_IRC_CONTROLS[0x09] = " "


def clean_text(text: str) -> str:
    """``text`` without escape sequences and control characters, IRC formatting kept.

    A tab becomes a space.
    """
    if text.isprintable():
        return text
    return _ESCAPE_SEQUENCE.sub("", text).translate(_IRC_CONTROLS)
