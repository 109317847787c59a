"""The store's shutdown flush is bounded: a stuck disk cannot hold the server's exit."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest
import trio
import trio.testing

from triochat.core import events as ev
from triochat.server.store import StoreConfig, open_history_store


async def test_a_blocked_writer_gives_up_at_the_flush_timeout(
    tmp_path: Path, autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triochat")
    db = tmp_path / "chat.db"
    config = StoreConfig(path=db, flush_timeout=2.0)
    lock = sqlite3.connect(db, isolation_level=None)
    try:
        async with open_history_store(config) as store:
            # Another connection holds the write lock: the writer's thread waits on it
            # (busy_timeout, seconds of real time) and cannot be cancelled.
            lock.execute("BEGIN IMMEDIATE")
            for i in range(5):
                store.append(ev.Said("#lobby", i + 1, 0.0, "ann", f"line {i}"))
            await trio.testing.wait_all_tasks_blocked()
            shutdown_started = trio.current_time()
        waited = trio.current_time() - shutdown_started
    finally:
        lock.execute("ROLLBACK")
        lock.close()
    assert waited == pytest.approx(config.flush_timeout, abs=config.batch_interval)
    assert store.dropped == 5
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert messages == [
        "history database: 5 lines not saved: not committed within --db-flush-timeout 2 s"
    ]
    assert "history database closed: 0 lines saved, 5 lost" in caplog.text


async def test_a_prompt_writer_saves_everything_before_the_timeout(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="triochat")
    db = tmp_path / "chat.db"
    with trio.fail_after(10):
        async with open_history_store(StoreConfig(path=db, flush_timeout=5.0)) as store:
            for i in range(5):
                store.append(ev.Said("#lobby", i + 1, 0.0, "ann", f"line {i}"))
    assert "not saved" not in caplog.text
    assert "history database closed: 5 lines saved, 0 lost" in caplog.text
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT COUNT(*) FROM messages").fetchone()[0] == 5
