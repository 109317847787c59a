"""The real connection driving its session over memory streams, with trio's clock jumping.

No sockets and no real sleeps: ``autojump_clock`` moves time whenever every task
waits, so a test can tell exactly when a line arrived.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import _v2
import pytest
import trio
import trio.testing

from triochat import ChatServer, ServerConfig
from triochat.backplane import Backplane, Claim, LocalBackplane
from triochat.core import session as s
from triochat.protocol import line as p


class Client(_v2.Client):
    """The far end of a memory stream that the server serves; ``until`` matches line ends."""

    async def until(self, last: str, *, at_end: bool = True) -> list[str]:
        return await super().until(last, at_end=at_end)

    async def rest(self) -> list[str]:
        """Every line until the server hangs up."""
        lines = []
        while (line := await self.line()) is not None:
            lines.append(line)
        return lines


Connect = Callable[[], Awaitable[Client]]


@asynccontextmanager
async def serving(
    backplane: Backplane | None = None, **options: Any
) -> AsyncIterator[tuple[ChatServer, Connect]]:
    server = ChatServer(ServerConfig(**options), backplane=backplane)
    async with trio.open_nursery() as nursery:

        async def connect() -> Client:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_side)
            return Client(client)

        yield server, connect
        await trio.testing.wait_all_tasks_blocked()  # the connections that ended have logged it
        nursery.cancel_scope.cancel()


PASSWORD: dict[str, Any] = {"password": "sesame", "password_delay": 1.0, "password_delay_max": 30.0}
PRIVATE_WELCOME = "* Welcome to triochat! Commands start with /, try /help."


def closed_reasons(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage().rsplit(" closed ", 1)[1]
        for r in caplog.records
        if r.name == "triochat.server" and " closed (" in r.getMessage()
    ]


# --- the password -----------------------------------------------------------------


async def test_a_wrong_password_is_answered_only_after_a_delay_that_doubles(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triochat.server")
    async with serving(**PASSWORD) as (server, connect):
        for delay in (1.0, 2.0, 4.0):
            guess = await connect()
            await guess.until("What is your name?")
            await guess.send("eve")
            assert await guess.line() == "* Password:"
            start = trio.current_time()
            await guess.send("open sesame")
            assert await guess.line() == "! Wrong password"
            assert trio.current_time() - start == pytest.approx(delay)
            assert await guess.rest() == []
        assert server.stats.wrong_passwords == 3
        # The right password clears the address's record.
        ann = await connect()
        await ann.send("ann", "sesame")
        await ann.until("* ann joined #lobby")
        assert len(server.password_delays) == 0
    assert closed_reasons(caplog)[:3] == ["(wrong password)"] * 3


async def test_quit_at_the_password_prompt_says_bye_at_once_and_counts_no_failure(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triochat.server")
    async with serving(**PASSWORD) as (server, connect):
        client = await connect()
        await client.send("ann", "/quit")
        assert await client.rest() == [
            PRIVATE_WELCOME,
            "* What is your name?",
            "* Password:",
            "* Bye!",
        ]
        assert trio.current_time() == 0
        assert server.stats.wrong_passwords == 0
        assert len(server.password_delays) == 0
    assert closed_reasons(caplog) == ["(quit)"]


async def test_a_password_protected_server_gives_strangers_no_count(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(**PASSWORD) as (_, connect):
        ann = await connect()
        await ann.send("ann", "sesame")
        await ann.until("* ann joined #lobby")
        stranger = await connect()
        assert await stranger.line() == PRIVATE_WELCOME
        assert await stranger.line() == "* What is your name?"
    async with serving() as (_, connect):
        ann = await connect()
        assert await ann.line() == (
            "* Welcome to triochat! 0 users online. Commands start with /, try /help."
        )


async def test_help_is_answered_at_the_name_and_the_password_prompts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    help_lines = [f"* {line}" for line in p.HELP]
    async with serving(**PASSWORD) as (server, connect):
        client = await connect()
        await client.until("* What is your name?")
        await client.send("/help")
        assert await client.until("* What is your name?") == [*help_lines, "* What is your name?"]
        await client.send("ann", "/HELP")
        assert await client.until("* Password:") == ["* Password:"]
        assert await client.until("* Password:") == [*help_lines, "* Password:"]
        await client.send("sesame")
        await client.until("* ann joined #lobby")
        assert server.stats.wrong_passwords == 0


# --- the end ------------------------------------------------------------------------


async def test_a_member_expelled_by_the_hub_is_logged_with_the_hubs_reason(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triochat.server")
    async with serving() as (server, connect):
        ann = await connect()
        await ann.send("ann")
        await ann.until("* ann joined #lobby")
        server.hub.name_conflict(p.name_key("ann"))  # as the backplane says it
        [error] = await ann.rest()
        assert error.startswith("! Your name ann was taken")
        await trio.testing.wait_all_tasks_blocked()
        assert server.connections == 0
    assert closed_reasons(caplog) == ["(name conflict)"]


# --- flood control ------------------------------------------------------------------------


def pacing(lines: Sequence[str]) -> list[int]:
    notice = f"* {s.pacing_text(10)}"
    return [i for i, line in enumerate(lines) if line == notice]


async def test_flood_control_says_once_per_burst_that_lines_are_paced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with serving(rate=10, burst=5) as (_, connect):
        ann = await connect()
        await ann.send("ann")
        await ann.until("* ann joined #lobby")
        await ann.send(*(f"paste {i}" for i in range(30)))
        lines = await ann.until("<ann> paste 29")
        assert pacing(lines) == [4]  # after what the burst allowed at once (the name took one)
        assert len(lines) == 31  # every line came through

        await trio.sleep(0.05)  # the bucket is still empty: the same burst
        await ann.send("more")
        assert pacing(await ann.until("<ann> more")) == []

        await trio.sleep(10)  # the bucket fills up again: a new burst
        await ann.send(*(f"again {i}" for i in range(10)))
        lines = await ann.until("<ann> again 9")
        assert pacing(lines) == [5]


# --- the hot path --------------------------------------------------------------------------


async def test_plain_chat_lines_skip_the_session_and_reach_the_hub_as_one_burst(
    autojump_clock: trio.testing.MockClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    commands: list[object] = []
    real_command = s.Session.command

    def command(self: s.Session[Any], given: p.Command) -> list[s.Output]:
        commands.append(given)
        return real_command(self, given)

    monkeypatch.setattr(s.Session, "command", command)
    async with serving(rate=0) as (server, connect):
        ann = await connect()
        await ann.send("ann")
        await ann.until("* ann joined #lobby")
        bursts: list[int] = []
        real_say = server.hub.say

        def say(member: Any, room: Any, texts: Sequence[str]) -> None:
            bursts.append(len(texts))
            real_say(member, room, texts)

        monkeypatch.setattr(server.hub, "say", say)
        await ann.send(*(f"line {i}" for i in range(100)), "/me waves", "after")
        await ann.until("<ann> after")
    assert commands == [p.Me("waves")]
    assert bursts == [100, 1]


# --- cluster claims -------------------------------------------------------------------------


class GatedClaims(LocalBackplane):
    """One node of a "cluster" whose name claims wait until the test lets each through."""

    remote = True

    def __init__(self) -> None:
        super().__init__()
        self.waiting: list[tuple[str, trio.Event]] = []
        self.unclaimed: list[str] = []

    async def claim(self, name: str, /) -> Claim:
        gate = trio.Event()
        self.waiting.append((name, gate))
        await gate.wait()
        return Claim.CLAIMED

    def unclaim(self, name: str, /) -> None:
        self.unclaimed.append(name)


async def test_a_claim_the_hub_refuses_after_all_is_given_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backplane = GatedClaims()
    async with serving(backplane, rate=0) as (_, connect):
        ann, other = await connect(), await connect()
        await ann.send("ann")
        await other.send("ANN")
        await trio.testing.wait_all_tasks_blocked()
        assert [name for name, _ in backplane.waiting] == ["ann", "ANN"]
        backplane.waiting[0][1].set()
        await ann.until("* ann joined #lobby")
        backplane.waiting[1][1].set()
        await other.until("* What is your name?")  # the welcome's
        assert await other.until("* What is your name?") == [
            "! Name ANN is taken, choose another",
            "* What is your name?",
        ]
        assert backplane.unclaimed == ["ANN"]


async def test_the_registration_deadline_covers_a_claim_in_flight(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triochat.server")
    backplane = GatedClaims()
    async with serving(backplane, registration_timeout=30) as (server, connect):
        client = await connect()
        await client.send("ann")
        lines = await client.rest()
        assert lines[-1] == "! No name given within 30 s, closing"
        assert trio.current_time() == pytest.approx(30)
        assert server.hub.members == 0
    assert closed_reasons(caplog) == ["(no name given)"]
