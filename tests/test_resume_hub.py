"""Epochs and the resume buffer in the hub, and their survival in SQLite: no sockets."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from _v1 import LineUser

from triochat.core import events as ev
from triochat.core.hub import Hub
from triochat.protocol import line as p
from triochat.protocol.v2 import V2Dialect
from triochat.server.store import StoreConfig, open_history_store

LINE = p.LineDialect()
V2 = V2Dialect()
"""Members who resume: the hub keeps a resume buffer for their rooms."""


def _hub(*, history: int = 20, resume_max: int = 1000) -> Hub:
    return Hub(clock=lambda: 1_700_000_000.0, history=history, resume_max=resume_max)


def _state(hub: Hub, room: str = p.LOBBY) -> ev.RoomState:
    state = hub.room_state(room)
    assert state is not None
    return state


def test_resume_answers_every_event_after_seq_in_order() -> None:
    hub = _hub()
    alice = LineUser(hub, "alice", V2)
    start = _state(hub)
    hub.say(alice.member, p.LOBBY, ["one", "two"])
    bob = LineUser(hub, "bob", V2)  # a join is numbered and replayed too
    hub.act(bob.member, p.LOBBY, "waves")
    recovery = hub.resume(p.LOBBY, start.epoch, start.seq)
    assert isinstance(recovery, ev.Resumed)
    assert [type(e).__name__ for e in recovery.events] == ["Said", "Said", "Joined", "Acted"]
    assert [e.seq for e in recovery.events] == list(range(start.seq + 1, start.seq + 5))
    assert recovery.seq == _state(hub).seq == start.seq + 4
    nothing = hub.resume(p.LOBBY, start.epoch, recovery.seq)
    assert isinstance(nothing, ev.Resumed)
    assert nothing.events == ()


def test_resume_buffer_is_independent_of_history() -> None:
    hub = _hub(history=2, resume_max=100)
    alice = LineUser(hub, "alice", V2)
    start = _state(hub)
    hub.say(alice.member, p.LOBBY, [str(i) for i in range(50)])
    assert len(hub.recent(p.LOBBY, 100)) == 2
    recovery = hub.resume(p.LOBBY, start.epoch, start.seq)
    assert isinstance(recovery, ev.Resumed)
    assert [e.text for e in recovery.events if isinstance(e, ev.Said)] == [
        str(i) for i in range(50)
    ]


def test_resume_failures_are_explicit_and_replay_nothing() -> None:
    hub = _hub(resume_max=10)
    alice = LineUser(hub, "alice", V2)
    start = _state(hub)
    hub.say(alice.member, p.LOBBY, [str(i) for i in range(5)])
    now = _state(hub)

    other = hub.resume(p.LOBBY, "not-the-epoch", start.seq)
    assert isinstance(other, ev.ResumeFailed)
    assert other.lost == now.seq
    assert other.epoch == now.epoch
    assert "reset" in other.reason

    future = hub.resume(p.LOBBY, now.epoch, now.seq + 1)
    assert isinstance(future, ev.ResumeFailed)
    assert "future" in future.reason

    unknown = hub.resume("#nowhere", now.epoch, 0)
    assert isinstance(unknown, ev.ResumeFailed)
    assert unknown.reason == "no such room"

    hub.say(alice.member, p.LOBBY, [str(i) for i in range(20)])
    over = hub.resume(p.LOBBY, now.epoch, start.seq)
    assert isinstance(over, ev.ResumeFailed)
    assert over.lost == 25
    assert "more than 10" in over.reason


def test_too_old_is_a_failure_not_a_partial_replay() -> None:
    hub = _hub(resume_max=10)
    alice = LineUser(hub, "alice", V2)
    start = _state(hub)
    hub.say(alice.member, p.LOBBY, [str(i) for i in range(8)])
    hub.resume_max = 20  # a replay within the cap, from events the tail no longer has
    hub.say(alice.member, p.LOBBY, [str(i) for i in range(8)])
    recovery = hub.resume(p.LOBBY, start.epoch, start.seq)
    assert isinstance(recovery, ev.ResumeFailed)
    assert recovery.lost == 16
    assert recovery.reason == "history no longer has them"


def test_a_forgotten_room_gets_a_new_epoch() -> None:
    hub = _hub()
    alice = LineUser(hub, "alice", V2)
    alice.do(p.Join("#side"))
    first = _state(hub, "#side")
    alice.do(p.Join("#other"))  # a one-room member moves: #side is empty, forgotten
    assert hub.room_state("#side") is None
    alice.do(p.Join("#side"))
    again = _state(hub, "#side")
    assert again.epoch != first.epoch
    recovery = hub.resume("#side", first.epoch, first.seq)
    assert isinstance(recovery, ev.ResumeFailed)
    assert "reset" in recovery.reason


async def test_epoch_and_numbers_survive_a_restart_with_db(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "chat.db")
    async with open_history_store(config) as store:
        hub = Hub(archive=store)
        alice = LineUser(hub, "alice", V2)
        hub.say(alice.member, p.LOBBY, ["kept"])
        hub.leave(alice.member, "quit")  # a numbered event that is not kept
        before = _state(hub)
    async with open_history_store(config) as store:
        hub = Hub(archive=store)
        bob = LineUser(hub, "bob", V2)
        after = _state(hub)
        assert after.epoch == before.epoch
        assert after.seq == before.seq + 1  # bob's join: no number given twice
        recovery = hub.resume(p.LOBBY, before.epoch, before.seq)
        assert isinstance(recovery, ev.Resumed)
        assert [type(e) for e in recovery.events] == [ev.Joined]
        hub.leave(bob.member, "quit")


def test_without_db_a_restart_is_a_new_epoch() -> None:
    first = _hub()
    LineUser(first, "alice", LINE)
    second = _hub()
    LineUser(second, "alice", LINE)
    assert _state(first).epoch != _state(second).epoch


def test_a_room_of_v1_members_only_keeps_no_resume_buffer() -> None:
    hub = _hub()
    alice = LineUser(hub, "alice", LINE)
    start = _state(hub)
    hub.say(alice.member, p.LOBBY, ["one"])
    recovery = hub.resume(p.LOBBY, start.epoch, start.seq)
    assert isinstance(recovery, ev.ResumeFailed)
    assert recovery.reason == "history no longer has them"
    LineUser(hub, "bob", V2)  # from now on the room keeps one
    now = _state(hub)
    hub.say(alice.member, p.LOBBY, ["two"])
    recovery = hub.resume(p.LOBBY, now.epoch, now.seq)
    assert isinstance(recovery, ev.Resumed)
    assert [e.text for e in recovery.events if isinstance(e, ev.Said)] == ["two"]


def test_numbers_given_twice_make_a_resume_fail_not_guess() -> None:
    hub = _hub()
    LineUser(hub, "alice", V2)
    start = _state(hub)
    n, t = start.seq, 1_700_000_000.0
    # Two nodes of a cluster numbered at once: n + 1 twice, then n + 3.
    for seq in (n + 1, n + 1, n + 3):
        hub.deliver([ev.Said(p.LOBBY, seq, t, "ann", str(seq))])
    recovery = hub.resume(p.LOBBY, start.epoch, n)
    assert isinstance(recovery, ev.ResumeFailed)
    assert recovery.reason == "history no longer has them"
    assert recovery.lost == 3


async def test_after_a_crash_every_room_gets_a_new_epoch(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "chat.db")
    async with open_history_store(config) as store:
        hub = Hub(archive=store)
        alice = LineUser(hub, "alice", V2)
        hub.say(alice.member, p.LOBBY, ["kept"])
        before = _state(hub)
    with closing(sqlite3.connect(config.path)) as db, db:
        # As a kill -9 leaves it: the run never said it closed the file.
        db.execute("UPDATE meta SET value = '1' WHERE key = 'running'")
    async with open_history_store(config) as store:
        hub = Hub(archive=store)
        LineUser(hub, "bob", V2)
        after = _state(hub)
    assert after.epoch != before.epoch
    assert after.seq > before.seq  # numbering still goes on
    assert [e.text for e in hub.recent(p.LOBBY, 5) if isinstance(e, ev.Said)] == ["kept"]
