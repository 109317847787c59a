"""The interactive terminal front end: urwid widgets, styles and keys.

This module draws and reads the keyboard; it knows nothing of sockets.
:mod:`triochat.join` runs it on trio's own loop (``urwid.TrioEventLoop``)
next to the network tasks. Incoming lines are added with
:meth:`ChatScreen.add_line`; what the user types comes out of
:meth:`ChatScreen.next_action` as a line of text or :data:`QUIT`.
"""

from __future__ import annotations

import collections
import zlib
from typing import Final

import trio
import urwid

from ..protocol import line as p
from .incoming import Incoming, Kind, RoomState, parse_line

DEFAULT_SCROLLBACK: Final = 5000
DEFAULT_INPUT_HISTORY: Final = 500
# Lines typed but not yet sent; only a stalled connection ever fills it.
_PENDING_LINES: Final = 32

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


class _InputLine(urwid.Edit):
    """The input line, with a bounded history walked with Up and Down."""

    def __init__(self, history_size: int) -> None:
        super().__init__(("prompt", "> "))
        self.history: collections.deque[str] = collections.deque(maxlen=history_size)
        self._index = 0  # position in history while browsing; len(history) = the draft
        self._draft = ""

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


class _Root(urwid.WidgetWrap[_Frame]):
    """The whole screen; routes the keys that are not the input line's."""

    def __init__(self, screen: ChatScreen) -> None:
        self._screen = screen
        super().__init__(screen.frame)

    def keypress(self, size: tuple[int, int], key: str) -> str | None:  # type: ignore[override]
        return self._screen.keypress(size, key)

    def render(self, size: tuple[int, int], focus: bool = False) -> urwid.Canvas:  # type: ignore[override]
        self._screen.size = size
        return super().render(size, focus)


class ChatScreen:
    """The chat window: message pane, status line, input line."""

    def __init__(
        self,
        server: str,
        state: RoomState,
        *,
        scrollback: int = DEFAULT_SCROLLBACK,
        input_history: int = DEFAULT_INPUT_HISTORY,
    ) -> None:
        self.server = server
        self.state = state
        self.scrollback = scrollback
        self.walker = urwid.SimpleFocusListWalker[urwid.Text]([])
        self.pane: urwid.ListBox[int] = urwid.ListBox(self.walker)
        self.status = urwid.Text("", wrap="ellipsis")
        self.status_map = urwid.AttrMap(self.status, "status")
        self.input = _InputLine(input_history)
        self.frame: _Frame = urwid.Frame(
            self.pane, footer=urwid.Pile([self.status_map, self.input]), focus_part="footer"
        )
        self.root = _Root(self)
        self.size: tuple[int, int] | None = None  # of the whole screen, as last drawn
        self.asking_name = False
        self.joining = True  # registering: Enter waits, so no line is taken for a name
        self.notice = ""  # overrides the status line's right half while set
        self.any_key = trio.Event()  # set by any key press once the chat is over
        self.finished = False
        send, self._actions = trio.open_memory_channel[Action](_PENDING_LINES)
        self._send_action = send
        self.quit_requested = False
        self.force_quit = trio.Event()  # a second quit request, or the queue was full
        self.refresh_status()

    # --- output ---------------------------------------------------------------

    def add_line(self, line: str) -> None:
        """Show one server line, and follow the state it changes."""
        incoming = parse_line(line)
        self.state.update(incoming)
        self.add_markup(markup(incoming, self.state))
        self.refresh_status()

    def add_markup(self, text: Markup) -> None:
        following = self.following
        self.walker.append(urwid.Text(text))
        if len(self.walker) > self.scrollback:
            del self.walker[0]
        if following:
            self.pane.set_focus(len(self.walker) - 1)
            self.pane.set_focus_valign("bottom")

    @property
    def following(self) -> bool:
        """Whether the pane shows the newest line (the user has not scrolled up)."""
        if not self.walker or self.pane.focus_position >= len(self.walker) - 1:
            return True
        return self.size is not None and "bottom" in self.pane.ends_visible(
            self._pane_size(self.size)
        )

    def refresh_status(self) -> None:
        state = self.state
        if self.asking_name:
            left = f" {self.server} │ choose a name"
        else:
            users = "1 user" if state.user_count == 1 else f"{state.user_count} users"
            left = f" {self.server} │ {state.name} │ {state.room} │ {users}"
        right = self.notice or ("" if self.following else "-- more below --  ") + HINTS
        self.status.set_text(f"{left} │ {right}")

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
        self.notice = ""
        self.input.set_caption(("prompt", "> "))
        self.refresh_status()

    def finish(self, message: str) -> None:
        """The chat is over: say why, and let any key close the window."""
        self.finished = True
        self.add_markup([("error", f"! {message}")])
        self.set_notice("disconnected: press any key to exit", bad=True)

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
        try:
            self._send_action.send_nowait(p.clean_text(text))
        except trio.WouldBlock:
            # Keep the text: nothing typed is dropped silently.
            self.set_notice("not sent yet, the server is slow: press Enter again", bad=True)
            return
        if not self.asking_name:
            self.input.remember(text)
        self.input.set_edit_text("")
        if self.notice:
            self.set_notice("")

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
            self.pane.keypress(self._pane_size(size), key)
            self.refresh_status()
        else:
            return self.frame.keypress(size, key)
        return None

    def _pane_size(self, size: tuple[int, int]) -> tuple[int, int]:
        cols, rows = size
        footer = self.frame.footer
        assert footer is not None
        return cols, max(1, rows - footer.rows((cols,)))
