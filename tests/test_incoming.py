"""Server lines classified, and the room state the status line shows."""

from __future__ import annotations

import pytest

from triochat.client.incoming import Incoming, Kind, RoomState, parse_line


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("[12:00:01] <ann> hi there", Incoming(Kind.MESSAGE, "hi there", "[12:00:01]", "ann")),
        ("[12:00:01] <ann> <b> x", Incoming(Kind.MESSAGE, "<b> x", "[12:00:01]", "ann")),
        ("[12:00:01] * ann waves", Incoming(Kind.EVENT, "waves", "[12:00:01]", "ann")),
        (
            "[12:00:01] * ann left #lobby (quit)",
            Incoming(Kind.EVENT, "left #lobby (quit)", "[12:00:01]", "ann"),
        ),
        ("[12:00:01] *ann* psst", Incoming(Kind.PRIVATE, "psst", "[12:00:01]", "ann")),
        ("[12:00:01] -> *ben* psst", Incoming(Kind.PRIVATE_SENT, "psst", "[12:00:01]", "ben")),
        ("* Users in #lobby: ann", Incoming(Kind.INFO, "Users in #lobby: ann")),
        ("! No such user: zed", Incoming(Kind.ERROR, "No such user: zed")),
        ("hello from a strange server", Incoming(Kind.OTHER, "hello from a strange server")),
        ("[12:00:01]", Incoming(Kind.OTHER, "[12:00:01]")),
        ("", Incoming(Kind.OTHER, "")),
    ],
)
def test_parse_line(line: str, expected: Incoming) -> None:
    assert parse_line(line) == expected


def follow(state: RoomState, *lines: str) -> None:
    for line in lines:
        state.update(parse_line(line))


def test_room_state_follows_joins_leaves_and_renames() -> None:
    state = RoomState("ann")
    follow(state, "* Users in #lobby: ann, Ben", "[00:00:00] * ann joined #lobby")
    assert (state.room, state.user_count) == ("#lobby", 2)
    follow(state, "[00:00:01] * cat joined #lobby", "[00:00:02] * ben left #lobby (quit)")
    assert sorted(state.members.values()) == ["ann", "cat"]
    # Events about other rooms, actions and chat leave the count alone.
    follow(state, "[00:00:03] * cat waves", "[00:00:03] <cat> joined #lobby")
    assert state.user_count == 2
    follow(state, "[00:00:04] * ann is now known as anna")
    assert state.name == "anna"
    assert sorted(state.members.values()) == ["anna", "cat"]
    follow(state, "* Users in #den: anna", "[00:00:05] * anna joined #den")
    assert (state.room, state.user_count) == ("#den", 1)
    follow(state, "[00:00:06] * cat left #lobby (quit)")  # not our room any more
    assert state.user_count == 1


@pytest.mark.parametrize(
    ("text", "mentioned"),
    [
        ("hi ann", True),
        ("ANN: look", True),
        ("hi annie", False),
        ("joanna", False),
        ("ann-marie", False),
        ("@ann!", True),
    ],
)
def test_mentions_are_whole_names_in_any_case(text: str, mentioned: bool) -> None:
    assert RoomState("ann").mentions_me(text) is mentioned
