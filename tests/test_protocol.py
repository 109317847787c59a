"""The sans-IO protocol: framing, cleaning, validation, commands and server lines. No sockets."""

from __future__ import annotations

import itertools
import time

import pytest
from hypothesis import given, settings, strategies as st

from triochat.core import events as ev
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

BIDI_CONTROLS = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def is_control(c: str) -> bool:
    """What clean_text must never let through: C0, DEL, C1, bidi embeddings/overrides/isolates."""
    return ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or c in BIDI_CONTROLS


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("plain text", "plain text"),
        ("\x1b[31mred\x1b[0m", "red"),
        ("\x1b[1;38;5;196mbold\x1b[m", "bold"),
        ("\x1b[?25l hidden cursor", " hidden cursor"),
        ("\x9b2Jcleared \x9b31m", "cleared "),
        ("\x1b]0;owned\x07title", "title"),
        ("\x1b]8;;https://evil.example\x1b\\link\x1b]8;;\x1b\\", "link"),
        ("\x9d0;owned\x9cosc", "osc"),
        ("\x1bPq#0;2;0;0;0\x1b\\dcs", "dcs"),
        ("\x1b(Bcharset \x1b7saved\x1b8 \x1bcreset", "charset saved reset"),
        ("\x1b]0;no terminator", "0;no terminator"),  # nothing hidden
        ("\x1b[", ""),
        ("end\x1b", "end"),
        ("bell\x07 nul\x00 del\x7f", "bell nul del"),
        ("c1\x80\x9f", "c1"),
        ("a\tb", "a b"),
        ("\r\n\x0b\x0c", ""),
        ("é ü 漢字 🙂 \xa0", "é ü 漢字 🙂 \xa0"),
        ("evil\u202emoc.elgoog", "evilmoc.elgoog"),
        ("\u2066isolated\u2069 \u202aembedded\u202c", "isolated embedded"),
        (
            "\u200fRLM and \u200dZWJ: 👨\u200d👩\u200d👧 stay",
            "\u200fRLM and \u200dZWJ: 👨\u200d👩\u200d👧 stay",
        ),
    ],
)
def test_clean_text_removes_escape_sequences_and_controls(raw: str, clean: str) -> None:
    assert p.clean_text(raw) == clean


# Text with no control at all, and whole escape sequences to put between it.
plain_text = st.text(
    st.characters(exclude_categories=("Cc", "Cs"), exclude_characters=BIDI_CONTROLS)
)


def _bytes_in(lo: int, hi: int) -> st.SearchStrategy[str]:
    return st.characters(min_codepoint=lo, max_codepoint=hi)


csi = st.tuples(
    st.sampled_from(["\x1b[", "\x9b"]),
    st.text(_bytes_in(0x30, 0x3F), max_size=6),
    st.text(_bytes_in(0x20, 0x2F), max_size=2),
    _bytes_in(0x40, 0x7E),
).map("".join)
control_string = st.tuples(
    st.sampled_from(
        ["\x1b]", "\x1bP", "\x1bX", "\x1b^", "\x1b_", "\x90", "\x98", "\x9d", "\x9e", "\x9f"]
    ),
    st.text(
        st.characters(exclude_categories=("Cs",)).filter(  # type: ignore[arg-type]
            lambda c: c != "\x07" and c != "\x1b" and not 0x80 <= ord(c) < 0xA0
        ),
        max_size=10,
    ),
    st.sampled_from(["\x07", "\x1b\\", "\x9c"]),
).map("".join)
other_escape = st.tuples(
    st.just("\x1b"),
    st.text(_bytes_in(0x20, 0x2F), max_size=2),
    _bytes_in(0x30, 0x7E).filter(lambda c: c not in "[]PX^_"),
).map("".join)
escape_sequence = csi | control_string | other_escape


