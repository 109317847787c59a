"""Accounts (``--db``): registering a name, proving it, and guessing at it.

Real servers on 127.0.0.1 with a real, migrated SQLite file and real Argon2
(with cheap parameters, so the suite stays fast); the growing delay is shown
on the sans-IO session, whose clock is the test's.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing
from _accounts import Client, dial, named, net_fixture, open_accounts  # noqa: F401 - the net fixture

from triochat import ChatServer, ServerConfig
from triochat.client.connection import PasswordRequired, WrongPassword, open_chat_client
from triochat.core import commands as c, session as s
from triochat.core._auth import FailureDelays
from triochat.core.accounts import NEED_DB, Outcome, Request, parse_duration
from triochat.core.events import Error, Notice
from triochat.core.hub import Hub, Member
from triochat.protocol import line as p
from triochat.server.accounts import AccountStore
from triochat.server.store import SCHEMA_VERSION


@pytest.fixture
def accounts(tmp_path: Path) -> Iterator[AccountStore]:
    store = open_accounts(tmp_path / "chat.db")
    yield store
    store.close()


@pytest.fixture
async def serve(nursery: trio.Nursery, accounts: AccountStore, net: None) -> tuple[ChatServer, int]:
    server = ChatServer(ServerConfig(port=0, rate=0, password_delay=0.01), accounts=accounts)
    listeners = await nursery.start(server.serve)
    return server, listeners[0].socket.getsockname()[1]


async def test_a_registered_name_asks_for_its_password_and_nobody_else_can_take_it(
    serve: tuple[ChatServer, int], accounts: AccountStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    server, port = serve
    ann = await named(port, "ann")
    await ann.send("/register s3cret-pw")
    await ann.until("* ann is registered to you now")
    assert accounts.registered("ANN")
    await ann.send("/quit")
    await ann.until("* Bye!")

    guest = await dial(port)
    await guest.until("* What is your name?")
    await guest.send("Ann")  # names compare as the hub compares them
    await guest.until("* Ann is registered: its password?")
    await guest.send("guess")
    assert await guest.until("* What is your name?") == [
        "! Wrong password for Ann",
        "* What is your name?",
    ]
    assert server.stats.wrong_passwords == 1
    await guest.send("ann")
    await guest.until("* ann is registered: its password?")
    await guest.send("s3cret-pw")
    await guest.until("[T] * ann joined #lobby")
    # A guest on another connection cannot take it by /nick either.
    bob = await named(port, "bob")
    await bob.send("/nick ANN")
    await bob.until("! Name ANN is registered: connect with it and give its password")
    everything = "\n".join([*ann.seen, *guest.seen, *bob.seen, caplog.text])
    assert "s3cret-pw" not in everything
    assert "guess" not in everything


async def test_identify_password_and_unregister_do_what_they_say(
    serve: tuple[ChatServer, int], accounts: AccountStore
) -> None:
    _, port = serve
    ann = await named(port, "ann")
    await ann.send("/identify whatever")
    await ann.until("! ann is not registered: /register PASSWORD")
    await ann.send("/password old new")
    await ann.until("! You are not identified: /identify PASSWORD first")
    await ann.send("/register first")
    await ann.until("* ann is registered to you now")
    await ann.send("/register again")
    await ann.until("! ann is registered already")
    await ann.send("/password wrong second")
    await ann.until("! Wrong password")  # after the growing delay
    await ann.send("/password first second")
    await ann.until("* Your password is changed")
    await ann.send("/unregister first")
    await ann.until("! Wrong password")
    await ann.send("/unregister second")
    await ann.until("* ann is not registered any more")
    assert not accounts.registered("ann")
    assert accounts.accounts() == []


async def test_identify_after_connecting_as_a_guest_is_checked(
    serve: tuple[ChatServer, int], accounts: AccountStore
) -> None:
    _, port = serve
    assert (await accounts.perform(Request("register", "ann", "pw"))).ok
    # A registered name asks at registration; /nick to it from a guest name is refused,
    # so /identify is for a member that is already ann (e.g. after /unregister elsewhere).
    ann = await dial(port)
    await ann.until("* What is your name?")
    await ann.send("ann")
    await ann.until("* ann is registered: its password?")
    await ann.send("pw")
    await ann.until("[T] * ann joined #lobby")
    await ann.send("/identify pw")
    await ann.until("* You are identified as ann already")


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("/register", "! Usage: /register PASSWORD"),
        ("/register    ", "! Usage: /register PASSWORD"),
        ("/register " + "x" * 1_000_000, "! A password is at most 1024 characters"),
        ("/password old " + "x" * 1025, "! You are not identified: /identify PASSWORD first"),
    ],
)
async def test_register_with_an_empty_or_huge_password_gets_a_clear_error(
    nursery: trio.Nursery, accounts: AccountStore, net: None, line: str, error: str
) -> None:
    server = ChatServer(ServerConfig(port=0, rate=0, max_line=2_000_000), accounts=accounts)
    listeners = await nursery.start(server.serve)
    ann = await named(listeners[0].socket.getsockname()[1], "ann")
    await ann.send(line)
    await ann.until(error)
    await ann.send("still here")
    await ann.until("[T] <ann> still here")
    assert len(accounts) == 0


async def test_a_1_mb_password_on_a_default_server_is_a_line_too_long(
    nursery: trio.Nursery, accounts: AccountStore, net: None
) -> None:
    server = ChatServer(ServerConfig(port=0, rate=0), accounts=accounts)
    listeners = await nursery.start(server.serve)
    ann = await named(listeners[0].socket.getsockname()[1], "ann")
    await ann.send("/register " + "x" * 1_000_000)
    await ann.until("! Line too long (limit 4096 bytes); it was discarded")
    assert len(accounts) == 0


async def test_without_a_database_register_says_accounts_need_one(
    nursery: trio.Nursery, net: None
) -> None:
    server = ChatServer(ServerConfig(port=0, rate=0))
    listeners = await nursery.start(server.serve)
    ann = await named(listeners[0].socket.getsockname()[1], "ann")
    for line in ("/register pw", "/identify pw", "/password a b", "/unregister pw"):
        await ann.send(line)
        await ann.until(f"! {NEED_DB}")


async def test_two_registrations_of_one_name_at_once_exactly_one_wins(
    accounts: AccountStore,
) -> None:
    outcomes: list[Outcome] = []

    async def register(password: str) -> None:
        outcomes.append(await accounts.perform(Request("register", "ann", password)))

    async with trio.open_nursery() as nursery:
        for password in ("one", "two", "three"):
            nursery.start_soon(register, password)
    assert sorted(o.ok for o in outcomes) == [False, False, True]
    assert {o.error for o in outcomes if not o.ok} == {"ann is registered already"}


async def test_accounts_and_admins_survive_a_reopen(tmp_path: Path) -> None:
    path = tmp_path / "chat.db"
    store = open_accounts(path)
    assert (await store.perform(Request("register", "Ann", "open-sesame"))).ok
    assert store.set_admin("ann", True)
    store.close()
    again = open_accounts(path)
    assert again.registered("ann")
    assert again.admin("ANN")
    assert (await again.perform(Request("verify", "ann", "open-sesame"))).ok
    assert not (await again.perform(Request("verify", "ann", "nope"))).ok
    assert not (await again.perform(Request("verify", "nobody", "open-sesame"))).ok
    with sqlite3.connect(path) as db:
        (digest,) = db.execute("SELECT hash FROM accounts").fetchone()
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert digest.startswith("$argon2id$")
    assert "open-sesame" not in digest  # (a "-" is in no Argon2 hash's alphabet)
    again.close()


def test_a_request_and_a_command_never_show_a_password() -> None:
    request = Request("change", "ann", "old-secret", "new-secret")
    command = p.parse_command("/password old-secret new-secret")
    shown = repr(request) + repr(s.AccountCall(request)) + repr(command)
    assert "secret" not in shown


def test_durations() -> None:
    assert parse_duration("10m") == 600
    assert parse_duration("2h") == 7200
    assert parse_duration("7D") == 7 * 86400
    assert parse_duration("0m") is None
    assert parse_duration("soon") is None


# --- the session, sans IO: the growing delay ---------------------------------------------


class Book:
    """Registered names in memory (the store's synchronous side)."""

    def __init__(self, *names: str) -> None:
        self.names = {p.name_key(name) for name in names}

    def registered(self, name: str) -> bool:
        return p.name_key(name) in self.names

    def admin(self, name: str) -> bool:
        return False


def session_for(hub: Hub, delays: FailureDelays, address: str = "10.0.0.9") -> s.Session[Member]:
    send, _ = trio.open_memory_channel[bytes](100)
    door = s.Door(
        hub=hub,
        rules=s.Rules(),
        dialect=p.LineDialect(),
        delays=delays,
        clock=lambda: 0.0,
        accounts=Book("ann"),
    )
    session: s.Session[Member] = s.Session(
        door, outbox=send, disconnect=lambda: None, address=address
    )
    session.start()
    return session


def test_each_wrong_password_for_a_registered_name_doubles_the_delay() -> None:
    hub = Hub()
    delays = FailureDelays(base=1, cap=8)
    waits = []
    for _ in range(5):
        session = session_for(hub, delays)
        assert session.receive_line("ann") == [Notice("ann is registered: its password?")]
        (call,) = session.receive_line("guess")
        assert isinstance(call, s.AccountCall)
        assert call.request.kind == "verify"
        (wait,) = session.account_result(Outcome(call.request, False, p.WRONG_PASSWORD))
        assert isinstance(wait, s.Wait)
        waits.append(wait.seconds)
        assert session.delay_elapsed() == [
            Error("Wrong password for ann"),
            Notice(p.NAME_QUESTION),
        ]
        assert session.state is s.State.AWAITING_NAME
    assert waits == [1, 2, 4, 8, 8]
    # Another address is not slowed down; the right password forgets the failures.
    other = session_for(hub, delays, address="10.0.0.10")
    other.receive_line("ann")
    (call,) = other.receive_line("pw")
    assert isinstance(call, s.AccountCall)
    assert other.account_result(Outcome(call.request, True)) == []
    assert other.state is s.State.CHATTING
    assert other.account == "ann"


def test_a_wrong_password_while_chatting_stops_reading_for_the_delay() -> None:
    hub = Hub()
    delays = FailureDelays(base=1, cap=8)
    session = session_for(hub, delays)
    session.receive_line("bob")
    assert session.state is s.State.CHATTING
    assert session.member is not None
    session.member.name = "ann"  # as if ann had been unregistered and registered again
    session.member.key = "ann"
    (call,) = session.command(c.Identify("guess"))
    assert isinstance(call, s.AccountCall)
    assert session.account_result(Outcome(call.request, False, p.WRONG_PASSWORD)) == [s.Wait(1)]
    assert session.state is s.State.PENALIZED  # type: ignore[comparison-overlap]
    with pytest.raises(s.LocalProtocolError):
        session.command(c.Say("hi"))
    assert session.delay_elapsed() == [Error(p.WRONG_PASSWORD)]
    assert session.state is s.State.CHATTING


async def test_the_client_library_gives_a_registered_names_password(
    serve: tuple[ChatServer, int], accounts: AccountStore
) -> None:
    _, port = serve
    assert (await accounts.perform(Request("register", "ann", "ann-pw"))).ok
    client = await open_chat_client("127.0.0.1", port)
    try:
        with pytest.raises(PasswordRequired):
            await client.register("ann")
    finally:
        await client.aclose()
    client = await open_chat_client("127.0.0.1", port)
    try:
        with pytest.raises(WrongPassword):
            await client.register("ann", "guess")
    finally:
        await client.aclose()
    client = await open_chat_client("127.0.0.1", port)
    try:
        lines = await client.register("ann", "ann-pw")
        assert lines[-1].endswith("* ann joined #lobby")
    finally:
        await client.aclose()
