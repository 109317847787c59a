"""The web dialect without sockets: JSON commands in, WebSocket frames of JSON events out."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from hypothesis import given, strategies as st
from wsproto.connection import Connection, ConnectionType
from wsproto.events import TextMessage

from triochat.core import commands as c, events as ev
from triochat.protocol import line as p, v2, web as w

NOW = 1_796_242_609.25  # 2026-12-02T20:16:49.250Z


def decode(data: bytes) -> list[dict[str, Any]]:
    """The messages a browser would get from ``data``, decoded by wsproto's client side."""
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(data)
    texts: list[str] = []
    partial = ""
    for event in client.events():
        assert isinstance(event, TextMessage)
        partial += event.data
        if event.message_finished:
            texts.append(partial)
            partial = ""
    assert partial == ""
    return [json.loads(text) for text in texts]


# --- Rendering ---------------------------------------------------------------------


def test_a_chat_line_carries_its_room_seq_and_utc_time_as_text_and_number() -> None:
    data = w.WebDialect().render([ev.Said("#lobby", 7, NOW, "alice", "hi <b>é</b>")])
    assert decode(data) == [
        {
            "type": "said",
            "room": "#lobby",
            "seq": 7,
            "time": "2026-12-02T20:16:49.250Z",
            "ts": NOW,
            "name": "alice",
            "text": "hi <b>é</b>",
        }
    ]


def test_every_event_has_its_message() -> None:
    events: list[ev.Event] = [
        ev.Acted("#a", 1, NOW, "al", "waves"),
        ev.Joined("#a", 2, NOW, "bo"),
        ev.Left("#a", 3, NOW, "bo", "too slow"),
        ev.Renamed("#a", 4, NOW, "al", "ali"),
        ev.TopicSet("#a", 5, NOW, "ali", "cats"),
        ev.Legacy("#a", 6, NOW, "[12:00:00] <old> line"),
        ev.Private(NOW, "al", "bo", "psst"),
        ev.Private(NOW, "al", "bo", "psst", echo=True),
        ev.Notice("hello"),
        ev.Error("nope"),
        ev.UserList("#a", ("al", "bo")),
        ev.RoomList((("#a", 2), ("#lobby", 5))),
        ev.Presence("#a", 7, NOW, 3, 1, 30.0),
        ev.UserList("#a", ("al", "bo", "cy"), 0, frozenset({"cy", "al"}), frozenset({"bo"})),
        ev.RoleChanged("#a", 8, NOW, "bo", "al", True),
    ]
    got = decode(w.WebDialect().render(events))
    assert [m["type"] for m in got] == [
        "acted",
        "joined",
        "left",
        "renamed",
        "topic",
        "legacy",
        "private",
        "private",
        "notice",
        "error",
        "users",
        "rooms",
        "presence",
        "users",
        "role",
    ]
    assert got[2]["reason"] == "too slow"
    assert (got[3]["old"], got[3]["new"]) == ("al", "ali")
    assert got[4]["topic"] == "cats"
    assert got[5]["line"] == "[12:00:00] <old> line"
    assert got[6] == {
        "type": "private",
        "time": "2026-12-02T20:16:49.250Z",
        "ts": NOW,
        "from": "al",
        "to": "bo",
        "text": "psst",
        "echo": False,
    }
    assert got[7]["echo"] is True
    assert got[10]["names"] == ["al", "bo"]
    assert (got[10]["ops"], got[10]["away"]) == ([], [])
    assert (got[13]["ops"], got[13]["away"]) == (["al", "cy"], ["bo"])  # in the names' order
    assert {k: got[14][k] for k in ("room", "seq", "name", "by", "op")} == {
        "room": "#a",
        "seq": 8,
        "name": "bo",
        "by": "al",
        "op": True,
    }
    assert got[10]["total"] == 2
    assert (got[12]["joined"], got[12]["left"], got[12]["seconds"]) == (3, 1, 30.0)
    assert got[11]["rooms"] == [{"room": "#a", "members": 2}, {"room": "#lobby", "members": 5}]


