"""The session state machine, without sockets or a trio run: inputs in, events and effects out.

A small fake hub records what the session asks of it; a :class:`trio.testing.MockClock`
is the time for the password delays. ``Pair`` drives a session the way a door
does (as h11's ``ConnectionPair`` drives a connection): it feeds the inputs,
carries out the effects with outcomes the test chose, and keeps what the
client would have seen.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest
import trio.testing

from triochat import ServerConfig
from triochat.backplane import Claim
from triochat.core import commands as c, session as s
from triochat.core._auth import FailureDelays
from triochat.core.events import Error, Notice, RoomEvent, Said
from triochat.protocol import line as p

WELCOME = "Welcome to triochat! 0 users online. Commands start with /, try /help."
PRIVATE_WELCOME = "Welcome to triochat! Commands start with /, try /help."
HELP = [Notice(line) for line in p.HELP]
NAME_Q = Notice(p.NAME_QUESTION)
PASSWORD_Q = Notice(p.PASSWORD_PROMPT)


class FakeMember:
    def __init__(self, name: str) -> None:
        self.name = name
        self.key = p.name_key(name)
        self.rooms: dict[str, None] = {}
        self.address = ""
        self.account: str | None = None


class FakeHub:
    """Names and room membership, and a log of every call the session made."""

    def __init__(self, *, online: int = 0, notice: str | None = None) -> None:
        self.members: dict[str, FakeMember] = {}
        self.calls: list[tuple[Any, ...]] = []
        self.remote: set[str] = set()  # names taken on "another node"
        self.extra_online = online
        self.notice = notice
        self.lines_in = 0
        self.history: dict[str, list[RoomEvent]] = {}

    def register(
        self, name: str, outbox: object, disconnect: Callable[[], None], dialect: object
    ) -> FakeMember | str:
        error = self.name_unavailable(name)
        if error is not None:
            return error
        member = self.members[p.name_key(name)] = FakeMember(name)
        self.calls.append(("register", name))
        return member

    def name_unavailable(self, name: str, current: FakeMember | None = None) -> str | None:
        if (error := p.name_error(name)) is not None:
            return error
        holder = self.members.get(p.name_key(name))
        if (holder is not None and holder is not current) or p.name_key(name) in self.remote:
            return f"Name {name} is taken, choose another"
        return None

    def online(self) -> int:
        return len(self.members) + self.extra_online

    def join(self, member: FakeMember, room: str) -> None:
        self.calls.append(("join", member.name, room))
        member.rooms[room] = None

    def part(self, member: FakeMember, room: str, reason: str) -> None:
        self.calls.append(("part", member.name, room, reason))
        member.rooms.pop(room, None)

    def say(self, member: FakeMember, room: str, texts: Sequence[str]) -> None:
        self.lines_in += len(texts)
        self.calls.append(("say", member.name, room, tuple(texts)))

    def act(self, member: FakeMember, room: str, text: str) -> None:
        self.calls.append(("act", member.name, room, text))

    def private(self, member: FakeMember, to: str, text: str) -> None:
        self.calls.append(("private", member.name, to, text))

    def rename(self, member: FakeMember, name: str) -> None:
        self.calls.append(("rename", member.name, name))
        if self.name_unavailable(name, member) is None:
            del self.members[member.key]
            member.name, member.key = name, p.name_key(name)
            self.members[member.key] = member

    def users(self, member: FakeMember, room: str, *, everyone: bool = False) -> None:
        self.calls.append(("users", member.name, room, *(["all"] if everyone else [])))

    def room_list(self, member: FakeMember) -> None:
        self.calls.append(("rooms", member.name))

    def recent(self, room: str, count: int) -> list[RoomEvent]:
        return self.history.get(room, [])[-count:]

    def replay(self, member: FakeMember, room: str, events: Sequence[RoomEvent]) -> None:
        self.calls.append(("replay", member.name, room, tuple(events)))

    def leave(self, member: FakeMember, reason: str, *, farewell: str | None = None) -> None:
        self.calls.append(("leave", member.name, reason, farewell))
        self.members.pop(member.key, None)


class Pair:
    """A session and the client's view of it: what it was sent, and what the door was asked."""

    def __init__(
        self,
        hub: FakeHub | None = None,
        *,
        clock: trio.testing.MockClock | None = None,
        delays: FailureDelays | None = None,
        address: str = "10.0.0.1",
        **rules: Any,
    ) -> None:
        self.hub = hub or FakeHub()
        self.clock = clock or trio.testing.MockClock()
        # FakeHub fakes what these tests use, not the moderation half of SessionHub.
        door: s.Door[FakeMember] = s.Door(
            hub=self.hub,  # type: ignore[arg-type]
            rules=s.Rules(**rules),
            dialect=p.LineDialect(),
            delays=delays if delays is not None else FailureDelays(),
            clock=self.clock.current_time,
        )
        self.session: s.Session[FakeMember] = s.Session(
            door, outbox=_NoOutbox(), disconnect=lambda: None, address=address
        )
        self.welcome = self.session.start()

    @property
    def state(self) -> s.State:
        return self.session.state

    def line(self, text: str) -> list[s.Output]:
        return self.session.receive_line(text)

    def command(self, line: str) -> list[s.Output]:
        command = p.parse_command(line)
        assert command is not None
        return self.session.command(command)

    def register(self, name: str, password: str | None = None) -> None:
        outputs = self.line(name)
        if password is not None:
            assert outputs == [PASSWORD_Q]
            outputs = self.line(password)
        if outputs == [s.ClaimName(name)]:
            outputs = self.session.claim_result(Claim.CLAIMED)
        assert outputs == [], outputs
        assert self.state is s.State.CHATTING


