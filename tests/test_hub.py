"""The hub's rules, with real trio memory channels as outboxes and no sockets."""

from __future__ import annotations

import time

import pytest
import trio

from triochat.core.hub import Hub, Member
from triochat.protocol import line as p

T0 = 1_700_000_000.0


def stamp(when: float) -> str:
    return time.strftime("[%H:%M:%S]", time.localtime(when))


class Clock:
    """A wall clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


class User:
    """One registered member and the receive end of its outbox."""

    def __init__(self, hub: Hub, name: str, queue: int = 100) -> None:
        self.send, self.receive = trio.open_memory_channel[bytes](queue)
        self.disconnects = 0
        result = hub.register(name, self.send, self.disconnect)
        assert isinstance(result, Member), result
        self.member = result

    def disconnect(self) -> None:
        self.disconnects += 1

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


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hub(clock: Clock) -> Hub:
    return Hub(history=3, clock=clock)


async def test_welcome_ends_by_asking_for_a_name(hub: Hub) -> None:
    lines = [data.decode() for data in hub.welcome()]
    assert all(line.startswith("* ") and line.endswith("\n") for line in lines)
    assert "0 users online" in lines[0]
    User(hub, "ann")
    assert "1 user online" in hub.welcome()[0].decode()
    assert lines[-1] == "* What is your name?\n"


async def test_registration_puts_the_user_in_the_lobby(hub: Hub) -> None:
    ann = User(hub, "ann")
    assert ann.lines() == ["* Users in #lobby: ann", f"{stamp(T0)} * ann joined #lobby"]
    ben = User(hub, "Ben")
    assert ben.lines() == ["* Users in #lobby: ann, Ben", f"{stamp(T0)} * Ben joined #lobby"]
    assert ann.lines() == [f"{stamp(T0)} * Ben joined #lobby"]
    assert hub.members == 2
    assert hub.rooms() == {"#lobby": 2}
    assert "2 users online" in hub.welcome()[0].decode()


@pytest.mark.parametrize("taken", ["ann", "ANN", "Ann", "aNn"])
async def test_a_name_taken_in_any_case_is_refused(hub: Hub, taken: str) -> None:
    User(hub, "ann")
    send, _ = trio.open_memory_channel[bytes](100)
    assert hub.register(taken, send, lambda: None) == f"Name {taken} is taken, choose another"
    assert hub.members == 1


@pytest.mark.parametrize("name", ["", "a b", "x" * 25, "<ann>", "ann*"])
async def test_an_invalid_name_is_refused(hub: Hub, name: str) -> None:
    send, _ = trio.open_memory_channel[bytes](100)
    assert hub.register(name, send, lambda: None) == p.name_error(name)
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
        hub.handle(ann.member, p.Say(f"line {i}") if i != 4 else p.Me("waves"))
    clock.now = T0 + 7200
    ben = User(hub, "ben")
    # history=3: the last three lines, as first said; events are not history.
    assert ben.lines() == [
        f"{stamp(T0 + 122)} <ann> line 2",
        f"{stamp(T0 + 183)} <ann> line 3",
        f"{stamp(T0 + 244)} * ann waves",
        "* Users in #lobby: ann, ben",
        f"{stamp(T0 + 7200)} * ben joined #lobby",
    ]
    assert stamp(T0 + 122) != stamp(T0 + 7200)


async def test_say_reaches_everyone_in_the_room_including_the_sender(hub: Hub) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "ben"), User(hub, "cat")
    hub.handle(cat.member, p.Join("#dev"))
    for user in (ann, ben, cat):
        user.raw()
    hub.handle(ann.member, p.Say("hello  there"))
    a, b = ann.raw(), ben.raw()
    assert a == b == [f"{stamp(T0)} <ann> hello  there\n".encode()]
    assert a[0] is b[0]  # formatted and encoded once for everyone
    assert cat.raw() == []  # another room
    hub.handle(ann.member, p.Me("waves"))
    assert ann.lines() == ben.lines() == [f"{stamp(T0)} * ann waves"]


async def test_a_burst_of_lines_reaches_each_member_as_one_hand_over(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    hub.say(ann.member, ["one", "two", "three"])
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
    hub.say(ann.member, ["still here?"])
    assert ben.raw() == []


@pytest.mark.parametrize(
    "command", [p.Join("#dev"), p.Nick("annie"), p.Users(), p.Me("waves"), p.Quit(None)]
)
async def test_commands_from_a_member_who_left_are_ignored(hub: Hub, command: p.Command) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    hub.leave(ann.member, "kicked")
    ann.raw(), ben.raw()
    hub.handle(ann.member, command)
    assert ann.raw() == ben.raw() == []
    assert hub.rooms() == {"#lobby": 1}


async def test_private_messages(hub: Hub) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "Ben"), User(hub, "cat")
    hub.handle(ben.member, p.Join("#elsewhere"))
    for user in (ann, ben, cat):
        user.raw()
    hub.handle(ann.member, p.Msg("BEN", "psst"))
    assert ben.lines() == [f"{stamp(T0)} *ann* psst"]
    assert ann.lines() == [f"{stamp(T0)} -> *Ben* psst"]
    assert cat.lines() == []
    hub.handle(ann.member, p.Msg("zed", "hello?"))
    assert ann.lines() == ["! No such user: zed"]


async def test_join_moves_between_rooms(hub: Hub, clock: Clock) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "ben"), User(hub, "cat")
    hub.handle(cat.member, p.Join("#dev"))
    hub.handle(cat.member, p.Say("in dev"))
    for user in (ann, ben, cat):
        user.raw()
    clock.now = T0 + 10
    hub.handle(ann.member, p.Join("#dev"))
    assert ben.lines() == [f"{stamp(T0 + 10)} * ann left #lobby (joined #dev)"]
    assert ann.lines() == [
        f"{stamp(T0)} <cat> in dev",
        "* Users in #dev: ann, cat",
        f"{stamp(T0 + 10)} * ann joined #dev",
    ]
    assert cat.lines() == [f"{stamp(T0 + 10)} * ann joined #dev"]
    assert hub.rooms() == {"#lobby": 1, "#dev": 2}

    hub.handle(ann.member, p.Join("#dev"))
    assert ann.lines() == ["! You are already in #dev"]

    # An empty room goes away (and its history with it); the lobby stays.
    hub.handle(ann.member, p.Join("#lobby"))
    hub.handle(cat.member, p.Join("#lobby"))
    assert hub.rooms() == {"#lobby": 3}
    hub.handle(ann.member, p.Join("#dev"))
    assert ann.lines()[-2:] == ["* Users in #dev: ann", f"{stamp(T0 + 10)} * ann joined #dev"]
    hub.handle(ben.member, p.Join("#x"))
    hub.handle(cat.member, p.Join("#x"))
    assert hub.rooms() == {"#lobby": 0, "#dev": 1, "#x": 2}


async def test_nick(hub: Hub) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    hub.handle(ann.member, p.Nick("Anna"))
    assert ann.lines() == ben.lines() == [f"{stamp(T0)} * ann is now known as Anna"]
    hub.handle(ben.member, p.Nick("ANNA"))
    assert ben.lines() == ["! Name ANNA is taken, choose another"]
    hub.handle(ben.member, p.Nick("b<e>n"))
    assert ben.lines() == [f"! {p.name_error('b<e>n')}"]
    hub.handle(ann.member, p.Nick("Anna"))
    assert ann.lines() == ["! You are already Anna"]
    hub.handle(ann.member, p.Nick("ANNA"))  # a change of case is a rename
    assert ben.lines() == [f"{stamp(T0)} * Anna is now known as ANNA"]
    ann.raw()
    hub.handle(ben.member, p.Users())
    assert ben.lines() == ["* Users in #lobby: ANNA, ben"]
    # The old name is free again, the new one is taken.
    send, _ = trio.open_memory_channel[bytes](100)
    assert isinstance(hub.register("ann", send, lambda: None), Member)
    assert hub.register("anna", send, lambda: None) == "Name anna is taken, choose another"


async def test_users_rooms_help_and_errors_go_only_to_the_asker(hub: Hub) -> None:
    ann, ben, cat = User(hub, "ann"), User(hub, "ben"), User(hub, "cat")
    hub.handle(cat.member, p.Join("#dev"))
    ann.raw(), ben.raw()
    hub.handle(ann.member, p.Users())
    assert ann.lines() == ["* Users in #lobby: ann, ben"]
    hub.handle(ann.member, p.Rooms())
    assert ann.lines() == ["* Rooms: #dev (1), #lobby (2)"]
    hub.handle(ann.member, p.Help())
    assert ann.lines() == [f"* {line}" for line in p.HELP]
    hub.handle(ann.member, p.Invalid("Unknown command /x. Try /help."))
    assert ann.lines() == ["! Unknown command /x. Try /help."]
    assert ben.lines() == []
    assert cat.lines()[-1] == f"{stamp(T0)} * cat joined #dev"


@pytest.mark.parametrize(("reason", "shown"), [("going home", "going home"), ("", "quit")])
async def test_quit(hub: Hub, reason: str, shown: str) -> None:
    ann, ben = User(hub, "ann"), User(hub, "ben")
    ann.raw(), ben.raw()
    hub.handle(ann.member, p.Quit(reason))
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
        hub.handle(ann.member, p.Say(f"line {i}"))
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
    hub.handle(ben.member, p.Users())
    assert ben.lines() == ["* Users in #lobby: ann, ben"]


async def test_slow_consumers_found_by_a_departure_are_evicted_too(hub: Hub) -> None:
    ann = User(hub, "ann", queue=1000)
    slow1 = User(hub, "slow1", queue=3)  # users, joined, slow2 joined: full
    slow2 = User(hub, "slow2", queue=4)
    slow1.raw()
    for text in ("one", "two", "three"):
        hub.handle(ann.member, p.Say(text))
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
        assert isinstance(hub.register(f"u{i}", valve, valve.disconnect), Member)
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
        hub.handle(ann.member, p.Msg("slow", "hi"))
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
