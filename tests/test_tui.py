"""The chat window's widgets and keys, rendered off-screen (no terminal needed)."""

from __future__ import annotations

import datetime

import pytest
import trio
from conftest import Connect, StartServer

from triochat.client.connection import ConnectOptions
from triochat.client.incoming import RoomState, parse_line
from triochat.client.join import JoinConfig, _interactive_session
from triochat.client.tui import NAME_COLOURS, QUIT, ChatScreen, markup, name_attr

SIZE = (60, 8)


def rendered(screen: ChatScreen, size: tuple[int, int] = SIZE) -> list[str]:
    canvas = screen.root.render(size, focus=True)
    return [row.decode().rstrip() for row in canvas.text]


def press(screen: ChatScreen, *keys: str) -> None:
    for key in keys:
        screen.root.keypress(SIZE, key)


def type_text(screen: ChatScreen, text: str) -> None:
    press(screen, *text)


def make_screen() -> ChatScreen:
    screen = ChatScreen("127.0.0.1:7007", RoomState("ann"))
    screen.chatting()
    screen.add_line("* Users in #lobby: ann, ben")
    return screen


def test_name_colours_are_stable_and_spread() -> None:
    assert name_attr("Ben") == name_attr("ben")  # names are case-insensitive
    names = [f"user{i}" for i in range(40)]
    attrs = {name_attr(n) for n in names}
    assert attrs <= {f"name{i}" for i in range(len(NAME_COLOURS))}
    assert len(attrs) >= 5
    # crc32, not hash(): the same in every process and on every machine.
    assert name_attr("ben") == "name3"


def test_markup_sets_apart_own_lines_mentions_and_errors() -> None:
    state = RoomState("ann")

    def attrs(line: str) -> set[str]:
        return {part[0] for part in markup(parse_line(line), state) if isinstance(part, tuple)}

    assert "own_name" in attrs("[00:00:00] <ann> my line")
    assert "mention" in attrs("[00:00:00] <ben> hello ann")
    assert "mention" not in attrs("[00:00:00] <ben> hello everyone")
    assert name_attr("ben") in attrs("[00:00:00] <ben> hello everyone")
    assert "mention" in attrs("[00:00:00] * ben waves at ann")
    assert attrs("! No such user: zed") == {"error"}
    assert attrs("* Bye!") == {"info"}
    assert "private" in attrs("[00:00:00] *ben* psst")


def test_status_line_shows_server_name_room_and_users() -> None:
    screen = make_screen()
    status = rendered(screen)[-2]
    assert "127.0.0.1:7007 │ ann │ #lobby │ 2 users" in status
    screen.add_line("[00:00:00] * ben left #lobby (quit)")
    assert "#lobby │ 1 user │" in rendered(screen)[-2]


async def test_enter_submits_and_quit_words_quit() -> None:
    screen = make_screen()
    type_text(screen, "hello")
    assert rendered(screen)[-1] == "> hello"
    press(screen, "enter")
    assert await screen.next_action() == "hello"
    assert rendered(screen)[-1] == ">"
    type_text(screen, "quit")
    press(screen, "enter")
    assert await screen.next_action() is QUIT


@pytest.mark.parametrize("keys", [["ctrl d"], ["ctrl c"], ["a", "ctrl c"]])
async def test_ctrl_d_on_empty_line_and_ctrl_c_quit(keys: list[str]) -> None:
    screen = make_screen()
    press(screen, *keys)
    assert await screen.next_action() is QUIT
    assert not screen.force_quit.is_set()
    press(screen, "ctrl c")  # asked twice: stop waiting
    assert screen.force_quit.is_set()


def test_ctrl_d_in_text_deletes_forward() -> None:
    screen = make_screen()
    type_text(screen, "abc")
    press(screen, "home", "ctrl d")
    assert rendered(screen)[-1] == "> bc"
    assert not screen.quit_requested


async def test_history_with_up_and_down_keeps_the_draft() -> None:
    screen = make_screen()
    for line in ("one", "two"):
        type_text(screen, line)
        press(screen, "enter")
        assert await screen.next_action() == line
    type_text(screen, "dra")
    press(screen, "up")
    assert rendered(screen)[-1] == "> two"
    press(screen, "up", "up")
    assert rendered(screen)[-1] == "> one"
    press(screen, "down")
    assert rendered(screen)[-1] == "> two"
    press(screen, "down")
    assert rendered(screen)[-1] == "> dra"
    type_text(screen, "ft")
    assert rendered(screen)[-1] == "> draft"


def test_a_full_send_queue_keeps_the_typed_text() -> None:
    screen = make_screen()
    for i in range(32):
        type_text(screen, f"m{i}")
        press(screen, "enter")
    type_text(screen, "kept")
    press(screen, "enter")
    assert rendered(screen)[-1] == "> kept"
    assert "not sent yet" in rendered(screen)[-2]


