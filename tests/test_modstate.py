"""Moderation in the ``--db`` file (schema 5): operators, topics, bans and mutes outlive a
restart; older files are migrated; expired bans are pruned; records that are not
changes are refused."""

from __future__ import annotations

import math
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio
from _accounts import dial, named, net_fixture, open_accounts  # noqa: F401 - the net fixture
from _ops import running_server
from test_moderation import from_address, join, login

from triochat.core import modstate
from triochat.core.accounts import Request
from triochat.core.modstate import BanSet, MuteSet, OpSet, SharedModeration, TopicChange
from triochat.server.store import SCHEMA_VERSION, StoreConfig, open_history_store

DELAY = 0.01


async def _accounts(db: Path, *names: str, admin: str = "") -> None:
    accounts = open_accounts(db)
    for name in names:
        assert (await accounts.perform(Request("register", name, f"{name}-pw"))).ok
    if admin:
        accounts.set_admin(admin, True)
    accounts.close()


async def test_ops_topics_bans_and_mutes_survive_a_restart(tmp_path: Path, net: None) -> None:
    db = tmp_path / "chat.db"
    await _accounts(db, "ann", "olga", "root", admin="root")
    with trio.fail_after(20):
        async with running_server(db=db, password_delay=DELAY) as (_, port):
            ann = await login(port, "ann", "#den")
            await ann.until("* You are an operator of #den")
            await ann.send("/topic Be kind")
            await ann.until("[T] * ann set the topic of #den: Be kind")
            # A guest from an address of its own: its address is banned with its name.
            bob = await from_address(port, "127.0.0.2", "bob")
            carl = await named(port, "carl")
            await join(bob, "bob", "#den")
            await join(carl, "carl", "#den")
            for line, answer in (
                ("/ban bob 2h spamming", "* bob is banned from #den for 2h more"),
                ("/mute carl", "* carl is muted in #den until lifted"),
                ("/op olga", "[T] * ann made olga an operator of #den"),
            ):
                await ann.send(line)
                await ann.until(answer)
            root = await login(port, "root")
            await root.send("/gban mallory 1d trolling")
            await root.until("* mallory is banned from this server for 1d more")
        # A new server on the same file: all of it holds.
        async with running_server(db=db, password_delay=DELAY) as (server, port):
            bob = await named(port, "bob")
            await bob.send("/join #den")
            await bob.until("! You are banned from #den for 2h more: spamming")
            bobby = await from_address(port, "127.0.0.2", "bobby")  # another name: no way in
            await bobby.send("/join #den")
            await bobby.until("! You are banned from #den for 2h more: spamming")
            carl = await named(port, "carl")
            lines = await join(carl, "carl", "#den")
            assert "* Topic of #den: Be kind (set by ann)" in lines
            await carl.send("let me speak")
            await carl.until("! You are muted in #den until lifted: not sent")
            olga = await login(port, "olga", "#den")
            await olga.send("/unmute carl")  # an operator still
            await olga.until("* carl may speak in #den again")
            await olga.send("/unban bob")  # lifts the address ban made with it, as before
            await olga.until("* bob may join #den again")
            await join(bobby, "bobby", "#den")
            mallory = await dial(port)
            await mallory.until("* What is your name?")
            await mallory.send("mallory")
            await mallory.until("! You are banned from this server for 1d more: trolling")
            # ann is no operator by being first in again: the file says who operates.
            assert server.hub.moderation.is_op("#den", "ann")
            assert server.hub.moderation.actions["op"] == 0


