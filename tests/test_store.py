"""Persistent history: the SQLite store, restarts, /history, bad files, kill -9."""

from __future__ import annotations

import signal
import sqlite3
import sys
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio
from _ops import cli_env, running_server, start_cli

from triochat.client.connection import ChatClient, open_chat_client
from triochat.core import events as ev, records
from triochat.protocol import line as p
from triochat.server.store import SCHEMA_VERSION, StoreConfig, StoreError, open_history_store


async def _client(port: int, name: str) -> ChatClient:
    client = await open_chat_client("127.0.0.1", port)
    await client.register(name)
    return client


T0 = 1_700_000_000.0


async def _say(client: ChatClient, *texts: str) -> None:
    """Send lines and wait for each to come back, so the server has handled them."""
    for text in texts:
        await client.send_line(text)
    for text in texts:
        while not (await client.receive_line()).endswith(f"> {text}"):
            pass


async def _history(client: ChatClient, count: int | None = None) -> list[str]:
    """``/history [N]``: the replayed lines, without the header and footer."""
    await client.send_line("/history" if count is None else f"/history {count}")
    while not (header := await client.receive_line()).startswith(("* History of", "* No history")):
        pass
    if header.startswith("* No history"):
        return []
    lines = []
    while not (line := await client.receive_line()).startswith("* End of history"):
        lines.append(line)
    return lines


def _rows(db: Path) -> list[str]:
    """The stored events, as the line door shows them on the day they were said."""
    dialect = p.LineDialect(clock=lambda: T0)
    with closing(sqlite3.connect(db)) as conn:
        rows = conn.execute("SELECT event FROM messages ORDER BY id").fetchall()
    return [dialect.line(records.decode_room_event(event)).rstrip("\n") for (event,) in rows]


def test_history_command_parses() -> None:
    assert p.parse_command("/history") == p.History(p.HISTORY_DEFAULT)
    assert p.parse_command("/history 7") == p.History(7)
    assert p.parse_command(f"/history {p.HISTORY_MAX}") == p.History(p.HISTORY_MAX)
    for bad in ("/history 0", "/history -3", "/history lots", f"/history {p.HISTORY_MAX + 1}"):
        assert isinstance(p.parse_command(bad), p.Invalid)
    assert any("/history" in line for line in p.HELP)


async def test_history_survives_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    with trio.fail_after(10):
        async with running_server(db=db, history=5) as (_, port):
            ann = await _client(port, "ann")
            await _say(ann, *(f"lobby {i}" for i in range(8)))
            await ann.send_line("/join #dev")
            await _say(ann, "dev 1", "dev 2")
            await ann.aclose()
        # A new server on the same file: joiners see what they saw before.
        async with running_server(db=db, history=5) as (_, port):
            cat = await open_chat_client("127.0.0.1", port)
            lines = await cat.register("cat")
            said = [line.split("> ", 1)[1] for line in lines if "<ann>" in line]
            assert said == [f"lobby {i}" for i in range(3, 8)]
            await cat.send_line("/join #dev")
            seen = []
            while not (line := await cat.receive_line()).startswith("* Users in #dev"):
                seen.append(line)
            assert [line.split("> ", 1)[1] for line in seen if "<ann>" in line] == [
                "dev 1",
                "dev 2",
            ]
            await cat.aclose()


async def test_history_command_reads_older_lines_from_the_database(tmp_path: Path) -> None:
    with trio.fail_after(10):
        async with running_server(db=tmp_path / "chat.db", history=3) as (server, port):
            ann = await _client(port, "ann")
            await _say(ann, *(f"line {i}" for i in range(10)))
            # Older than the 3 lines kept in memory, and including the newest
            # line even if its batch had not been committed yet.
            got = await _history(ann, 8)
            assert [line.split("> ", 1)[1] for line in got] == [f"line {i}" for i in range(2, 10)]
            assert server.store is not None
            assert server.store.pending == 0
            await ann.send_line("/join #empty")
            assert await _history(ann) == []
            await ann.aclose()


async def test_history_command_without_a_database_uses_memory() -> None:
    with trio.fail_after(10):
        async with running_server(history=3) as (_, port):
            ann = await _client(port, "ann")
            await _say(ann, *(f"line {i}" for i in range(6)))
            got = await _history(ann, 10)
            assert [line.split("> ", 1)[1] for line in got] == ["line 3", "line 4", "line 5"]
            await ann.aclose()


async def test_lines_are_committed_in_batches(tmp_path: Path) -> None:
    with trio.fail_after(10):
        options = {"batch_interval": 0.3}
        async with running_server(db=tmp_path / "chat.db", store_options=options) as (
            server,
            port,
        ):
            ann = await _client(port, "ann")
            # One write of 200 lines, handled well within one collection
            # window, so they go to disk together.
            await ann.stream.send_all(b"".join(f"m{i}\n".encode() for i in range(200)))
            await _history(ann, 1)
            store = server.store
            assert store is not None
            assert store.rows == 200
            assert store.batches <= 3
            # And each batch is one transaction on disk: 200 commits of one row
            # would have left at least 200 frames in the write-ahead log.
            with closing(sqlite3.connect(tmp_path / "chat.db")) as db:
                _, frames, _ = db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
            assert 0 < frames < 40
            await ann.aclose()
    assert len(_rows(tmp_path / "chat.db")) == 200


