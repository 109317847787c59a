"""The wire between cluster nodes: every record round-trips; anything else is a WireError."""

from __future__ import annotations

from typing import Any, get_args

import pytest
from hypothesis import given, strategies as st

from triochat.core import events as ev

pytest.importorskip("coredis", reason="the wire lives in the 'redis' extra's package")

from triochat.backplane.base import Takeover
from triochat.backplane.redis.wire import (
    Direct,
    Drop,
    Epoch,
    History,
    Taken,
    Told,
    Whereabouts,
    WireError,
    decode_batch,
    decode_event,
    decode_presence,
    encode_batch,
    encode_event,
    encode_presence,
    encode_record,
    epoch_head,
    history_prefix,
    numbered_parts,
    presence_prefix,
)

T0 = 1_700_000_000.0

texts = st.text(max_size=12)  # Any text: JSON escapes what would break the framing.
seqs = st.integers(0, 2**53)
times = st.floats(allow_nan=False, allow_infinity=False)
node_ids = st.text("0123456789abcdef", min_size=1, max_size=12)

EVENT_STRATEGIES: dict[type[Any], st.SearchStrategy[Any]] = {
    ev.Said: st.builds(ev.Said, texts, seqs, times, texts, texts),
    ev.Acted: st.builds(ev.Acted, texts, seqs, times, texts, texts),
    ev.Joined: st.builds(ev.Joined, texts, seqs, times, texts),
    ev.Left: st.builds(ev.Left, texts, seqs, times, texts, texts),
    ev.Renamed: st.builds(ev.Renamed, texts, seqs, times, texts, texts),
    ev.TopicSet: st.builds(ev.TopicSet, texts, seqs, times, texts, texts),
    ev.RoleChanged: st.builds(ev.RoleChanged, texts, seqs, times, texts, texts, st.booleans()),
    ev.Presence: st.builds(ev.Presence, texts, seqs, times, seqs, seqs, times),
    ev.Legacy: st.builds(ev.Legacy, texts, seqs, times, texts),
    ev.Away: st.builds(ev.Away, texts, seqs, times, texts, texts, texts),
}
room_events = st.one_of(*EVENT_STRATEGIES.values())
privates = st.builds(ev.Private, times, texts, texts, texts, st.booleans())
records = st.one_of(
    room_events,
    st.builds(Direct, texts, privates),
    st.builds(
        Whereabouts,
        node_ids,
        texts,
        texts,
        st.none() | st.lists(texts, max_size=3).map(tuple),
        st.none() | texts,
        st.none() | texts,
    ),
    st.builds(Drop, texts),
    st.builds(History, texts, st.lists(room_events, max_size=3).map(tuple)),
    st.builds(Epoch, texts, node_ids),
    st.builds(Told, texts, texts, st.booleans()),
    st.builds(
        Taken,
        node_ids,
        st.builds(
            Takeover,
            texts,
            texts,
            st.lists(texts, max_size=3).map(tuple),
            st.dictionaries(texts, st.tuples(node_ids, seqs), max_size=3),
            st.none() | texts,
            st.none() | texts,
        ),
        node_ids,
        node_ids,
        node_ids,
    ),
)


def test_every_room_event_type_has_a_strategy() -> None:
    # Else a new event type could miss the round trips below.
    assert set(EVENT_STRATEGIES) == set(get_args(ev.RoomEvent))


@given(st.lists(records, max_size=8), node_ids, st.integers(1, 2**40))
def test_batches_round_trip(batch: list[Any], node: str, seq: int) -> None:
    payload = encode_batch(node, seq, [encode_record(r) for r in batch])
    assert decode_batch(payload) == (node, seq, batch)


@given(room_events)
def test_a_stored_event_round_trips_and_is_its_record_without_the_newline(
    event: ev.RoomEvent,
) -> None:
    assert decode_event(encode_event(event)) == event
    assert encode_record(event) == encode_event(event) + b"\n"


@given(texts, st.lists(room_events, max_size=4))
def test_an_h_record_built_as_the_undo_script_builds_it_decodes(
    room: str, events: list[ev.RoomEvent]
) -> None:
    # The script joins the stored events with commas behind the prefix and closes the record.
    record = history_prefix(room) + b",".join(encode_event(e) for e in events) + b"]]\n"
    assert decode_batch(b"n\t1\n" + record)[2] == [History(room, tuple(events))]


def test_a_t_record_from_an_older_node_has_no_account_or_away() -> None:
    record = b'["T","id","ann","Ann","n1","n2","x1",["#den"],{}]\n'
    [taken] = decode_batch(b"n\t1\n" + record)[2]
    assert isinstance(taken, Taken)
    assert taken.takeover == Takeover("ann", "Ann", ("#den",), {}, None, None)