class _NoOutbox:
    def send_nowait(self, value: bytes, /) -> None:
        raise AssertionError("the session never writes to the outbox itself")

    def close(self) -> None:
        raise AssertionError("the session never closes the outbox itself")


def names(hub: FakeHub) -> list[tuple[Any, ...]]:
    return [call for call in hub.calls if call[0] in ("register", "join", "part", "leave")]


# --- the welcome ------------------------------------------------------------------


def test_the_welcome_counts_who_is_online_and_asks_for_a_name() -> None:
    assert Pair().welcome == [Notice(WELCOME), NAME_Q]
    linked_down = FakeHub(online=1, notice="The link is down")
    assert Pair(linked_down).welcome == [
        Notice("Welcome to triochat! 1 user online. Commands start with /, try /help."),
        Notice("The link is down"),
        NAME_Q,
    ]


def test_a_password_protected_welcome_says_nothing_about_the_chat() -> None:
    hub = FakeHub(online=5, notice="The link is down")
    pair = Pair(hub, password="sesame")
    assert pair.welcome == [Notice(PRIVATE_WELCOME), NAME_Q]
    assert pair.line("ann") == [PASSWORD_Q]
    # The notice held back from strangers comes with the right password.
    assert pair.line("sesame") == [Notice("The link is down")]
    assert pair.state is s.State.CHATTING


def test_start_is_the_first_input_and_only_once() -> None:
    pair = Pair()
    with pytest.raises(s.LocalProtocolError, match="awaiting a name"):
        pair.session.start()


# --- registration -------------------------------------------------------------------


def test_a_name_registers_and_joins_the_lobby() -> None:
    pair = Pair()
    pair.register("  ann  ")
    assert names(pair.hub) == [("register", "ann"), ("join", "ann", "#lobby")]
    assert pair.session.room == "#lobby"
    assert pair.session.member is not None
    assert pair.session.member.name == "ann"


def test_an_empty_line_is_no_name_and_an_invalid_name_is_asked_again() -> None:
    pair = Pair()
    assert pair.line("   ") == []
    assert pair.line("no spaces") == [Error(p.name_error("no spaces") or ""), NAME_Q]
    assert pair.state is s.State.AWAITING_NAME
    pair.register("ann")


def test_a_taken_name_is_asked_again() -> None:
    hub = FakeHub()
    Pair(hub).register("ann")
    pair = Pair(hub)
    assert pair.line("ANN") == [Error("Name ANN is taken, choose another"), NAME_Q]
    pair.register("ben")


