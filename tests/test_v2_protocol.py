"""Protocol v2, sans-IO: every line the server renders parses back without guessing."""

from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from triochat.client.resuming import parse_time, to_event
from triochat.core import commands as c, events as ev
from triochat.protocol import line as p, v2

T = 1_764_624_338.125  # 2025-12-01T21:25:38.125Z
V2 = v2.V2Dialect()

ROOM_EVENTS: list[ev.Event] = [
    ev.Said("#lobby", 7, T, "alice", "hello :) key=value :colon"),
    ev.Acted("#dev", 1, T, "bob", "waves"),
    ev.Joined("#lobby", 8, T, "carol"),
    ev.Left("#lobby", 9, T, "carol", "connection lost"),
    ev.Left("#lobby", 10, T, "carol", ""),
    ev.Renamed("#lobby", 11, T, "bob", "robert"),
    ev.TopicSet("#lobby", 12, T, "alice", "plans"),
    ev.Presence("#big", 13, T, 3, 1, 30.0),
    ev.Legacy("#lobby", 14, T, "[10:00:00] <old> from before"),
    ev.Private(T, "alice", "bob", "psst"),
    ev.Private(T, "alice", "bob", "psst", echo=True),
    ev.Notice("Welcome"),
    ev.Error("Name bob is taken, choose another"),
    ev.UserList("#lobby", ("alice", "bob"), 5),
    ev.UserList(
        "#lobby", ("alice", "bob", "cy"), 3, frozenset({"alice", "cy"}), frozenset({"bob"})
    ),
    ev.RoleChanged("#lobby", 15, T, "bob", "alice", True),
    ev.RoleChanged("#lobby", 16, T, "bob", "alice", False),
    ev.RoleChanged("#lobby", 17, T, "alice", "", True),
    ev.RoomList((("#dev", 1), ("#lobby", 2))),
]


def test_marks_are_keys_so_the_names_stay_bare() -> None:
    users = ev.UserList("#x", ("al", "bo", "cy"), 3, frozenset({"al", "cy"}), frozenset({"bo"}))
    assert V2.render([users]) == b"users room=#x total=3 ops=al,cy away=bo :al bo cy\n"
    # Without marks the line is what it always was (older clients parse both).
    assert V2.render([ev.UserList("#x", ("al",))]) == b"users room=#x total=1 :al\n"
    assert V2.render([ev.RoleChanged("#x", 4, T, "bo", "al", False)]) == (
        b"deopped room=#x seq=4 time=2025-12-01T21:25:38.125Z name=bo by=al\n"
    )


@pytest.mark.parametrize("event", ROOM_EVENTS, ids=lambda e: type(e).__name__)
def test_each_event_renders_one_line_that_parses_back(event: ev.Event) -> None:
    data = V2.render([event])
    assert data.count(b"\n") == 1
    assert data.endswith(b"\n")
    assert to_event(v2.parse_line(data.decode()[:-1])) == event


def test_a_line_splits_into_kind_fields_and_text() -> None:
    line = v2.parse_line(V2.render([ROOM_EVENTS[0]]).decode().rstrip("\n"))
    assert line.kind == "said"
    assert line.fields == {
        "room": "#lobby",
        "seq": "7",
        "time": "2025-12-01T21:25:38.125Z",
        "name": "alice",
    }
    assert line.text == "hello :) key=value :colon"
    assert parse_time(line["time"]) == T


def test_resume_lines_render_in_order() -> None:
    said = ev.Said("#lobby", 8, T, "alice", "missed")
    text = V2.render(
        [
            ev.Hello(2, 30.0, 1000),
            ev.Welcome("alice", "ab" * 16, 30.0),
            ev.Resumed("#lobby", "e1", 8, (said,)),
            ev.ResumeFailed("#dev", "e2", 40, 12, "history no longer has them"),
            ev.ResumeFailed("#gone", "", 0, 0, "no such room"),
            ev.RoomState("#x", "e3", 4),
            ev.Replay("#lobby", (said,)),
        ]
    ).decode()
    assert text.splitlines() == [
        "hello version=2 grace=30 resume-max=1000",
        f"welcome name=alice token={'ab' * 16} grace=30",
        "said room=#lobby seq=8 time=2025-12-01T21:25:38.125Z name=alice :missed",
        "resumed room=#lobby epoch=e1 seq=8 count=1",
        "resume-failed room=#dev epoch=e2 seq=40 lost=12 :history no longer has them",
        "resume-failed room=#gone epoch=- seq=0 lost=0 :no such room",
        "room room=#x epoch=e3 seq=4",
        "history room=#lobby count=1",
        "said room=#lobby seq=8 time=2025-12-01T21:25:38.125Z name=alice :missed",
        "history-end room=#lobby",
    ]


@given(st.text(st.characters(codec="utf-8"), max_size=200))
def test_any_chat_text_round_trips(text: str) -> None:
    text = p.clean_text(text)
    line = v2.parse_line(V2.render([ev.Said("#r", 1, T, "n", text)]).decode()[:-1])
    assert line.text == text


def test_v1_lines_are_not_v2() -> None:
    for text in ("* Server is shutting down. Bye!", "! Server full", "[12:00:00] <a> hi"):
        with pytest.raises(v2.V2ParseError):
            v2.parse_line(text)


def test_resume_and_v2_commands_parse() -> None:
    assert v2.parse_resume("/resume tok #lobby=e1:12 dev=e2:0") == v2.Resume(
        "tok", (("#lobby", "e1", 12), ("#dev", "e2", 0))
    )
    assert v2.parse_resume("/resume tok") == v2.Resume("tok", ())
    assert v2.parse_resume("alice") is None
    for bad in ("/resume", "/resume tok #lobby=e1", "/resume tok #lobby=:1", "/resume t #=e:1"):
        assert isinstance(v2.parse_resume(bad), v2.BadResume), bad
    assert isinstance(v2.parse_resume("/resume t #l=e:" + "9" * 19), v2.BadResume)
    assert v2.parse_command("/to #dev hi there") == c.Say("hi there", "#dev")
    assert v2.parse_command("/part #dev bored now") == c.Part("#dev", "bored now")
    assert v2.parse_command("/part #dev") == c.Part("#dev", "")
    assert v2.parse_command("/ack tok") == v2.Ack("tok")
    for bad in ("/to #dev", "/to", "/part", "/ack", "/ack a b"):
        assert isinstance(v2.parse_command(bad), c.Invalid), bad
    assert v2.parse_command("/join #dev") == c.Join("#dev")  # v1's commands as they were