def test_pane_follows_unless_scrolled_up() -> None:
    screen = make_screen()
    for i in range(50):
        screen.add_line(f"[00:00:00] <ben> line {i}")
    assert "line 49" in rendered(screen)[-3]
    press(screen, "page up")
    view = "\n".join(rendered(screen))
    assert "line 49" not in view
    assert "more below" in rendered(screen)[-2]
    screen.add_line("[00:00:00] <ben> line 50")
    assert "line 50" not in "\n".join(rendered(screen))  # the view stays put
    for _ in range(20):
        press(screen, "page down")
    assert "line 50" in rendered(screen)[-3]
    screen.add_line("[00:00:00] <ben> line 51")
    assert "line 51" in rendered(screen)[-3]
    assert "more below" not in rendered(screen)[-2]


def test_scrollback_is_bounded() -> None:
    screen = ChatScreen("h:1", RoomState("ann"), scrollback=10)
    for i in range(25):
        screen.add_line(f"* info {i}")
    assert len(screen.walker) == 10


def test_name_prompt_then_chat() -> None:
    screen = ChatScreen("h:1", RoomState(""))
    screen.ask_name()
    assert rendered(screen)[-1] == "name:"
    assert "choose a name" in rendered(screen)[-2]
    screen.chatting()
    assert rendered(screen)[-1] == ">"


async def test_any_key_closes_a_finished_chat() -> None:
    screen = make_screen()
    type_text(screen, "half")
    screen.finish("connection closed by server")
    assert "! connection closed by server" in "\n".join(rendered(screen))
    assert "press any key" in rendered(screen, (80, 8))[-2]
    press(screen, "x")
    assert screen.any_key.is_set()
    with trio.fail_after(1):
        await screen.any_key.wait()


def test_page_up_with_everything_on_screen_still_follows() -> None:
    screen = make_screen()
    screen.add_line("[00:00:00] <ben> one")
    rendered(screen)
    press(screen, "page up")
    assert "more below" not in rendered(screen)[-2]
    screen.add_line("[00:00:00] <ben> two")
    assert "two" in "\n".join(rendered(screen))
    assert screen.following


async def test_enter_waits_while_joining_and_quit_still_works() -> None:
    screen = ChatScreen("h:1", RoomState(""))
    screen.registering("ann")
    type_text(screen, "early bird")
    press(screen, "enter")
    assert rendered(screen, (80, 8))[-1] == "> early bird"  # kept, not taken for a name
    assert "still joining" in rendered(screen, (80, 8))[-2]
    screen.chatting()
    press(screen, "enter")
    assert await screen.next_action() == "early bird"
    screen.registering("bob")
    press(screen, "ctrl c")
    assert await screen.next_action() is QUIT


async def test_a_session_the_server_hangs_up_on_at_registration_ends_with_why(
    start_server: StartServer, connect: Connect
) -> None:
    _server, port = await start_server(password="hunter2", password_delay=0)
    client = await connect(port)
    screen = ChatScreen(f"127.0.0.1:{port}", RoomState("dora"))
    config = JoinConfig("dora", ConnectOptions(port=port, password="wrong"))
    with trio.fail_after(10):
        assert await _interactive_session(client, config, screen) == "wrong password"
    assert screen.finished
    view = rendered(screen, (100, 8))
    assert "! Wrong password: the server closed the connection" in view
    # Not as if the user had joined: no room, no user count, but what happened.
    assert "#lobby" not in view[-2]
    assert "users" not in view[-2]
    assert "127.0.0.1" in view[-2]
    assert "│ wrong password │" in view[-2]
    assert "press any key" in view[-2]


def test_a_resize_keeps_the_newest_line_in_view() -> None:
    screen = make_screen()
    for i in range(30):
        screen.add_line(f"[00:00:00] <ben> line {i}")
    rendered(screen, (120, 35))
    screen.add_line("[00:00:00] <ben> " + " ".join(f"w{i}" for i in range(40)) + " END|")
    for size in [(120, 35), (30, 8), (60, 10), (30, 8), (120, 35)]:
        view = rendered(screen, size)
        assert "END|" in "\n".join(view), size
        assert "more below" not in view[-2]


def test_a_resize_while_scrolled_up_says_more_below_even_when_narrow() -> None:
    screen = make_screen()
    for i in range(30):
        screen.add_line(f"[00:00:00] <ben> line {i}")
    rendered(screen, (60, 10))
    press(screen, "page up")
    view = rendered(screen, (30, 8))
    assert "line 29" not in "\n".join(view)
    assert view[-2].startswith(" -- more below --")


def test_a_line_taller_than_the_pane_shows_its_end() -> None:
    screen = make_screen()
    rendered(screen, (80, 24))
    screen.add_line("[00:00:00] <ben> " + "".join(f"{i:04d}." for i in range(1000)))
    view = rendered(screen, (80, 24))
    assert view[-3].endswith("0999.")
    assert "more below" not in view[-2]