async def test_a_version_4_file_is_migrated_to_5(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    async with open_history_store(StoreConfig(path=db)):
        pass
    with closing(sqlite3.connect(db)) as conn:  # Back to version 4, as a file written by it.
        for table in ("room_ops", "topics", "bans", "mutes"):
            conn.execute(f"DROP TABLE {table}")
        conn.execute("PRAGMA user_version = 4")
        conn.commit()
    async with open_history_store(StoreConfig(path=db)) as store:
        assert store.moderation is not None
        assert store.moderation.initial == ()
        store.moderation.changed(OpSet("#den", "ann", True), True)
        await store.moderation.wait_written()
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 5
        assert conn.execute("SELECT room, account FROM room_ops").fetchall() == [("#den", "ann")]


async def test_expired_bans_and_mutes_are_pruned_and_lifts_are_written(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    now = time.time()
    async with open_history_store(StoreConfig(path=db)) as store:
        writer = store.moderation
        assert writer is not None
        for change in (
            BanSet("#den", "bob", now - 1, "ann", "old"),
            BanSet("#den", "carl", math.inf, "ann", ""),
            BanSet("*", "10.0.0.9", now + 3600, "root", "abuse", "mal"),
            MuteSet("#den", "dave", now - 1),
            MuteSet("#den", "erin", now + 600),
            TopicChange("#den", "Be kind", "ann", now),
            OpSet("#den", "ann", True),
            OpSet("#den", "olga", True),
        ):
            writer.changed(change, True)
        writer.changed(OpSet("#den", "olga", False), True)
        writer.changed(modstate.MuteLifted("#den", "erin"), True)
        await writer.wait_written()
        with closing(sqlite3.connect(db)) as conn:
            # Expired ones go with the next commit.
            assert conn.execute("SELECT target FROM bans ORDER BY target").fetchall() == [
                ("10.0.0.9",),
                ("carl",),
            ]
            assert conn.execute("SELECT until FROM bans WHERE target = 'carl'").fetchone() == (
                None,
            )
            assert conn.execute("SELECT key FROM mutes").fetchall() == []
            assert conn.execute("SELECT account FROM room_ops").fetchall() == [("ann",)]
    async with open_history_store(StoreConfig(path=db)) as store:
        assert store.moderation is not None
        assert set(store.moderation.initial) == {
            BanSet("#den", "carl", math.inf, "ann", ""),
            BanSet("*", "10.0.0.9", now + 3600, "root", "abuse", "mal"),
            TopicChange("#den", "Be kind", "ann", now),
            OpSet("#den", "ann", True),
        }


def test_a_ban_loaded_from_the_file_ends_at_the_same_instant() -> None:
    clock = [100.0]
    wall = [1_800_000_000.0]
    moderation = SharedModeration(clock=lambda: clock[0], wall=lambda: wall[0])
    moderation.load([BanSet("#den", "bob", wall[0] + 600, "ann", "x")])
    assert moderation.remaining(next(moderation.bans("#den")).until) == "for 10m more"
    assert moderation.state() == [BanSet("#den", "bob", wall[0] + 600, "ann", "x")]
    clock[0] += 601
    assert moderation.banned("#den", "bob") is None


@pytest.mark.parametrize(
    "change",
    [
        OpSet("#den", "ann", True),
        TopicChange("#den", 'quotes " and \\ and ✓', "ann", 1.5),
        BanSet("*", "::1", math.inf, "root", ""),
        BanSet("#den", "10.0.0.7", 4.0, "ann", "spam", "bob"),
        modstate.BanLifted("#den", "bob"),
        MuteSet("#den", "carl", 2.0),
        modstate.Kicked("#den", "dave", "ann", "flood"),
        modstate.AccountSet("ann", "Ann", "$argon2id$v=19$...", True, 3.0),
        modstate.AccountGone("ann"),
    ],
)
def test_a_change_record_comes_back_as_itself(change: modstate.Change) -> None:
    assert modstate.decode(modstate.encode(change)) == change


@pytest.mark.parametrize(
    "record",
    [
        "",
        "[]",
        '{"op": 1}',
        '["op", "#den", "ann"]',  # a field short
        '["op", "#den", "ann", 1]',  # not a bool
        '["ban", "#den", "bob", true, "ann", "", ""]',  # a bool for a time
        '["mute", "#den", 7, null]',
        '["grant", "ann"]',  # no such change
    ],
)
def test_a_record_that_is_no_change_is_refused(record: str) -> None:
    with pytest.raises(modstate.ChangeError):
        modstate.decode(record)
