"""An IRC client that drops and rejoins gets what it missed: replay on JOIN, or CHATHISTORY AFTER.

IRC has no resume token: a client whose connection drops is gone (its rooms see
``left (connection lost)``), and when it comes back it asks for what it missed.
A plain client gets the room's recent lines with its JOIN, each with its original
``time`` under ``server-time``; a client with ``draft/chathistory`` asks
``CHATHISTORY AFTER #room msgid=...`` from the last message it had, and gets exactly
the lines after it, in order. Real sockets, both doors on one hub.
"""

from __future__ import annotations

import pytest
from irc_support import RawIRC, close_clients, irc_client, line_client, line_until
from test_irc_door import Start, start  # noqa: F401 - the fixture

from triochat.client.connection import ChatClient
from triochat.protocol import irc

_close_clients = pytest.fixture(autouse=True)(close_clients)

CAPS = "server-time message-tags batch draft/chathistory"


async def joined(port: int, nick: str, caps: str | None) -> RawIRC:
    """``nick`` registered (asking for ``caps``) and in #lobby, its names list read."""
    lines = ["CAP LS 302", f"CAP REQ :{caps}", "CAP END"] if caps else []
    client = await irc_client(port, nick, *lines)
    await client.send("JOIN #lobby")
    await client.until("366")
    return client


async def drop_while_said(client: RawIRC, bob: ChatClient, *texts: str) -> None:
    """The client's connection breaks; ``bob`` says ``texts`` before it is back."""
    await client.stream.aclose()
    await line_until(bob, "left #lobby (connection lost)")
    for text in texts:
        await bob.send_line(text)
        await line_until(bob, f"<bob> {text}")


def privmsgs(messages: list[irc.Message]) -> list[irc.Message]:
    return [m for m in messages if m.command == "PRIVMSG" and m.params[0] == "#lobby"]


async def test_a_plain_client_that_rejoins_gets_the_missed_lines_with_their_times(
    start: Start,  # noqa: F811 - the fixture imported above
) -> None:
    _, line_port, irc_port = await start(rate=0)
    bob = await line_client(line_port, "bob")
    zoe = await joined(irc_port, "zoe", "server-time")
    await bob.send_line("before")
    seen = await zoe.until("PRIVMSG", "#lobby")
    assert seen.params[1] == "before"
    await drop_while_said(zoe, bob, "missed 1", "missed 2", "missed 3")
    back = await joined(irc_port, "zoe", "server-time")
    replay = privmsgs(back.seen)
    assert [m.params[1] for m in replay] == ["before", "missed 1", "missed 2", "missed 3"]
    assert all(m.source == "bob!bob@irc.test" for m in replay)
    times = [m.tag("time") or "" for m in replay]
    assert times[0] == seen.tag("time")  # each line's own time, not the replay's
    assert times == sorted(times)
    # The replay came between the JOIN and the names, and nothing after it twice.
    order = [m.command for m in back.seen if m.command in ("JOIN", "PRIVMSG", "353")]
    assert order == ["JOIN", "PRIVMSG", "PRIVMSG", "PRIVMSG", "PRIVMSG", "353"]
    await bob.send_line("live")
    assert (await back.until("PRIVMSG", "#lobby")).params[1] == "live"


async def test_a_chathistory_client_asks_after_the_last_msgid_it_had(
    start: Start,  # noqa: F811 - the fixture imported above
) -> None:
    _, line_port, irc_port = await start(rate=0)
    bob = await line_client(line_port, "bob")
    zoe = await joined(irc_port, "zoe", CAPS)
    assert not privmsgs(zoe.seen)  # it asks for history itself: none with the JOIN
    await bob.send_line("had this")
    last = (await zoe.until("PRIVMSG", "#lobby")).tag("msgid")
    assert last is not None
    await drop_while_said(zoe, bob, "missed 1", "missed 2", "missed 3")
    back = await joined(irc_port, "zoe", CAPS)
    assert not privmsgs(back.seen)
    await back.send(f"CHATHISTORY AFTER #lobby msgid={last} 50")
    opened = await back.until("BATCH")
    assert opened.params[1:] == ("chathistory", "#lobby")
    batch = opened.params[0][1:]
    got = []
    while (message := await back.next()) is not None and message.command == "PRIVMSG":
        assert message.tag("batch") == batch
        got.append(message)
    assert message is not None
    assert (message.command, message.params) == ("BATCH", (f"-{batch}",))  # its end
    assert [m.params[1] for m in got] == ["missed 1", "missed 2", "missed 3"]
    numbers = [int((m.tag("msgid") or "").rpartition("/")[2]) for m in got]
    assert numbers == sorted(numbers)
    assert numbers[0] > int(last.rpartition("/")[2])
