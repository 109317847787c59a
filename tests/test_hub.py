"""The hub's rules, with real trio memory channels as outboxes and no sockets."""

from __future__ import annotations

import time

import pytest
import trio
from _v1 import LineUser

from triochat.core import events as ev
from triochat.core.hub import Hub, Member
from triochat.protocol import line as p

Inbox = trio.MemoryReceiveChannel[bytes]


T0 = 1_700_000_000.0


def stamp(when: float) -> str:
    return time.strftime("[%H:%M:%S]", time.localtime(when))


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class User(LineUser):
    """One registered v1 member and the receive end of its outbox."""

    def __init__(self, hub: Hub, name: str, queue: int = 100) -> None:
        super().__init__(hub, name, LINE, queue)
        self.receive = self.inbox

    def raw(self) -> list[bytes]:
        """Everything queued for this user so far."""
        out = []
        while True:
            try:
                out.append(self.receive.receive_nowait())
            except (trio.WouldBlock, trio.EndOfChannel):
                return out

    def lines(self) -> list[str]:
        # One hand-over may hold several lines (a burst, a history replay).
        return [line for data in self.raw() for line in data.decode().splitlines()]

    @property
    def closed(self) -> bool:
        try:
            self.receive.receive_nowait()
        except trio.EndOfChannel:
            return True
        except trio.WouldBlock:
            return False
        raise AssertionError("unread lines left")


CLOCK = Clock()
LINE = p.LineDialect(clock=CLOCK)
"""The line door's dialect; its "today" is the test's clock."""


@pytest.fixture
def clock() -> Clock:
    CLOCK.now = T0
    return CLOCK


@pytest.fixture
def hub(clock: Clock) -> Hub:
    return Hub(history=3, clock=clock)


async def test_online_counts_the_registered(hub: Hub) -> None:
    assert hub.online() == 0
    ann = User(hub, "ann")
    assert hub.online() == 1
    hub.leave(ann.member, "quit")
    assert hub.online() == 0


async def test_registration_puts_the_user_in_the_lobby(hub: Hub) -> None:
    ann = User(hub, "ann")
    assert ann.lines() == ["* Users in #lobby: ann", f"{stamp(T0)} * ann joined #lobby"]
    ben = User(hub, "Ben")
    assert ben.lines() == ["* Users in #lobby: ann, Ben", f"{stamp(T0)} * Ben joined #lobby"]
    assert ann.lines() == [f"{stamp(T0)} * Ben joined #lobby"]
    assert hub.members == 2
    assert hub.rooms() == {"#lobby": 2}
    assert hub.online() == 2


@pytest.mark.parametrize("taken", ["ann", "ANN", "Ann", "aNn"])
async def test_a_name_taken_in_any_case_is_refused(hub: Hub, taken: str) -> None:
    User(hub, "ann")
    send, _ = trio.open_memory_channel[bytes](100)
    assert hub.register(taken, send, lambda: None, LINE) == f"Name {taken} is taken, choose another"
    assert hub.members == 1


@pytest.mark.parametrize("name", ["", "a b", "x" * 25, "<ann>", "ann*"])
async def test_an_invalid_name_is_refused(hub: Hub, name: str) -> None:
    send, _ = trio.open_memory_channel[bytes](100)
    assert hub.register(name, send, lambda: None, LINE) == p.name_error(name)
    assert hub.members == 0


async def test_a_name_is_free_again_once_its_holder_left(hub: Hub) -> None:
    ann = User(hub, "ann")
    hub.leave(ann.member, "quit")
    User(hub, "ANN")
    assert hub.members == 1


