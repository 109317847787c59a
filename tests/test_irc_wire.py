"""IRC on the wire, sans-IO: parsing, writing, tags, framing limits, injection. No sockets."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings, strategies as st

from triochat.protocol import irc
from triochat.protocol.irc import wire

_chars = st.characters(exclude_categories=["Cs"])
_tag_char = st.characters(exclude_categories=["Cs"], exclude_characters="\0")
_no_break = st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0")
_word = st.text(
    st.characters(exclude_categories=["Cs"], exclude_characters="\r\n\0 "), min_size=1
).filter(lambda s: not s.startswith(":"))
_tag_key = st.from_regex(r"\A\+?([a-z0-9.-]{1,8}/)?[A-Za-z0-9-]{1,8}\Z")
_command = st.from_regex(r"\A[A-Z]{1,10}\Z") | st.from_regex(r"\A[0-9]{3}\Z")


@st.composite
def messages(draw: st.DrawFn) -> irc.Message:
    middle = draw(st.lists(_word, max_size=14))
    last = draw(st.lists(st.text(_no_break), max_size=1 if len(middle) < 15 else 0))
    keys = draw(st.lists(_tag_key, unique=True, max_size=5))
    tags = tuple((key, draw(st.text(_tag_char, max_size=12))) for key in keys)
    source = draw(st.none() | _word)
    return irc.Message(draw(_command), (*middle, *last), source, tags)


@given(messages())
def test_a_written_message_parses_back_to_itself(msg: irc.Message) -> None:
    data = irc.serialize(msg)
    assert data.endswith(b"\r\n")
    assert data.count(b"\n") == 1
    assert data.count(b"\r") == 1
    assert b"\0" not in data
    assert irc.parse(data[:-2].decode()) == msg


@given(messages())
def test_a_written_message_comes_out_of_the_framer_unchanged(msg: irc.Message) -> None:
    framer = irc.IRCFramer(max_line=100_000, max_tags=100_000)
    framer.receive_data(irc.serialize(msg))
    assert framer.events() == [msg]


@given(st.text(_chars))
def test_tag_values_escape_and_unescape(value: str) -> None:
    written = wire.escape_tag_value(value)
    assert not set(written) & set("; \r\n\0")
    assert wire.unescape_tag_value(written) == value.replace("\0", "")


def test_tag_unescaping_follows_the_spec() -> None:
    msg = irc.parse(r"@a=1\:2\s3\\4\r\n;b=x\y;c=end\;d;e= PING")
    assert msg is not None
    assert msg.tags == (("a", "1;2 3\\4\r\n"), ("b", "xy"), ("c", "end"), ("d", ""), ("e", ""))
    assert msg.tag("a") == "1;2 3\\4\r\n"
    assert msg.tag("zz") is None


def test_a_repeated_tag_keeps_its_last_value_and_bad_keys_are_skipped() -> None:
    msg = irc.parse("@a=1;a=2;bad_key=3;+draft/reply=x PRIVMSG #a :hi")
    assert msg is not None
    assert msg.tags == (("a", "2"), ("+draft/reply", "x"))


def test_parsing_the_shapes_of_real_lines() -> None:
    assert irc.parse("") is None
    assert irc.parse("   ") is None
    assert irc.parse("privmsg #a :hello  world ") == irc.message("PRIVMSG", "#a", "hello  world ")
    assert irc.parse("JOIN #a,#b") == irc.message("JOIN", "#a,#b")
    assert irc.parse("NICK  bob  ") == irc.message("NICK", "bob")
    assert irc.parse(":srv 001 bob :Welcome") == irc.message("001", "bob", "Welcome", source="srv")
    assert irc.parse("USER u 0 * :Real Name") == irc.message("USER", "u", "0", "*", "Real Name")
    assert irc.parse("PRIVMSG #a ::-)") == irc.message("PRIVMSG", "#a", ":-)")
    assert irc.parse("TOPIC #a :") == irc.message("TOPIC", "#a", "")
    # After 14 middle parameters the rest is the last one, ":" or not.
    many = " ".join(str(i) for i in range(14))
    assert irc.parse(f"CMD {many} a b c") == irc.message("CMD", *many.split(), "a b c")


@pytest.mark.parametrize("line", ["@a=b", ":src", "@a=b :src", "!!! x", "12 x", "PRIV-MSG a"])
def test_a_line_without_a_command_is_malformed(line: str) -> None:
    with pytest.raises(irc.MalformedMessage):
        irc.parse(line)
    framer = irc.IRCFramer()
    framer.receive_data(line.encode() + b"\r\nPING x\r\n")
    [bad, ping] = framer.events()
    assert isinstance(bad, irc.Malformed)
    assert bad.line == line
    assert ping == irc.message("PING", "x")


def test_writing_puts_a_colon_only_where_it_is_needed_or_conventional() -> None:
    def written(*args: str, source: str | None = None) -> bytes:
        return irc.serialize(irc.message(*args, source=source))

    assert written("JOIN", "#a", source="n!u@h") == b":n!u@h JOIN #a\r\n"
    assert written("PRIVMSG", "#a", "hi") == b"PRIVMSG #a :hi\r\n"
    assert written("PING", "x y") == b"PING :x y\r\n"
    assert written("PING", "") == b"PING :\r\n"
    assert written("PING", ":x") == b"PING ::x\r\n"
    assert written("001", "bob", "Welcome") == b"001 bob :Welcome\r\n"
    assert written("NICK", "new") == b"NICK new\r\n"


# --- Injection -----------------------------------------------------------------

_ATTACKS = [
    "hi\r\nQUIT :owned",
    "hi\rPRIVMSG #x :owned",
    "hi\nKILL you",
    "nul\0 QUIT",
    "\r\n",
]


@pytest.mark.parametrize("attack", _ATTACKS)
def test_no_parameter_or_source_or_tag_can_start_a_second_line(attack: str) -> None:
    cases = [
        irc.message("PRIVMSG", "#a", attack),
        irc.message("NOTICE", "*", attack, source="srv"),
        irc.message("PRIVMSG", "#a", "x", tags=[("time", attack)]),
    ]
    for msg in cases:
        data = irc.serialize(msg)
        assert data.count(b"\n") == 1
        assert data.count(b"\r") == 1
        assert b"\0" not in data
        framer = irc.IRCFramer()
        framer.receive_data(data)
        assert len(framer.events()) == 1
    # A middle parameter or source that only looks harmless without its CR LF is
    # still refused if what is left would change the message's shape.
    with pytest.raises(irc.IRCError):
        irc.serialize(irc.message("PRIVMSG", "#a b", "x"))
    with pytest.raises(irc.IRCError):
        irc.serialize(irc.message("PRIVMSG", "\r\n", "x"))
    with pytest.raises(irc.IRCError):
        irc.serialize(irc.message("PRIVMSG", "#a", "x", source="a b"))
    with pytest.raises(irc.IRCError):
        irc.serialize(irc.message("PRIVMSG", "#a", "x", tags=[("a b", "x")]))
    with pytest.raises(irc.IRCError):
        irc.serialize(irc.message("PRIVMSG\r\nQUIT", "#a"))


@given(st.lists(st.text(_chars, max_size=20), min_size=1, max_size=15), _command)
def test_any_text_in_any_parameter_is_one_line_or_refused(params: list[str], cmd: str) -> None:
    try:
        data = irc.serialize(irc.Message(cmd, tuple(params)))
    except irc.IRCError:
        return
    assert data.count(b"\n") == 1
    assert data.endswith(b"\r\n")
    assert b"\0" not in data


# --- Framing -------------------------------------------------------------------


def model(data: bytes, max_line: int, max_tags: int) -> list[object]:
    """What the limits say ``data`` is: an independent model of the framer."""
    *lines, tail = data.split(b"\n")
    found: list[object] = []
    for raw in lines:
        raw = raw.removesuffix(b"\r")
        if raw.startswith(b"@"):
            tags, _space, rest = raw.partition(b" ")
            too_long = len(tags) + 1 > max_tags or len(rest) + 2 > max_line
        else:
            too_long = len(raw) + 2 > max_line
        if too_long:
            found.append(irc.InputTooLong())
            continue
        text = raw.decode("utf-8", "replace")
        try:
            msg = irc.parse(text)
        except irc.MalformedMessage as error:
            found.append(irc.Malformed(text, str(error)))
        else:
            if msg is not None:
                found.append(msg)
    if len(tail.removesuffix(b"\r")) > max_tags + max_line - 2:
        found.append(irc.InputTooLong())
    return found


stream = st.lists(
    st.sampled_from(
        [
            *(b"\n", b"\r\n", b"\r", b" ", b":", b"@", b"=", b";", b"PING", b"x", b"\xc3", b"\xff"),
            *(b"PRIVMSG ", b"NOTICE ", b"#a", b" :"),
        ]
    )
    | st.binary(max_size=6),
    max_size=40,
).map(b"".join)


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(c for c in cuts if c <= len(data)), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@settings(deadline=None)
@given(
    data=stream,
    cuts=st.lists(st.integers(0, 300), max_size=12),
    max_line=st.integers(3, 20),
    max_tags=st.integers(2, 12),
)
def test_any_bytes_split_anywhere_give_the_same_events(
    data: bytes, cuts: list[int], max_line: int, max_tags: int
) -> None:
    whole = irc.IRCFramer(max_line, max_tags)
    whole.receive_data(data)
    expected = whole.events()
    assert expected == model(data, max_line, max_tags)
    split = irc.IRCFramer(max_line, max_tags)
    got: list[object] = []
    for chunk in split_at(data, cuts):
        split.receive_data(chunk)
        got += split.events()
        assert split.buffered <= max_line + max_tags
    assert got == expected
    one_by_one = irc.IRCFramer(max_line, max_tags)
    got = []
    for byte in data:
        one_by_one.receive_data(bytes([byte]))
        got += one_by_one.events()
    assert got == expected


@given(
    command=st.sampled_from(["PRIVMSG", "NOTICE"]),
    rest=st.text(st.sampled_from(" :#ax\x01"), max_size=12),
)
def test_the_chat_line_fast_path_parses_as_the_general_parser_does(command: str, rest: str) -> None:
    line = f"{command} {rest}"
    # A leading space takes the general path (it is stripped first).
    assert irc.parse(line) == irc.parse(" " + line)
    if (msg := irc.parse(line)) is not None:
        assert (msg.command, msg.source, msg.tags) == (command, None, ())


@settings(deadline=None)
@given(data=stream, max_line=st.integers(3, 40), max_tags=st.integers(2, 12))
def test_all_events_at_once_are_the_events_one_at_a_time(
    data: bytes, max_line: int, max_tags: int
) -> None:
    bulk, single = irc.IRCFramer(max_line, max_tags), irc.IRCFramer(max_line, max_tags)
    bulk.receive_data(data)
    single.receive_data(data)
    one_at_a_time = []
    while not isinstance(event := single.next_event(), type(irc.NEED_DATA)):
        one_at_a_time.append(event)
    assert bulk.events() == one_at_a_time
    assert bulk.buffered == single.buffered


def test_a_line_over_512_bytes_is_reported_and_the_next_one_read() -> None:
    framer = irc.IRCFramer()
    ok = b"PRIVMSG #a :" + b"x" * (510 - 12)
    framer.receive_data(ok + b"\r\n" + ok + b"y\r\nPING a\n")
    [first, second, ping] = framer.events()
    assert isinstance(first, irc.Message)
    assert len(first.params[1]) == 498
    assert second == irc.InputTooLong()
    assert ping == irc.message("PING", "a")


def test_tags_have_their_own_8191_bytes() -> None:
    framer = irc.IRCFramer()
    tags = b"@a=" + b"v" * (8191 - 4)  # with the space: exactly 8191
    framer.receive_data(tags + b" PING x\r\n" + tags + b"v PING x\r\n")
    [fits, over] = framer.events()
    assert isinstance(fits, irc.Message)
    assert fits.tag("a") == "v" * 8187
    assert over == irc.InputTooLong()


def test_an_endless_line_is_dropped_in_bounded_memory() -> None:
    framer = irc.IRCFramer()
    framer.receive_data(b"PRIVMSG #a :")
    reported = []
    for _ in range(100):
        framer.receive_data(b"x" * 1000)
        reported += framer.events()
        assert framer.buffered <= irc.MAX_LINE + irc.MAX_TAGS
    assert reported == [irc.InputTooLong()]
    framer.receive_data(b"x\r\nPING :after\r\n")
    assert framer.events() == [irc.message("PING", "after")]


def test_invalid_utf8_becomes_replacement_characters_not_lost() -> None:
    framer = irc.IRCFramer()
    framer.receive_data(b"PRIVMSG #a :caf\xe9 \xff ok\r\n")
    assert framer.events() == [irc.message("PRIVMSG", "#a", "caf\ufffd \ufffd ok")]


# --- Text ----------------------------------------------------------------------


def test_formatting_codes_pass_but_terminal_escapes_do_not() -> None:
    text = "\x02bold\x02 \x0304,12red\x03 \x1ditalic\x1d\x1f_\x1f\x16r\x16\x11m\x0f \x1e-\x1e"
    assert irc.clean_text(text) == text
    assert irc.clean_text("a\x1b[2Jb\x9b31mc\x07d\x08e\x0ef\x7fg") == "abcdefg"
    assert irc.clean_text("x\x1b]0;title\x07y\u202eevil") == "xyevil"
    assert irc.clean_text("tab\there") == "tab here"
    assert irc.clean_text("plain") == "plain"


@given(st.text(_chars), st.integers(4, 40))
def test_long_text_splits_on_character_boundaries_within_the_limit(text: str, limit: int) -> None:
    pieces = irc.split_utf8(text, limit)
    assert all(len(piece.encode()) <= limit for piece in pieces)
    assert "".join(pieces).replace(" ", "") == text.replace(" ", "")


def test_long_text_wraps_between_words() -> None:
    assert irc.split_utf8("aaaa bbbb cccc", 10) == ["aaaa bbbb", "cccc"]
    assert irc.split_utf8("ééééé", 4) == ["éé", "éé", "é"]


# --- labeled-response answers ----------------------------------------------------


_server_lines = messages().filter(lambda m: m.tag("label") is None)


@settings(max_examples=40)
@given(st.lists(_server_lines, max_size=5), st.text(_tag_char, min_size=1, max_size=64))
def test_a_labeled_answer_is_one_logical_message_whatever_the_label(
    answer: list[irc.Message], label: str
) -> None:
    from triochat.protocol.irc import labels

    data = labels.answer(b"".join(map(irc.serialize, answer)), label, "L1", "srv")
    lines = data.split(b"\r\n")
    assert lines[-1] == b""
    got = [irc.parse(line.decode()) for line in lines[:-1]]
    assert all(m is not None for m in got)
    parsed = [m for m in got if m is not None]
    # The label is carried once, by the first line, exactly as given.
    assert parsed[0].tag("label") == label
    assert [m.tag("label") for m in parsed[1:]] == [None] * (len(parsed) - 1)
    if not answer:
        assert [m.command for m in parsed] == ["ACK"]
    elif len(answer) == 1:
        assert len(parsed) == 1
        assert (parsed[0].command, parsed[0].params) == (answer[0].command, answer[0].params)
    else:
        assert (parsed[0].command, parsed[0].params) == ("BATCH", ("+L1", "labeled-response"))
        assert (parsed[-1].command, parsed[-1].params) == ("BATCH", ("-L1",))
        inside = parsed[1:-1]
        assert [(m.command, m.params) for m in inside] == [(m.command, m.params) for m in answer]
        assert all(
            m.tag("batch") in ("L1", a.tag("batch")) for m, a in zip(inside, answer, strict=True)
        )
