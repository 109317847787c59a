"""Accounts and moderation through the IRC door: PASS for a registered nick, NickServ,
TOPIC, KICK, MODE +o/-o/+b/-b (367/368), 482 for a non-operator, WHOIS 330."""

from __future__ import annotations

import math
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trio
from _accounts import open_accounts
from irc_support import RawIRC, close_clients, irc_client, opened

from triochat import ChatServer, ServerConfig
from triochat.core.accounts import Request
from triochat.protocol import irc
from triochat.protocol.irc import sasl
from triochat.server.irc import IRCConfig, IRCDoor

_close_clients = pytest.fixture(autouse=True)(close_clients)


@asynccontextmanager
async def serving(nursery: trio.Nursery, tmp_path: Path, **options: Any) -> AsyncIterator[int]:
    """An IRC door's port, on a server with the accounts ann and olga and ``options``."""
    accounts = open_accounts(tmp_path / "chat.db")
    for name in ("ann", "olga"):
        assert (await accounts.perform(Request("register", name, f"{name}-pw"))).ok
    config = ServerConfig(port=0, rate=0, password_delay=0.01, **options)
    server = ChatServer(config, accounts=accounts)
    await nursery.start(server.serve)
    door = IRCDoor(server, IRCConfig(port=0, name="irc.test"))
    listeners = await nursery.start(door.serve)
    try:
        yield listeners[0].socket.getsockname()[1]
    finally:
        accounts.close()


