"""The interactive terminal front end: urwid widgets, styles and keys.

This module draws and reads the keyboard; it knows nothing of sockets.
:mod:`triochat.join` runs it on trio's own loop (``urwid.TrioEventLoop``)
next to the network tasks. Incoming lines are added with
:meth:`ChatScreen.add_line`; what the user types comes out of
:meth:`ChatScreen.next_action` as a line of text or :data:`QUIT`.
"""

from __future__ import annotations

import collections
import datetime
import re
import zlib
from collections.abc import Callable, Iterable, Sequence
from typing import Final

import trio
import urwid

from ..protocol import line as p
from .cells import LAYOUT
from .incoming import Incoming, Kind, RoomState, parse_line

DEFAULT_SCROLLBACK: Final = 5000
DEFAULT_INPUT_HISTORY: Final = 500
# Lines typed but not yet sent; only a stalled connection ever fills it.
_PENDING_LINES: Final = 32
# The input line grows to at most this share of the window, then scrolls with the cursor.
_INPUT_SHARE: Final = 3
_LINE_TOO_LONG: Final = re.compile(r"Line too long \(limit (\d+) bytes\)")
# The /commands named in the server's /help text, for Tab completion.
COMMANDS: Final = tuple(
    sorted({f"/{verb}" for verb in re.findall(r"(?<![/\w])/([a-z]+)", " ".join(p.HELP))})
)

NAME_COLOURS: Final = (
    "light red",
    "light green",
    "yellow",
    "light blue",
    "light magenta",
    "light cyan",
    "dark green",
    "brown",
    "dark cyan",
    "dark magenta",
)

PALETTE: Final[list[tuple[str, str, str]]] = [
    ("stamp", "dark gray", "default"),
    ("text", "default", "default"),
    ("own", "white", "default"),
    ("own_name", "white,bold", "dark blue"),
    ("mention", "black", "yellow"),
    ("event", "dark cyan", "default"),
    ("private", "light magenta", "default"),
    ("info", "dark cyan", "default"),
    ("error", "light red,bold", "default"),
    ("status", "white", "dark blue"),
    ("status_bad", "white,bold", "dark red"),
    ("prompt", "light green,bold", "default"),
    ("separator", "dark gray", "default"),
    *[(f"name{i}", colour, "default") for i, colour in enumerate(NAME_COLOURS)],
]

HINTS: Final = "PgUp/PgDn scroll · Ctrl-D quit"


class _Quit:
    def __repr__(self) -> str:
        return "QUIT"


QUIT: Final = _Quit()
"""Returned by :meth:`ChatScreen.next_action` when the user asks to leave."""

Action = str | _Quit
_Frame = urwid.Frame[urwid.ListBox[int], None, urwid.Pile]
Markup = list[str | tuple[str, str]]


Key = str | tuple[str, int, int, int]


def day_separator(day: datetime.date) -> Markup:
    """The line shown when the day changes: ``── Tuesday 1 December 2026 ──``."""
    return [("separator", f"── {day:%A} {day.day} {day:%B %Y} ──")]


def is_quit_word(text: str) -> bool:
    """``quit`` or ``exit`` alone on a line means leave, as in a shell."""
    return text.strip().lower() in ("quit", "exit")


def name_attr(name: str) -> str:
    """The palette entry for ``name``: stable across runs and machines."""
    digest = zlib.crc32(p.name_key(name).encode())
    return f"name{digest % len(NAME_COLOURS)}"


def markup(line: Incoming, state: RoomState) -> Markup:
    """How one server line looks, as urwid text markup."""
    stamp: Markup = [("stamp", line.stamp + " ")] if line.stamp else []
    match line.kind:
        case Kind.MESSAGE:
            if state.is_me(line.name):
                return [*stamp, ("own_name", f"<{line.name}>"), " ", ("own", line.text)]
            text_attr = "mention" if state.mentions_me(line.text) else "text"
            return [*stamp, (name_attr(line.name), f"<{line.name}>"), " ", (text_attr, line.text)]
        case Kind.EVENT:
            text_attr = (
                "mention"
                if not state.is_me(line.name) and state.mentions_me(line.text)
                else "event"
            )
            return [
                *stamp,
                ("event", "* "),
                (name_attr(line.name), line.name),
                " ",
                (text_attr, line.text),
            ]
        case Kind.PRIVATE:
            return [
                *stamp,
                ("private", "*"),
                (name_attr(line.name), line.name),
                ("private", "* " + line.text),
            ]
        case Kind.PRIVATE_SENT:
            return [
                *stamp,
                ("private", "-> *"),
                (name_attr(line.name), line.name),
                ("private", "* " + line.text),
            ]
        case Kind.INFO:
            return [("info", "* " + line.text)]
        case Kind.ERROR:
            return [("error", "! " + line.text)]
    return [("text", line.text)]