async def test_joiners_get_the_history_with_original_timestamps(hub: Hub, clock: Clock) -> None:
    ann = User(hub, "ann")
    for i in range(5):
        clock.now = T0 + 61 * i
        ann.do(p.Say(f"line {i}") if i != 4 else p.Me("waves"))
    clock.now = T0 + 7200
    ben = User(hub, "ben")
    # history=3: the last three lines, as first said (with their date if that was not
    # today); events are not history.
    today = T0 + 7200

    def shown(when: float) -> str:
        same_day = time.localtime(when)[:3] == time.localtime(today)[:3]
        return time.strftime(
            "[%H:%M:%S]" if same_day else "[%Y-%m-%d %H:%M:%S]", time.localtime(when)
        )

    assert ben.lines() == [
        f"{shown(T0 + 122)} <ann> line 2",
        f"{shown(T0 + 183)} <ann> line 3",
        f"{shown(T0 + 244)} * ann waves",
        "* Users in #lobby: ann, ben",
        f"{stamp(T0 + 7200)} * ben joined #lobby",
    ]
    assert stamp(T0 + 122) != stamp(T0 + 7200)


async def test_say_reaches_everyone_in_the_room_including_the_sender(hub: Hub) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "ben"), User(hub, "cat")
    cat.do(p.Join("#dev"))
    for user in (ann, ben, cat):
        user.raw()
    ann.do(p.Say("hello  there"))
    a, b = ann.raw(), ben.raw()
    assert a == b == [f"{stamp(T0)} <ann> hello  there\n".encode()]
    assert a[0] is b[0]  # formatted and encoded once for everyone
    assert cat.raw() == []  # another room
    ann.do(p.Me("waves"))
    assert ann.lines() == ben.lines() == [f"{stamp(T0)} * ann waves"]


async def test_a_burst_of_lines_reaches_each_member_as_one_hand_over(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    hub.say(ann.member, p.LOBBY, ["one", "two", "three"])
    a, b = ann.raw(), ben.raw()
    burst = "".join(f"{stamp(T0)} <ann> {n}\n" for n in ("one", "two", "three"))
    assert a == b == [burst.encode()]
    assert hub.lines_in == 3
    # Each line is still its own history entry.
    cat = User(hub, "cat")
    assert cat.lines()[-5:-2] == [f"{stamp(T0)} <ann> {n}" for n in ("one", "two", "three")]


async def test_a_burst_from_an_evicted_member_goes_nowhere(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    hub.leave(ann.member, "too slow")
    ben.raw()
    hub.say(ann.member, p.LOBBY, ["still here?"])
    assert ben.raw() == []


@pytest.mark.parametrize(
    "command",
    [p.Join("#dev"), p.Nick("annie"), p.Users(), p.Me("waves"), p.Quit(None)],  # type: ignore[arg-type]
)
async def test_commands_from_a_member_who_left_are_ignored(hub: Hub, command: p.Command) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    hub.leave(ann.member, "kicked")
    ann.raw(), ben.raw()
    ann.do(command)
    assert ann.raw() == ben.raw() == []
    assert hub.rooms() == {"#lobby": 1}


async def test_private_messages(hub: Hub) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "Ben"), User(hub, "cat")
    ben.do(p.Join("#elsewhere"))
    for user in (ann, ben, cat):
        user.raw()
    ann.do(p.Msg("BEN", "psst"))
    assert ben.lines() == [f"{stamp(T0)} *ann* psst"]
    assert ann.lines() == [f"{stamp(T0)} -> *Ben* psst"]
    assert cat.lines() == []
    ann.do(p.Msg("zed", "hello?"))
    assert ann.lines() == ["! No such user: zed"]


async def test_join_moves_between_rooms(hub: Hub, clock: Clock) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "ben"), User(hub, "cat")
    cat.do(p.Join("#dev"))
    cat.do(p.Say("in dev"))
    for user in (ann, ben, cat):
        user.raw()
    clock.now = T0 + 10
    ann.do(p.Join("#dev"))
    assert ben.lines() == [f"{stamp(T0 + 10)} * ann left #lobby (joined #dev)"]
    assert ann.lines() == [
        f"{stamp(T0)} <cat> in dev",
        "* Users in #dev: ann, cat",
        f"{stamp(T0 + 10)} * ann joined #dev",
    ]
    assert cat.lines() == [f"{stamp(T0 + 10)} * ann joined #dev"]
    assert hub.rooms() == {"#lobby": 1, "#dev": 2}

    ann.do(p.Join("#dev"))
    assert ann.lines() == ["! You are already in #dev"]

    # An empty room goes away (and its history with it); the lobby stays.
    ann.do(p.Join("#lobby"))
    cat.do(p.Join("#lobby"))
    assert hub.rooms() == {"#lobby": 3}
    ann.do(p.Join("#dev"))
    assert ann.lines()[-2:] == ["* Users in #dev: ann", f"{stamp(T0 + 10)} * ann joined #dev"]
    ben.do(p.Join("#x"))
    cat.do(p.Join("#x"))
    assert hub.rooms() == {"#lobby": 0, "#dev": 1, "#x": 2}


