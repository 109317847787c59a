"""The sans-IO protocol: framing, cleaning, validation, commands and server lines. No sockets."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings, strategies as st

from triochat.protocol import line as p

# --- LineFramer ----------------------------------------------------------------


def drain(framer: p.LineFramer) -> list[p.Line | p.LineTooLong]:
    events: list[p.Line | p.LineTooLong] = []
    while True:
        event = framer.next_event()
        if event is p.NEED_DATA:
            return events
        assert isinstance(event, p.Line | p.LineTooLong)
        events.append(event)


def feed(max_line: int, chunks: list[bytes]) -> list[p.Line | p.LineTooLong]:
    """Feed ``chunks`` one by one, checking the buffer bound as we go."""
    framer = p.LineFramer(max_line)
    events: list[p.Line | p.LineTooLong] = []
    for chunk in chunks:
        before = framer.buffered
        framer.receive_data(chunk)
        assert framer.buffered <= before + len(chunk)
        events += drain(framer)
        # Between chunks at most one unfinished line (plus a \r that may end it) is kept.
        assert framer.buffered <= max_line + 1
    return events


def expected_events(max_line: int, data: bytes) -> list[p.Line | p.LineTooLong]:
    """What protocol v1 says ``data`` is: an independent model of the framer."""
    *lines, tail = data.split(b"\n")
    events: list[p.Line | p.LineTooLong] = []
    for raw in lines:
        raw = raw.removesuffix(b"\r")
        if len(raw) > max_line:
            events.append(p.LineTooLong(max_line))
        else:
            events.append(p.Line(raw.decode("utf-8", "replace")))
    # An unfinished line is reported as soon as it cannot fit any more.
    if len(tail.removesuffix(b"\r")) > max_line:
        events.append(p.LineTooLong(max_line))
    return events


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# Bytes rich in line endings and UTF-8 fragments, so short inputs reach every branch.
stream_bytes = st.lists(
    st.sampled_from([b"\n", b"\r", b"\r\n", b"a", b"xyz", b"\xc3", b"\xa9", b"\xff", b"\x1b"])
    | st.binary(max_size=12),
    max_size=40,
).map(b"".join)


@settings(deadline=None)  # tiny examples; a loaded CI machine must not fail them
@given(
    max_line=st.integers(1, 16),
    data=stream_bytes,
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_framer_any_split_gives_the_same_events_as_whole(
    max_line: int, data: bytes, cuts: list[int]
) -> None:
    whole = feed(max_line, [data])
    assert whole == expected_events(max_line, data)
    cuts = [c for c in cuts if c <= len(data)]
    assert feed(max_line, split_at(data, cuts)) == whole


@settings(deadline=None)  # tiny examples; a loaded CI machine must not fail them
@given(max_line=st.integers(1, 16), data=stream_bytes)
def test_framer_one_byte_at_a_time(max_line: int, data: bytes) -> None:
    one_by_one = feed(max_line, [data[i : i + 1] for i in range(len(data))])
    assert one_by_one == expected_events(max_line, data)


@settings(deadline=None)  # tiny examples; a loaded CI machine must not fail them
@given(data=st.binary(max_size=2000), cuts=st.lists(st.integers(0, 2000), max_size=20))
def test_framer_never_raises_on_arbitrary_bytes(data: bytes, cuts: list[int]) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    assert feed(64, split_at(data, cuts)) == expected_events(64, data)


def feed_bulk(max_line: int, chunks: list[bytes]) -> list[p.Line | p.LineTooLong]:
    """Like :func:`feed`, through :meth:`LineFramer.events` (lines come back as text)."""
    framer = p.LineFramer(max_line)
    events: list[p.Line | p.LineTooLong] = []
    for chunk in chunks:
        framer.receive_data(chunk)
        events += [p.Line(e) if isinstance(e, str) else e for e in framer.events()]
        assert framer.events() == []
        assert framer.buffered <= max_line + 1
    return events


@settings(deadline=None)  # tiny examples; a loaded CI machine must not fail them
@given(
    max_line=st.integers(1, 16),
    data=stream_bytes,
    cuts=st.lists(st.integers(0, 400), max_size=12),
)
def test_framer_events_in_bulk_are_the_same_as_one_at_a_time(
    max_line: int, data: bytes, cuts: list[int]
) -> None:
    cuts = [c for c in cuts if c <= len(data)]
    assert feed_bulk(max_line, split_at(data, cuts)) == expected_events(max_line, data)


def test_framer_events_in_bulk_around_a_long_line() -> None:
    framer = p.LineFramer(5)
    framer.receive_data(b"ab\r\n\xc3\xa9\n" + b"x" * 9 + b"\nlast\nhal")
    assert framer.events() == ["ab", "\u00e9", p.LineTooLong(5), "last"]
    framer.receive_data(b"f\n")
    assert framer.events() == ["half"]


def test_framer_overlong_line_is_reported_once_then_discarded_to_its_newline() -> None:
    framer = p.LineFramer(10)
    framer.receive_data(b"x" * 11)
    assert framer.next_event() == p.LineTooLong(10)
    assert framer.next_event() is p.NEED_DATA
    for _ in range(100):  # the rest of the long line: dropped silently, nothing kept
        framer.receive_data(b"y" * 50)
        assert framer.next_event() is p.NEED_DATA
        assert framer.buffered == 0
    framer.receive_data(b"zz\nnext line\n")
    assert drain(framer) == [p.Line("next line")]


def test_framer_line_of_exactly_max_line_is_accepted() -> None:
    framer = p.LineFramer(5)
    framer.receive_data(b"12345\r")  # the \r may end the line: not too long yet
    assert framer.next_event() is p.NEED_DATA
    framer.receive_data(b"\n123456\n")
    assert drain(framer) == [p.Line("12345"), p.LineTooLong(5)]


def test_framer_megabyte_without_newline_stays_bounded() -> None:
    framer = p.LineFramer(4096)
    events = []
    for _ in range(256):  # 1 MiB in 4 KiB chunks
        framer.receive_data(b"A" * 4096)
        events += drain(framer)
        assert framer.buffered <= 4096
    assert events == [p.LineTooLong(4096)]
    framer.receive_data(b"\nhello\n")
    assert drain(framer) == [p.Line("hello")]


def test_framer_drops_one_trailing_cr_and_decodes_invalid_utf8_with_replacement() -> None:
    framer = p.LineFramer()
    framer.receive_data(b"crlf\r\nbare\n\r\nx\r\r\n\xffok\xc3\n\xc3\xa9t\xc3")
    assert drain(framer) == [
        p.Line("crlf"),
        p.Line("bare"),
        p.Line(""),
        p.Line("x\r"),
        p.Line("\ufffdok\ufffd"),
    ]
    framer.receive_data(b"\xa9\n")  # a character split across chunks is decoded whole
    assert drain(framer) == [p.Line("\xe9t\xe9")]


def test_framer_rejects_a_zero_limit() -> None:
    with pytest.raises(ValueError, match="max_line"):
        p.LineFramer(0)


# --- clean_text ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text", "plain text"),
        ("\x1b[31mred\x1b[0m", "[31mred[0m"),
        ("bell\x07 nul\x00 del\x7f", "bell nul del"),
        ("csi\x9b2J c1\x80\x9f", "csi2J c1"),
        ("a\tb", "a b"),
        ("\r\n\x0b\x0c", ""),
        ("é ü 漢字 🙂 \xa0", "é ü 漢字 🙂 \xa0"),
    ],
)
def test_clean_text_removes_c0_c1_and_esc(raw: str, clean: str) -> None:
    assert p.clean_text(raw) == clean


@given(st.text())
def test_clean_text_fast_path_agrees_with_the_rule(text: str) -> None:
    controls = {c for c in range(0x20)} | {c for c in range(0x7F, 0xA0)}
    expected = "".join(" " if c == "\t" else c for c in text if ord(c) not in controls - {9})
    assert p.clean_text(text) == expected


def test_clean_text_leaves_no_control_character() -> None:
    everything = "".join(map(chr, range(0x100)))
    cleaned = p.clean_text(everything)
    assert all(not (ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0) for c in cleaned)
    assert cleaned.startswith(" ")  # the tab
    assert len(cleaned) == 0x100 - 0x20 - 0x21 + 1


# --- names and rooms -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["a", "ann", "Ann_B-2", "Zoë", "Łukasz", "Ўладзімір", "李小龍", "x" * 24, "_-_", "42"]
)
def test_valid_names(name: str) -> None:
    assert p.name_error(name) is None


@pytest.mark.parametrize(
    "name",
    ["", "x" * 25, "ann b", "<ann>", "*ann*", "ann!", "a.b", "a:b", "#room", "🙂", "a\u200bb"],
)
def test_invalid_names(name: str) -> None:
    error = p.name_error(name)
    assert error is not None
    assert repr(name) in error
    assert "1 to 24" in error


def test_name_key_is_case_insensitive() -> None:
    assert p.name_key("Ann") == p.name_key("ANN") == p.name_key("ann")
    assert p.name_key("STRASSE") == p.name_key("straße")
    assert p.name_key("Zoë") == p.name_key("ZOË")
    assert p.name_key("ann") != p.name_key("anne")


@pytest.mark.parametrize(
    ("raw", "room"),
    [
        ("#lobby", "#lobby"),
        ("lobby", "#lobby"),
        ("#Dev-Ops_2", "#dev-ops_2"),
        ("#" + "r" * 32, "#" + "r" * 32),
        ("#café", "#café"),
    ],
)
def test_normalize_room(raw: str, room: str) -> None:
    assert p.normalize_room(raw) == room


@pytest.mark.parametrize("raw", ["#", "", "##x", "#" + "r" * 33, "#a b", "#a.b", "#a/b"])
def test_normalize_room_rejects(raw: str) -> None:
    assert p.normalize_room(raw) is None


# --- parse_command -------------------------------------------------------------


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("hello", p.Say("hello")),
        ("  spaced  out ", p.Say("  spaced  out ")),
        ("//text", p.Say("/text")),
        ("//", p.Say("/")),
        ("/me waves", p.Me("waves")),
        ("/ME  waves  hard ", p.Me("waves  hard")),
        ("/msg bob hi there", p.Msg("bob", "hi there")),
        ("/whisper bob  hi", p.Msg("bob", "hi")),
        ("/join #dev", p.Join("#dev")),
        ("/join Dev", p.Join("#dev")),
        ("/nick Ann2", p.Nick("Ann2")),
        ("/users", p.Users()),
        ("/who", p.Users()),
        ("/names", p.Users()),
        ("/rooms", p.Rooms()),
        ("/list", p.Rooms()),
        ("/help", p.Help()),
        ("/HELP", p.Help()),
        ("/quit", p.Quit("")),
        ("/quit going home", p.Quit("going home")),
        ("/exit  bye ", p.Quit("bye")),
    ],
)
def test_parse_command(line: str, command: p.Command) -> None:
    assert p.parse_command(line) == command


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("/me", "Usage: /me TEXT"),
        ("/me   ", "Usage: /me TEXT"),
        ("/msg", "Usage: /msg NAME TEXT"),
        ("/msg bob", "Usage: /msg NAME TEXT"),
        ("/msg bob   ", "Usage: /msg NAME TEXT"),
        ("/whisper", "Usage: /whisper NAME TEXT"),
        ("/join", "Usage: /join #ROOM"),
        ("/join #a #b", "Usage: /join #ROOM"),
        ("/join #bad.room", "Invalid room '#bad.room': " + p.ROOM_RULES),
        ("/nick", "Usage: /nick NAME"),
        ("/nick two words", "Usage: /nick NAME"),
        ("/dance", "Unknown command /dance. Try /help."),
        ("/DANCE now", "Unknown command /dance. Try /help."),
        ("/", "Unknown command /. Try /help."),
    ],
)
def test_parse_command_errors(line: str, message: str) -> None:
    assert p.parse_command(line) == p.Invalid(message)


@given(
    st.text(st.sampled_from(["/", " ", "a", "\u00a0", "\u2028", "m", "e"]), max_size=6) | st.text()
)
def test_chat_text_agrees_with_parse_command(line: str) -> None:
    text = p.chat_text(line)
    if text is not None:
        assert p.parse_command(line) == p.Say(text)
    else:
        assert not isinstance(p.parse_command(line), p.Say) or line.startswith("//")


@pytest.mark.parametrize("line", ["", " ", "   "])
def test_parse_command_ignores_empty_lines(line: str) -> None:
    assert p.parse_command(line) is None


def test_help_mentions_every_command() -> None:
    text = "\n".join(p.HELP)
    for command in ("/me", "/msg", "/whisper", "/join", "/nick", "/users", "/rooms", "/quit"):
        assert command in text
    assert "/help" in text


# --- server lines ----------------------------------------------------------------


def test_format_lines() -> None:
    stamp = "[12:34:56]"
    assert p.format_message(stamp, "ann", "hi") == "[12:34:56] <ann> hi\n"
    assert p.format_event(stamp, "ann", "joined #lobby") == "[12:34:56] * ann joined #lobby\n"
    assert p.format_private(stamp, "ann", "psst") == "[12:34:56] *ann* psst\n"
    assert p.format_private_echo(stamp, "ben", "psst") == "[12:34:56] -> *ben* psst\n"
    assert p.format_info("Bye!") == "* Bye!\n"
    assert p.format_error("No such user: x") == "! No such user: x\n"


def test_timestamper_uses_local_time() -> None:
    stamper = p.Timestamper()
    when = 1_700_000_000.75
    expected = time.strftime("[%H:%M:%S]", time.localtime(when))
    assert stamper(when) == expected
    assert stamper(when + 0.2) == expected  # same second, cached
    assert stamper(when + 1) == time.strftime("[%H:%M:%S]", time.localtime(when + 1))