def _word_left(text: str, pos: int) -> int:
    """Where the word before ``pos`` starts (readline's backward-word)."""
    while pos > 0 and not text[pos - 1].isalnum():
        pos -= 1
    while pos > 0 and text[pos - 1].isalnum():
        pos -= 1
    return pos


def _word_right(text: str, pos: int) -> int:
    """Where the word after ``pos`` ends (readline's forward-word)."""
    while pos < len(text) and not text[pos].isalnum():
        pos += 1
    while pos < len(text) and text[pos].isalnum():
        pos += 1
    return pos


class _InputLine(urwid.Edit):
    """The input line: readline's keys, a bounded history walked with Up and Down, Tab completion.

    ``completions`` is called with the word before the cursor and whether it
    is the line's first word, and returns what that word could become.
    """

    def __init__(self, history_size: int, completions: Callable[[str, bool], list[str]]) -> None:
        super().__init__(("prompt", "> "), layout=LAYOUT)
        self.history: collections.deque[str] = collections.deque(maxlen=history_size)
        self._index = 0  # position in history while browsing; len(history) = the draft
        self._draft = ""
        self._completions = completions
        self._cycle: tuple[int, list[str], int] | None = None  # word start, candidates, shown
        self.offered: list[str] = []  # the candidates the last Tab found, for the status line

    def remember(self, text: str) -> None:
        if text.strip() and (not self.history or self.history[-1] != text):
            self.history.append(text)
        self._index = len(self.history)
        self._draft = ""

    def browse(self, step: int) -> None:
        if self._index == len(self.history):
            self._draft = self.edit_text
        index = min(max(self._index + step, 0), len(self.history))
        if index == self._index:
            return
        self._index = index
        text = self._draft if index == len(self.history) else self.history[index]
        self.set_edit_text(text)
        self.set_edit_pos(len(text))

    def keypress(self, size: tuple[int], key: str) -> str | None:  # type: ignore[override]
        if key != "tab":
            self._cycle = None
            self.offered = []
        text, pos = self.edit_text, self.edit_pos
        match key:
            case "ctrl a":
                self.set_edit_pos(0)
            case "ctrl e":
                self.set_edit_pos(len(text))
            case "ctrl u":
                self._replace(0, pos, "")
            case "ctrl k":
                self._replace(pos, len(text), "")
            case "ctrl w":
                start = pos
                while start > 0 and text[start - 1] == " ":
                    start -= 1
                while start > 0 and text[start - 1] != " ":
                    start -= 1
                self._replace(start, pos, "")
            case "meta b":
                self.set_edit_pos(_word_left(text, pos))
            case "meta f":
                self.set_edit_pos(_word_right(text, pos))
            case "meta backspace":
                self._replace(_word_left(text, pos), pos, "")
            case "meta d":
                self._replace(pos, _word_right(text, pos), "")
            case "tab":
                self.complete()
            case _:
                return super().keypress(size, key)
        return None

    def type(self, text: str) -> None:
        """Insert typed (or pasted) text at the cursor in one step."""
        self._cycle = None
        self.offered = []
        self.insert_text(text)

    def _replace(self, start: int, end: int, text: str) -> None:
        old = self.edit_text
        self.set_edit_text(old[:start] + text + old[end:])
        self.set_edit_pos(start + len(text))

    def complete(self) -> None:
        """Complete the word before the cursor; Tab again cycles through the candidates."""
        text, pos = self.edit_text, self.edit_pos
        if self._cycle is not None:
            start, candidates, shown = self._cycle
            shown = (shown + 1) % len(candidates)
            self._cycle = (start, candidates, shown)
            self._replace(start, pos, candidates[shown])
            return
        start = text.rfind(" ", 0, pos) + 1
        word = text[start:pos]
        candidates = self._completions(word, not text[:start].strip())
        self.offered = candidates
        if not candidates:
            return
        if len(candidates) == 1:
            self._replace(start, pos, candidates[0] + " ")
            self.offered = []
            return
        prefix = _common_prefix(candidates)
        if len(prefix) > len(word):
            self._replace(start, pos, prefix)
        else:
            self._cycle = (start, candidates, 0)
            self._replace(start, pos, candidates[0])