async def test_nick(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    ann.do(p.Nick("Anna"))
    assert ann.lines() == ben.lines() == [f"{stamp(T0)} * ann is now known as Anna"]
    ben.do(p.Nick("ANNA"))
    assert ben.lines() == ["! Name ANNA is taken, choose another"]
    ben.do(p.Nick("b<e>n"))
    assert ben.lines() == [f"! {p.name_error('b<e>n')}"]
    ann.do(p.Nick("Anna"))
    assert ann.lines() == ["! You are already Anna"]
    ann.do(p.Nick("ANNA"))  # a change of case is a rename
    assert ben.lines() == [f"{stamp(T0)} * Anna is now known as ANNA"]
    ann.raw()
    ben.do(p.Users())
    assert ben.lines() == ["* Users in #lobby: ANNA, ben"]
    # The old name is free again, the new one is taken.
    send, _ = trio.open_memory_channel[bytes](100)
    assert isinstance(hub.register("ann", send, lambda: None, LINE), Member)
    assert hub.register("anna", send, lambda: None, LINE) == "Name anna is taken, choose another"


async def test_users_rooms_help_and_errors_go_only_to_the_asker(hub: Hub) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "ben"), User(hub, "cat")
    cat.do(p.Join("#dev"))
    ann.raw(), ben.raw()
    ann.do(p.Users())
    assert ann.lines() == ["* Users in #lobby: ann, ben"]
    ann.do(p.Rooms())
    assert ann.lines() == ["* Rooms: #dev (1), #lobby (2)"]
    ann.do(p.Help())
    assert ann.lines() == [f"* {line}" for line in p.HELP]
    ann.do(p.Invalid("Unknown command /x. Try /help."))
    assert ann.lines() == ["! Unknown command /x. Try /help."]
    assert ben.lines() == []
    assert cat.lines()[-1] == f"{stamp(T0)} * cat joined #dev"


@pytest.mark.parametrize(("reason", "shown"), [("going home", "going home"), ("", "quit")])
async def test_quit(hub: Hub, reason: str, shown: str) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    ann.do(p.Quit(reason))
    assert ben.lines() == [f"{stamp(T0)} * ann left #lobby ({shown})"]
    assert ann.lines() == ["* Bye!"]
    assert ann.closed  # the writer flushes and hangs up
    assert hub.members == 1
    hub.leave(ann.member, "connection lost")  # idempotent: the connection's cleanup
    assert ben.lines() == []