@given(node_ids, texts, st.lists(texts, max_size=3), st.none() | texts, st.none() | texts)
def test_presence_entries_round_trip_and_start_as_the_reap_script_expects(
    node: str, name: str, rooms: list[str], account: str | None, away: str | None
) -> None:
    entry = encode_presence(node, name, rooms, account, away)
    assert decode_presence(entry) == (node, name, tuple(rooms), account, away)
    assert entry.startswith(presence_prefix(node))
    assert not encode_presence(node + "0", name, rooms).startswith(presence_prefix(node))


def test_a_presence_entry_of_an_older_node_has_no_account_and_no_away() -> None:
    assert decode_presence(b'["n","ann",["#r"]]') == ("n", "ann", ("#r",), None, None)


def test_an_event_is_compact() -> None:
    said = ev.Said("#lobby", 7, T0, "ann", "hi")
    assert encode_event(said) == b'["Said","#lobby",7,1700000000.0,"ann","hi"]'


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"node\n",
        b"n\tx\n",
        b"\xff\t1\n",
        b"n\t1\nnot json\n",
        b"n\t1\n\xff\n",
        b'n\t1\n{"S":1}\n',
        b"n\t1\n[]\n",
        b'n\t1\n["X",1]\n',
        b'n\t1\n["Said","#r",1,0.0,"ann"]\n',
        b'n\t1\n["Said","#r",true,0.0,"ann","hi"]\n',
        b'n\t1\n["Said","#r",1,"0","ann","hi"]\n',
        b'n\t1\n["Said",1,1,0.0,"ann","hi"]\n',
        b'n\t1\n["Joined","#r",1,0.0,null]\n',
        b'n\t1\n["Private",0.0,"a","b","t",false]\n',
        b'n\t1\n["M","k",["Private",0.0,"a","b","t","yes"]]\n',
        b'n\t1\n["M","k",["Joined","#r",1,0.0,"a"]]\n',
        b'n\t1\n["M","k"]\n',
        b'n\t1\n["P","n","k","ann","#lobby"]\n',
        b'n\t1\n["P","n","k","ann",[1]]\n',
        b'n\t1\n["P","n","k","ann",NaN]\n',
        b'n\t1\n["P","n","k","ann",[]]\n',
        b'n\t1\n["P","n","k","ann",[],1,null]\n',
        b'n\t1\n["P","n","k","ann",[],null,["away"]]\n',
        b'n\t1\n["D"]\n',
        b'n\t1\n["H","#r",{}]\n',
        b'n\t1\n["H","#r",[["D","#r"]]]\n',
        b'n\t1\n["H","#r",[["Private",0.0,"a","b","t",false]]]\n',
    ],
)
def test_malformed_batches_are_wire_errors(payload: bytes) -> None:
    with pytest.raises(WireError):
        decode_batch(payload)


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'["n","ann"]',
        b'["n","ann","#lobby"]',
        b"\xff",
        b'["n","ann",[],1,null]',
        b'["n","ann",[],null]',
    ],
)
def test_malformed_presence_entries_are_wire_errors(raw: bytes) -> None:
    with pytest.raises(WireError):
        decode_presence(raw)


def test_history_holds_what_the_hub_keeps() -> None:
    samples: list[ev.RoomEvent] = [
        ev.Said("#r", 1, T0, "a", "t"),
        ev.Acted("#r", 1, T0, "a", "t"),
        ev.Joined("#r", 1, T0, "a"),
        ev.Left("#r", 1, T0, "a", "quit"),
        ev.Renamed("#r", 1, T0, "a", "b"),
        ev.TopicSet("#r", 1, T0, "a", "t"),
        ev.RoleChanged("#r", 1, T0, "b", "a", True),
        ev.Presence("#r", 1, T0, 3, 2, 30.0),
        ev.Legacy("#r", 1, T0, "line"),
        ev.Away("#r", 0, T0, "a", "lunch", "#s"),
    ]
    assert {type(e) for e in samples} == set(get_args(ev.RoomEvent))
    assert {type(e) for e in samples if ev.kept_in_history(e)} == ev.KEPT
    assert {ev.Said, ev.Acted, ev.TopicSet, ev.Legacy} == ev.KEPT


@given(room_events, seqs)
def test_a_record_cut_around_its_number_is_numbered_as_the_batch_script_does(
    event: Any, seq: int
) -> None:
    head, tail = numbered_parts(event)
    numbered = head + str(seq).encode() + tail  # string.format('%d', seq) .. in Lua
    assert decode_event(numbered) == type(event)(event.room, seq, *_rest(event))
    # The E record the script ends with the epoch decodes as the epoch of that room.
    (epoch,) = decode_batch(encode_batch("n", 1, [epoch_head(event.room) + b'c0ffee"]\n']))[2]
    assert epoch == Epoch(event.room, "c0ffee")


def _rest(event: Any) -> list[Any]:
    fields = list(event.__dataclass_fields__)
    return [getattr(event, name) for name in fields[2:]]