def _common_prefix(words: Sequence[str]) -> str:
    """The longest prefix every word has, compared case-insensitively; the first word's spelling."""
    first = words[0]
    size = len(first)
    for word in words[1:]:
        size = min(size, len(word))
        while size and word[:size].casefold() != first[:size].casefold():
            size -= 1
    return first[:size]


class _InputBox(urwid.WidgetWrap[_InputLine]):
    """The input line, shown in at most ``max_rows`` rows: a long line scrolls with the cursor."""

    def __init__(self, edit: _InputLine) -> None:
        super().__init__(edit)
        self.max_rows = 8

    def rows(self, size: tuple[int], focus: bool = False) -> int:
        return min(self._w.rows(size, focus), self.max_rows)

    def render(self, size: tuple[int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        canvas = self._w.render(size, focus)
        if canvas.rows() <= self.max_rows:
            return canvas
        cursor = self._w.get_cursor_coords(size)
        row = cursor[1] if cursor is not None else canvas.rows() - 1
        top = min(max(row - self.max_rows + 1, 0), canvas.rows() - self.max_rows)
        trimmed = urwid.CompositeCanvas(canvas)
        trimmed.trim(top, self.max_rows)
        return trimmed


class _Root(urwid.WidgetWrap[_Frame]):
    """The whole screen; routes the keys that are not the input line's."""

    def __init__(self, screen: ChatScreen) -> None:
        self._screen = screen
        super().__init__(screen.frame)

    def keypress(self, size: tuple[int, int], key: str) -> str | None:  # type: ignore[override]
        return self._screen.keypress(size, key)

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        self._screen.resized(size)
        return super().render(size, focus)


class ChatScreen:
    """The chat window: message pane, status line, input line.

    Args:
      max_line: the longest line (in UTF-8 bytes) the server takes; a longer
        one stays in the input line with an error instead of being sent.
        A server that says ``! Line too long (limit N bytes)`` teaches a smaller N.
      today: the local date, for the day separators (a parameter for tests).
    """

    def __init__(
        self,
        server: str,
        state: RoomState,
        *,
        scrollback: int = DEFAULT_SCROLLBACK,
        input_history: int = DEFAULT_INPUT_HISTORY,
        max_line: int = p.DEFAULT_MAX_LINE,
        today: Callable[[], datetime.date] = datetime.date.today,
    ) -> None:
        self.server = server
        self.state = state
        self.scrollback = scrollback
        self.max_line = max_line
        self.today = today
        self.walker = urwid.SimpleFocusListWalker[urwid.Text]([])
        self.pane: urwid.ListBox[int] = urwid.ListBox(self.walker)
        self.status = urwid.Text("", wrap="ellipsis")
        self.status_map = urwid.AttrMap(self.status, "status")
        self.input = _InputLine(input_history, self.completions)
        self.input_box = _InputBox(self.input)
        self.frame: _Frame = urwid.Frame(
            self.pane, footer=urwid.Pile([self.status_map, self.input_box]), focus_part="footer"
        )
        self.root = _Root(self)
        self.size: tuple[int, int] | None = None  # of the whole screen, as last drawn
        self._pinned = False  # the pane was last put at the end by _pin, not moved since
        self.asking_name = False
        self.joining = True  # registering: Enter waits, so no line is taken for a name
        self.joined = False  # the server accepted the name
        self.notice = ""  # overrides the status line's right half while set
        self.any_key = trio.Event()  # set by any key press once the chat is over
        self.finished = False
        self._ending = ""  # why a chat that never started ended, for the status line
        self._day: datetime.date | None = None  # the day of the last stamped line shown
        self._entering: str | None = None  # the room asked for, until the server confirms it
        send, self._actions = trio.open_memory_channel[Action](_PENDING_LINES)
        self._send_action = send
        self.quit_requested = False
        self.force_quit = trio.Event()  # a second quit request, or the queue was full
        self.refresh_status()

    # --- output ---------------------------------------------------------------

    def add_line(self, line: str, *, show: bool = True) -> None:
        """Show one server line (unless not ``show``), and follow the state it changes."""
        incoming = parse_line(line)
        self.state.update(incoming)
        if incoming.kind is Kind.ERROR and (limit := _LINE_TOO_LONG.match(incoming.text)):
            self.max_line = min(self.max_line, int(limit[1]))
        if self._entering is not None:
            users = incoming.kind is Kind.INFO and incoming.text.startswith("Users in ")
            if incoming.kind is Kind.ERROR or (users and self.state.room == self._entering):
                self._entering = None
                if self.notice.startswith("joining"):
                    self.notice = ""
        if show:
            if incoming.stamp:
                self._separate_days(incoming)
            self.add_markup(markup(incoming, self.state))
        self.refresh_status()

    def _separate_days(self, line: Incoming) -> None:
        # A line's day is the one in its stamp if the server sent it, else the day it arrived.
        day = line.date or self.today()
        if day != self._day:
            self._day = day
            self.add_markup(day_separator(day))

    def add_markup(self, text: Markup) -> None:
        following = self.following
        self.walker.append(urwid.Text(text, layout=LAYOUT))
        if len(self.walker) > self.scrollback:
            del self.walker[0]
        if following:
            self._pin()

    def _pin(self) -> None:
        """Show the end of the newest line, even one taller than the pane."""
        if not self.walker:
            return
        self._pinned = True
        self.pane.set_focus(len(self.walker) - 1)
        self.pane.set_focus_valign("bottom")
        if self.size is not None:
            cols, rows = self._pane_size(self.size)
            height = self.walker[-1].rows((cols,))
            if height > rows:
                # urwid would align its top: hide the rows above instead.
                self.pane.set_focus_valign_pending = None
                self.pane.set_focus_pending = None
                self.pane.shift_focus((cols, rows), rows - height)

    def resized(self, size: tuple[int, int]) -> None:
        """Called before each draw: keep the newest line in view across a resize."""
        self.input_box.max_rows = max(1, (size[1] - 1) // _INPUT_SHARE)
        if size != self.size:
            following = self.following  # at the old size, as the user last saw it
            self.size = size
            self._pinned = False  # the same focus and offset may now hide the end
            if following:
                self._pin()
        self.refresh_status()

    @property
    def following(self) -> bool:
        """Whether the pane shows the end of the newest line (the user has not scrolled up)."""
        if not self.walker:
            return True
        if self.size is None or (self._pinned and self.pane.focus_position == len(self.walker) - 1):
            return self.pane.focus_position >= len(self.walker) - 1
        return "bottom" in self.pane.ends_visible(self._pane_size(self.size))

    def refresh_status(self) -> None:
        state = self.state
        if self.asking_name:
            left = f" {self.server} │ choose a name"
        elif not self.joined:
            left = f" {self.server} │ {self._ending or 'not joined yet'}"
        else:
            users = "1 user" if state.user_count == 1 else f"{state.user_count} users"
            left = f" {self.server} │ {state.name} │ {state.room} │ {users}"
        offered = self.input.offered
        right = self.notice or (f"tab: {' '.join(offered)}  " if len(offered) > 1 else "") + HINTS
        # First, so that even a narrow window shows it.
        more = "" if self.following else " -- more below -- │"
        self.status.set_text(f"{more}{left} │ {right}")

    def set_notice(self, notice: str, *, bad: bool = False) -> None:
        self.notice = notice
        self.status_map.set_attr_map({None: "status_bad" if bad else "status"})
        self.refresh_status()

    def ask_name(self) -> None:
        """Turn the input line into a name prompt (the next submitted line is a name)."""
        self.asking_name = True
        self.joining = False
        self.input.set_caption(("prompt", "name: "))
        self.refresh_status()

    def ask_password(self) -> None:
        """Turn the input line into a password prompt that shows ``*`` for each character."""
        self.ask_name()
        self.input.set_caption(("prompt", "password: "))
        self.input.set_mask("*")
        self.set_notice("the server asks for a password")

    def registering(self, name: str) -> None:
        self.input.set_mask(None)
        self.asking_name = False
        self.joining = True
        self.set_notice(f"joining as {name}…")

    def chatting(self) -> None:
        self.asking_name = False
        self.joining = False
        self.joined = True
        self.notice = ""
        self.input.set_caption(("prompt", "> "))
        self.refresh_status()

    def entering(self, room: str) -> None:
        """The user asked for ``room``, not the lobby: say so until the server confirms it."""
        self._entering = p.normalize_room(room) or room
        self.set_notice(f"joining {self._entering}…")

    def finish(self, message: str, *, state: str | None = None) -> None:
        """The chat is over: say why, and let any key close the window.

        ``state`` replaces the status line's name, room and users when the
        chat never started (a wrong password): it says what happened instead.
        """
        self.finished = True
        if state is not None:
            self.joined = False
            self.asking_name = False
            self._ending = state
        self.input.set_mask(None)
        self.add_markup([("error", f"! {message}")])
        self.set_notice("disconnected: press any key to exit", bad=True)

    def transcript(self, rows: int, cols: int) -> list[str]:
        """The newest lines, as plain text, that fill ``rows`` rows ``cols`` wide (for the exit)."""
        lines: list[str] = []
        used = 0
        for widget in reversed(self.walker):
            used += widget.rows((max(cols, 1),))
            if used > rows and lines:
                break
            lines.append(str(widget.text))
        return lines[::-1]

    def last_lines(self, count: int) -> list[str]:
        """The newest ``count`` lines, as plain text."""
        return [str(widget.text) for widget in list(self.walker)[-count:]] if count > 0 else []

    # --- input ----------------------------------------------------------------

    async def next_action(self) -> Action:
        """The next line the user submitted, or :data:`QUIT`."""
        return await self._actions.receive()

    def request_quit(self) -> None:
        if self.quit_requested:
            self.force_quit.set()  # asked twice: stop waiting for the server
            return
        self.quit_requested = True
        try:
            self._send_action.send_nowait(QUIT)
        except trio.WouldBlock:
            self.force_quit.set()

    def _submit(self) -> None:
        text = self.input.edit_text
        if self.asking_name and not text.strip():
            return
        if self.joining and not is_quit_word(text):
            self.set_notice("still joining: press Enter again in a moment")
            return
        if (self.joining or not self.asking_name) and is_quit_word(text):
            self.request_quit()
            return
        line = p.clean_text(text)
        size = len(line.encode())
        if size > self.max_line:
            # Refused here, not sent: the server would discard it. The text stays to be cut.
            why = f"! Not sent: the line is {size} bytes, the server takes {self.max_line}"
            self.add_markup([("error", why)])
            self.set_notice(f"line too long ({size}/{self.max_line} bytes): shorten it", bad=True)
            return
        try:
            self._send_action.send_nowait(line)
        except trio.WouldBlock:
            # Keep the text: nothing typed is dropped silently.
            self.set_notice("not sent yet, the server is slow: press Enter again", bad=True)
            return
        if not self.asking_name:
            self.input.remember(text)
        self.input.set_edit_text("")
        if self.notice:
            self.set_notice("")

    def completions(self, word: str, first: bool) -> list[str]:
        """What ``word`` could become: a /command (first word), a #room, or a name in the room."""
        if word.startswith("/"):
            pool: Iterable[str] = COMMANDS if first else ()
        elif word.startswith("#"):
            pool = sorted(self.state.rooms)
        else:
            pool = sorted(self.state.members.values(), key=p.name_key)
        key = word.casefold()
        return [item for item in pool if item.casefold().startswith(key)]

    def handle_input(self, keys: list[Key], raw: list[int]) -> list[Key]:
        """Handle a whole batch of input at once (urwid's ``input_filter``), and draw once after.

        A paste arrives as thousands of keys in one read: runs of characters
        go into the input line in one insertion, not a key at a time, and only
        ``window resize`` is left for urwid. In a bracketed paste, line breaks
        and tabs become spaces, so a pasted block waits for Enter.
        """
        size = self.size or (80, 24)
        run: list[str] = []
        pasting = False
        left: list[Key] = []
        for key in keys:
            if not isinstance(key, str):
                continue  # mouse events: none are asked for
            if key == "window resize":
                left.append(key)
                continue
            if key in ("begin paste", "end paste"):
                pasting = key == "begin paste"
                continue
            if pasting and key in ("enter", "tab"):
                key = " "
            if len(key) == 1 and key.isprintable() and not self.finished:
                run.append(key)
                continue
            if run:
                self._type("".join(run))
                run = []
            self.keypress(size, key)
        if run:
            self._type("".join(run))
        self.refresh_status()
        return left

    def _type(self, text: str) -> None:
        self.input.type(text)

    def keypress(self, size: tuple[int, int], key: str) -> str | None:
        if self.finished:
            self.any_key.set()
            return None
        if key == "enter":
            self._submit()
        elif key == "ctrl c" or (key == "ctrl d" and not self.input.edit_text):
            self.request_quit()
        elif key == "ctrl d":
            self.input.keypress((size[0],), "delete")
        elif key in ("up", "down"):
            self.input.browse(-1 if key == "up" else 1)
        elif key in ("page up", "page down"):
            self._pinned = False
            self.pane.keypress(self._pane_size(size), key)
        else:
            # Straight to the input line: the frame would lay out every widget for each key.
            handled = self.input.keypress((size[0],), key)
            self.refresh_status()
            return handled
        self.refresh_status()
        return None

    def _pane_size(self, size: tuple[int, int]) -> tuple[int, int]:
        cols, rows = size
        footer = self.frame.footer
        assert footer is not None
        return cols, max(1, rows - footer.rows((cols,)))