async def test_leave_announces_the_reason(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ben.raw()
    hub.leave(ann.member, "connection lost")
    assert ben.lines() == [f"{stamp(T0)} * ann left #lobby (connection lost)"]
    assert ann.lines()[-1] == f"{stamp(T0)} * ben joined #lobby"
    assert ann.closed
    assert ann.disconnects == 0  # leave() is the connection's own doing


async def test_a_slow_consumer_is_evicted_and_nobody_else_notices(hub: Hub) -> None:
    ann, ben = User(hub, "ann", queue=1000), User(hub, "ben", queue=1000)
    slow = User(hub, "slow", queue=10)  # never read from here on
    ann.raw(), ben.raw()
    for i in range(50):
        ann.do(p.Say(f"line {i}"))
    said = [f"{stamp(T0)} <ann> line {i}" for i in range(50)]
    # Its outbox (10 lines: users, joined and 8 messages) filled on line 8.
    left = f"{stamp(T0)} * slow left #lobby (too slow)"
    for user in (ann, ben):
        assert user.lines() == [*said[:9], left, *said[9:]]
    assert slow.disconnects == 1
    assert hub.slow_evictions == 1
    assert hub.members == 2
    assert len(slow.raw()) == 10
    assert slow.closed
    ben.do(p.Users())
    assert ben.lines() == ["* Users in #lobby: ann, ben"]


async def test_slow_consumers_found_by_a_departure_are_evicted_too(hub: Hub) -> None:
    ann = User(hub, "ann", queue=1000)
    slow1 = User(hub, "slow1", queue=3)  # users, joined, slow2 joined: full
    slow2 = User(hub, "slow2", queue=4)
    slow1.raw()
    for text in ("one", "two", "three"):
        ann.do(p.Say(text))
    # slow2 overflows on "three"; its departure notice overflows slow1, which goes too.
    assert (slow1.disconnects, slow2.disconnects) == (1, 1)
    assert hub.members == 1
    assert ann.lines()[-3:] == [
        f"{stamp(T0)} <ann> three",
        f"{stamp(T0)} * slow2 left #lobby (too slow)",
        f"{stamp(T0)} * slow1 left #lobby (too slow)",
    ]


async def test_a_member_found_slow_by_a_departure_is_evicted_at_once(hub: Hub) -> None:
    ann = User(hub, "ann", queue=4)  # users, joined, ben joined, cat joined: full
    ben, cat = User(hub, "ben"), User(hub, "cat", queue=1000)
    cat.raw()
    # A departure from outside handle() (the connection broke): ann cannot take
    # the notice, so it goes now, not whenever someone next says something.
    hub.leave(ben.member, "connection lost")
    assert ann.disconnects == 1
    assert cat.lines() == [
        f"{stamp(T0)} * ben left #lobby (connection lost)",
        f"{stamp(T0)} * ann left #lobby (too slow)",
    ]
    assert hub.members == 1


class Valve:
    """An outbox that takes everything until it is shut, then nothing."""

    def __init__(self) -> None:
        self.shut = False
        self.disconnects = 0

    def send_nowait(self, value: bytes, /) -> None:
        if self.shut:
            raise trio.WouldBlock

    def close(self) -> None:
        pass

    def disconnect(self) -> None:
        self.disconnects += 1


async def test_a_whole_room_going_slow_at_once_is_evicted_without_deep_recursion(
    hub: Hub,
) -> None:
    ann = User(hub, "ann", queue=1000)
    crowd = [Valve() for _ in range(600)]
    for i, valve in enumerate(crowd):
        member = hub.register(f"u{i}", valve, valve.disconnect, LINE)
        assert isinstance(member, Member)
        hub.join(member, p.LOBBY)
    for valve in crowd:
        valve.shut = True
    # Each eviction's notice finds the rest of the crowd slow too.
    hub.leave(ann.member, "connection lost")
    assert [valve.disconnects for valve in crowd] == [1] * 600
    assert hub.members == 0
    assert hub.slow_evictions == 600


async def test_a_slow_recipient_of_a_private_message_is_evicted(hub: Hub) -> None:
    ann, slow = User(hub, "ann", queue=1000), User(hub, "slow", queue=3)
    ann.raw()
    for _ in range(3):
        ann.do(p.Msg("slow", "hi"))
    assert slow.disconnects == 1
    assert ann.lines() == [
        f"{stamp(T0)} -> *slow* hi",
        f"{stamp(T0)} -> *slow* hi",
        f"{stamp(T0)} * slow left #lobby (too slow)",
        "! No such user: slow",
    ]


async def test_shutdown_forgets_everyone_without_announcements(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    hub.shutdown()
    assert hub.members == 0
    assert hub.rooms() == {}
    assert ann.lines() == ben.lines() == []


class CountingDialect:
    """A second door's dialect: renders events as their reprs, and counts its renders."""

    name = "counting"

    def __init__(self) -> None:
        self.renders = 0

    def render(self, events: object) -> bytes:
        self.renders += 1
        return "".join(f"{event!r}\n" for event in events).encode()  # type: ignore[attr-defined]


class Spy(p.LineDialect):
    """The line dialect, counting its renders."""

    def __init__(self) -> None:
        super().__init__()
        self.renders = 0

    def render(self, events: object, /) -> bytes:
        self.renders += 1
        return super().render(events)  # type: ignore[arg-type]


def _member(
    hub: Hub, name: str, dialect: object
) -> tuple[Member, trio.MemoryReceiveChannel[bytes]]:
    send, receive = trio.open_memory_channel[bytes](100)
    member = hub.register(name, send, lambda: None, dialect)  # type: ignore[arg-type]
    assert isinstance(member, Member)
    return member, receive


async def test_a_burst_is_rendered_once_per_dialect_present(hub: Hub) -> None:
    line, other = Spy(), CountingDialect()
    members = [_member(hub, f"l{i}", line) for i in range(3)]
    members += [_member(hub, f"o{i}", other) for i in range(2)]
    for member, _ in members:
        hub.join(member, "#big")
    line.renders = other.renders = 0
    hub.say(members[0][0], "#big", ["one", "two", "three"])
    assert (line.renders, other.renders) == (1, 1)
    # Every member of a dialect got the very same bytes object.
    last = [drain(receive)[-1] for _, receive in members]
    assert last[0] is last[1] is last[2]
    assert last[3] is last[4]
    assert b"Said(room='#big', seq=" in last[3]


class Unechoed(CountingDialect):
    """A dialect whose members are not handed their own lines (IRC without echo-message)."""

    name = "unechoed"
    echo = False


async def test_a_dialect_that_does_not_echo_gets_everything_but_its_own_lines(hub: Hub) -> None:
    quiet = Unechoed()
    (ann, ann_in), (bob, bob_in), (cid, cid_in) = (
        _member(hub, n, quiet) for n in ("ann", "bob", "cid")
    )
    line = User(hub, "dan")
    for member in (ann, bob, cid):
        hub.join(member, "#r")
    line.do(p.Join("#r"))
    for receive in (ann_in, bob_in, cid_in):
        drain(receive)
    line.raw()
    hub.say(ann, "#r", ["one", "two"])
    hub.act(bob, "#r", "waves")
    # A cluster's batch may hold several authors' lines.
    hub.deliver([ev.Said("#r", 90, T0, "ann", "x"), ev.Said("#r", 91, T0, "cid", "y")])

    def seen(receive: Inbox) -> list[str]:
        text = b"".join(drain(receive)).decode()
        return [word for word in ("'one'", "'two'", "'waves'", "'x'", "'y'") if word in text]

    assert seen(ann_in) == ["'waves'", "'y'"]
    assert seen(bob_in) == ["'one'", "'two'", "'x'", "'y'"]
    assert seen(cid_in) == ["'one'", "'two'", "'waves'", "'x'"]
    assert len(line.lines()) == 5  # the line door echoes: dan sees all


async def test_an_unechoed_member_who_ignores_someone_still_gets_none_of_its_own(
    hub: Hub,
) -> None:
    quiet = Unechoed()
    (ann, ann_in), (bob, _) = (_member(hub, n, quiet) for n in ("ann", "bob"))
    hub.join(ann, "#r")
    hub.join(bob, "#r")
    assert hub.ignore(ann, "bob", True) is None
    drain(ann_in)
    hub.deliver([ev.Said("#r", 90, T0, "ann", "mine"), ev.Said("#r", 91, T0, "bob", "his")])
    assert drain(ann_in) == []


async def test_an_unechoed_member_s_own_lines_are_known_by_its_name_as_it_is_now(
    hub: Hub,
) -> None:
    """In a cluster a line can come back after its author was renamed (under the old
    name), or carry a name that differs from a member's only in case: neither is that
    member's own line, and the author's lines are left out for the author alone."""
    quiet = Unechoed()
    (ann, ann_in), (bob, bob_in), (cid, cid_in) = (
        _member(hub, n, quiet) for n in ("ann", "bob", "cid")
    )
    for member in (ann, bob, cid):
        hub.join(member, "#r")
    hub.rename(ann, "anna")
    for receive in (ann_in, bob_in, cid_in):
        drain(receive)
    hub.deliver(
        [
            ev.Said("#r", 90, T0, "ann", "old"),
            ev.Said("#r", 91, T0, "Bob", "case"),
            ev.Said("#r", 92, T0, "cid", "own"),
        ]
    )

    def seen(receive: Inbox) -> list[str]:
        text = b"".join(drain(receive)).decode()
        return [word for word in ("'old'", "'case'", "'own'") if word in text]

    assert seen(ann_in) == ["'old'", "'case'", "'own'"]
    assert seen(bob_in) == ["'old'", "'case'", "'own'"]
    assert seen(cid_in) == ["'old'", "'case'"]


def drain(receive: Inbox) -> list[bytes]:
    out = []
    while True:
        try:
            out.append(receive.receive_nowait())
        except trio.WouldBlock:
            return out


async def test_a_member_can_be_in_several_rooms(hub: Hub) -> None:
    ann, ann_inbox = _member(hub, "ann", LINE)
    ben = User(hub, "ben")
    hub.join(ann, "#lobby")
    hub.join(ann, "#dev")
    assert list(ann.room_names) == ["#lobby", "#dev"]
    assert hub.rooms() == {"#lobby": 2, "#dev": 1}
    drain(ann_inbox), ben.raw()
    hub.say(ann, "#dev", ["only dev"])
    hub.say(ann, "#lobby", ["only lobby"])
    assert ben.lines() == [f"{stamp(T0)} <ann> only lobby"]
    assert b"".join(drain(ann_inbox)).decode().splitlines() == [
        f"{stamp(T0)} <ann> only dev",
        f"{stamp(T0)} <ann> only lobby",
    ]
    hub.join(ann, "#dev")
    assert drain(ann_inbox) == [b"! You are already in #dev\n"]
    hub.part(ann, "#nowhere", "bye")
    assert drain(ann_inbox) == [b"! You are not in #nowhere\n"]
    hub.say(ann, "#nowhere", ["hello?"])
    assert drain(ann_inbox) == [b"! You are not in #nowhere\n"]
    hub.part(ann, "#lobby", "bye")
    assert ben.lines() == [f"{stamp(T0)} * ann left #lobby (bye)"]
    hub.join(ann, "#lobby")
    ben.raw()
    # Leaving the chat announces the departure in every room, once each.
    hub.leave(ann, "quit")
    assert ben.lines() == [f"{stamp(T0)} * ann left #lobby (quit)"]
    assert hub.rooms() == {"#lobby": 1}


async def test_the_rooms_a_member_may_be_in_are_limited(clock: Clock) -> None:
    hub = Hub(history=3, clock=clock, max_rooms_per_member=2)
    ann, inbox = _member(hub, "ann", LINE)
    hub.join(ann, "#a")
    hub.join(ann, "#b")
    drain(inbox)
    hub.join(ann, "#c")
    assert drain(inbox) == [b"! You are in 2 rooms, the most this server allows; leave one first\n"]
    assert list(ann.room_names) == ["#a", "#b"]
    hub.part(ann, "#a", "bye")
    hub.join(ann, "#c")
    assert list(ann.room_names) == ["#b", "#c"]


class Recorder:
    """A backplane-free way to see the events a room emits: a dialect that keeps them."""

    name = "recorder"

    def __init__(self) -> None:
        self.events: list[object] = []

    def render(self, events: object) -> bytes:
        self.events.extend(events)  # type: ignore[arg-type]
        return b"x"


async def test_room_events_are_numbered_per_room_and_carry_utc_time(hub: Hub, clock: Clock) -> None:
    watcher = Recorder()
    eve, _ = _member(hub, "eve", watcher)
    hub.join(eve, "#a")
    hub.join(eve, "#b")
    ann = User(hub, "ann")
    ann.do(p.Join("#a"))
    clock.now = T0 + 5
    ann.do(p.Say("hi"))
    ann.do(p.Join("#b"))
    ann.do(p.Me("waves"))
    ann.do(p.Nick("anna"))
    seen = [
        (type(e).__name__, e.room, e.seq, e.time)
        for e in watcher.events
        if isinstance(e, ev.RoomEvent)
    ]
    assert seen == [
        ("Joined", "#a", 1, T0),  # eve
        ("Joined", "#b", 1, T0),
        ("Joined", "#a", 2, T0),  # ann, from the lobby
        ("Said", "#a", 3, T0 + 5),
        ("Left", "#a", 4, T0 + 5),
        ("Joined", "#b", 2, T0 + 5),
        ("Acted", "#b", 3, T0 + 5),
        ("Renamed", "#b", 4, T0 + 5),
    ]


async def test_a_joiner_gets_the_history_in_its_own_dialect(hub: Hub) -> None:
    ann = User(hub, "ann")
    ann.do(p.Say("hello"))
    watcher = Recorder()
    eve, _ = _member(hub, "eve", watcher)
    hub.join(eve, p.LOBBY)
    said, users = watcher.events[:2]
    assert isinstance(said, ev.Said)
    assert (said.name, said.text, said.seq) == ("ann", "hello", 2)
    assert users == ev.UserList(p.LOBBY, ("ann", "eve"))


def _crowd(hub: Hub, count: int, room: str = "#big") -> list[User]:
    users = [User(hub, f"u{i:03}", queue=1000) for i in range(count)]
    for user in users:
        user.do(p.Join(room))
    for user in users:
        user.raw()
    return users


async def test_a_room_at_the_quiet_threshold_still_announces_each_join(clock: Clock) -> None:
    hub = Hub(history=3, clock=clock, quiet_above=5)
    watcher, *_ = _crowd(hub, 4)
    ann = User(hub, "ann")
    ann.do(p.Join("#big"))  # the 5th member: not past 5
    assert watcher.lines() == [f"{stamp(T0)} * ann joined #big"]
    ann.do(p.Nick("anna"))
    assert watcher.lines() == [f"{stamp(T0)} * ann is now known as anna"]
    ann.do(p.Quit(""))
    assert watcher.lines() == [f"{stamp(T0)} * anna left #big (quit)"]


async def test_past_the_quiet_threshold_a_room_sends_summaries(clock: Clock) -> None:
    hub = Hub(history=3, clock=clock, quiet_above=5, presence_interval=30)
    watcher, *_ = _crowd(hub, 5)
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw()
    ann.do(p.Join("#big"))  # the 6th member: past 5
    # The joiner still sees the room (all of it: it is small enough to list) and its join.
    assert ann.lines() == [
        "* Users in #big: ann, u000, u001, u002, u003, u004",
        f"{stamp(T0)} * ann joined #big",
    ]
    ben.do(p.Join("#big"))
    ann.do(p.Nick("anna"))
    assert ann.lines() == [f"{stamp(T0)} * ann is now known as anna"]
    ben.do(p.Quit("bye"))
    watcher.do(p.Say("still talking"))
    assert watcher.lines() == [f"{stamp(T0)} <u000> still talking"]
    ann.raw()
    hub.summarize_presence()
    summary = "* 2 joined and 1 left #big in the last 30 s"
    assert watcher.lines() == ann.lines() == [summary]
    hub.summarize_presence()  # nothing new: nothing said
    assert watcher.lines() == []
    # Private messages still name the user.
    ann.do(p.Msg("u000", "psst"))
    assert watcher.lines() == [f"{stamp(T0)} *anna* psst"]


async def test_users_of_a_big_room_gives_the_count_and_all_gives_every_name(
    clock: Clock,
) -> None:
    hub = Hub(history=3, clock=clock, quiet_above=10)
    watcher, *_ = _crowd(hub, 120)
    watcher.do(p.Users())
    (line,) = watcher.lines()
    assert line.startswith("* Users in #big (120): u000, u001, ")
    assert line.endswith(", u049, and 70 more (/users all lists everyone)")
    watcher.do(p.Users(everyone=True))
    lines = watcher.lines()
    assert len(lines) == 3
    names = [name for line in lines for name in line.split(": ", 1)[1].split(", ")]
    assert names == [f"u{i:03}" for i in range(120)]


async def test_a_big_room_keeps_the_marks_of_the_names_it_lists(clock: Clock) -> None:
    hub = Hub(history=3, clock=clock, quiet_above=10)
    watcher, *crowd = _crowd(hub, 120)
    for user in (crowd[0], crowd[100]):  # one shown, one past the first page
        user.member.account = user.member.key
        hub.moderation.op("#big", user.member.key)
    hub.set_away(crowd[1].member, "lunch")
    watcher.do(p.Users())
    (line,) = watcher.lines()
    assert line.startswith("* Users in #big (120): u000, @u001, u002 (away), u003, ")
    assert "u101" not in line
    watcher.do(p.Users(everyone=True))
    pages = watcher.lines()
    assert ", @u101, " in pages[2]
    assert pages[0].count("@") == 1


async def test_a_kick_is_announced_by_name_even_in_a_big_room(clock: Clock) -> None:
    hub = Hub(history=3, clock=clock, quiet_above=2)
    watcher, victim, _ = _crowd(hub, 3)
    hub.part(victim.member, "#big", "kicked by op: spam")
    assert watcher.lines() == [f"{stamp(T0)} * u001 left #big (kicked by op: spam)"]


async def test_users_all_parses() -> None:
    assert p.parse_command("/users all") == p.Users(everyone=True)
    assert p.parse_command("/who") == p.Users()


async def test_the_user_list_is_sorted_as_people_read_names(hub: Hub) -> None:
    # Sorted by the case-folded name, not by the look-alike key (rn looks like m).
    users = [User(hub, name) for name in ("nina", "Mia", "zed")]
    users[0].do(p.Users())
    assert users[0].lines()[-1] == "* Users in #lobby: Mia, nina, zed"


async def test_an_ascii_name_policy_refuses_other_letters(clock: Clock) -> None:
    hub = Hub(history=3, clock=clock, names="ascii")
    send, _ = trio.open_memory_channel[bytes](10)
    assert hub.register("zoë", send, lambda: None, LINE) == p.name_error("zoë", "ascii")
    assert isinstance(hub.register("zoe", send, lambda: None, LINE), Member)


def test_a_rooms_dialect_groups_follow_joins_and_leaves_of_a_second_dialect() -> None:
    """While one dialect speaks in a room its group is the members dict itself (memory,
    docs/benchmarks.md); a second dialect splits them, its leaving joins them again."""
    from triochat.core.rooms import Room, RoomLog
    from triochat.protocol.v2 import V2Dialect

    line: ev.Dialect = p.LineDialect()
    v2: ev.Dialect = V2Dialect()
    sink = trio.open_memory_channel[bytes](10)[0]

    def member(name: str, dialect: ev.Dialect) -> Member:
        return Member(name, sink, lambda: None, dialect)

    room = Room("#a", RoomLog(10))
    ann, bob, cat, dan = (
        member(n, d) for n, d in [("ann", line), ("bob", line), ("cat", v2), ("dan", line)]
    )

    def grouped() -> dict[ev.Dialect, list[str]]:
        return {d: [m.name for m in g] for d, g in room.groups.items()}

    room.add(ann)
    room.add(bob)
    assert room.groups == {line: room.members}
    assert room.groups[line] is room.members
    room.add(cat)
    room.add(dan)
    assert grouped() == {line: ["ann", "bob", "dan"], v2: ["cat"]}
    assert room.groups[line] is not room.members
    assert list(room.members) == [ann, bob, cat, dan]
    room.remove(bob)
    room.remove(cat)  # one dialect again
    assert room.groups[line] is room.members
    assert grouped() == {line: ["ann", "dan"]}
    room.remove(ann)
    room.remove(dan)
    assert room.groups == {}
    assert room.members == {}
    room.add(cat)  # the room's only dialect now: v2
    assert room.groups == {v2: room.members}
    assert room.groups[v2] is room.members