@given(st.lists(st.tuples(plain_text, escape_sequence)), plain_text)
def test_clean_text_removes_whole_escape_sequences(
    pieces: list[tuple[str, str]], last: str
) -> None:
    text = "".join(chunk + sequence for chunk, sequence in pieces) + last
    assert p.clean_text(text) == "".join(chunk for chunk, _ in pieces) + last


@given(plain_text)
def test_clean_text_leaves_text_without_controls_unchanged(text: str) -> None:
    assert p.clean_text(text) == text


@given(
    st.text(
        st.sampled_from(
            [
                "\x1b",
                "\x9b",
                "\x9c",
                "\x9d",
                "\x90",
                "\x07",
                "[",
                "]",
                "\\",
                "1",
                ";",
                "m",
                "a",
                "\t",
            ]
        )
        | st.sampled_from(BIDI_CONTROLS)
        | st.characters(max_codepoint=0xFF)
        | st.characters()
    )
)
def test_clean_text_lets_no_control_through(text: str) -> None:
    cleaned = p.clean_text(text)
    assert not any(map(is_control, cleaned))
    assert len(cleaned) <= len(text)


def test_clean_text_leaves_no_control_character() -> None:
    everything = "".join(map(chr, range(0x100))) + BIDI_CONTROLS
    cleaned = p.clean_text(everything)
    assert not any(map(is_control, cleaned))
    assert cleaned.startswith(" ")  # the tab
    assert len(cleaned) == 0x100 - 0x20 - 0x21 + 1


def test_clean_text_is_linear_on_a_line_of_introducers() -> None:
    # Each unterminated string stops at the next control: no quadratic rescans.
    for text in ("\x1b]" * 2048, "\x9d\x90" * 2048, "\x1b]" + "a" * 4000, "\x1b[" + "1" * 4000):
        assert not any(map(is_control, p.clean_text(text)))


# --- names and rooms -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "a",
        "ann",
        "Ann_B-2",
        "Zoë",
        "Łukasz",
        "Ўладзімір",
        "李小龍",
        "山田たろう",  # Han with Hiragana: one writing system
        "김철수",
        "Ελένη",
        "x" * 24,
        "_-_",
        "42",
        "ann-2_b",
    ],
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


@pytest.mark.parametrize(
    ("name", "scripts"),
    [
        ("\u0430nn", ("Cyrillic", "Latin")),  # Cyrillic a, Latin nn
        ("p\u0430ypal", ("Latin", "Cyrillic")),
        ("\u0391lice", ("Greek", "Latin")),  # Greek capital alpha
        ("ann\u0661", ("Latin", "Arabic")),  # Arabic-Indic digit one
        ("Ўлад\u0456mir", ("Cyrillic", "Latin")),
    ],
)
def test_mixed_script_names_are_refused(name: str, scripts: tuple[str, str]) -> None:
    error = p.name_error(name)
    assert error == (
        f"Invalid name {name!r}: it mixes {scripts[0]} and {scripts[1]} characters; "
        "a name is written in one script (digits, _ and - go with any)"
    )


@pytest.mark.parametrize(
    ("name", "code"),
    [
        ("a\u200bb", "U+200B"),  # zero width space
        ("ann\u200d", "U+200D"),  # zero width joiner
        ("\u202eann", "U+202E"),  # right-to-left override
        ("an\u2066n\u2069", "U+2066"),  # left-to-right isolate
        ("ann\u2060", "U+2060"),  # word joiner
        ("ann\ufeff", "U+FEFF"),
        ("\u3164", "U+3164"),  # HANGUL FILLER: a letter to \w, and blank
        ("\u115f\u115f", "U+115F"),
        ("ann\u00ad", "U+00AD"),  # soft hyphen
    ],
)
def test_invisible_characters_in_names_are_refused(name: str, code: str) -> None:
    for policy in p.NAME_POLICIES:
        error = p.name_error(name, policy)
        assert error is not None
        assert error.startswith(f"Invalid name {name!r}: {code} (")
        assert "is invisible or changes the text's direction" in error


