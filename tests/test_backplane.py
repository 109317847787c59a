"""The backplane seam without Redis: the wire format, and the hub against a fake backplane."""

from __future__ import annotations

from typing import Any

import pytest
import trio
from hypothesis import given, strategies as st

from triochat import Hub
from triochat.backplane import LocalBackplane
from triochat.backplane._wire import (
    Drop,
    History,
    Line,
    Presence,
    Private,
    WireError,
    decode_batch,
    encode_batch,
    encode_record,
)
from triochat.protocol import line as p

texts = st.text(
    st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters="\t\n"), max_size=40
)


@given(
    st.lists(
        st.one_of(
            st.builds(Line, texts, st.booleans(), texts.map(lambda t: (t + "\n").encode())),
            st.builds(Presence, texts.filter(lambda t: ":" not in t), texts, texts, texts),
            st.builds(Private, texts, texts.map(lambda t: (t + "\n").encode())),
            st.builds(Drop, texts),
            st.builds(
                History,
                texts,
                st.lists(texts.map(lambda t: (t + "\n").encode()), max_size=3).map(tuple),
            ),
        ),
        max_size=10,
    ),
    st.integers(1, 2**40),
)
def test_batches_round_trip(records: list[Any], seq: int) -> None:
    payload = encode_batch("node1", seq, [encode_record(r) for r in records])
    assert decode_batch(payload) == ("node1", seq, records)