def test_a_history_answer_is_one_message_holding_the_events() -> None:
    replay = ev.Replay("#a", (ev.Said("#a", 1, NOW, "al", "one"), ev.Said("#a", 2, NOW, "al", "2")))
    data = w.WebDialect().render([replay, ev.Replay("#b", ())])
    got = decode(data)
    assert [(m["type"], m["room"], len(m["events"])) for m in got] == [
        ("history", "#a", 2),
        ("history", "#b", 0),
    ]
    assert got[0]["events"][1]["text"] == "2"
    # The outbox bounds lines: a replay counts one per event, plus its own.
    assert data.count(b"\n") == 3 + 1


printable = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)  # type: ignore[arg-type]


@given(texts=st.lists(printable, min_size=1, max_size=20))
def test_the_outbox_counts_exactly_one_line_per_event(texts: list[str]) -> None:
    events = [ev.Said("#a", i, NOW, "al", text) for i, text in enumerate(texts, 1)]
    data = w.WebDialect().render(events)
    assert data.count(b"\n") == len(events)
    assert [m["text"] for m in decode(data)] == texts


@given(size=st.integers(min_value=0, max_value=70_000))
def test_a_frame_header_never_holds_a_newline_byte(size: int) -> None:
    frame = w.text_frame(b"x" * size + b"\n")
    assert frame.count(b"\n") == 1
    client = Connection(ConnectionType.CLIENT)
    client.receive_data(frame)
    (message,) = client.events()
    assert isinstance(message, TextMessage)
    assert message.data.rstrip() == "x" * size


def test_the_door_s_own_messages_are_frames_too() -> None:
    frame = w.WebDialect().render_one({"type": "hello", "password": True})
    assert decode(frame) == [{"type": "hello", "password": True}]


# --- Parsing -------------------------------------------------------------------------


def parse(message: object, **limits: int) -> w.ClientMessage:
    return w.parse_message(json.dumps(message), **limits)


def test_register_with_name_password_rooms_and_a_resume() -> None:
    assert parse({"type": "register", "name": " alice "}) == w.Register("alice")
    assert parse({"type": "register", "name": "alice"}).resumption() is None  # type: ignore[union-attr]
    got = parse(
        {
            "type": "register",
            "name": "bob",
            "password": "s3cret",
            "rooms": ["#b", "A", "#b"],
            "token": "9f" * 16,
            "resume": {"#b": {"epoch": "3f2a9c01b7e4", "seq": 12}, "A": {"epoch": "e", "seq": 0}},
        }
    )
    resume = {"#b": ("3f2a9c01b7e4", 12), "#a": ("e", 0)}
    assert got == w.Register("bob", "s3cret", ("#b", "#a"), resume, token="9f" * 16)
    assert isinstance(got, w.Register)
    assert got.resumption() == v2.Resume("9f" * 16, (("#b", "3f2a9c01b7e4", 12), ("#a", "e", 0)))
    assert "9f9f" not in repr(got)  # a secret, never in a log line


def test_ack_holds_the_new_token() -> None:
    assert parse({"type": "ack", "token": "ab" * 16}) == v2.Ack("ab" * 16)


def test_the_resume_messages_render_for_the_page() -> None:
    replayed = (ev.Said("#a", 8, NOW, "al", "missed"), ev.Joined("#a", 9, NOW, "bo"))
    data = w.WebDialect().render(
        [
            ev.Resumed("#a", "e1", 9, replayed),
            ev.ResumeFailed("#b", "e2", 1500, 1200, "more than 1000 events to replay"),
            ev.RoomState("#c", "e3", 4),
        ]
    )
    got = decode(data)
    assert [(m["type"], m.get("seq")) for m in got[0:3]] == [
        ("said", 8),
        ("joined", 9),
        ("resumed", 9),
    ]
    assert got[2] == {"type": "resumed", "room": "#a", "epoch": "e1", "seq": 9, "count": 2}
    assert got[3] == {
        "type": "resume-failed",
        "room": "#b",
        "epoch": "e2",
        "seq": 1500,
        "lost": 1200,
        "reason": "more than 1000 events to replay",
    }
    assert got[4] == {"type": "room", "room": "#c", "epoch": "e3", "seq": 4}
    # Each replayed event is a message of its own, counted as one by the outbox.
    assert data.count(b"\n") == len(got)