@pytest.mark.parametrize("quit", ["/quit", "/QUIT now", "/exit"])
def test_quit_at_the_name_prompt_says_bye_and_closes(quit: str) -> None:
    pair = Pair()
    assert pair.line(quit) == [Notice("Bye!"), s.Close("quit")]
    assert pair.state is s.State.CLOSED
    assert pair.hub.calls == []


def test_help_is_answered_at_the_name_prompt_then_the_question_again() -> None:
    pair = Pair()
    assert pair.line("/help") == [*HELP, NAME_Q]
    assert pair.state is s.State.AWAITING_NAME
    pair.register("ann")


def test_a_line_too_long_gets_its_error_and_the_question_of_the_moment() -> None:
    pair = Pair(password="sesame")
    too_long = Error("Line too long (limit 64 bytes); it was discarded")
    assert pair.session.line_too_long(64) == [too_long, NAME_Q]
    pair.line("ann")
    assert pair.session.line_too_long(64) == [too_long, PASSWORD_Q]
    pair.line("sesame")
    assert pair.session.line_too_long(64) == [too_long]


# --- the password ---------------------------------------------------------------------


def test_the_right_password_registers_the_name_given_and_clears_failures() -> None:
    delays = FailureDelays()
    delays.fail("10.0.0.1", 0)
    pair = Pair(password="sesame", delays=delays)
    pair.register("ann", password="sesame")
    assert names(pair.hub) == [("register", "ann"), ("join", "ann", "#lobby")]
    assert len(delays) == 0


def test_a_wrong_password_waits_then_refuses_and_closes() -> None:
    pair = Pair(password="sesame")
    pair.line("ann")
    assert pair.line("Sesame") == [s.Wait(1.0)]
    assert pair.state is s.State.REFUSING
    assert pair.session.delay_elapsed() == [Error("Wrong password"), s.Close("wrong password")]
    assert pair.state is s.State.CLOSED  # type: ignore[comparison-overlap]
    assert pair.hub.calls == []


def test_the_password_is_compared_as_sent() -> None:
    pair = Pair(password=" sesame")
    pair.line("ann")
    assert pair.line("sesame") == [s.Wait(1.0)]  # the leading space counts


def test_each_failure_from_an_address_doubles_its_delay_until_it_is_forgotten() -> None:
    clock = trio.testing.MockClock()
    delays = FailureDelays(base=1, cap=4, forget=600)

    def guess(address: str = "10.0.0.1") -> float:
        pair = Pair(password="sesame", clock=clock, delays=delays, address=address)
        pair.line("eve")
        [wait] = pair.line("guess")
        assert isinstance(wait, s.Wait)
        return wait.seconds

    assert [guess() for _ in range(4)] == [1, 2, 4, 4]
    assert guess("10.0.0.2") == 1  # per address
    clock.jump(599)
    assert guess() == 4
    clock.jump(601)  # quiet for longer than `forget`
    assert guess() == 1


def test_quit_at_the_password_prompt_says_bye_with_no_delay_and_no_failure() -> None:
    delays = FailureDelays()
    pair = Pair(password="sesame", delays=delays)
    pair.line("ann")
    assert pair.line("/quit") == [Notice("Bye!"), s.Close("quit")]
    assert pair.state is s.State.CLOSED
    assert len(delays) == 0


def test_help_at_the_password_prompt_then_the_prompt_again() -> None:
    delays = FailureDelays()
    pair = Pair(password="sesame", delays=delays)
    pair.line("ann")
    assert pair.line("/help") == [*HELP, PASSWORD_Q]
    assert len(delays) == 0
    assert pair.line("sesame") == []
    assert pair.state is s.State.CHATTING


def test_after_the_password_a_refused_name_is_asked_again_without_a_second_prompt() -> None:
    hub = FakeHub()
    Pair(hub).register("ann")
    pair = Pair(hub, password="sesame")
    pair.line("ann")
    assert pair.line("sesame") == [Error("Name ann is taken, choose another"), NAME_Q]
    assert pair.state is s.State.AWAITING_NAME
    pair.register("ben")


# --- the deadline -----------------------------------------------------------------------

DEADLINE = [Error("No name given within 60 s, closing"), s.Close("no name given")]