@pytest.mark.parametrize(
    "payload", [b"", b"node\n", b"n\t1\nX\tjunk\n", b"n\t1\nP\tonly\ttwo\n", b"n\tx\n"]
)
def test_malformed_batches_are_wire_errors(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(payload)


class FakeBackplane(LocalBackplane):
    """A linked backplane that records what the hub hands it, and sends nothing anywhere."""

    remote = True

    def __init__(self) -> None:
        self.lines: list[tuple[str, bytes, bool]] = []
        self.presences: list[tuple[str, str, str | None]] = []
        self.others: dict[str, tuple[str, str]] = {"zed": ("Zed", "#lobby")}
        self.privates: list[tuple[str, bytes]] = []
        self.holds: list[tuple[str, str]] = []
        self.linked = True

    def publish_line(self, room: str, data: bytes, record: bool) -> bool:
        self.lines.append((room, data, record))
        return True

    def publish_private(self, key: str, data: bytes) -> bool:
        self.privates.append((key, data))
        return True

    def presence(self, key: str, name: str, room: str | None) -> None:
        self.presences.append((key, name, room))

    def occupy(self, room: str) -> None:
        self.holds.append(("occupy", room))

    def vacate(self, room: str) -> bool:
        self.holds.append(("vacate", room))
        return self.linked

    def remote_name(self, key: str) -> str | None:
        entry = self.others.get(key)
        return entry[0] if entry else None

    def remote_users(self, room: str) -> list[str]:
        return [name for name, where in self.others.values() if where == room]

    def remote_rooms(self) -> dict[str, int]:
        return {"#lobby": 1, "#far": 2}


def _member(hub: Hub, name: str) -> tuple[Any, trio.MemoryReceiveChannel[bytes]]:
    send, receive = trio.open_memory_channel[bytes](100)
    member = hub.register(name, send, lambda: None)
    assert not isinstance(member, str)
    return member, receive


def _drain(receive: trio.MemoryReceiveChannel[bytes]) -> list[str]:
    lines = []
    while True:
        try:
            lines.extend(receive.receive_nowait().decode().splitlines())
        except trio.WouldBlock:
            return lines


def test_hub_routes_room_lines_through_a_linked_backplane() -> None:
    fake = FakeBackplane()
    hub = Hub(clock=lambda: 0.0, backplane=fake)
    ann, inbox = _member(hub, "ann")
    assert fake.presences == [("ann", "ann", "#lobby")]
    assert "* Users in #lobby: ann, Zed" in _drain(inbox)
    hub.handle(ann, p.Say("hi"))
    # Nothing reaches the room directly: the line comes back through deliver().
    assert _drain(inbox) == []
    room, data, record = fake.lines[-1]
    assert (room, record) == ("#lobby", True)
    hub.deliver(room, data, record)
    assert _drain(inbox)[-1].endswith("<ann> hi")
    hub.handle(ann, p.Rooms())
    assert _drain(inbox) == ["* Rooms: #far (2), #lobby (2)"]
    # A remote name is taken, and /msg to it goes through the backplane.
    assert hub.name_unavailable("ZED") == "Name ZED is taken, choose another"
    hub.handle(ann, p.Msg("zed", "psst"))
    (to, data), (back, echo) = fake.privates
    assert (to, back) == ("zed", "ann")
    assert data.decode().endswith("*ann* psst\n")
    hub.deliver_private(back, echo)
    assert _drain(inbox)[-1].endswith("-> *Zed* psst")
    hub.leave(ann, "quit")
    assert fake.presences[-1] == ("ann", "ann", None)


def test_history_from_the_backplane_outlives_local_members() -> None:
    hub = Hub(history=2, backplane=FakeBackplane())
    for i in range(3):
        hub.deliver("#far", f"line {i}\n".encode(), True)
    hub.replace_histories({"#lobby": [b"old\n"]})
    _, inbox = _member(hub, "ann")
    assert _drain(inbox)[0] == "old"


def test_a_rooms_history_stays_until_the_cluster_drops_it() -> None:
    fake = FakeBackplane()
    hub = Hub(backplane=fake)
    ann, _ = _member(hub, "ann")
    hub.handle(ann, p.Join("#tmp"))
    hub.deliver("#tmp", b"said\n", True)
    hub.handle(ann, p.Join("#lobby"))
    # The lobby is never held; a room is held while a member here is in it.
    assert fake.holds == [("occupy", "#tmp"), ("vacate", "#tmp")]
    assert hub.history_rooms() == ["#lobby", "#tmp"]  # Others may still be in it.
    assert not hub.drop_history("#tmp")
    assert hub.history_rooms() == ["#lobby"]
    # A copy held for another node's room goes the same way.
    hub.deliver("#far", b"far\n", True)
    assert not hub.drop_history("#far")
    assert hub.history_rooms() == ["#lobby"]


def test_a_drop_that_raced_a_join_here_is_reported_and_undone() -> None:
    hub = Hub(backplane=FakeBackplane())
    ann, inbox = _member(hub, "ann")
    hub.deliver("#tmp", b"said\n", True)
    hub.handle(ann, p.Join("#tmp"))
    assert _drain(inbox)[-2] == "said"  # The joiner got the history...
    # ... and is in the room when the drop arrives: undo it.
    assert hub.drop_history("#tmp")
    assert hub.recent("#tmp", 5) == []
    hub.set_history("#tmp", [b"said\n"])
    hub.deliver("#tmp", b"more\n", True)
    assert hub.recent("#tmp", 5) == [b"said\n", b"more\n"]


def test_without_a_link_a_node_forgets_a_room_with_its_last_member_here() -> None:
    fake = FakeBackplane()
    fake.linked = False
    hub = Hub(backplane=fake)
    ann, _ = _member(hub, "ann")
    hub.handle(ann, p.Join("#tmp"))
    hub.deliver("#tmp", b"said\n", True)
    hub.handle(ann, p.Join("#lobby"))
    assert hub.history_rooms() == ["#lobby"]


def test_replacing_histories_forgets_rooms_the_cluster_dropped() -> None:
    hub = Hub(backplane=FakeBackplane())
    ann, _ = _member(hub, "ann")
    hub.handle(ann, p.Join("#here"))
    for room in ("#here", "#gone"):
        hub.deliver(room, b"old\n", True)
    hub.replace_histories({"#kept": [b"kept\n"]})
    # A room with a member here stays, empty: it starts again.
    assert hub.history_rooms() == ["#here", "#kept", "#lobby"]
    assert hub.recent("#here", 5) == []


def test_local_hub_never_touches_the_backplane() -> None:
    hub = Hub(clock=lambda: 0.0)
    assert isinstance(hub.backplane, LocalBackplane)
    ann, inbox = _member(hub, "ann")
    hub.handle(ann, p.Say("hi"))
    assert _drain(inbox)[-1].endswith("<ann> hi")
