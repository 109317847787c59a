"""The IRC dialect: the hub's events as the lines an IRC client expects. No sockets."""

from __future__ import annotations

import calendar
import re

from hypothesis import given, strategies as st

from triochat.core import events as ev
from triochat.protocol import irc
from triochat.protocol.irc import names
from triochat.protocol.irc.render import IRCDialect, server_time

T = calendar.timegm((2026, 12, 1, 20, 5, 9)) + 0.25
BOB = "bob!bob@irc.test"


def lines(dialect: IRCDialect, *events: ev.Event) -> list[irc.Message]:
    data = dialect.render(events)
    assert data.endswith(b"\r\n") or not data
    parsed = [irc.parse(line) for line in data.decode().split("\r\n")[:-1]]
    assert None not in parsed
    return [msg for msg in parsed if msg is not None]


def plain(nick: str = "me") -> IRCDialect:
    return IRCDialect("irc.test", (), nick)


def test_room_events_as_irc_commands() -> None:
    got = lines(
        plain(),
        ev.Said("#a", 1, T, "bob", "hello there"),
        ev.Acted("#a", 2, T, "bob", "waves"),
        ev.Joined("#a", 3, T, "carol"),
        ev.Left("#a", 4, T, "carol", "bye for now"),
        ev.Left("#a", 5, T, "dave", ""),
        ev.Renamed("#a", 6, T, "bob", "robert"),
        ev.TopicSet("#a", 7, T, "robert", "news"),
        ev.Left("#a", 8, T, "eve", "joined #b"),
        ev.Legacy("#a", 9, T, "[10:00:00] <old> a v1 line"),
    )
    assert got == [
        irc.message("PRIVMSG", "#a", "hello there", source=BOB),
        irc.message("PRIVMSG", "#a", "\x01ACTION waves\x01", source=BOB),
        irc.message("JOIN", "#a", source="carol!carol@irc.test"),
        irc.message("PART", "#a", "bye for now", source="carol!carol@irc.test"),
        irc.message("PART", "#a", source="dave!dave@irc.test"),
        irc.message("NICK", "robert", source=BOB),
        irc.message("TOPIC", "#a", "news", source="robert!robert@irc.test"),
        irc.message("PART", "#a", "joined #b", source="eve!eve@irc.test"),
        irc.message("NOTICE", "#a", "[10:00:00] <old> a v1 line", source="irc.test"),
    ]


def test_a_disconnect_is_a_quit_said_once_however_many_rooms_are_shared() -> None:
    for reason in ["connection lost", "too slow", "quit", "server shutdown", "name conflict"]:
        got = lines(plain(), ev.Left("#a", 1, T, "bob", reason), ev.Left("#b", 1, T, "bob", reason))
        assert got == [irc.message("QUIT", reason, source=BOB)]


def test_a_rename_seen_in_two_rooms_is_one_nick() -> None:
    got = lines(plain(), ev.Renamed("#a", 1, T, "bob", "rob"), ev.Renamed("#b", 4, T, "bob", "rob"))
    assert got == [irc.message("NICK", "rob", source=BOB)]


def test_server_time_and_msgid_tags_when_negotiated() -> None:
    said = ev.Said("#a", 42, T, "bob", "hi")
    assert lines(IRCDialect("irc.test", ["server-time"]), said)[0].tags == (
        ("time", "2026-12-01T20:05:09.250Z"),
    )
    tagged = lines(IRCDialect("irc.test", ["message-tags"]), said)[0]
    assert tagged.tag("msgid") == "#a/42"
    assert tagged.tag("time") == server_time(T)
    assert lines(plain(), said)[0].tags == ()


def test_private_messages_and_the_echo_rule() -> None:
    to_me = ev.Private(T, "bob", "me", "psst")
    my_echo = ev.Private(T, "me", "bob", "psst back", echo=True)
    assert lines(plain(), to_me, my_echo) == [irc.message("PRIVMSG", "me", "psst", source=BOB)]
    echoing = IRCDialect("irc.test", ["echo-message"], "me")
    assert echoing.echo
    assert not plain().echo
    assert lines(echoing, my_echo) == [
        irc.message("PRIVMSG", "bob", "psst back", source="me!me@irc.test")
    ]


def test_events_for_one_member_are_addressed_to_their_nick() -> None:
    dialect = plain("zoë")
    got = lines(
        dialect,
        ev.Notice("Welcome"),
        ev.Error("No such user: nobody"),
        ev.UserList("#a", ("bob", "zoë")),
        ev.RoomList((("#a", 2), ("#b", 1))),
    )
    assert got == [
        irc.message("NOTICE", "zoë", "Welcome", source="irc.test"),
        irc.message("NOTICE", "zoë", "Error: No such user: nobody", source="irc.test"),
        irc.message("353", "zoë", "=", "#a", "bob zoë", source="irc.test"),
        irc.message("366", "zoë", "#a", "End of /NAMES list", source="irc.test"),
        irc.message("321", "zoë", "Channel", "Users  Name", source="irc.test"),
        irc.message("322", "zoë", "#a", "2", "", source="irc.test"),
        irc.message("322", "zoë", "#b", "1", "", source="irc.test"),
        irc.message("323", "zoë", "End of /LIST", source="irc.test"),
    ]
    dialect.nick = "zoe2"
    assert lines(dialect, ev.Notice("x"))[0].params[0] == "zoe2"


