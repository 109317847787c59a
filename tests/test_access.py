"""Who may connect: the server password and the per-address connection limit."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing
from _ops import running_server

from triochat import ServerConfig
from triochat.client.connection import (
    ChatClient,
    ConnectionClosed,
    NameRejected,
    PasswordRequired,
    WrongPassword,
    open_chat_client,
)
from triochat.core._auth import FailureDelays, password_matches

OPTIONS: dict[str, Any] = {
    "password": "open sesame",
    "password_delay": 0.01,
    "password_delay_max": 0.05,
}


async def _read_until_closed(client: ChatClient) -> list[str]:
    lines = []
    try:
        while True:
            lines.append(await client.receive_line())
    except ConnectionClosed:
        return lines


async def test_the_right_password_lets_a_client_in() -> None:
    with trio.fail_after(10):
        async with running_server(**OPTIONS) as (server, port):
            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann", password="open sesame")
            await ann.send_line("hi")
            assert (await ann.receive_line()).endswith("<ann> hi")
            assert server.stats.wrong_passwords == 0
            await ann.aclose()


async def test_the_wire_exchange() -> None:
    with trio.fail_after(10):
        async with running_server(**OPTIONS) as (_, port):
            ann = await open_chat_client("127.0.0.1", port)
            assert (await ann.receive_line()).startswith("* Welcome")
            assert await ann.receive_line() == "* What is your name?"
            await ann.send_line("ann")
            assert await ann.receive_line() == "* Password:"
            await ann.send_line("open sesame")
            assert await ann.receive_line() == "* Users in #lobby: ann"
            await ann.aclose()


async def test_a_wrong_password_is_refused_and_the_connection_closed() -> None:
    with trio.fail_after(10):
        async with running_server(**OPTIONS) as (server, port):
            ann = await open_chat_client("127.0.0.1", port)
            with pytest.raises(WrongPassword):
                await ann.register("ann", password="open sesame!")
            assert await _read_until_closed(ann) == []
            await ann.aclose()
            assert server.stats.wrong_passwords == 1
            assert server.hub.members == 0


async def test_nothing_is_said_about_the_name_before_the_password() -> None:
    with trio.fail_after(10):
        async with running_server(**OPTIONS) as (_, port):
            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann", password="open sesame")
            spy = await open_chat_client("127.0.0.1", port)
            # "ann" is taken, but a stranger only hears the password prompt.
            with pytest.raises(PasswordRequired):
                await spy.register("ANN")
            await ann.aclose()
            await spy.aclose()


async def test_after_the_password_a_taken_name_can_be_retried() -> None:
    with trio.fail_after(10):
        async with running_server(**OPTIONS) as (_, port):
            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann", password="open sesame")
            other = await open_chat_client("127.0.0.1", port)
            with pytest.raises(NameRejected, match="taken"):
                await other.register("ann", password="open sesame")
            # Authenticated once: no second password prompt.
            await other.register("ben")
            await ann.aclose()
            await other.aclose()


async def test_repeated_failures_from_an_address_grow_its_delay() -> None:
    with trio.fail_after(10):
        async with running_server(**OPTIONS) as (server, port):
            for _ in range(3):
                guess = await open_chat_client("127.0.0.1", port)
                with pytest.raises(WrongPassword):
                    await guess.register("eve", password="guess")
                await guess.aclose()
            assert server.stats.wrong_passwords == 3
            # The next failure from 127.0.0.1 would wait 0.01 * 2**3, capped at 0.05.
            assert server.password_delays.fail("127.0.0.1", trio.current_time()) == 0.05


def test_failure_delays_double_cap_forget_and_stay_bounded() -> None:
    delays = FailureDelays(base=1, cap=8, forget=60, max_addresses=3)
    assert [delays.fail("a", now) for now in range(5)] == [1, 2, 4, 8, 8]
    assert delays.fail("a", 100) == 1  # quiet for longer than `forget`
    delays.succeed("a")
    assert delays.fail("a", 101) == 1
    for i in range(10):
        delays.fail(f"10.0.0.{i}", 102)
    assert len(delays) == 3


def test_password_comparison() -> None:
    assert password_matches("s3cret", "s3cret")
    assert not password_matches("s3cre", "s3cret")
    assert password_matches("pässwort", "pässwort")
    with pytest.raises(ValueError, match="empty"):
        ServerConfig(password="")


async def test_max_per_address_refuses_the_extra_connection() -> None:
    with trio.fail_after(10):
        async with running_server(max_per_address=2) as (server, port):
            ann = await open_chat_client("127.0.0.1", port)
            await ann.register("ann")
            ben = await open_chat_client("127.0.0.1", port)
            await ben.register("ben")
            extra = await open_chat_client("127.0.0.1", port)
            assert await _read_until_closed(extra) == ["! Too many connections from your address"]
            await extra.aclose()
            assert server.stats.refused_per_address == 1
            # Once one leaves, the address has room again.
            await ben.quit()
            await ben.aclose()
            await trio.testing.wait_all_tasks_blocked()
            assert server._per_address == {"127.0.0.1": 1}
            cat = await open_chat_client("127.0.0.1", port)
            await cat.register("cat")
            await cat.aclose()
            await ann.aclose()


async def test_no_per_address_limit_by_default() -> None:
    with trio.fail_after(10):
        async with running_server() as (server, port):
            clients = [await open_chat_client("127.0.0.1", port) for _ in range(5)]
            for i, client in enumerate(clients):
                await client.register(f"user{i}")
            assert server.hub.members == 5
            assert server._per_address == {}
            for client in clients:
                await client.aclose()