def test_the_deadline_closes_a_session_in_every_registration_state() -> None:
    pair = Pair()
    assert pair.session.deadline_passed() == DEADLINE

    pair = Pair(password="sesame")
    pair.line("ann")
    assert pair.session.deadline_passed() == DEADLINE

    pair = Pair(password="sesame")
    pair.line("ann")
    pair.line("wrong")
    assert pair.state is s.State.REFUSING
    assert pair.session.deadline_passed() == DEADLINE

    pair = Pair(claim_names=True, registration_timeout=2.5)
    pair.line("ann")
    assert pair.state is s.State.CLAIMING
    assert pair.session.deadline_passed() == [
        Error("No name given within 2.5 s, closing"),
        s.Close("no name given"),
    ]
    assert pair.state is s.State.CLOSED  # type: ignore[comparison-overlap]


# --- cluster claims --------------------------------------------------------------------


def test_a_name_is_claimed_in_the_cluster_before_the_hub_registers_it() -> None:
    pair = Pair(claim_names=True)
    assert pair.line("ann") == [s.ClaimName("ann")]
    assert pair.state is s.State.CLAIMING
    assert pair.hub.calls == []
    assert pair.session.claim_result(Claim.CLAIMED) == []
    assert names(pair.hub) == [("register", "ann"), ("join", "ann", "#lobby")]


def test_a_claim_refused_by_the_cluster_asks_again() -> None:
    pair = Pair(claim_names=True)
    pair.line("ann")
    assert pair.session.claim_result(Claim.TAKEN) == [
        Error("Name ann is taken, choose another"),
        NAME_Q,
    ]
    pair.line("ann")
    assert pair.session.claim_result(Claim.LINK_DOWN) == [Error(s.LINK_DOWN), NAME_Q]
    assert pair.state is s.State.AWAITING_NAME
    assert pair.hub.calls == []


def test_a_name_known_taken_is_not_claimed_and_a_claim_the_hub_refuses_is_given_back() -> None:
    hub = FakeHub()
    hub.remote.add("ann")
    pair = Pair(hub, claim_names=True)
    assert pair.line("ann") == [Error("Name ann is taken, choose another"), NAME_Q]
    assert pair.line("ben") == [s.ClaimName("ben")]
    hub.remote.add("ben")  # another node's user arrived while the claim was in flight
    assert pair.session.claim_result(Claim.CLAIMED) == [
        s.Unclaim("ben"),
        Error("Name ben is taken, choose another"),
        NAME_Q,
    ]


# --- commands ---------------------------------------------------------------------------


def chatting(**rules: Any) -> Pair:
    pair = Pair(**rules)
    pair.register("ann")
    pair.hub.calls.clear()
    return pair


def test_commands_without_a_room_go_to_the_current_room() -> None:
    pair = chatting()
    for line in (
        "//slash",
        "/me waves",
        "/users",
        "/users all",
        "/msg ben hi",
        "/rooms",
        "/history 2",
    ):
        assert pair.command(line) == []
    assert pair.hub.calls == [
        ("say", "ann", "#lobby", ("/slash",)),
        ("act", "ann", "#lobby", "waves"),
        ("users", "ann", "#lobby"),
        ("users", "ann", "#lobby", "all"),
        ("private", "ann", "ben", "hi"),
        ("rooms", "ann"),
        ("replay", "ann", "#lobby", ()),
    ]
    # say() counts its own lines; the session counts each other command once.
    assert pair.hub.lines_in == 7


def test_a_one_room_join_parts_the_old_room_then_joins_the_new_one() -> None:
    pair = chatting()
    assert pair.command("/join #dev") == []
    assert pair.hub.calls == [
        ("part", "ann", "#lobby", "joined #dev"),
        ("join", "ann", "#dev"),
    ]
    assert pair.session.room == "#dev"
    pair.hub.calls.clear()
    pair.command("hello")
    pair.command("/join #dev")  # the hub says "already in": nothing is parted
    assert pair.hub.calls == [("say", "ann", "#dev", ("hello",)), ("join", "ann", "#dev")]


def test_a_one_room_member_cannot_part_its_room() -> None:
    pair = chatting()
    assert pair.session.command(c.Part("#lobby")) == [Error(s.ONE_ROOM)]
    assert pair.hub.calls == []