async def test_a_full_queue_drops_lines_and_counts_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    config = StoreConfig(path=tmp_path / "chat.db", queue=2)
    with trio.fail_after(10):
        async with open_history_store(config) as store:
            for i in range(5):  # no checkpoint between: the writer cannot run
                store.append(ev.Said("#lobby", i + 1, T0, "ann", str(i)))
            assert store.dropped == 3
            assert "not saved" in caplog.text
            # Joiners still see every line; only the file misses some.
            assert len(store.recent("#lobby")) == 5
    assert len(_rows(tmp_path / "chat.db")) == 2


async def test_graceful_close_commits_everything(tmp_path: Path) -> None:
    config = StoreConfig(path=tmp_path / "chat.db", batch_interval=60)
    with trio.fail_after(10):
        async with open_history_store(config) as store:
            for i in range(50):
                store.append(ev.Said("#lobby", i + 1, T0, "ann", str(i)))
            await trio.testing.wait_all_tasks_blocked()
    assert len(_rows(tmp_path / "chat.db")) == 50


async def test_a_corrupt_file_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    db.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="not a database"):
        async with open_history_store(StoreConfig(path=db)):
            pass  # pragma: no cover


async def test_an_unopenable_path_is_refused(tmp_path: Path) -> None:
    with pytest.raises(StoreError, match="unable to open"):
        async with open_history_store(StoreConfig(path=tmp_path / "missing" / "chat.db")):
            pass  # pragma: no cover


async def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    async with open_history_store(StoreConfig(path=db)):
        pass
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(StoreError, match=f"schema version {SCHEMA_VERSION + 1}"):
        async with open_history_store(StoreConfig(path=db)):
            pass  # pragma: no cover


async def test_cli_refuses_a_corrupt_database(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    db.write_bytes(b"garbage" * 1000)
    with trio.fail_after(20):
        result = await trio.run_process(
            [sys.executable, "-m", "triochat", "serve", "--port", "0", "--db", str(db)],
            capture_stdout=True,
            capture_stderr=True,
            check=False,
            env=cli_env(),
        )
    assert result.returncode == 1
    assert b"listening" not in result.stdout
    assert b"cannot use history database" in result.stderr
    assert b"not a database" in result.stderr


async def test_kill_9_loses_at_most_the_last_batch(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    with trio.fail_after(30):
        proc, port = await start_cli("--db", str(db), "--rate", "0")
        try:
            ann = await _client(port, "ann")
            committed = [f"saved {i}" for i in range(100)]
            await _say(ann, *committed)
            # /history waits until every earlier line is committed.
            await _history(ann, 1)
            await _say(ann, *(f"maybe {i}" for i in range(5)))
            proc.send_signal(signal.SIGKILL)
            await proc.wait()
            await ann.aclose()
        finally:
            if proc.returncode is None:  # pragma: no cover - only if the test failed
                proc.kill()
                await proc.wait()
        rows = [line.split("> ", 1)[1] for line in _rows(db)]
        assert rows[:100] == committed
        assert rows[100:] == [f"maybe {i}" for i in range(len(rows) - 100)]

        # The killed server's file opens cleanly, and a new server replays it.
        proc, port = await start_cli("--db", str(db), "--rate", "0")
        try:
            ben = await open_chat_client("127.0.0.1", port)
            lines = await ben.register("ben")
            said = [line.split("> ", 1)[1] for line in lines if "<ann>" in line]
            assert said == rows[-20:]
            await ben.aclose()
            proc.send_signal(signal.SIGTERM)
            assert await proc.wait() == 0
        finally:
            if proc.returncode is None:  # pragma: no cover
                proc.kill()
                await proc.wait()


_V1_SCHEMA = """
CREATE TABLE messages (
    id   INTEGER PRIMARY KEY,
    room TEXT NOT NULL,
    ts   REAL NOT NULL,
    line TEXT NOT NULL
);
CREATE INDEX messages_room ON messages (room, id);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
PRAGMA user_version = 1;
"""


async def test_a_version_1_file_is_migrated_to_events(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    stamp = time.strftime("[%H:%M:%S]", time.localtime(T0))
    v1_lines = [
        ("#lobby", f"{stamp} <ann> hello <b>there</b>"),
        ("#dev", f"{stamp} * ben brews a pot"),
        ("#lobby", f"{stamp} <ben-2> hi ann"),
        ("#lobby", "an odd line kept as it was"),
    ]
    with closing(sqlite3.connect(db)) as conn:
        conn.executescript(_V1_SCHEMA)
        # The row's time is taken a moment after the line was stamped.
        conn.executemany(
            "INSERT INTO messages (room, ts, line) VALUES (?, ?, ?)",
            [(room, T0 + 0.7, line) for room, line in v1_lines],
        )
        conn.commit()
    async with open_history_store(StoreConfig(path=db)) as store:
        lobby = store.recent("#lobby")
        assert [type(event) for event in lobby] == [ev.Said, ev.Said, ev.Legacy]
        assert [event.seq for event in lobby] == [1, 2, 3]
        assert lobby[0] == ev.Said("#lobby", 1, lobby[0].time, "ann", "hello <b>there</b>")
        assert store.recent("#dev") == [ev.Acted("#dev", 1, lobby[0].time, "ben", "brews a pot")]
        fetched = await store.fetch("#lobby", 10)
    assert fetched == lobby
    # Rendered again, every migrated line is byte for byte what v1 clients saw.
    assert _rows(db) == [line for _, line in v1_lines]
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