@pytest.mark.parametrize(
    ("message", "command"),
    [
        ({"type": "say", "room": "#a", "text": "hi"}, c.Say("hi", "#a")),
        ({"type": "say", "room": "B", "text": "<img src=x>"}, c.Say("<img src=x>", "#b")),
        ({"type": "me", "room": "#a", "text": "waves"}, c.Me("waves", "#a")),
        ({"type": "msg", "to": "bo", "text": "psst"}, c.Msg("bo", "psst")),
        ({"type": "join", "room": "#new"}, c.Join("#new")),
        ({"type": "part", "room": "#new"}, c.Part("#new", "")),
        ({"type": "part", "room": "#new", "reason": "bye"}, c.Part("#new", "bye")),
        ({"type": "nick", "name": "al2"}, c.Nick("al2")),
        ({"type": "users", "room": "#a"}, c.Users("#a")),
        ({"type": "users", "room": "#a", "all": True}, c.Users("#a", everyone=True)),
        ({"type": "rooms"}, c.Rooms()),
        ({"type": "history", "room": "#a"}, c.History(50, "#a")),
        ({"type": "history", "room": "#a", "count": 5}, c.History(5, "#a")),
        ({"type": "help"}, c.Help()),
        ({"type": "quit"}, c.Quit("")),
        ({"type": "quit", "reason": "later"}, c.Quit("later")),
    ],
)
def test_commands(message: object, command: c.Command) -> None:
    assert parse(message) == command


@pytest.mark.parametrize(
    ("text", "command"),
    [
        ("hello", c.Say("hello", "#a")),
        ("//slash", c.Say("/slash", "#a")),
        ("/me waves", c.Me("waves", "#a")),
        ("/msg bo hi there", c.Msg("bo", "hi there")),
        ("/join #b", c.Join("#b")),
        ("/part", c.Part("#a", "")),
        ("/leave gone home", c.Part("#a", "gone home")),
        ("/who", c.Users("#a")),
        ("/users all", c.Users("#a", everyone=True)),
        ("/list", c.Rooms()),
        ("/history 3", c.History(3, "#a")),
        ("/nick x", c.Nick("x")),
        ("/quit bye", c.Quit("bye")),
        ("/frob", c.Invalid("Unknown command /frob. Try /help.")),
    ],
)
def test_a_typed_line_takes_the_same_commands_as_nc(text: str, command: c.Command) -> None:
    assert parse({"type": "line", "room": "#a", "text": text}) == command


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ("{nope", "Bad JSON"),
        ("[1, 2]", 'A message is a JSON object with a "type"'),
        ('{"text": "hi"}', 'A message is a JSON object with a "type"'),
        ('{"type": "dance"}', "Unknown message type 'dance'"),
        ('{"type": "say", "text": "hi"}', '"room" is a room name'),
        ('{"type": "say", "room": "no spaces", "text": "hi"}', "Invalid room 'no spaces'"),
        ('{"type": "say", "room": "#a", "text": 5}', '"text" is a string'),
        ('{"type": "say", "room": "#a", "text": "  "}', '"text" must not be empty'),
        ('{"type": "history", "room": "#a", "count": 0}', '"count" is a whole number'),
        ('{"type": "history", "room": "#a", "count": true}', '"count" is a whole number'),
        ('{"type": "register"}', '"name" is a non-empty string'),
        ('{"type": "register", "name": "a", "rooms": []}', '"rooms" is a list'),
        ('{"type": "register", "name": "a", "resume": {"#a": -1}}', '"resume" maps'),
        ('{"type": "register", "name": "a", "resume": {"#a": 5}}', '"resume" maps'),
        (
            '{"type": "register", "name": "a", "resume": {"#a": {"epoch": "e", "seq": -1}}}',
            '"resume" maps',
        ),
        (
            '{"type": "register", "name": "a", "resume": {"#a": {"epoch": "", "seq": 1}}}',
            '"resume" maps',
        ),
        (
            '{"type": "register", "name": "a", "resume": {"#a": {"epoch": "e", "seq": 1.5}}}',
            '"resume" maps',
        ),
        ('{"type": "register", "name": "a", "token": 5}', '"token" is a resume token'),
        ('{"type": "register", "name": "a", "token": ""}', '"token" is a resume token'),
        ('{"type": "register", "name": "a", "token": "' + "x" * 129 + '"}', '"token" is a'),
        ('{"type": "ack"}', '"token" is a resume token'),
        ('{"type": "register", "name": "a", "password": 1}', '"password" is a string'),
        ("[" * 100_000, "Bad JSON"),
    ],
)
def test_bad_messages_get_a_clear_error(data: str, error: str) -> None:
    got = w.parse_message(data)
    assert isinstance(got, c.Invalid)
    assert got.message.startswith(error)


