"""The backplane seam without Redis: the loopback, and a hub against a fake backplane."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import pytest
import trio
from _v1 import LineUser

from triochat.backplane import Claim, LocalBackplane, RemoteUser
from triochat.core import events as ev
from triochat.core.hub import Hub, Member
from triochat.protocol import line as p
from triochat.protocol.v2 import V2Dialect

LINE = p.LineDialect()
T0 = 1_700_000_000.0


# --- the loopback ------------------------------------------------------------------


class RecordingNode:
    """A node that records what its backplane hands it."""

    def __init__(self) -> None:
        self.delivered: list[Sequence[ev.RoomEvent]] = []

    def deliver(self, events: Sequence[ev.RoomEvent], /, epoch: str | None = None) -> None:
        self.delivered.append(events)

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the loopback called {name}()")


def test_the_loopback_hands_published_events_straight_back_in_order() -> None:
    backplane = LocalBackplane()
    with pytest.raises(RuntimeError, match="attach"):
        backplane.publish([ev.Said("#r", 1, T0, "ann", "lost")])
    node = RecordingNode()
    backplane.attach(node)
    first = [ev.Said("#r", 1, T0, "ann", "one"), ev.Said("#r", 2, T0, "ann", "two")]
    second = [ev.Joined("#s", 1, T0, "ben")]
    backplane.publish(first)
    backplane.publish(second)
    # The very lists, at once, in order, each once: no queue, no copy, no task.
    assert len(node.delivered) == 2
    assert node.delivered[0] is first
    assert node.delivered[1] is second
    # No detour on the hot path: publishing is the node's own deliver().
    assert backplane.publish == node.deliver


async def test_the_loopback_has_no_other_node() -> None:
    backplane = LocalBackplane()
    node = RecordingNode()
    backplane.attach(node)
    assert backplane.remote is False
    assert backplane.link_down is False
    # Nobody else takes a private message, a room's history goes with its last
    # member here (vacate: nobody will drop it later), and every claim wins.
    assert backplane.publish_private("ben", ev.Private(T0, "ann", "ben", "psst")) is False
    assert backplane.vacate("#r") is False
    backplane.presence("ann", "ann", ["#lobby"])
    backplane.occupy("#r")
    assert backplane.remote_name("ann") is None
    assert backplane.remote_users("#lobby") == []
    assert (backplane.remote_count_in("#lobby"), backplane.remote_first("#lobby", 50)) == (0, ())
    assert backplane.remote_rooms() == {}
    assert backplane.remote_count() == 0
    assert await backplane.claim("ann") is Claim.CLAIMED
    assert await backplane.claim("ann") is Claim.CLAIMED  # The hub alone decides.
    backplane.unclaim("ann")
    with trio.fail_after(1):
        async with trio.open_nursery() as nursery:
            await nursery.start(backplane.run)  # Started at once, and done.
    await backplane.leave_cluster()
    assert node.delivered == []


async def test_a_hub_on_the_loopback_delivers_each_event_once() -> None:
    hub = Hub(clock=lambda: T0)
    assert isinstance(hub.backplane, LocalBackplane)
    ann, inbox = _member(hub, "ann")
    ben, _ = _member(hub, "ben")
    _drain(inbox)
    hub.say(ann, p.LOBBY, ["one", "two"])
    hub.say(ben, p.LOBBY, ["three"])
    assert [line.split("> ")[1] for line in _drain(inbox)] == ["one", "two", "three"]
    assert [e.text for e in hub.recent(p.LOBBY, 5) if isinstance(e, ev.Said)] == [
        "one",
        "two",
        "three",
    ]


# --- a hub against a fake remote backplane -------------------------------------------


def _order(name: str) -> tuple[str, str]:
    return p.name_sort_key(name), name


class FakeBackplane:
    """A linked backplane that records what the hub hands it and delivers nothing itself."""

    remote = True
    link_down = False

    def __init__(self) -> None:
        self.published: list[Sequence[ev.RoomEvent]] = []
        self.presences: list[tuple[str, str, tuple[str, ...] | None]] = []
        self.others: dict[str, tuple[str, tuple[str, ...]]] = {"zed": ("Zed", ("#lobby",))}
        self.privates: list[tuple[str, ev.Private]] = []
        self.holds: list[tuple[str, str]] = []
        self.linked = True

    def attach(self, node: object, /) -> None:
        pass

    def publish(self, events: Sequence[ev.RoomEvent], /) -> None:
        self.published.append(events)

    def publish_private(self, key: str, event: ev.Private, /) -> bool:
        self.privates.append((key, event))
        return True

    def presence(
        self,
        key: str,
        name: str,
        rooms: Iterable[str] | None,
        account: str | None = None,
        away: str | None = None,
        /,
    ) -> None:
        self.presences.append((key, name, None if rooms is None else tuple(rooms)))

    def occupy(self, room: str, /) -> None:
        self.holds.append(("occupy", room))

    def vacate(self, room: str, /) -> bool:
        self.holds.append(("vacate", room))
        return self.linked

    def remote_name(self, key: str, /) -> str | None:
        entry = self.others.get(key)
        return entry[0] if entry else None

    def remote_users(self, room: str, /) -> list[str]:
        return sorted((name for name, rooms in self.others.values() if room in rooms), key=_order)

    def remote_count_in(self, room: str, /) -> int:
        return len(self.remote_users(room))

    def remote_first(self, room: str, count: int, /) -> list[tuple[str, str]]:
        return [(p.name_sort_key(name), name) for name in self.remote_users(room)[:count]]

    def remote_user(self, key: str, /) -> RemoteUser | None:
        return None

    def remote_rooms(self) -> dict[str, int]:
        return {"#lobby": 1, "#far": 2}

    def remote_count(self) -> int:
        return 3

    async def claim(self, name: str, /) -> Claim:
        raise AssertionError("the hub never claims")

    def unclaim(self, name: str, /) -> None:
        raise AssertionError("the hub never unclaims")


_USERS: dict[Member, LineUser] = {}


def _member(hub: Hub, name: str) -> tuple[Member, trio.MemoryReceiveChannel[bytes]]:
    user = LineUser(hub, name, LINE)
    _USERS[user.member] = user
    return user.member, user.inbox


def _drain(receive: trio.MemoryReceiveChannel[bytes]) -> list[str]:
    lines = []
    while True:
        try:
            lines.extend(receive.receive_nowait().decode().splitlines())
        except trio.WouldBlock:
            return lines


def _do(hub: Hub, member: Member, command: p.Command) -> None:
    assert _USERS[member].hub is hub
    _USERS[member].do(command)


def test_a_hub_publishes_room_events_and_shows_them_only_when_delivered() -> None:
    fake = FakeBackplane()
    hub = Hub(clock=lambda: T0, backplane=fake)  # type: ignore[arg-type]
    ann, inbox = _member(hub, "ann")
    assert fake.presences == [("ann", "ann", ("#lobby",))]
    assert "* Users in #lobby: ann, Zed" in _drain(inbox)
    _do(hub, ann, p.Say("hi"))
    # Nothing reaches the room directly: the event comes back through deliver().
    assert _drain(inbox) == []
    (said,) = fake.published[-1]
    assert isinstance(said, ev.Said)
    assert (said.room, said.name, said.text) == ("#lobby", "ann", "hi")
    hub.deliver(fake.published[-1], "e1")
    assert _drain(inbox)[-1].endswith("<ann> hi")
    _do(hub, ann, p.Rooms())
    assert _drain(inbox) == ["* Rooms: #far (2), #lobby (2)"]
    assert hub.online() == 4
    # A remote name is taken, and /msg to it goes through the backplane, echo included.
    assert hub.name_unavailable("ZED") == "Name ZED is taken, choose another"
    _do(hub, ann, p.Msg("zed", "psst"))
    (to, message), (back, echo) = fake.privates
    assert (to, message.recipient, message.echo) == ("zed", "Zed", False)
    assert (back, echo.echo) == ("ann", True)
    hub.deliver_private(back, echo)
    assert _drain(inbox)[-1].endswith("-> *Zed* psst")
    hub.leave(ann, "quit")
    assert fake.presences[-1] == ("ann", "ann", None)


def test_in_a_cluster_the_hub_takes_the_clusters_numbers_and_epoch() -> None:
    fake = FakeBackplane()
    hub = Hub(clock=lambda: T0, backplane=fake)  # type: ignore[arg-type]
    ann, _ = _member(hub, "ann")
    v2 = LineUser(hub, "bo", V2Dialect())
    # The cluster numbers: what the hub publishes is unnumbered.
    assert [event.seq for events in fake.published for event in events] == [0, 0]
    _drain(v2.inbox)
    hub.deliver([ev.Said(p.LOBBY, 41, T0, "Zed", "from afar")], "c1a5")
    # A new epoch is told, before the events, to those who resume.
    assert _drain(v2.inbox)[:2] == [
        "room room=#lobby epoch=c1a5 seq=40",
        "said room=#lobby seq=41 time=2023-11-14T22:13:20.000Z name=Zed :from afar",
    ]
    assert hub.room_state(p.LOBBY) == ev.RoomState(p.LOBBY, "c1a5", 41)
    _do(hub, ann, p.Say("next"))
    assert fake.published[-1][0].seq == 0
    hub.deliver([ev.Said(p.LOBBY, 42, T0, "ann", "next")], "c1a5")
    assert _drain(v2.inbox)[-1].endswith("seq=42 time=2023-11-14T22:13:20.000Z name=ann :next")
    # Delivered here alone (the link is down): numbered here, in an epoch of this node's.
    hub.deliver([ev.Said(p.LOBBY, 0, T0, "ann", "alone")])
    state = hub.room_state(p.LOBBY)
    assert state is not None
    assert state.epoch != "c1a5"
    assert state.seq == 43
    assert _drain(v2.inbox) == [
        f"room room=#lobby epoch={state.epoch} seq=42",
        "said room=#lobby seq=43 time=2023-11-14T22:13:20.000Z name=ann :alone",
    ]


def test_history_from_the_backplane_outlives_local_members() -> None:
    hub = Hub(history=2, backplane=FakeBackplane())  # type: ignore[arg-type]
    for i in range(3):
        hub.deliver([ev.Said("#far", i + 1, T0, "zed", f"line {i}")], "e1")
    assert [e.text for e in hub.recent("#far", 5)] == ["line 1", "line 2"]  # type: ignore[union-attr]
    hub.replace_histories({p.LOBBY: [ev.Said(p.LOBBY, 1, T0, "zed", "old")]})
    assert hub.history_rooms() == [p.LOBBY]
    _, inbox = _member(hub, "ann")
    assert _drain(inbox)[0].endswith("<zed> old")


def test_a_rooms_history_stays_until_the_cluster_drops_it() -> None:
    fake = FakeBackplane()
    hub = Hub(backplane=fake)  # type: ignore[arg-type]
    ann, _ = _member(hub, "ann")
    _do(hub, ann, p.Join("#tmp"))
    hub.deliver([ev.Said("#tmp", 2, T0, "ann", "said")], "e1")
    _do(hub, ann, p.Join(p.LOBBY))
    # The lobby is never held; a room is held while a member here is in it.
    assert fake.holds == [("occupy", "#tmp"), ("vacate", "#tmp")]
    assert hub.history_rooms() == ["#lobby", "#tmp"]  # Others may still be in it.
    assert not hub.drop_history("#tmp")
    assert hub.history_rooms() == ["#lobby"]


def test_a_drop_that_raced_a_join_here_is_reported_and_undone() -> None:
    hub = Hub(backplane=FakeBackplane())  # type: ignore[arg-type]
    ann, inbox = _member(hub, "ann")
    said = ev.Said("#tmp", 1, T0, "zed", "said")
    hub.deliver([said], "e1")
    _do(hub, ann, p.Join("#tmp"))
    assert _drain(inbox)[-2].endswith("<zed> said")  # The joiner got the history...
    # ... and is in the room when the drop arrives: the backplane should undo it.
    assert hub.drop_history("#tmp")
    assert hub.recent("#tmp", 5) == []
    hub.set_history("#tmp", [said])
    more = ev.Said("#tmp", 3, T0, "zed", "more")
    hub.deliver([more], "e1")
    assert hub.recent("#tmp", 5) == [said, more]


def test_without_a_link_a_node_forgets_a_room_with_its_last_member_here() -> None:
    fake = FakeBackplane()
    fake.linked = False
    hub = Hub(backplane=fake)  # type: ignore[arg-type]
    ann, _ = _member(hub, "ann")
    _do(hub, ann, p.Join("#tmp"))
    hub.deliver([ev.Said("#tmp", 2, T0, "ann", "said")], "e1")
    _do(hub, ann, p.Join(p.LOBBY))
    assert hub.history_rooms() == ["#lobby"]


def test_replacing_histories_forgets_rooms_the_cluster_dropped() -> None:
    hub = Hub(backplane=FakeBackplane())  # type: ignore[arg-type]
    ann, _ = _member(hub, "ann")
    _do(hub, ann, p.Join("#here"))
    for room in ("#here", "#gone"):
        hub.deliver([ev.Said(room, 5, T0, "zed", "old")], "e1")
    hub.replace_histories({"#kept": [ev.Said("#kept", 1, T0, "zed", "kept")]})
    # A room with a member here stays, empty: it starts again.
    assert hub.history_rooms() == ["#here", "#kept", "#lobby"]
    assert hub.recent("#here", 5) == []


@pytest.mark.parametrize(
    "module",
    ["triochat.backplane", "triochat.backplane.memory", "triochat.backplane.redis"],
)
def test_a_backplane_knows_the_hub_only_as_a_node(module: str) -> None:
    if module.endswith("redis"):
        pytest.importorskip("coredis")
    code = f"import sys, {module}; print(' '.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(out.stdout.split())
    assert module in loaded
    assert not any(
        name.startswith(("triochat.core.hub", "triochat.server", "triochat.client", "triochat.cli"))
        for name in loaded
    )
