"""A v2 member (``triochat join``) has what a v1 member has: accounts, moderation, the
message of the day, and its address for the bans."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _accounts import open_accounts
from _v2 import serving, v1_user

from triochat.server.accounts import AccountStore


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[AccountStore]:
    store = open_accounts(tmp_path / "chat.db")
    yield store
    store.close()


async def test_a_v2_member_registers_moderates_and_reads_the_motd(
    tmp_path: Path, accounts: AccountStore
) -> None:
    motd = tmp_path / "motd.txt"
    motd.write_text("Be kind.\n")
    async with serving(accounts=accounts, motd=motd, password_delay=0.01) as (_, connect, v2):
        zed = await v2()
        lines = await zed.register("zed")
        assert ("notice", "Be kind.") in [(line.kind, line.text) for line in lines]
        await zed.send("/register hunter22")
        assert (await zed.until("notice"))[-1] == "notice :zed is registered to you now"
        await zed.send("/join #den")
        joined = await zed.until("notice :You are an operator of #den")
        assert joined[-1] == "notice :You are an operator of #den"

        bob = await v1_user(connect, "bob")
        await bob.send("/join #den")
        await bob.until("* Users in #den:")
        await zed.send("/ban bob 10m spam")
        assert (await bob.until("! You left #den"))[-1] == "! You left #den (banned by zed: spam)"
        await bob.send("/join #den")
        assert (await bob.until("! "))[-1] == "! You are banned from #den for 10m more: spam"

        # The name is zed's now: a second v2 connection is asked for its password.
        again = await v2()
        await again.hello()
        await again.send("zed")
        assert (await again.until("notice"))[-1] == "notice :zed is registered: its password?"