def test_a_long_name_list_is_split_into_lines_that_fit() -> None:
    members = tuple(f"user{i:04d}-ß" for i in range(300))
    got = lines(plain(), ev.UserList("#a", members))
    assert [m.command for m in got[-1:]] == ["366"]
    listed = [name for m in got[:-1] for name in m.params[3].split(" ")]
    assert listed == list(members)
    for msg in got:
        assert len(irc.serialize(msg)) <= irc.MAX_LINE


def test_a_long_line_from_the_line_door_becomes_several_privmsgs_within_512_bytes() -> None:
    text = " ".join(["wörd"] * 800)  # about 4,800 bytes
    got = lines(plain(), ev.Said("#a", 1, T, "bob", text), ev.Acted("#a", 2, T, "bob", text))
    said = [m for m in got if not m.params[1].startswith("\x01")]
    acted = [m for m in got if m.params[1].startswith("\x01")]
    assert " ".join(m.params[1] for m in said) == text
    assert " ".join(
        m.params[1].removeprefix("\x01ACTION ").removesuffix("\x01") for m in acted
    ) == (text)
    for msg in got:
        assert len(irc.serialize(msg)) <= irc.MAX_LINE


def test_history_replays_chat_as_privmsgs_and_membership_as_notices() -> None:
    replay = ev.Replay(
        "#a",
        (
            ev.Said("#a", 1, T, "bob", "earlier"),
            ev.Acted("#a", 2, T, "bob", "smiles"),
            ev.Joined("#a", 3, T, "carol"),
            ev.Left("#a", 4, T, "carol", "connection lost"),
            ev.Renamed("#a", 5, T, "bob", "rob"),
        ),
    )
    timed = lines(IRCDialect("irc.test", ["server-time"]), replay)
    assert [(m.command, m.source, m.params) for m in timed] == [
        ("PRIVMSG", BOB, ("#a", "earlier")),
        ("PRIVMSG", BOB, ("#a", "\x01ACTION smiles\x01")),
        ("NOTICE", "irc.test", ("#a", "* carol joined #a")),
        ("NOTICE", "irc.test", ("#a", "* carol left #a (connection lost)")),
        ("NOTICE", "irc.test", ("#a", "* bob is now known as rob")),
    ]
    assert all(m.tag("time") == "2026-12-01T20:05:09.250Z" for m in timed)
    untimed = lines(plain(), replay)
    # Without server-time the line carries its time: [HH:MM:SS], dated on other days.
    text = untimed[0].params[1]
    stamp = text[: text.index("]") + 1]
    assert re.fullmatch(r"\[(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d\]", stamp)
    assert untimed[0].params[1] == f"{stamp} earlier"
    assert untimed[1].params[1] == f"\x01ACTION {stamp} smiles\x01"
    assert untimed[2].params[1] == f"{stamp} * carol joined #a"


def test_dialects_with_the_same_rendering_capabilities_are_one_dialect() -> None:
    a = IRCDialect("irc.test", ["server-time", "multi-prefix", "echo-message"], "a")
    b = IRCDialect("irc.test", ["echo-message", "server-time"], "b")
    c = IRCDialect("irc.test", ["server-time"], "c")
    assert a == b
    assert hash(a) == hash(b)
    assert a.name == b.name == "irc+echo-message+server-time"
    assert a != c
    assert len({a, b, c, plain("d"), plain("e")}) == 3
    burst: list[ev.Event] = [ev.Said("#a", 1, T, "bob", "hi"), ev.Joined("#a", 2, T, "x")]
    assert a.render(burst) == b.render(burst)


@given(st.text(st.characters(exclude_categories=["Cs"]), min_size=1))
def test_no_text_from_any_door_breaks_a_line(text: str) -> None:
    data = plain().render([ev.Said("#a", 1, T, "bob", text), ev.Private(T, "bob", "me", text)])
    for line in data.split(b"\r\n")[:-1]:
        assert b"\r" not in line
        assert b"\n" not in line
        assert b"\0" not in line
        assert len(line) + 2 <= irc.MAX_LINE


def test_every_triochat_name_is_a_nick_and_irc_specials_are_refused() -> None:
    for name in ["bob", "zoë", "Łukasz", "田中", "a_b-c", "42", "x" * 24]:
        assert names.nick_error(name) is None
    assert "[ ]" in (names.nick_error("[away]") or "")
    assert "too long" in (names.nick_error("x" * 25) or "")
    assert names.nick_error("a.b") is not None
    assert names.nick_error("") is not None
    assert names.channel("#Lobby") == "#lobby"
    assert names.channel("lobby") is None
    assert names.channel("&local") is None
    assert names.channel("#a,b") is None


@given(
    caps=st.sets(st.sampled_from(["server-time", "message-tags", "echo-message"])),
    name=st.sampled_from(["bob", "zoë", "b" * 24]),
    texts=st.lists(
        st.text(st.characters(exclude_categories=["Cs"]), max_size=600)
        | st.text(st.sampled_from("é x\r\n\0"), max_size=600),
        min_size=1,
        max_size=3,
    ),
    seconds=st.floats(0, 2e9),
)
def test_a_chat_line_takes_the_fast_path_to_what_the_general_one_writes(
    caps: set[str], name: str, texts: list[str], seconds: float
) -> None:
    dialect = IRCDialect("irc.test", caps, "me")
    said = [ev.Said("#room", seq, seconds, name, text) for seq, text in enumerate(texts, 1)]
    general: list[str] = []
    for event in said:
        dialect._event(event, general)  # the general path: _texts and format_message
    assert dialect.render(said) == "".join(general).encode()
    assert dialect.render(said) == "".join(general).encode()  # with its starts remembered
