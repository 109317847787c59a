"""A v2 member (``triochat join``) has what a v1 member has: accounts, moderation, the
message of the day, and its address for the bans."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from _accounts import open_accounts
from _v2 import serving, v1_user

from triochat import ChatServer, ServerConfig
from triochat.client.connection import ChatClient, ConnectOptions, WrongPassword
from triochat.client.resuming import ResumingClient
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


async def test_triochat_join_gives_a_registered_names_password(
    nursery: trio.Nursery, accounts: AccountStore
) -> None:
    server = ChatServer(ServerConfig(port=0, rate=0, password_delay=0.01), accounts=accounts)
    await nursery.start(server.serve)

    async def opener() -> ChatClient:
        client, server_side = trio.testing.memory_stream_pair()
        nursery.start_soon(server.handle_stream, server_side)
        return ChatClient(client)

    async def show(lines: list[str]) -> None:
        pass

    zed = ResumingClient(ConnectOptions(), "zed", show, opener=opener)
    await zed.start()
    assert zed.client is not None
    await zed.client.send_line("/register hunter22")
    while (await zed.client.receive_line()) != "notice :zed is registered to you now":
        pass

    await zed.quit()

    wrong = ResumingClient(ConnectOptions(), "zed", show, opener=opener)
    with pytest.raises(WrongPassword):
        await wrong.start("hunter2")
    right = ResumingClient(ConnectOptions(), "zed", show, opener=opener)
    await right.start("hunter22")
    assert right.token
    assert right.name == "zed"
