"""``triochat admin``: accounts of a --db file, worked on directly (as a host would)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import trio
from _accounts import open_accounts
from click.testing import CliRunner

from triochat.cli import main
from triochat.core.accounts import Request
from triochat.server.accounts import AccountStore


def registered(path: Path, *names: str) -> None:
    store = open_accounts(path)

    async def register() -> None:
        for name in names:
            assert (await store.perform(Request("register", name, "old-pw"))).ok

    trio.run(register)
    store.close()


def test_accounts_are_listed_granted_revoked_and_reset(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    registered(db, "Ann", "bob")
    runner = CliRunner()
    result = runner.invoke(main, ["admin", "--db", str(db), "grant", "ann"])
    assert result.exit_code == 0, result.output
    assert result.output == "ann is a server admin.\n"
    listed = runner.invoke(main, ["admin", "--db", str(db), "accounts"]).output.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [["Ann", "admin"], ["bob", "-"]]
    result = runner.invoke(main, ["admin", "--db", str(db), "revoke", "ANN"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        main,
        ["admin", "--db", str(db), "reset-password", "bob"],
        env={"TRIOCHAT_NEW_PASSWORD": "new-pw"},
    )
    assert result.exit_code == 0, result.output
    assert "new-pw" not in result.output
    store = AccountStore.open(db)
    assert not store.admin("ann")

    async def check() -> None:
        assert (await store.perform(Request("verify", "bob", "new-pw"))).ok
        assert not (await store.perform(Request("verify", "bob", "old-pw"))).ok

    trio.run(check)
    store.close()


def test_a_name_that_is_not_registered_is_an_error(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    registered(db, "ann")
    runner = CliRunner()
    for args in (["grant", "carl"], ["revoke", "carl"]):
        result = runner.invoke(main, ["admin", "--db", str(db), *args])
        assert result.exit_code == 1
        assert "carl is not registered" in result.output
    result = runner.invoke(
        main, ["admin", "--db", str(db), "reset-password", "carl"], input="pw\npw\n"
    )
    assert result.exit_code == 1
    assert "carl is not registered" in result.output


def test_an_empty_password_and_a_missing_file_are_refused(tmp_path: Path) -> None:
    db = tmp_path / "chat.db"
    registered(db, "ann")
    runner = CliRunner()
    result = runner.invoke(
        main,
        ["admin", "--db", str(db), "reset-password", "ann"],
        env={"TRIOCHAT_NEW_PASSWORD": ""},
        input="\n\n",
    )
    assert result.exit_code != 0
    result = runner.invoke(main, ["admin", "--db", str(tmp_path / "none.db"), "accounts"])
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_a_role_granted_while_the_server_runs_counts_from_the_next_sign_in(
    tmp_path: Path,
) -> None:
    db = tmp_path / "chat.db"
    registered(db, "ann")
    running = open_accounts(db)  # the server's view, opened before the grant
    assert not running.admin("ann")
    assert CliRunner().invoke(main, ["admin", "--db", str(db), "grant", "ann"]).exit_code == 0

    async def sign_in() -> None:
        assert (await running.perform(Request("verify", "ann", "old-pw"))).ok

    trio.run(sign_in)
    assert running.admin("ann")
    running.close()
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT admin FROM accounts").fetchone() == (1,)


def test_a_cluster_is_named_by_redis_and_cluster_never_with_a_file(tmp_path: Path) -> None:
    from redis_support import free_port

    db = tmp_path / "chat.db"
    registered(db, "ann")
    runner = CliRunner()
    for args, error in (
        (["accounts"], "give the server's --db file, or a cluster's --redis"),
        (["--db", str(db), "--redis", "redis://127.0.0.1:1", "accounts"], "not both"),
        (["--db", str(db), "--cluster", "x", "accounts"], "--cluster needs --redis"),
        (["--redis", "http://x", "accounts"], "not a Redis URL"),
        (["--redis", "redis://127.0.0.1:1", "--cluster", "a:b", "accounts"], "invalid cluster"),
    ):
        result = runner.invoke(main, ["admin", *args])
        assert result.exit_code == 2, result.output
        assert error in result.output
    nobody = f"redis://127.0.0.1:{free_port()}"
    result = runner.invoke(main, ["admin", "--redis", nobody, "grant", "ann"])
    assert result.exit_code == 1
    assert f"cannot reach {nobody}" in result.output