def test_a_text_over_the_limit_is_refused_by_its_utf8_size() -> None:
    assert parse({"type": "say", "room": "#a", "text": "é" * 5}, max_text=10) == c.Say(
        "é" * 5, "#a"
    )
    got = parse({"type": "say", "room": "#a", "text": "é" * 6}, max_text=10)
    assert got == c.Invalid("Message too long (limit 10 bytes); it was discarded")


def test_text_is_cleaned_as_on_the_line_door() -> None:
    raw = "a\x1b[31mb\tc\nd"
    got = parse({"type": "say", "room": "#a", "text": raw})
    assert got == c.Say(p.clean_text(raw), "#a")
    assert got == c.Say("ab cd", "#a")


@given(st.text(max_size=200))
def test_any_text_parses_to_a_message_whose_strings_are_clean_utf8(text: str) -> None:
    for message in (
        text,
        json.dumps({"type": "say", "room": "#a", "text": text}),
        json.dumps({"type": "line", "room": "#a", "text": text}),
        json.dumps({"type": "register", "name": text, "password": text}),
    ):
        got = w.parse_message(message)
        if isinstance(got, c.Invalid):
            continue
        for item in dataclasses.fields(got):
            value = getattr(got, item.name)
            if isinstance(value, str):
                value.encode()  # no lone surrogate reaches the hub
                assert item.name == "password" or value == p.clean_text(value)


@given(
    text=printable,
    when=st.floats(min_value=0, max_value=4e9, allow_nan=False),
    name=st.from_regex(r"[\w-]{1,24}", fullmatch=True),
)
def test_the_chat_line_fast_path_says_what_the_general_one_does(
    text: str, when: float, name: str
) -> None:
    dialect = w.WebDialect()
    event = ev.Said("#a-b_c", 3, when, name, text)
    (fast,) = decode(dialect.render([event]))
    assert fast == json.loads(dialect.json(event)) == dialect.message(event)


def general(dialect: w.WebDialect, events: list[ev.Event]) -> bytes:
    """The general path: each event's JSON from the encoder, framed on its own."""
    return b"".join(w.text_frame(f"{dialect.json(event)}\n".encode()) for event in events)


@given(
    lines=st.lists(
        st.tuples(
            st.text(st.characters(blacklist_categories=("Cs",)), max_size=900)  # type: ignore[arg-type]
            | st.text(st.sampled_from('é€x"\\\n\0'), max_size=900),
            st.sampled_from([NOW, NOW + 0.001, 0.0, 4e9 + 0.5]),
            st.sampled_from(["al", "bo-b_2"]),
        ),
        min_size=1,
        max_size=8,
    ),
    joined=st.booleans(),
)
def test_a_burst_takes_the_fast_path_to_the_bytes_the_general_one_writes(
    lines: list[tuple[str, float, str]], joined: bool
) -> None:
    events: list[ev.Event] = [
        ev.Said("#a", seq, when, name, text) for seq, (text, when, name) in enumerate(lines, 1)
    ]
    if joined:  # other events between chat lines take the general path
        events.insert(len(events) // 2, ev.Joined("#a", 99, NOW, "cy"))
    dialect = w.WebDialect()
    assert dialect.render(events) == general(dialect, events)
    assert dialect.render(events) == general(dialect, events)  # with its headers kept


def test_chat_lines_of_every_frame_size_are_framed_as_the_general_path_frames_them() -> None:
    # Past the headers kept, and through each size whose length field holds a 0x0A byte.
    dialect = w.WebDialect()
    for size in range(3000):
        event = ev.Said("#a", 1, NOW, "al", "x" * size)
        assert dialect.render([event]) == general(dialect, [event]), size
    assert len(dialect._headers) == w.HEADERS_KEPT