def test_multi_room_mode_passes_rooms_through() -> None:
    pair = chatting(one_room=False, arrival_rooms=())
    assert pair.session.room is None
    assert pair.session.command(c.Say("hi")) == [Error(s.NO_ROOM)]
    for command in (c.Join("#a"), c.Join("#b"), c.Say("hi", "#a"), c.Me("waves", "#b")):
        assert pair.session.command(command) == []
    assert pair.session.room == "#b"  # the last joined
    pair.session.command(c.Users())
    pair.session.command(c.Part("#b", "bye"))
    assert pair.session.room == "#a"
    assert pair.hub.calls == [
        ("join", "ann", "#a"),
        ("join", "ann", "#b"),
        ("say", "ann", "#a", ("hi",)),
        ("act", "ann", "#b", "waves"),
        ("users", "ann", "#b"),
        ("part", "ann", "#b", "bye"),
    ]


def test_help_and_invalid_commands_answer_the_member() -> None:
    pair = chatting()
    assert pair.command("/help") == HELP
    assert pair.command("/bogus") == [Error("Unknown command /bogus. Try /help.")]
    assert pair.hub.calls == []


def test_history_from_memory_is_capped_and_from_the_store_is_fetched() -> None:
    said: list[RoomEvent] = [Said("#lobby", i, 0.0, "ben", str(i)) for i in range(1, 6)]
    pair = chatting(history_limit=3)
    pair.hub.history["#lobby"] = said
    pair.command("/history 50")
    assert pair.hub.calls == [("replay", "ann", "#lobby", tuple(said[-3:]))]

    pair = chatting(history_limit=3, store_history=True)
    assert pair.command("/history 50") == [s.FetchHistory("#lobby", 3)]
    assert pair.state is s.State.FETCHING
    with pytest.raises(s.LocalProtocolError, match="fetching history"):
        pair.command("hello")
    assert pair.session.fetched("#lobby", said[:2]) == []
    assert pair.state is s.State.CHATTING  # type: ignore[comparison-overlap]
    assert pair.hub.calls == [("replay", "ann", "#lobby", tuple(said[:2]))]


def test_the_history_of_a_room_is_only_for_its_members() -> None:
    pair = chatting(one_room=False)
    pair.hub.history["#secret"] = [Said("#secret", 1, 0.0, "ben", "psst")]
    session = pair.session
    assert session.command(p.History(10, "#secret")) == [Error("You are not in #secret")]
    assert pair.hub.calls == []
    pair = chatting(one_room=False, store_history=True)
    assert pair.session.command(p.History(10, "#secret")) == [Error("You are not in #secret")]
    assert pair.state is s.State.CHATTING


def test_history_fetched_for_a_room_the_member_has_left_is_dropped() -> None:
    pair = chatting(store_history=True, one_room=False)
    pair.command("/history")
    pair.hub.part(pair.session.member, "#lobby", "gone")  # type: ignore[arg-type]
    pair.hub.calls.clear()
    assert pair.session.fetched("#lobby", []) == []
    assert pair.hub.calls == []


def test_quit_leaves_with_a_farewell_and_closes() -> None:
    pair = chatting()
    assert pair.command("/quit see you") == [s.Close("see you")]
    assert pair.hub.calls == [("leave", "ann", "see you", "Bye!")]
    assert pair.state is s.State.CLOSED
    pair = chatting()
    assert pair.command("/exit") == [s.Close("quit")]


def test_nick_without_a_cluster_goes_to_the_hub() -> None:
    pair = chatting()
    assert pair.command("/nick a\x07nn2") == []
    assert pair.hub.calls == [("rename", "ann", "ann2")]