@pytest.fixture
async def irc_port(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[int]:
    async with serving(nursery, tmp_path) as port:
        yield port


async def registered(port: int, nick: str) -> RawIRC:
    """``nick`` (registered) signed in with PASS, its password."""
    return await irc_client(port, nick, f"PASS {nick}-pw")


async def test_a_registered_nick_needs_its_password(irc_port: int) -> None:
    guest = RawIRC(await trio.open_tcp_stream("127.0.0.1", irc_port))
    opened(guest.stream)
    await guest.send("NICK ann", "USER u 0 * :Real")
    refused = await guest.until("433")
    assert refused.params[1] == "ann"
    await guest.send("PASS wrong", "NICK ann")
    await guest.until("433")  # wrong: after the delay, the nick is asked for again
    await guest.send("NICK guest")
    await guest.until("001")
    ann = await registered(irc_port, "ann")
    await ann.send("WHOIS ann")
    logged_in = await ann.until("330")
    assert logged_in.params[1:3] == ("ann", "ann")
    await guest.send("WHOIS guest")
    await guest.until("318")
    assert not [m for m in guest.seen if m.command == "330"]


async def test_nickserv_identify_and_register(irc_port: int) -> None:
    carl = await irc_client(irc_port, "carl")
    await carl.send("PRIVMSG NickServ :REGISTER carl-pw")
    notice = await carl.until("NOTICE", "carl")
    assert notice.params[1] == "carl is registered to you now"
    await carl.send("PRIVMSG NickServ :IDENTIFY carl-pw")
    notice = await carl.until("NOTICE", "carl")
    assert notice.params[1] == "You are identified as carl already"


async def test_operators_topic_kick_and_ban_with_irc_commands(irc_port: int) -> None:
    ann = await registered(irc_port, "ann")
    await ann.send("JOIN #den")
    await ann.until("366")
    bob = await irc_client(irc_port, "bob")
    await bob.send("JOIN #den")
    await bob.until("366")
    await bob.send("TOPIC #den :mine")
    assert (await bob.until("482")).params[1] == "#den"
    await bob.send("KICK #den ann")
    await bob.until("482")
    await bob.send("MODE #den +b ann!*@*")
    await bob.until("482")
    await ann.send("TOPIC #den :Be kind")
    await bob.until("TOPIC", "#den", "Be kind")
    await bob.send("TOPIC #den")
    assert (await bob.until("332")).params[2] == "Be kind"
    await ann.send("MODE #den +b bob!*@*")
    await bob.until("PART", "#den")
    await ann.send("MODE #den +b")
    banned = await ann.until("367")
    assert banned.params[1:3] == ("#den", "bob!*@*")
    await ann.until("368")
    await bob.send("JOIN #den")
    await bob.until("NOTICE", "bob", "Error: You are banned from #den until lifted")
    await ann.send("MODE #den -b bob!*@*")
    await ann.until("NOTICE", "ann", "bob may join #den again")
    await bob.send("JOIN #den")
    await bob.until("366")
    await bob.send("PRIVMSG #den :hi again")
    await ann.until("PRIVMSG", "#den", "hi again")
    await ann.send("MODE #den +b")
    await ann.until("368")
    await ann.send("KICK #den bob :enough")
    kicked = await ann.until("KICK", "#den", "bob", "enough")
    assert kicked.source is not None
    assert kicked.source.startswith("ann!")
    await bob.until("KICK", "#den", "bob", "enough")
    olga = await registered(irc_port, "olga")
    await olga.send("JOIN #den")
    await olga.until("366")
    await ann.send("MODE #den +o olga")
    opped = await olga.until("MODE", "#den", "+o", "olga")
    assert opped.source is not None
    assert opped.source.startswith("ann!")
    await olga.send("TOPIC #den :olga's")
    await ann.until("TOPIC", "#den", "olga's")


async def test_a_muted_member_gets_404(nursery: trio.Nursery) -> None:
    server = ChatServer(ServerConfig(port=0, rate=0))
    await nursery.start(server.serve)
    door = IRCDoor(server, IRCConfig(port=0, name="irc.test"))
    listeners = await nursery.start(door.serve)
    port = listeners[0].socket.getsockname()[1]
    bob = await irc_client(port, "bob")
    await bob.send("JOIN #den")
    await bob.until("366")
    server.hub.moderation.mute("#den", "bob", math.inf)  # as an operator's /mute does
    await bob.send("PRIVMSG #den :spam")
    refused = await bob.until("404")
    assert refused.params[1:] == (
        "#den",
        "Cannot send to channel (You are muted in #den until lifted: not sent)",
    )


async def test_names_who_and_mode_mark_operators_and_away_members(irc_port: int) -> None:
    ann = await registered(irc_port, "ann")
    await ann.send("JOIN #den")
    names = await ann.until("353")
    assert names.params[-1] == "@ann"  # the creator operates the room it made
    # multi-prefix changes nothing: @ is the only prefix there is.
    bob = await irc_client(irc_port, "bob", "CAP LS 302", "CAP REQ :multi-prefix", "CAP END")
    await bob.send("JOIN #den")
    names = await bob.until("353")
    assert names.params[-1] == "@ann bob"
    olga = await registered(irc_port, "olga")
    await olga.send("JOIN #den", "AWAY :lunch")
    await olga.until("306")
    await bob.send("WHO #den")
    flags = {}
    while (who := await bob.next()) is not None and who.command != "315":
        if who.command == "352":
            flags[who.params[5]] = who.params[6]
    assert flags == {"ann": "H@", "bob": "H", "olga": "G"}
    await ann.send("MODE #den +o olga")
    for client in (ann, bob, olga):
        opped = await client.until("MODE", "#den", "+o", "olga")
        assert opped.source is not None
        assert opped.source.startswith("ann!")
    await bob.send("NAMES #den")
    assert (await bob.until("353")).params[-1] == "@ann bob @olga"
    await ann.send("MODE #den -o olga")
    await bob.until("MODE", "#den", "-o", "olga")
    # An operator from before who comes back is +o again, by the server, as ChanServ does.
    await ann.send("PART #den", "JOIN #den")
    back = await bob.until("MODE", "#den", "+o", "ann")
    assert back.source == "irc.test"
    await olga.send("AWAY")
    await olga.until("305")
    await bob.send("WHO #den")
    await bob.until("352", "bob", "#den", "olga", "irc.test", "irc.test", "olga", "H")
    await bob.send("WHO olga")
    await bob.until("352", "bob", "*", "olga", "irc.test", "irc.test", "olga", "H")


async def names_of(client: RawIRC, room: str) -> tuple[list[str], str]:
    """The names of ``room`` that ``client`` is sent next (every 353 page), and its 366's text."""
    listed: list[str] = []
    with trio.fail_after(10):
        while (msg := await client.next()) is not None:
            if msg.command == "353" and msg.params[2] == room:
                listed += msg.params[3].split()
            elif msg.command == "366" and msg.params[1] == room:
                return listed, msg.params[2]
    raise AssertionError(f"closed before the 366 of {room}")


async def test_past_quiet_above_names_and_who_list_the_member_and_the_operators(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    async with serving(nursery, tmp_path, quiet_above=3) as port:
        ann = await registered(port, "ann")
        await ann.send("JOIN #den")
        assert await names_of(ann, "#den") == (["@ann"], "End of /NAMES list")
        bob, cat, dan, eve = [await irc_client(port, nick) for nick in ("bob", "cat", "dan", "eve")]
        await bob.send("JOIN #den")
        await names_of(bob, "#den")
        # Just below the threshold (3 members, not past it): every name, and the JOIN told.
        await cat.send("JOIN #den")
        assert await names_of(cat, "#den") == (["@ann", "bob", "cat"], "End of /NAMES list")
        await bob.until("JOIN", "#den")
        # Past it: the joiner sees itself and the operator, and the count; nobody sees it join.
        await dan.send("JOIN #den")
        big = "End of /NAMES list (4 users: a big room lists you and its operators)"
        assert await names_of(dan, "#den") == (["@ann", "dan"], big)
        await eve.send("JOIN #den")
        assert await names_of(eve, "#den") == (["@ann", "eve"], big.replace("4", "5"))
        for client, nick in ((bob, "bob"), (dan, "dan")):
            await client.send("NAMES #den")
            assert await names_of(client, "#den") == (["@ann", nick], big.replace("4", "5"))
        await ann.send("NAMES #den")
        assert (await names_of(ann, "#den"))[0] == ["@ann"]
        await eve.send("WHO #den")
        flags = {}
        while (who := await eve.next()) is not None and who.command != "315":
            if who.command == "352":
                flags[who.params[5]] = who.params[6]
        assert flags == {"ann": "H@", "eve": "H"}
        # What the first members were sent since: cat's JOIN, and no other (nor a name list).
        await bob.send("PING done")
        await bob.until("PONG")
        joins = [m.source for m in bob.seen if m.command == "JOIN"]
        assert [j.partition("!")[0] for j in joins if j] == ["bob", "cat"]


async def sasl_login(port: int, account: str, password: str, nick: str) -> RawIRC:
    """A client that logs in with SASL PLAIN before it registers; it has sent CAP END."""
    client = RawIRC(await trio.open_tcp_stream("127.0.0.1", port))
    opened(client.stream)
    await client.send("CAP LS 302", "CAP REQ :sasl", f"NICK {nick}", "USER u 0 * :Real")
    ls = await client.until("CAP", "*", "LS")
    assert "sasl=PLAIN" in ls.params[2].split()
    await client.until("CAP", "*", "ACK")
    await client.send("AUTHENTICATE PLAIN")
    await client.until("AUTHENTICATE", "+")
    await client.send(*[f"AUTHENTICATE {c}" for c in sasl.encode(account, password)], "CAP END")
    return client


async def test_sasl_plain_logs_in_to_a_registered_nick(irc_port: int) -> None:
    ann = await sasl_login(irc_port, "ann", "ann-pw", "ann")
    logged_in = await ann.until("900")
    assert logged_in.params[1:3] == ("ann!ann@irc.test", "ann")
    await ann.until("903")
    await ann.until("001")
    await ann.send("WHOIS ann")
    assert (await ann.until("330")).params[1:3] == ("ann", "ann")
    assert "433" not in [m.command for m in ann.seen]


async def test_a_wrong_sasl_password_is_904_and_never_echoed(irc_port: int) -> None:
    guess = "not-olgas-pw"
    olga = await sasl_login(irc_port, "olga", guess, "olga")
    await olga.until("904")  # after the growing per-address delay
    # The nick is still olga's: without a login, registering with it is refused.
    await olga.until("433")
    await olga.send("AUTHENTICATE PLAIN")
    await olga.until("AUTHENTICATE", "+")
    await olga.send(*[f"AUTHENTICATE {c}" for c in sasl.encode("olga", "olga-pw")], "NICK olga")
    await olga.until("903")
    await olga.until("001")
    sent = [irc.format_message(m) for m in olga.seen]
    assert not [line for line in sent if guess in line or "olga-pw" in line]