def test_ascii_policy() -> None:
    assert p.NAME_POLICIES == ("unicode", "ascii")
    for name in ("ann", "Ann_B-2", "x" * 24, "42", "_-_"):
        assert p.name_error(name, "ascii") is None
    for name in (
        "Zoë",
        "李小龍",
        "Ўладзімір",
        "\u0430nn",
        "\uff41\uff4e\uff4e",
        "",
        "x" * 25,
        "a b",
        "ann\u0661",
    ):
        assert p.name_error(name, "ascii") == f"Invalid name {name!r}: {p.ASCII_NAME_RULES}"
    assert p.name_error("Zoë") is None  # the default is Unicode


def test_name_key_is_case_insensitive() -> None:
    assert p.name_key("Ann") == p.name_key("ANN") == p.name_key("ann")
    assert p.name_key("STRASSE") == p.name_key("straße")
    assert p.name_key("Zoë") == p.name_key("ZOË")
    assert p.name_key("ann") != p.name_key("anne")


@pytest.mark.parametrize(
    ("name", "twin"),
    [
        ("\u0430nn", "ann"),  # Cyrillic a
        ("\u0430\u0441\u0435", "ace"),  # all Cyrillic, so not mixed: still the same name
        ("\u0410\u0421\u0415", "ace"),  # their capitals
        ("\u03bf\u03c1\u03b1", "opa"),  # Greek omicron rho alpha
        ("\uff41\uff4e\uff4e", "ann"),  # fullwidth
        ("b0b", "bob"),
        ("ann1", "annl"),
        ("mia", "rnia"),
        ("\u0251nn", "ann"),  # Latin alpha
    ],
)
def test_names_that_look_alike_have_one_key(name: str, twin: str) -> None:
    assert p.name_key(name) == p.name_key(twin)


def test_names_that_differ_keep_their_keys_apart() -> None:
    names = ["ann", "anne", "ben", "Zoë", "Zoe", "李小龍", "Ўладзімір", "my-bot", "my_bot", "ian"]
    assert len({p.name_key(n) for n in names}) == len(names)


def test_name_sort_key_orders_as_written_case_insensitively() -> None:
    names = ["mia", "Ann", "ria", "ben"]
    assert sorted(names, key=p.name_sort_key) == ["Ann", "ben", "mia", "ria"]
    assert p.name_sort_key("STRASSE") == p.name_sort_key("straße")


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
        ("/history", p.History(p.HISTORY_DEFAULT)),
        ("/history 1", p.History(1)),
        ("/history 500", p.History(500)),
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
        ("/nick two words", f"Invalid name 'two words': {p.NAME_RULES}"),
        ("/nick a b", f"Invalid name 'a b': {p.NAME_RULES}"),
        ("/history 0", "Usage: /history [N], N from 1 to 500"),
        ("/history 501", "Usage: /history [N], N from 1 to 500"),
        ("/history 100000", "Usage: /history [N], N from 1 to 500"),
        ("/history ten", "Usage: /history [N], N from 1 to 500"),
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
    when = 1_700_000_000.75
    stamper = p.Timestamper(clock=lambda: when)  # today
    expected = time.strftime("[%H:%M:%S]", time.localtime(when))
    assert stamper(when) == expected
    assert stamper(when + 0.2) == expected  # same second, cached
    assert stamper(when + 1) == time.strftime("[%H:%M:%S]", time.localtime(when + 1))


def test_a_time_on_another_day_shows_its_date() -> None:
    now = 1_700_000_000.0
    stamp = p.Timestamper(clock=lambda: now)
    assert stamp(now) == time.strftime("[%H:%M:%S]", time.localtime(now))
    yesterday = now - 86_400
    assert stamp(yesterday) == time.strftime("[%Y-%m-%d %H:%M:%S]", time.localtime(yesterday))
    line = p.LineDialect(clock=lambda: now).render([ev.Said("#a", 1, yesterday, "ann", "hi")])
    assert (
        line == time.strftime("[%Y-%m-%d %H:%M:%S] <ann> hi\n", time.localtime(yesterday)).encode()
    )