def test_a_line_over_the_limit_stays_in_the_input_line() -> None:
    screen = ChatScreen("h:1", RoomState("ann"), max_line=10)
    screen.chatting()
    type_text(screen, "é" * 6)  # 12 bytes of UTF-8
    press(screen, "enter")
    view = rendered(screen, (80, 8))
    assert "! Not sent: the line is 12 bytes, the server takes 10" in view
    assert view[-1] == "> éééééé"
    press(screen, "backspace")
    press(screen, "enter")
    assert screen._actions.receive_nowait() == "ééééé"


def test_the_server_s_own_limit_is_learnt() -> None:
    screen = make_screen()
    screen.add_line("! Line too long (limit 100 bytes); it was discarded")
    assert screen.max_line == 100


def test_a_batch_of_keys_is_one_insertion_and_a_bracketed_paste_waits_for_enter() -> None:
    screen = make_screen()
    rendered(screen)
    inserted: list[str] = []
    original = screen.input.insert_text

    def spy(text: str) -> None:
        inserted.append(text)
        original(text)

    screen.input.insert_text = spy  # type: ignore[method-assign]
    left = screen.handle_input([*"hello ", "begin paste", *"a", "enter", *"b", "end paste"], [])
    assert left == []
    assert inserted == ["hello a b"]
    assert rendered(screen)[-1] == "> hello a b"
    assert screen.handle_input(["window resize"], []) == ["window resize"]
    screen.handle_input(["enter"], [])
    assert screen._actions.receive_nowait() == "hello a b"


def test_readline_keys() -> None:
    screen = make_screen()
    type_text(screen, "one two three")
    press(screen, "ctrl a")
    type_text(screen, ">")
    press(screen, "ctrl e")
    type_text(screen, "<")
    assert rendered(screen)[-1] == "> >one two three<"
    press(screen, "meta b", "meta b")
    press(screen, "ctrl k")
    assert screen.input.edit_text == ">one "
    press(screen, "meta b", "meta f")
    type_text(screen, "!")
    assert screen.input.edit_text == ">one! "
    press(screen, "ctrl w")
    assert screen.input.edit_text == " "
    type_text(screen, "keep this")
    press(screen, "meta b", "ctrl u")
    assert rendered(screen)[-1] == "> this"


def test_tab_completes_names_rooms_and_commands() -> None:
    screen = make_screen()
    screen.add_line("* Users in #lobby: ann, ben, bernard")
    screen.add_line("* Rooms: #lobby (3), #den (1)")
    type_text(screen, "/jo")
    press(screen, "tab")
    assert screen.input.edit_text == "/join "
    type_text(screen, "#d")
    press(screen, "tab")
    assert screen.input.edit_text == "/join #den "
    press(screen, "ctrl u")
    type_text(screen, "hi b")
    press(screen, "tab")  # ben and bernard share "be"
    assert rendered(screen, (80, 8))[-1] == "> hi be"
    press(screen, "tab")  # no longer prefix: cycle
    assert rendered(screen, (80, 8))[-1] == "> hi ben"
    assert "tab: ben bernard" in rendered(screen, (80, 8))[-2]
    press(screen, "tab")
    assert rendered(screen, (80, 8))[-1] == "> hi bernard"
    press(screen, "ctrl u")
    type_text(screen, "say /jo")
    press(screen, "tab")  # a command only as the first word
    assert rendered(screen, (80, 8))[-1] == "> say /jo"


def test_a_day_separator_when_the_date_changes() -> None:
    days = iter(
        [datetime.date(2026, 11, 30), datetime.date(2026, 11, 30), datetime.date(2026, 12, 1)]
    )
    screen = ChatScreen("h:1", RoomState("ann"), today=lambda: next(days))
    screen.chatting()
    screen.add_line("* Users in #lobby: ann")  # no stamp: no separator
    screen.add_line("[23:59:58] <ben> late")
    screen.add_line("[23:59:59] <ben> later")
    screen.add_line("[00:00:01] <ben> tomorrow")
    screen.add_line("[2026-11-29 12:00:00] <ben> a dated line")  # a server that sends dates
    view = [row for row in rendered(screen, (60, 10)) if row]
    assert view[:7] == [
        "* Users in #lobby: ann",
        "── Monday 30 November 2026 ──",
        "[23:59:58] <ben> late",
        "[23:59:59] <ben> later",
        "── Tuesday 1 December 2026 ──",
        "[00:00:01] <ben> tomorrow",
        "── Sunday 29 November 2026 ──",
    ]


def test_the_transcript_is_the_last_screenful() -> None:
    screen = make_screen()
    for i in range(30):
        screen.add_line(f"[00:00:00] <ben> line {i}")
    assert screen.transcript(5, 80) == [f"[00:00:00] <ben> line {i}" for i in range(25, 30)]
    screen.add_line("[00:00:00] <ben> " + "word " * 20)  # two rows at 80 columns
    assert len(screen.transcript(5, 80)) == 4
