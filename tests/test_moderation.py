"""Room operators and what they do: topics, kicks, bans, mutes; and what others cannot do.

Real servers on 127.0.0.1 with real accounts (cheap Argon2); the clock is a
:class:`trio.testing.MockClock` running at real speed that the test can jump,
so a ban of ``10m`` expires in no time.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from _accounts import (  # noqa: F401 - the net fixture
    OPEN,
    STAMP,
    Client,
    dial,
    named,
    net_fixture,
    open_accounts,
)

from triochat import ChatServer, ServerConfig
from triochat.client.connection import ChatClient
from triochat.client.incoming import RoomState, parse_line
from triochat.core.accounts import Request
from triochat.core.moderation import Ban, Moderation
from triochat.server.metrics import ChatCollector


@pytest.fixture
def clock() -> trio.testing.MockClock:
    """Real speed (so the test's timeouts work) with jumps."""
    return trio.testing.MockClock(rate=1.0)


@pytest.fixture
async def chat(
    nursery: trio.Nursery, tmp_path: Path, net: None
) -> AsyncIterator[tuple[ChatServer, int]]:
    async with serving(nursery, tmp_path) as served:
        yield served


@asynccontextmanager
async def serving(
    nursery: trio.Nursery, tmp_path: Path, **options: Any
) -> AsyncIterator[tuple[ChatServer, int]]:
    """A server with the accounts ann, olga and root (a server admin), and ``options``."""
    accounts = open_accounts(tmp_path / "chat.db")
    for name in ("ann", "olga", "root"):
        assert (await accounts.perform(Request("register", name, f"{name}-pw"))).ok
    accounts.set_admin("root", True)
    config = ServerConfig(port=0, rate=0, password_delay=0.01, **options)
    server = ChatServer(config, accounts=accounts)
    listeners = await nursery.start(server.serve)
    try:
        yield server, listeners[0].socket.getsockname()[1]
    finally:
        accounts.close()


async def login(port: int, name: str, room: str | None = None) -> Client:
    """``name`` (registered, its password given) in the lobby, or moved to ``room``."""
    client = await dial(port)
    await client.until("* What is your name?")
    await client.send(name)
    await client.until(f"* {name} is registered: its password?")
    await client.send(f"{name}-pw")
    await client.until(f"[T] * {name} joined #lobby")
    if room is not None:
        await client.send(f"/join {room}")
        await client.until(f"[T] * {name} joined {room}")
    return client


async def join(client: Client, name: str, room: str) -> list[str]:
    await client.send(f"/join {room}")
    return await client.until(f"[T] * {name} joined {room}")


async def from_address(port: int, address: str, name: str) -> Client:
    """A guest connected from ``address`` (any 127.x.y.z is this machine)."""
    sock = trio.socket.socket()
    await sock.bind((address, 0))
    await sock.connect(("127.0.0.1", port))
    client = Client(ChatClient(trio.SocketStream(sock)))
    OPEN.append(client.client)
    await client.until("* What is your name?")
    await client.send(name)
    await client.until(f"[T] * {name} joined #lobby")
    return client


async def den(port: int) -> tuple[Client, Client]:
    """ann creates #den (so operates it), and the guest bob (from 127.0.0.2) joins it."""
    ann = await login(port, "ann")
    await ann.send("/join #den")
    await ann.until("* You are an operator of #den")
    bob = await from_address(port, "127.0.0.2", "bob")
    await join(bob, "bob", "#den")
    await ann.until("[T] * bob joined #den")
    return ann, bob


async def test_a_non_operator_is_refused_every_operator_command(
    chat: tuple[ChatServer, int],
) -> None:
    server, port = chat
    ann, bob = await den(port)
    olga = await login(port, "olga", "#den")  # registered, but not an operator here
    for client in (bob, olga):
        for line in (
            "/topic mine now",
            "/kick ann",
            "/ban ann 10m",
            "/unban ann",
            "/bans",
            "/mute ann",
            "/unmute ann",
            "/op bob",
            "/deop ann",
        ):
            await client.send(line)
            await client.until("! You are not an operator of #den")
    assert server.hub.moderation.actions["op"] == 1  # ann's, for creating #den
    await bob.send("/topic")  # anyone reads it
    await bob.until("* No topic is set in #den")
    await ann.send("still the op")
    await ann.until("[T] <ann> still the op")


async def test_the_topic_is_set_by_operators_seen_by_the_room_and_shown_to_joiners(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann, bob = await den(port)
    await ann.send("/topic Be kind")
    await bob.until("[T] * ann set the topic of #den: Be kind")
    carl = await named(port, "carl")
    lines = await join(carl, "carl", "#den")
    assert "* Topic of #den: Be kind (set by ann)" in lines
    await carl.send("/topic")
    await carl.until("* Topic of #den: Be kind (set by ann)")


async def test_a_kick_is_seen_by_the_room_and_the_kicked_user_may_rejoin_at_once(
    chat: tuple[ChatServer, int], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "triochat.moderation")
    server, port = chat
    ann, bob = await den(port)
    await ann.send("/kick bob flooding")
    await ann.until("[T] * bob left #den (kicked by ann: flooding)")
    await bob.until("! You left #den (kicked by ann: flooding)")
    assert "kick: bob by ann in #den (flooding)" in caplog.text
    assert server.hub.moderation.actions["kick"] == 1
    await join(bob, "bob", "#den")  # not banned: allowed back at once
    await ann.until("[T] * bob joined #den")


async def test_an_operator_cannot_kick_someone_in_another_room_nor_ban_themself(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann, _bob = await den(port)
    carl = await named(port, "carl")  # in #lobby
    await ann.send("/kick carl")
    await ann.until("! carl is not in #den")
    await ann.send("/ban ann 1h")
    await ann.until("! You cannot ban yourself")
    await ann.send("/ban 127.0.0.1")  # ann's own address
    await ann.until("! You cannot ban yourself")
    await ann.send("/mute ANN")
    await ann.until("! You cannot mute yourself")
    await carl.send("hello lobby")
    await carl.until("[T] <carl> hello lobby")


async def test_a_ban_keeps_the_user_out_until_it_expires(
    chat: tuple[ChatServer, int], clock: trio.testing.MockClock
) -> None:
    server, port = chat
    ann, bob = await den(port)
    await ann.send("/ban bob 10m spamming")
    await ann.until("[T] * bob left #den (banned by ann: spamming)")
    await ann.until("* bob is banned from #den for 10m more")
    await bob.until("! You left #den (banned by ann: spamming)")
    await bob.send("/join #den")
    await bob.until("! You are banned from #den for 10m more: spamming")
    await ann.send("/bans")
    await ann.until("*   bob by ann for 10m more: spamming")
    # A banned user can still talk elsewhere.
    await join(bob, "bob", "#elsewhere")
    clock.jump(8 * 60)
    await bob.send("/join #den")
    await bob.until("! You are banned from #den for 2m more: spamming")
    clock.jump(121)
    await join(bob, "bob", "#den")
    await ann.send("/bans")
    await ann.until("* Nobody is banned from #den")
    assert server.hub.moderation.actions["ban"] == 1


async def test_unban_lifts_a_ban_until_lifted(chat: tuple[ChatServer, int]) -> None:
    _, port = chat
    ann, bob = await den(port)
    await ann.send("/ban bob")
    await ann.until("* bob is banned from #den until lifted")
    await bob.send("/join #den")
    await bob.until("! You are banned from #den until lifted")
    await ann.send("/unban carl")
    await ann.until("! carl is not banned from #den")
    await ann.send("/unban BOB")
    await ann.until("* BOB may join #den again")
    await join(bob, "bob", "#den")


async def test_an_address_ban_removes_and_refuses_everyone_from_it(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    root = await login(port, "root")  # a server admin moderates any room
    bob = await from_address(port, "127.0.0.2", "bob")
    bob2 = await from_address(port, "127.0.0.2", "bob2")
    for client, name in ((root, "root"), (bob, "bob"), (bob2, "bob2")):
        await join(client, name, "#den")
    await root.send("/ban 127.0.0.2 1h")
    await root.until("* 127.0.0.2 is banned from #den for 1h more")
    await bob.until("! You left #den (banned by root)")
    await bob2.until("! You left #den (banned by root)")
    await bob.send("/join #den")
    await bob.until("! You are banned from #den for 1h more")
    await root.send("/ban 127.0.0.1")  # root's own
    await root.until("! You cannot ban yourself")


async def test_a_muted_member_flooding_is_told_each_time_and_the_room_hears_nothing(
    chat: tuple[ChatServer, int], clock: trio.testing.MockClock
) -> None:
    server, port = chat
    ann, bob = await den(port)
    await ann.send("/mute bob 10m")
    await ann.until("* bob is muted in #den for 10m more")
    for i in range(20):
        await bob.send(f"spam {i}")
        await bob.send("/me spams")
        await bob.until("! You are muted in #den for 10m more: not sent")
        await bob.until("! You are muted in #den for 10m more: not sent")
    await ann.send("after the flood")
    lines = await ann.until("[T] <ann> after the flood")
    assert lines == ["[T] <ann> after the flood"]
    clock.jump(601)  # the mute is over by itself
    await bob.send("back")
    await ann.until("[T] <bob> back")
    await ann.send("/mute bob")
    await ann.until("* bob is muted in #den until lifted")
    await ann.send("/unmute bob")
    await ann.until("* bob may speak in #den again")
    await bob.send("free")
    await ann.until("[T] <bob> free")
    collected = {m.name: m for m in ChatCollector(server).collect()}
    actions = collected["triochat_moderation_actions"]
    counts = {s.labels["action"]: s.value for s in actions.samples}
    assert counts["mute"] == 2
    assert counts["unmute"] == 1


async def test_operators_make_and_unmake_operators_of_registered_names_only(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann, _bob = await den(port)
    await ann.send("/op bob")
    await ann.until("! bob is not registered: only accounts can be operators")
    olga = await login(port, "olga", "#den")
    await ann.send("/op olga")
    await olga.until("[T] * ann made olga an operator of #den")
    await olga.send("/kick bob")
    await olga.until("[T] * bob left #den (kicked by olga)")
    await ann.send("/deop olga")
    await ann.until("[T] * ann took olga's operator rights in #den")
    await olga.send("/topic nope")
    await olga.until("! You are not an operator of #den")
    await ann.send("/deop olga")
    await ann.until("! olga is not an operator of #den")


async def test_a_guest_creating_a_room_operates_nothing_and_nobody_can(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    bob = await named(port, "bob")
    lines = await join(bob, "bob", "#free")
    assert "* You are an operator of #free" not in lines
    await bob.send("/topic mine")
    await bob.until("! You are not an operator of #free")


def test_an_expired_ban_and_mute_are_forgotten() -> None:
    now = [0.0]
    moderation = Moderation(clock=lambda: now[0])
    moderation.ban("#den", Ban("bob", 60, "ann", ""))
    moderation.mute("#den", "bob", 60)
    assert moderation.banned("#den", "bob") is not None
    assert moderation.muted("#den", "bob") == 60
    now[0] = 60
    assert moderation.banned("#den", "bob") is None
    assert moderation.muted("#den", "bob") is None
    assert not moderation.mutes  # the hot path's test is falsy again


async def test_wall_is_for_server_admins_and_reaches_everyone(
    chat: tuple[ChatServer, int],
) -> None:
    server, port = chat
    ann, bob = await den(port)  # ann operates #den, but is no server admin
    await ann.send("/wall hello all")
    await ann.until("! Only server admins may /wall")
    await bob.send("/wall me too")
    await bob.until("! Only server admins may /wall")
    root = await login(port, "root")
    await root.send("/wall Restart at noon")
    for client in (ann, bob, root):
        await client.until("* Notice from root to everyone: Restart at noon")
    assert server.hub.moderation.actions["wall"] == 1


async def test_away_answers_private_messages_for_you(chat: tuple[ChatServer, int]) -> None:
    _, port = chat
    ann = await named(port, "carl")
    bob = await named(port, "dora")
    await ann.send("/away at lunch")
    await ann.until("* You are away: at lunch")
    await bob.send("/msg carl are you there?")
    await bob.until("* carl is away: at lunch")
    await ann.until("[T] *dora* are you there?")
    await ann.send("/away")
    await ann.until("* You are back")
    await bob.send("/msg carl now?")
    lines = await bob.until("[T] -> *carl* now?")
    assert "* carl is away: at lunch" not in lines


async def test_the_message_of_the_day_is_shown_at_registration_and_by_motd(
    nursery: trio.Nursery, tmp_path: Path, net: None
) -> None:
    motd = tmp_path / "motd.txt"
    motd.write_text("Welcome to the class chat.\nBe kind.\x1b[31m\n")
    server = ChatServer(ServerConfig(port=0, rate=0, motd=motd))
    listeners = await nursery.start(server.serve)
    port = listeners[0].socket.getsockname()[1]
    client = await dial(port)
    await client.until("* What is your name?")
    await client.send("ann")
    lines = await client.until("[T] * ann joined #lobby")
    assert lines[:2] == ["* Welcome to the class chat.", "* Be kind."]
    await client.send("/motd")
    await client.until("* Be kind.")
    plain = ChatServer(ServerConfig(port=0, rate=0))
    listeners = await nursery.start(plain.serve)
    other = await named(listeners[0].socket.getsockname()[1], "bob")
    await other.send("/motd")
    await other.until("* There is no message of the day")


async def test_a_server_wide_ban_refuses_the_name_and_the_address_at_the_door(
    chat: tuple[ChatServer, int], clock: trio.testing.MockClock
) -> None:
    _, port = chat
    ann, bob = await den(port)
    await ann.send("/gban bob 1h")
    await ann.until("! Only server admins may ban server-wide")
    root = await login(port, "root")
    await root.send("/gban bob 1h trolling")
    await root.until("* bob is banned from this server for 1h more")
    await bob.until("! You are out of the chat (banned by root: trolling)")
    await ann.until("[T] * bob left #den (banned by root: trolling)")
    again = await dial(port)
    await again.until("* What is your name?")
    await again.send("Bob")
    await again.until("! You are banned from this server for 1h more: trolling")
    # An address ban refuses the connection before the name is asked.
    await root.send("/gban 127.0.0.2 10m")
    await root.until("* 127.0.0.2 is banned from this server for 10m more")
    sock = trio.socket.socket()
    await sock.bind(("127.0.0.2", 0))
    await sock.connect(("127.0.0.1", port))
    refused = Client(ChatClient(trio.SocketStream(sock)))
    OPEN.append(refused.client)
    await refused.until("! You are banned from this server for 10m more")
    clock.jump(3601)
    await named(port, "bob")  # both expired
    await root.send("/gunban nobody")
    await root.until("! nobody is not banned from this server")
    await root.send("/gban carl")
    await root.until("* carl is banned from this server until lifted")
    await root.send("/gunban carl")
    await root.until("* carl may join this server again")


async def test_ignore_stops_one_users_lines_and_messages_to_you_only(
    chat: tuple[ChatServer, int],
) -> None:
    server, port = chat
    ann = await named(port, "carl")
    bob = await named(port, "dora")
    eve = await named(port, "eve")
    await ann.until("[T] * eve joined #lobby")
    await ann.send("/ignore Dora")
    await ann.until("* You ignore Dora now")
    await ann.send("/ignore carl")
    await ann.until("! You cannot ignore yourself")
    await bob.send("you cannot hear me")
    await bob.send("/msg carl psst")
    await bob.until("[T] -> *carl* psst")  # the sender cannot tell
    await eve.until("[T] <dora> you cannot hear me")
    await eve.send("but me")
    lines = await ann.until("[T] <eve> but me")
    assert not [line for line in lines if "dora" in line]
    lobby = server.hub.member("carl")
    assert lobby is not None
    room = lobby.rooms["#lobby"]
    assert list(room.ignorers) == [lobby]  # only the ignorer is looked at
    await ann.send("/unignore dora")
    await ann.until("* You do not ignore dora any more")
    assert not room.ignorers  # the room is back on the plain path
    await ann.send("/unignore dora")
    await ann.until("! You do not ignore dora")
    await bob.send("hello again")
    await ann.until("[T] <dora> hello again")


async def test_a_member_s_own_reason_cannot_pass_for_a_kick(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann, _bob = await den(port)
    liar = await named(port, "liar")
    await join(liar, "liar", "#den")
    await liar.send("/quit kicked by ann: for nothing")
    await ann.until("[T] * liar left #den (says: kicked by ann: for nothing)")


# --- Marks in the member list ----------------------------------------------------------


async def test_users_marks_operators_and_away_members(chat: tuple[ChatServer, int]) -> None:
    _, port = chat
    ann = await login(port, "ann")
    await ann.send("/join #den")
    # The creator's own list already marks it: it is made operator before it joins.
    lines = await ann.until("* You are an operator of #den")
    assert "* Users in #den: @ann" in lines
    bob = await from_address(port, "127.0.0.2", "bob")
    assert "* Users in #den: @ann, bob" in await join(bob, "bob", "#den")
    await bob.send("/away lunch")
    await bob.until("* You are away: lunch")
    olga = await login(port, "olga", "#den")
    await ann.send("/op olga")
    for client in (ann, bob, olga):
        await client.until("[T] * ann made olga an operator of #den")
    await ann.send("/users")
    await ann.until("* Users in #den: @ann, bob (away), @olga")
    # The marks follow the account across a rename, and go with /deop and /away.
    await olga.send("/nick olga2")
    await ann.until("[T] * olga is now known as olga2")
    await ann.send("/deop olga")
    await bob.until("[T] * ann took olga2's operator rights in #den")
    # An operator from before is told to be one as it comes back (IRC clients forget).
    await ann.send("/join #lobby")
    await ann.send("/join #den")
    await bob.until("[T] * ann joined #den")
    assert await next_line(bob) == "[T] * ann is an operator of #den"
    await bob.send("/away")
    await bob.until("* You are back")
    await bob.send("/users")
    users = await bob.until("* Users in #den: @ann, bob, olga2")
    # A v1 client reading the list gets the bare names back (the marks are not names).
    state = RoomState("bob")
    state.update(parse_line(users[-1]))
    assert sorted(state.members.values()) == ["ann", "bob", "olga2"]
    # The lobby has no operators: nobody is marked there, server admins neither.
    await login(port, "root")
    await bob.send("/join #lobby")
    lobby = await bob.until("[T] * bob joined #lobby")
    assert not [line for line in lobby if "@" in line]


async def next_line(client: Client) -> str:
    with trio.fail_after(10):
        return STAMP.sub("[T] ", await client.client.receive_line())


async def test_a_name_cannot_pass_for_a_mark(chat: tuple[ChatServer, int]) -> None:
    _, port = chat
    eve = await named(port, "eve")
    for fake in ("@ann", "bob(away)", "@", "ann,", "ops=eve", "a@b"):
        await eve.send(f"/nick {fake}")
        assert (await next_line(eve)).startswith(f"! Invalid name '{fake}'")
    await eve.send("/nick bob (away)")  # a space: never a name
    assert (await next_line(eve)).startswith("! Invalid name 'bob (away)'")
    client = await dial(port)
    await client.until("* What is your name?")
    await client.send("@root")
    assert (await next_line(client)).startswith("! Invalid name '@root'")


async def test_a_quiet_room_still_marks_its_members(
    nursery: trio.Nursery, tmp_path: Path, net: None
) -> None:
    async with serving(nursery, tmp_path, quiet_above=2) as (_, port):
        ann = await login(port, "ann", "#den")
        guests = [await named(port, name) for name in ("bob", "cat", "dan")]
        for guest, name in zip(guests, ("bob", "cat", "dan"), strict=True):
            await guest.send("/join #den")
            await guest.until(f"[T] * {name} joined #den")
        await guests[0].send("/away out")
        await guests[0].until("* You are away: out")
        await ann.send("/users")
        await ann.until("* Users in #den: @ann, bob (away), cat, dan")
        await guests[2].send("/users all")
        await guests[2].until("* Users in #den: @ann, bob (away), cat, dan")


# --- Guests cannot dodge a name ban -----------------------------------------------------


async def test_a_guest_s_name_ban_takes_its_address_along(chat: tuple[ChatServer, int]) -> None:
    server, port = chat
    ann, bob = await den(port)  # bob is a guest from 127.0.0.2
    await ann.send("/ban bob 1h spam")
    await ann.until("* bob is banned from #den for 1h more")
    await ann.send("/bans")
    await ann.until("*   bob by ann for 1h more: spam")
    await ann.until("*   127.0.0.2 (the guest bob's address) by ann for 1h more: spam")
    assert server.hub.moderation.actions["ban"] == 1  # one action, logged once
    # Another name, by /nick or by connecting again, from the same address: still out.
    await bob.send("/nick bobby")  # in no room since the ban: nobody sees it
    await bob.send("/join #den")
    await bob.until("! You are banned from #den for 1h more: spam")
    robert = await from_address(port, "127.0.0.2", "robert")
    await robert.send("/join #den")
    await robert.until("! You are banned from #den for 1h more: spam")
    # Registering the new name does not help: the address is still the guest's.
    await robert.send("/register a new passphrase")
    await robert.until("* robert is registered to you now")
    await robert.send("/join #den")
    await robert.until("! You are banned from #den for 1h more: spam")
    # Nobody else is: another address comes in (so a guest with a new address does too).
    await join(await from_address(port, "127.0.0.3", "carl"), "carl", "#den")
    # Lifting the name lifts the address it took along.
    await ann.send("/unban bob")
    await ann.until("* bob may join #den again")
    await join(robert, "robert", "#den")
    await ann.send("/bans")
    await ann.until("* Nobody is banned from #den")


async def test_a_guest_on_the_operator_s_own_address_is_banned_by_name_only(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann = await login(port, "ann", "#den")
    dave = await named(port, "dave")  # 127.0.0.1, as ann
    await join(dave, "dave", "#den")
    await ann.send("/ban dave")
    await ann.until(
        "* dave is banned from #den until lifted (not dave's address, which is yours too)"
    )
    await ann.send("/bans")
    lines = await ann.until("*   dave by ann until lifted")
    assert not [line for line in lines if "127.0.0.1" in line]
    await join(await named(port, "erin"), "erin", "#den")


async def test_an_account_s_ban_follows_the_account_not_its_address(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann, _bob = await den(port)
    olga = await login(port, "olga", "#den")
    await ann.send("/ban olga")
    await ann.until("* olga is banned from #den until lifted")
    await ann.send("/bans")
    assert (await ann.until("*   olga by ann until lifted"))[-2:] == [
        "* Bans in #den:",
        "*   olga by ann until lifted",
    ]
    await olga.send("/nick olga2")  # the account is still olga's
    await olga.send("/join #den")
    await olga.until("! You are banned from #den until lifted")


async def test_nick_into_a_banned_name_is_refused_where_it_would_dodge_the_ban(
    chat: tuple[ChatServer, int],
) -> None:
    _, port = chat
    ann, bob = await den(port)
    await ann.send("/ban bob")
    await ann.until("* bob is banned from #den until lifted")
    await bob.send("/quit")
    await bob.until("* Bye!")
    carl = await from_address(port, "127.0.0.3", "carl")
    await join(carl, "carl", "#den")
    await carl.send("/nick Bob")
    await carl.until("! You cannot take the name Bob: banned from #den")
    # Outside #den the name is free to take, and keeps its owner out of #den.
    eve = await from_address(port, "127.0.0.4", "eve")
    await eve.send("/nick bob")
    await eve.until("[T] * eve is now known as bob")
    await eve.send("/join #den")
    await eve.until("! You are banned from #den until lifted")
    root = await login(port, "root")
    await root.send("/gban mallory")
    await root.until("* mallory is banned from this server until lifted")
    await carl.send("/nick mallory")
    await carl.until("! You cannot take the name mallory: banned from this server")