def test_nick_in_a_cluster_claims_the_new_name_first() -> None:
    pair = chatting(claim_names=True)
    assert pair.command("/nick bob") == [s.ClaimName("bob")]
    assert pair.state is s.State.RENAMING
    assert pair.session.claim_result(Claim.CLAIMED) == []
    assert pair.hub.calls == [("rename", "ann", "bob")]
    assert pair.state is s.State.CHATTING  # type: ignore[comparison-overlap]

    pair.hub.calls.clear()
    assert pair.command("/nick BOB") == []  # only the case: ours already, no claim
    assert pair.command("/nick cat") == [s.ClaimName("cat")]
    assert pair.session.claim_result(Claim.TAKEN) == [Error("Name cat is taken, choose another")]
    assert pair.command("/nick cat") == [s.ClaimName("cat")]
    assert pair.session.claim_result(Claim.LINK_DOWN) == [Error(s.LINK_DOWN)]
    assert pair.hub.calls == [("rename", "bob", "BOB")]

    pair.hub.remote.add("dan")
    assert pair.command("/nick dan") == [Error("Name dan is taken, choose another")]
    assert pair.command("/nick eve") == [s.ClaimName("eve")]
    pair.hub.remote.add("eve")  # the hub refuses it after all: the claim goes back
    assert pair.session.claim_result(Claim.CLAIMED) == [s.Unclaim("eve")]


# --- the end --------------------------------------------------------------------------------


def test_close_makes_the_member_leave_once() -> None:
    pair = chatting()
    assert pair.session.close("too slow") == []
    assert pair.session.close("connection lost") == []
    assert pair.hub.calls == [("leave", "ann", "too slow", None)]
    pair = chatting()
    pair.command("/quit")
    pair.session.close("connection lost")
    assert [call[0] for call in pair.hub.calls] == ["leave"]


def test_close_before_registration_touches_no_hub() -> None:
    pair = Pair()
    assert pair.session.close("connection lost") == []
    assert pair.state is s.State.CLOSED
    assert pair.hub.calls == []


# --- the table ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setup", "feed", "state"),
    [
        (None, lambda x: x.command("hello"), "awaiting a name"),
        (None, lambda x: x.session.delay_elapsed(), "awaiting a name"),
        (None, lambda x: x.session.claim_result(Claim.CLAIMED), "awaiting a name"),
        (None, lambda x: x.session.fetched("#lobby", []), "awaiting a name"),
        ("chat", lambda x: x.line("ann"), "chatting"),
        ("chat", lambda x: x.session.deadline_passed(), "chatting"),
        ("chat", lambda x: x.session.claim_result(Claim.CLAIMED), "chatting"),
        ("claim", lambda x: x.line("ann"), "claiming the name"),
        ("claim", lambda x: x.session.line_too_long(10), "claiming the name"),
        ("refuse", lambda x: x.line("again"), "refusing a wrong password"),
        ("closed", lambda x: x.line("ann"), "closed"),
        ("closed", lambda x: x.session.deadline_passed(), "closed"),
    ],
)
def test_an_input_the_state_does_not_take_is_a_local_protocol_error(
    setup: str | None, feed: Callable[[Pair], object], state: str
) -> None:
    pair = Pair(claim_names=setup == "claim", password="pw" if setup == "refuse" else None)
    if setup == "chat":
        pair.register("ann")
    elif setup == "claim":
        pair.line("ann")
    elif setup == "refuse":
        pair.line("ann")
        pair.line("wrong")
    elif setup == "closed":
        pair.line("/quit")
    before = pair.state
    with pytest.raises(s.LocalProtocolError, match=f"while {state}$"):
        feed(pair)
    assert pair.state is before  # nothing moved


def test_the_table_names_every_state_and_closed_is_a_dead_end() -> None:
    assert set(s.TRANSITIONS) == set(s.State)
    for inputs in s.TRANSITIONS.values():
        assert s.Input.CLOSE in inputs  # a connection can always end
        for targets in inputs.values():
            assert targets <= set(s.State)
    assert {t for ts in s.TRANSITIONS[s.State.CLOSED].values() for t in ts} == {s.State.CLOSED}


@pytest.mark.parametrize("password", ["/help", "/QUIT now", "/exit", "\x07/help"])
def test_a_password_that_would_be_a_command_is_refused_at_start_up(password: str) -> None:
    assert s.answered_before_registration(password)
    with pytest.raises(ValueError, match="/help, /quit or /exit"):
        ServerConfig(password=password)
    ServerConfig(password=f"x{password}")
    ServerConfig(password="/helpful")
