"""The IRC door's rules over the real hub and session, without sockets.

Each IRC client is an :class:`IRCSession` fed through the real framer, with a
real trio memory channel as its outbox; line-door users are real hub members
with the v1 dialect, so every test shows what both sides see.
"""

from __future__ import annotations

from collections.abc import Sequence

import pytest
import trio
from hypothesis import given, settings, strategies as st

from triochat.backplane import Claim
from triochat.core import events as ev, session as s
from triochat.core._auth import FailureDelays
from triochat.core.accounts import AccountBook, Outcome
from triochat.core.hub import Hub, Member
from triochat.core.irc_session import MAX_LATE, IRCOutbox, IRCRules, IRCSession
from triochat.protocol import irc, line as p
from triochat.protocol.irc import sasl as irc_sasl
from triochat.protocol.irc.render import NOTHING
from triochat.protocol.v2 import V2Dialect
from triochat.protocol.web import WebDialect

T0 = 1_700_000_000.0
SERVER = "irc.test"


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hub() -> Hub:
    return Hub(history=10, clock=Clock(), max_rooms_per_member=3)


def rules(**session: object) -> IRCRules:
    base: dict[str, object] = {"one_room": False, "arrival_rooms": ()}
    base.update(session)
    return IRCRules(
        server=SERVER,
        network="TestNet",
        max_rooms=3,
        session=s.Rules(**base),  # type: ignore[arg-type]
    )


class Client:
    """An IRC client: lines in through the framer, messages out of its outbox."""

    def __init__(
        self,
        hub: Hub,
        rules_: IRCRules | None = None,
        accounts: AccountBook | None = None,
        delays: FailureDelays | None = None,
    ) -> None:
        self.send, self.inbox = trio.open_memory_channel[bytes](1000)
        self.disconnects = 0
        self.framer = irc.IRCFramer()
        self.effects: list[s.Output] = []
        self.irc = IRCSession(
            hub,
            rules_ or rules(),
            outbox=self.send,
            disconnect=self._disconnect,
            address="10.0.0.1",
            clock=lambda: 0.0,
            accounts=accounts,
            delays=delays,
        )

    def _disconnect(self) -> None:
        self.disconnects += 1

    def __call__(self, *lines: str) -> list[irc.Message]:
        """Send ``lines``; return what the client got back (and keep the effects)."""
        self.framer.receive_data("".join(f"{line}\r\n" for line in lines).encode())
        self.effects += self.irc.receive(self.framer.events())
        return self.read()

    def read(self) -> list[irc.Message]:
        data = b""
        while True:
            try:
                data += self.inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        assert data.endswith(b"\r\n") or not data
        return [m for m in map(irc.parse, data.decode().split("\r\n")[:-1]) if m is not None]

    @property
    def closed(self) -> bool:
        try:
            self.inbox.receive_nowait()
        except trio.EndOfChannel:
            return True
        except trio.WouldBlock:
            return False
        return False


def register(hub: Hub, nick: str, *, caps: str = "", claimed: bool = False, **kw: object) -> Client:
    client = Client(hub, **kw)  # type: ignore[arg-type]
    if caps:
        client("CAP LS 302", f"CAP REQ :{caps}", f"NICK {nick}", "USER u 0 * :Real", "CAP END")
    else:
        client(f"NICK {nick}", "USER u 0 * :Real")
    if claimed:  # a cluster's claim, granted
        client.irc.claim_result(Claim.CLAIMED)
        client.read()
    assert client.irc.registered
    return client


class LineUser:
    """A line-door (nc) user: a hub member with the v1 dialect."""

    DIALECT = p.LineDialect()

    def __init__(self, hub: Hub, name: str, room: str = "#a") -> None:
        self.send, self.inbox = trio.open_memory_channel[bytes](1000)
        member = hub.register(name, self.send, lambda: None, self.DIALECT)
        assert isinstance(member, Member)
        self.member = member
        hub.join(member, room)
        self.lines()

    def lines(self) -> list[str]:
        data = b""
        while True:
            try:
                data += self.inbox.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel):
                break
        # Without the [HH:MM:SS] stamps, which depend on the local time zone.
        return [line.split("] ", 1)[-1] for line in data.decode().splitlines()]


def cmds(messages: list[irc.Message]) -> list[str]:
    return [m.command for m in messages]


def by(messages: list[irc.Message], command: str) -> list[irc.Message]:
    return [m for m in messages if m.command == command]


# --- registration ---------------------------------------------------------------


def test_registration_without_cap_gets_the_welcome_burst(hub: Hub) -> None:
    client = Client(hub)
    assert client("NICK zoë") == []
    got = client("USER zoe 0 * :Zoë")
    assert cmds(got) == ["001", "002", "003", "004", "005", "005", "251", "255", "422"]
    assert all(m.params[0] == "zoë" and m.source == SERVER for m in got)
    assert "zoë" in got[0].params[1]
    tokens = [token for m in by(got, "005") for token in m.params[1:-1]]
    for token in [
        "CASEMAPPING=rfc8265",
        "CHANTYPES=#",
        "NICKLEN=24",
        "CHANNELLEN=33",
        "PREFIX=(o)@",
        "NETWORK=TestNet",
        "CHANMODES=b,,,",
        "CHANLIMIT=#:3",
        "UTF8ONLY",
        "CHATHISTORY=100",
        "MSGREFTYPES=msgid,timestamp",
    ]:
        assert token in tokens
    assert any(t.startswith("TARGMAX=PRIVMSG:4") for t in tokens)
    assert hub.member("zoë") is not None
    assert client.irc.dialect.name == "irc"


def test_cap_negotiation_holds_registration_until_cap_end(hub: Hub) -> None:
    client = Client(hub)
    [ls] = client("CAP LS 302")
    assert ls.params[:2] == ("*", "LS")
    assert set(ls.params[2].split()) == {
        "server-time",
        "message-tags",
        "echo-message",
        "multi-prefix",
        "batch",
        "draft/chathistory",
        "labeled-response",
        "away-notify",
    }
    assert client("NICK bob", "USER b 0 * :B") == []
    [ack] = client("CAP REQ :server-time echo-message")
    assert ack.params[1:] == ("ACK", "server-time echo-message")
    [nak] = client("CAP REQ :server-time sasl")
    assert nak.params[1:] == ("NAK", "server-time sasl")
    [listed] = client("CAP LIST")
    assert listed.params[2] == "echo-message server-time"
    assert cmds(client("CAP END"))[0] == "001"
    assert client.irc.dialect.name == "irc+echo-message+server-time"
    # Once the hub holds the dialect, what it renders cannot change.
    [late] = client("CAP REQ :message-tags")
    assert late.params[1] == "NAK"
    [fine] = client("CAP REQ :multi-prefix")
    assert fine.params[1] == "ACK"
    [bad] = client("CAP BOGUS")
    assert bad.command == "410"


def test_nick_errors(hub: Hub) -> None:
    LineUser(hub, "Bob")
    client = Client(hub)
    [e432] = client("NICK [away]")
    assert e432.command == "432"
    assert "[ ]" in e432.params[2]
    [e433] = client("NICK bob")
    assert e433.command == "433"
    assert e433.params[1] == "bob"
    [e431] = client("NICK")
    assert e431.command == "431"
    assert cmds(client("NICK ok", "USER u 0 * :x"))[0] == "001"
    assert cmds(client("NICK BOB")) == ["433"]
    assert cmds(client("USER u 0 * :x")) == ["462"]
    assert cmds(client("PASS x")) == ["462"]


def test_commands_before_registration_get_451(hub: Hub) -> None:
    client = Client(hub)
    assert cmds(client("JOIN #a", "PRIVMSG #a :hi", "FOO")) == ["451", "451", "451"]
    [pong] = client("PING :tok")
    assert pong.params == (SERVER, "tok")


def test_the_right_password_registers(hub: Hub) -> None:
    client = Client(hub, rules(password="sesame"))
    got = client("PASS sesame", "NICK bob", "USER u 0 * :x")
    assert cmds(got)[0] == "001"


@pytest.mark.parametrize("given", ["PASS wrong", None])
def test_a_wrong_or_missing_password_waits_then_gets_464_and_error(
    hub: Hub, given: str | None
) -> None:
    client = Client(hub, rules(password="sesame"))
    lines = [given] if given else []
    assert client(*lines, "NICK bob", "USER u 0 * :x") == []
    [wait] = client.effects
    assert isinstance(wait, s.Wait)
    assert wait.seconds > 0
    effects = client.irc.delay_elapsed()
    assert cmds(client.read()) == ["464", "ERROR"]
    assert effects == [s.Close("wrong password")]
    assert hub.member("bob") is None


def test_a_cluster_claim_registers_or_gets_433(hub: Hub) -> None:
    client = Client(hub, rules(claim_names=True))
    assert client("NICK bob", "USER u 0 * :x") == []
    assert client.effects == [s.ClaimName("bob")]
    client.irc.claim_result(Claim.TAKEN)
    [taken] = client.read()
    assert taken.command == "433"
    client("NICK rob")
    assert client.effects[-1] == s.ClaimName("rob")
    client.irc.claim_result(Claim.CLAIMED)
    assert cmds(client.read())[0] == "001"
    assert client.irc.nick == "rob"


def test_the_registration_deadline_closes_with_error(hub: Hub) -> None:
    client = Client(hub)
    client("NICK bob")
    effects = client.irc.deadline_passed()
    [error] = client.read()
    assert error.command == "ERROR"
    assert effects == [s.Close("no name given")]


# --- rooms and chat ---------------------------------------------------------------


def test_join_gets_join_then_names_then_history_and_no_second_join(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    hub.say(bob.member, "#a", ["before you came"])
    hub.act(bob.member, "#a", "waves")
    bob.lines()
    zoe = register(hub, "zoe", caps="server-time")
    got = zoe("JOIN #A")
    assert [(m.command, m.params) for m in got] == [
        ("JOIN", ("#a",)),
        ("PRIVMSG", ("#a", "before you came")),
        ("PRIVMSG", ("#a", "\x01ACTION waves\x01")),
        ("353", ("zoe", "=", "#a", "bob zoe")),
        ("366", ("zoe", "#a", "End of /NAMES list")),
    ]
    assert got[0].source == f"zoe!zoe@{SERVER}"
    assert got[1].tag("time") == "2023-11-14T22:13:20.000Z"
    assert bob.lines() == ["* zoe joined #a"]
    assert zoe("JOIN #a") == []  # already there: ignored, as IRC servers do


def test_an_idle_client_keeps_no_empty_set_or_table_of_its_own(hub: Hub) -> None:
    """Idle memory (docs/benchmarks.md): what a client is done with is the shared empty set."""
    zoe = register(hub, "zoe")
    assert cmds(zoe("JOIN #a", "WHO #a", "MODE zoe +i")) == [
        *("JOIN", "353", "366", "352", "315", "MODE"),
    ]
    assert zoe("MODE zoe")[0].params == ("zoe", "+i")
    zoe("MODE zoe -i")
    assert zoe("MODE zoe")[0].params == ("zoe", "+")
    session, dialect = zoe.irc, zoe.irc.dialect
    for done in (session.caps, session.user_modes, dialect.entering, dialect.who):
        assert done is NOTHING
    assert session.outbox._expected is None  # no table kept, not even an empty one
    eve = register(hub, "eve", caps="batch")
    assert eve.irc.caps == {"batch"}
    assert by(eve("CAP REQ :-batch"), "CAP")[0].params[1] == "ACK"
    assert eve.irc.caps is NOTHING


def test_a_room_at_quiet_above_lists_every_name_on_join_in_pages_with_one_366() -> None:
    hub = Hub(history=10, clock=Clock(), quiet_above=61)
    users = [LineUser(hub, f"user{i:02d}") for i in range(60)]
    zoe = register(hub, "zoe")
    got = zoe("JOIN #a")  # the 61st member: at the threshold, not past it
    assert cmds(got)[0] == "JOIN"
    assert cmds(got)[-1] == "366"
    assert cmds(got).count("366") == 1
    listed = [name for m in by(got, "353") for name in m.params[3].split()]
    assert sorted(listed) == sorted([u.member.name for u in users] + ["zoe"])
    who = zoe("WHO #a")
    assert len(by(who, "352")) == 61
    assert cmds(who).count("315") == 1


def test_a_big_room_lists_only_the_member_and_sums_up_who_came() -> None:
    hub = Hub(history=10, clock=Clock(), quiet_above=3)
    users = [LineUser(hub, f"user{i:02d}") for i in range(60)]
    zoe = register(hub, "zoe")
    got = zoe("JOIN #a")
    assert [name for m in by(got, "353") for name in m.params[3].split()] == ["zoe"]
    assert by(got, "366")[0].params[2].startswith("End of /NAMES list (61 users: ")
    assert [m.params[5] for m in by(zoe("WHO #a"), "352")] == ["zoe"]
    hub.summarize_presence()
    [summary] = zoe.read()
    assert summary.command == "NOTICE"
    assert summary.params[0] == "#a"
    assert summary.params[1].endswith("joined and 0 left #a in the last 30 s")
    assert users[0].lines()[-1] == summary.params[1]


def test_irssi_hexchat_and_weechat_after_join_queries_are_all_answered(hub: Hub) -> None:
    LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    zoe("JOIN #a")
    got = zoe("MODE #a", "WHO #a", "MODE #a b", "USERHOST zoe", "MODE #a +b")
    assert [(m.command, m.params[1:]) for m in got] == [
        ("324", ("#a", "+nt")),
        ("329", ("#a", str(int(T0)))),
        ("352", ("#a", "bob", SERVER, SERVER, "bob", "H", "0 bob")),
        ("352", ("#a", "zoe", SERVER, SERVER, "zoe", "H", "0 zoe")),
        ("315", ("#a", "End of /WHO list")),
        ("368", ("#a", "End of channel ban list")),
        ("302", (f"zoe=+zoe@{SERVER}",)),
        ("368", ("#a", "End of channel ban list")),
    ]
    assert cmds(zoe("MODE #a +o bob")) == ["482"]
    assert cmds(zoe("MODE zoe +i")) == ["MODE"]
    assert zoe("MODE zoe")[0].params == ("zoe", "+i")
    assert cmds(zoe("MODE zoe +x")) == ["501"]
    assert cmds(zoe("MODE bob")) == ["502"]


class _Archive:
    """An archive that remembers one old line of ``#old``."""

    def append(self, event: ev.RoomEvent, /) -> None:
        pass

    def recent(self, room: str, /) -> list[ev.RoomEvent]:
        return [ev.Said(room, 7, T0 - 86_400, "bob", "hi")] if room == "#old" else []


def test_creation_time_is_when_the_room_began_or_its_oldest_restored_event() -> None:
    clock = Clock()
    hub = Hub(history=10, clock=clock, archive=_Archive())
    zoe = register(hub, "zoe")
    clock.now = T0 + 60
    zoe("JOIN #new", "JOIN #old")
    clock.now = T0 + 120
    got = zoe("MODE #new", "MODE #old", "MODE #nowhere")
    assert [(m.command, m.params[1:]) for m in got] == [
        ("324", ("#new", "+nt")),
        ("329", ("#new", str(int(T0 + 60)))),
        ("324", ("#old", "+nt")),
        ("329", ("#old", str(int(T0 - 86_400)))),  # from --db: at least as old as its lines
        ("324", ("#nowhere", "+nt")),  # no such room: no time to give
    ]
    # A cluster's restored history counts the same way.
    hub.set_history("#new", [ev.Said("#new", 3, T0 - 5, "bob", "hello")])
    assert zoe("MODE #new")[1].params[1:] == ("#new", str(int(T0 - 5)))


def test_lines_both_ways_and_the_sender_is_not_echoed(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    ann = register(hub, "ann")
    zoe("JOIN #a")
    ann("JOIN #a")
    zoe.read()
    bob.lines()
    assert zoe("PRIVMSG #a :hello bob", "PRIVMSG #a :\x02bold\x02 \x1b[31mno escape") == []
    assert bob.lines() == ["<zoe> hello bob", "<zoe> \x02bold\x02 no escape"]
    assert [(m.source, m.params) for m in ann.read()] == [
        (f"zoe!zoe@{SERVER}", ("#a", "hello bob")),
        (f"zoe!zoe@{SERVER}", ("#a", "\x02bold\x02 no escape")),
    ]
    hub.say(bob.member, "#a", ["hi zoe"])
    [line] = zoe.read()
    assert (line.command, line.source, line.params) == (
        "PRIVMSG",
        f"bob!bob@{SERVER}",
        ("#a", "hi zoe"),
    )
    assert zoe("PRIVMSG #a :\x01ACTION dances\x01") == []
    assert bob.lines()[-1] == "* zoe dances"
    hub.act(bob.member, "#a", "bows")
    assert zoe.read()[0].params == ("#a", "\x01ACTION bows\x01")


def test_echo_message_gets_the_senders_lines_back(hub: Hub) -> None:
    zoe = register(hub, "zoe", caps="echo-message")
    zoe("JOIN #a")
    got = zoe("PRIVMSG #a :mine")
    assert [(m.source, m.params) for m in got] == [(f"zoe!zoe@{SERVER}", ("#a", "mine"))]


def test_private_messages_both_ways(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    assert zoe("PRIVMSG Bob :psst") == []
    assert bob.lines() == ["*zoe* psst"]
    hub.private(bob.member, "zoe", "back")
    [got] = zoe.read()
    assert (got.source, got.params) == (f"bob!bob@{SERVER}", ("zoe", "back"))
    assert cmds(zoe("PRIVMSG nobody :x")) == ["401"]
    assert cmds(zoe("PRIVMSG [x] :x")) == ["401"]
    assert cmds(zoe("PRIVMSG #a :x")) == ["404"]
    assert cmds(zoe("PRIVMSG #bad!name :x")) == ["403"]
    assert cmds(zoe("PRIVMSG")) == ["411"]
    assert cmds(zoe("PRIVMSG bob")) == ["412"]
    assert cmds(zoe("PRIVMSG bob :\x01VERSION\x01")) == ["NOTICE"]
    assert zoe("NOTICE nobody :x", "NOTICE #a :x") == []  # NOTICE is never answered
    bob.lines()
    zoe("PRIVMSG bob :\x01ACTION winks\x01")
    assert bob.lines() == ["*zoe* * winks"]


def test_away_is_told_to_whoever_messages_or_asks(hub: Hub) -> None:
    zoe = register(hub, "zoe")
    ann = register(hub, "ann")
    bob = LineUser(hub, "bob")
    assert cmds(zoe("AWAY :lunch")) == ["306"]
    [away] = ann("PRIVMSG zoe :hi")
    assert (away.command, away.params[1:]) == ("301", ("zoe", "lunch"))
    assert ann("NOTICE zoe :hi") == []  # a NOTICE is never answered
    assert [m.params[1] for m in zoe.read()] == ["hi", "hi"]
    assert "301" in cmds(ann("WHOIS zoe"))
    assert ann("USERHOST zoe")[0].params[1] == f"zoe=-zoe@{SERVER}"
    assert ann("WHO zoe")[0].params[6] == "G"
    # One away for every door: the line door sees the IRC user's, and the other way.
    bob.lines()
    hub.private(bob.member, "zoe", "hi")
    assert bob.lines()[-1] == "* zoe is away: lunch"
    hub.set_away(bob.member, "out")
    [away] = ann("PRIVMSG bob :hi")
    assert (away.command, away.params[1:]) == ("301", ("bob", "out"))
    zoe.read()
    assert cmds(zoe("AWAY")) == ["305"]
    assert cmds(ann("PRIVMSG zoe :back?")) == []
    assert ann("WHO zoe")[0].params[6] == "H"
    # A line-door away text longer than an IRC line is cut to one line, never sent whole.
    hub.set_away(bob.member, "é" * 2000)
    for reply in (*ann("PRIVMSG bob :hi"), *by(ann("WHOIS bob"), "301")):
        assert reply.command == "301"
        assert len(irc.serialize(reply)) <= 512
        assert reply.params[2] == "é" * len(reply.params[2])


AWAY_NOTIFY = "away-notify server-time"


def test_away_notify_tells_each_follower_once_and_no_one_else(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe", caps=AWAY_NOTIFY)
    ann = register(hub, "ann")  # no away-notify
    carl = register(hub, "carl", caps=AWAY_NOTIFY)
    for client in (zoe, ann, carl):
        client("JOIN #a,#b")
    others: list[trio.MemoryReceiveChannel[bytes]] = []
    for dialect in (WebDialect(), V2Dialect()):
        send, receive = trio.open_memory_channel[bytes](100)
        member = hub.register(f"w{len(others)}", send, lambda: None, dialect)
        assert not isinstance(member, str)
        hub.join(member, "#a")
        others.append(receive)
    for client in (zoe, ann, carl):
        client.read()
    bob.lines()
    for other in others:
        while True:
            try:
                other.receive_nowait()
            except trio.WouldBlock:
                break
    seq = hub.room_state("#a")
    assert cmds(carl("AWAY :lunch")) == ["306"]  # never its own AWAY
    [away] = zoe.read()  # once, though they share two rooms
    assert (away.command, away.source, away.params) == ("AWAY", f"carl!carl@{SERVER}", ("lunch",))
    assert away.tag("time") is not None
    assert away.tag("msgid") is None
    assert ann.read() == []
    assert bob.lines() == []  # the line door sees nothing new
    for other in others:  # nor do the web page and protocol v2
        with pytest.raises(trio.WouldBlock):
            other.receive_nowait()
    assert hub.room_state("#a") == seq  # not numbered ...
    assert not [e for e in hub.recent("#a", 10) if isinstance(e, ev.Away)]  # ... nor kept
    carl("AWAY")
    [back] = zoe.read()
    assert (back.command, back.params) == ("AWAY", ())
    hub.set_away(bob.member, "x " * 1000)
    [long] = zoe.read()
    assert len(irc.serialize(irc.Message("AWAY", long.params, long.source))) <= 512  # tags aside
    hub.set_away(bob.member, None)
    zoe.read()
    carl.read()
    # From the line door too; and the same away twice is no change.
    hub.set_away(bob.member, "brb")
    hub.set_away(bob.member, "brb")
    [away] = zoe.read()
    assert (away.source, away.params) == (f"bob!bob@{SERVER}", ("brb",))
    assert carl.read()[0].params == ("brb",)
    # Someone away who joins: the JOIN, then the AWAY.
    zoe("JOIN #c")
    zoe.read()
    bob_c = LineUser(hub, "dan", "#c")
    assert cmds(zoe.read()) == ["JOIN"]
    hub.set_away(bob_c.member, "zzz")
    assert zoe.read()[0].params == ("zzz",)
    hub.part(bob_c.member, "#c", "bye")
    zoe.read()
    hub.join(bob_c.member, "#c")
    joined, away = zoe.read()
    assert (joined.command, away.command, away.params) == ("JOIN", "AWAY", ("zzz",))
    hub.part(bob_c.member, "#c", "bye")
    hub.set_away(bob_c.member, None)
    hub.join(bob_c.member, "#c")
    assert cmds(zoe.read()) == ["PART", "JOIN"]  # not away: no AWAY


def test_an_irc_away_is_marked_and_answered_on_every_door(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    zoe("JOIN #a")
    zoe("AWAY :brb")
    bob.lines()
    hub.users(bob.member, "#a")
    assert bob.lines() == ["* Users in #a: bob, zoe (away)"]
    hub.private(bob.member, "zoe", "there?")
    assert bob.lines() == ["-> *zoe* there?", "* zoe is away: brb"]
    zoe("AWAY")
    hub.users(bob.member, "#a")
    assert bob.lines() == ["* Users in #a: bob, zoe"]


def test_part_join_zero_and_their_errors(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    zoe("JOIN #a,#b,#c")
    bob.lines()
    [part] = zoe("PART #a :see you")
    assert (part.command, part.params) == ("PART", ("#a", "see you"))
    assert bob.lines() == ["* zoe left #a (see you)"]
    assert cmds(zoe("PART #a")) == ["442"]
    assert cmds(zoe("PART nochan")) == ["403"]
    assert cmds(zoe("PART")) == ["461"]
    assert cmds(zoe("JOIN #x,#y")) == ["JOIN", "353", "366", "405"]
    assert cmds(zoe("JOIN bad")) == ["403"]
    got = zoe("JOIN 0")
    assert cmds(got) == ["PART", "PART", "PART"]
    member = zoe.irc.member
    assert member is not None
    assert not member.rooms


def test_a_line_user_moving_rooms_is_a_part_and_a_join(hub: Hub) -> None:
    from _v1 import LineUser as V1User

    bob = V1User(hub, "bob", p.LineDialect())
    zoe = register(hub, "zoe")
    zoe("JOIN #lobby,#b")
    bob.do(p.Join("#b"))  # a v1 client has one room: it moves
    got = zoe.read()
    assert [(m.command, m.params) for m in got] == [
        ("PART", ("#lobby", "joined #b")),
        ("JOIN", ("#b",)),
    ]


def test_nick_changes_are_seen_everywhere(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    [alone] = zoe("NICK zed")  # in no room: the door says it itself
    assert (alone.command, alone.source, alone.params) == ("NICK", f"zoe!zoe@{SERVER}", ("zed",))
    zoe("JOIN #a")
    bob.lines()
    got = zoe("NICK zoë")
    assert [(m.command, m.source, m.params) for m in got] == [
        ("NICK", f"zed!zed@{SERVER}", ("zoë",))
    ]
    assert bob.lines() == ["* zed is now known as zoë"]
    assert zoe("NOTICE bob :x") == []
    assert zoe("MODE zoë")[0].params[0] == "zoë"  # numerics follow the new nick
    assert cmds(zoe("NICK bob")) == ["433"]
    assert zoe("NICK zoë") == []


def test_quit_tells_the_room_and_ends_with_error(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    zoe("JOIN #a")
    bob.lines()
    got = zoe("QUIT :bye now", "PRIVMSG #a :never sent")
    assert cmds(got)[-1] == "ERROR"
    assert "bye now" in got[-1].params[0]
    assert bob.lines() == ["* zoe left #a (bye now)"]
    assert zoe.effects[-1] == s.Close("bye now")
    assert zoe.closed
    assert hub.member("zoe") is None


def test_a_lost_connection_is_a_quit_for_other_irc_users(hub: Hub) -> None:
    zoe = register(hub, "zoe")
    ann = register(hub, "ann")
    zoe("JOIN #a,#b")
    ann("JOIN #a,#b")
    zoe.read()
    effects = ann.irc.connection_lost("connection lost")
    assert effects[-1] == s.Close("connection lost")
    # One QUIT per room shared (the hub announces each room's departure on
    # its own); clients ignore a QUIT from a nick they no longer know.
    got = zoe.read()
    assert [(m.command, m.params) for m in got] == [("QUIT", ("connection lost",))] * 2
    assert ann.irc.connection_lost("again") == []


def test_an_idle_client_is_pinged_and_dropped_if_it_does_not_answer(hub: Hub) -> None:
    zoe = register(hub, "zoe")
    assert zoe.irc.idle() == []
    [ping] = zoe.read()
    assert (ping.command, ping.params) == ("PING", (SERVER,))
    zoe(f"PONG {SERVER}")
    assert zoe.irc.idle() == []
    zoe.read()
    effects = zoe.irc.idle()
    assert effects[-1] == s.Close("connection lost")
    assert hub.member("zoe") is None


def test_queries(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    zoe("JOIN #a")
    hub.join(bob.member, "#b")
    assert [(m.command, m.params[1:]) for m in zoe("LIST")] == [
        ("321", ("Channel", "Users  Name")),
        ("322", ("#a", "2", "")),
        ("322", ("#b", "1", "")),
        ("323", ("End of /LIST",)),
    ]
    assert [m.command for m in zoe("NAMES #a")] == ["353", "366"]
    assert [m.command for m in zoe("NAMES #b")] == ["366"]
    whois = zoe("WHOIS bob")
    assert cmds(whois) == ["311", "319", "312", "318"]
    assert whois[1].params[2] == "#a #b"
    assert cmds(zoe("WHOIS nobody")) == ["401", "318"]
    assert zoe("ISON bob nobody ZOE")[0].params[1] == "bob zoe"
    assert cmds(zoe("WHO bob")) == ["352", "315"]
    assert cmds(zoe("WHO #b")) == ["315"]
    assert cmds(zoe("TOPIC #a")) == ["331"]
    assert cmds(zoe("TOPIC #a :new")) == ["482"]
    assert cmds(zoe("TOPIC #b")) == ["442"]
    assert cmds(zoe("LUSERS")) == ["251", "255"]
    assert cmds(zoe("MOTD")) == ["422"]
    assert cmds(zoe("FROB x")) == ["421"]
    assert cmds(zoe("JOIN")) == ["461"]


def test_the_motd_when_there_is_one(hub: Hub) -> None:
    custom = IRCRules(server=SERVER, motd=("Be nice.", "Really."))
    got = register(hub, "zoe", rules_=custom)
    assert [m.params[1] for m in by(got("MOTD"), "372")] == ["- Be nice.", "- Really."]


def test_framing_problems_are_answered_and_the_connection_goes_on(hub: Hub) -> None:
    zoe = register(hub, "zoe")
    zoe("JOIN #a")
    zoe.read()
    got = zoe("PRIVMSG #a :" + "x" * 600, "@tags-only", "PING :still here")
    assert [(m.command, m.params[1:]) for m in got[:1]] == [("417", ("Input line was too long",))]
    assert cmds(got) == ["417", "421", "PONG"]


def test_a_burst_of_lines_to_one_channel_is_one_hand_over(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe")
    zoe("JOIN #a")
    bob.lines()
    zoe("PRIVMSG #a :one", "PRIVMSG #a :two", "PRIVMSG #a :three")
    [burst] = [bob.inbox.receive_nowait()]
    assert burst.count(b"\n") == 3


# --- CHATHISTORY --------------------------------------------------------------------


def history_client(hub: Hub) -> tuple[Client, LineUser]:
    bob = LineUser(hub, "bob")
    for i in range(1, 9):
        hub.say(bob.member, "#a", [f"line {i}"])
    zoe = register(hub, "zoe", caps="batch server-time message-tags draft/chathistory")
    got = zoe("JOIN #a")
    # A client that reads history itself gets none with its JOIN.
    assert not by(got, "PRIVMSG")
    return zoe, bob


def texts(got: list[irc.Message]) -> list[str]:
    return [m.params[1] for m in got if m.command == "PRIVMSG"]


def test_chathistory_latest_before_after_around_between(hub: Hub) -> None:
    zoe, _ = history_client(hub)
    got = zoe("CHATHISTORY LATEST #a * 3")
    assert cmds(got) == ["BATCH", "PRIVMSG", "PRIVMSG", "PRIVMSG", "BATCH"]
    start, *lines, end = got
    assert start.params[0].startswith("+")
    assert start.params[1:] == ("chathistory", "#a")
    assert end.params == ("-" + start.params[0][1:],)
    assert all(m.tag("batch") == start.params[0][1:] for m in lines)
    assert texts(got) == ["line 6", "line 7", "line 8"]
    six = lines[0].tag("msgid")
    assert six is not None
    ref = f"msgid={six}"  # "line 6"
    assert texts(zoe(f"CHATHISTORY BEFORE #a {ref} 2")) == ["line 4", "line 5"]
    assert texts(zoe(f"CHATHISTORY AFTER #a {ref} 5")) == ["line 7", "line 8"]
    assert texts(zoe(f"CHATHISTORY LATEST #a {ref} 5")) == ["line 7", "line 8"]
    assert texts(zoe(f"CHATHISTORY AROUND #a {ref} 3")) == ["line 5", "line 6", "line 7"]
    first = zoe("CHATHISTORY LATEST #a * 8")[1].tag("msgid")
    assert texts(zoe(f"CHATHISTORY BETWEEN #a msgid={first} {ref} 10")) == [
        "line 2",
        "line 3",
        "line 4",
        "line 5",
    ]
    assert texts(zoe(f"CHATHISTORY BETWEEN #a {ref} msgid={first} 2")) == ["line 4", "line 5"]


def test_chathistory_by_timestamp_and_its_errors(hub: Hub) -> None:
    zoe, _ = history_client(hub)
    # Every line was said at the hub clock's one instant.
    stamp = zoe("CHATHISTORY LATEST #a * 1")[1].tag("time")
    assert stamp == "2023-11-14T22:13:20.000Z"
    assert len(texts(zoe(f"CHATHISTORY BEFORE #a timestamp={stamp} 10"))) == 0
    assert len(texts(zoe("CHATHISTORY AFTER #a timestamp=2023-11-14T22:13:19.5Z 10"))) == 8
    for bad in [
        "CHATHISTORY LATEST #b * 5",
        "CHATHISTORY BEFORE #a * 5",
        "CHATHISTORY LATEST #a * x",
        "CHATHISTORY LATEST #a nonsense 5",
        "CHATHISTORY SIDEWAYS #a * 5",
        "CHATHISTORY LATEST #a",
    ]:
        [fail] = zoe(bad)
        assert (fail.command, fail.params[0]) == ("FAIL", "CHATHISTORY"), bad


def test_chathistory_from_the_store_is_an_effect_and_its_answer() -> None:
    hub = Hub(history=10, clock=Clock())
    bob = LineUser(hub, "bob")
    hub.say(bob.member, "#a", ["kept"])
    zoe = register(hub, "zoe", caps="batch draft/chathistory", rules_=rules(store_history=True))
    zoe("JOIN #a")
    assert zoe("CHATHISTORY LATEST #a * 5") == []
    assert isinstance(zoe.effects[-1], s.FetchHistory)
    assert zoe.effects[-1].room == "#a"
    assert zoe.irc.fetched("#a", hub.recent("#a", 10)) == []
    assert texts(zoe.read()) == ["kept"]


# --- labeled-response -------------------------------------------------------------------

LABELS = "labeled-response batch"


def line_of(msg: irc.Message) -> str:
    return irc.format_message(msg).removesuffix("\r\n")


def test_a_labeled_command_gets_one_labeled_answer(hub: Hub) -> None:
    bob = LineUser(hub, "bob")
    zoe = register(hub, "zoe", caps=LABELS)
    ann = register(hub, "ann", caps="echo-message")
    [pong] = zoe("@label=p1 PING tok")
    assert (pong.command, pong.tag("label")) == ("PONG", "p1")
    # No answer at all (its own line is not sent back): an ACK.
    [ack] = zoe("@label=p2 PONG x")
    assert line_of(ack) == f"@label=p2 :{SERVER} ACK"
    ann("JOIN #a")
    # Several lines: one labeled-response batch, the label on its start only.
    got = zoe("@label=j JOIN #a")
    start, *inside, end = got
    assert (start.command, start.params[1]) == ("BATCH", "labeled-response")
    assert start.tag("label") == "j"
    ref = start.params[0].removeprefix("+")
    assert cmds(inside) == ["JOIN", "353", "366"]
    assert {m.tag("batch") for m in inside} == {ref}
    assert all(m.tag("label") is None for m in inside)
    assert (end.command, end.params, end.tags) == ("BATCH", (f"-{ref}",), ())
    assert ann.read()[0].tags == ()  # the room's JOIN carries no label
    [ack] = zoe("@label=m PRIVMSG #a :hello")
    assert (ack.command, ack.tag("label")) == ("ACK", "m")
    # The others get the line as ever, unlabeled.
    [said] = ann.read()
    assert (said.command, said.params, said.tags) == ("PRIVMSG", ("#a", "hello"), ())
    assert bob.lines()[-1].endswith("<zoe> hello")
    # A command that fails is answered too: the error is the answer.
    [error] = zoe("@label=e JOIN &x")
    assert (error.command, error.tag("label")) == ("403", "e")


def test_with_echo_message_the_echo_is_the_labeled_answer(hub: Hub) -> None:
    LineUser(hub, "bob")
    zoe = register(hub, "zoe", caps=f"{LABELS} echo-message")
    zoe("JOIN #a")
    [echo] = zoe("@label=e1 PRIVMSG #a :hi")
    assert (echo.command, echo.params, echo.tag("label")) == ("PRIVMSG", ("#a", "hi"), "e1")
    [private] = zoe("@label=e2 PRIVMSG bob :psst")
    assert (private.params, private.tag("label")) == (("bob", "psst"), "e2")
    # A line too long for one message is echoed as several: a batch.
    start, *pieces, _ = zoe("@label=e3 PRIVMSG #a :" + "word " * 99)
    assert (start.command, start.tag("label")) == ("BATCH", "e3")
    assert len(pieces) >= 2
    assert cmds(pieces) == ["PRIVMSG"] * len(pieces)
    # Unlabeled lines still go out in bursts, unlabeled.
    got = zoe("PRIVMSG #a :one", "PRIVMSG #a :two")
    assert [(m.params[1], m.tags) for m in got] == [("one", ()), ("two", ())]


def test_labels_are_ignored_unless_negotiated_or_too_long(hub: Hub) -> None:
    plain = register(hub, "plain", caps="batch")
    [pong] = plain("@label=x PING t")
    assert pong.tags == ()
    assert plain("@label=x PRIVMSG nobody_here :hi")[0].tags == ()
    zoe = register(hub, "zoe", caps=LABELS)
    [pong] = zoe("@label=" + "x" * 65 + " PING t")
    assert pong.tags == ()  # past 64 bytes: no label
    [pong] = zoe("@label=" + "x" * 64 + " PING t")
    assert pong.tag("label") == "x" * 64


def test_a_label_cannot_inject_anything(hub: Hub) -> None:
    zoe = register(hub, "zoe", caps=LABELS)
    ann = register(hub, "ann")
    ann("JOIN #a")
    zoe("JOIN #a")
    ann.read()
    # Escaped CR LF, space and ; in the value come back escaped, in one line, to the sender.
    zoe.framer.receive_data(b"@label=a\\r\\nQUIT\\s:x\\:y=z PRIVMSG #a :hi\r\n")
    zoe.effects += zoe.irc.receive(zoe.framer.events())
    raw = b""
    while True:
        try:
            raw += zoe.inbox.receive_nowait()
        except trio.WouldBlock:
            break
    assert raw == f"@label=a\\r\\nQUIT\\s:x\\:y=z :{SERVER} ACK\r\n".encode()
    [ack] = [m for m in map(irc.parse, raw.decode().split("\r\n")) if m is not None]
    assert ack.tag("label") == "a\r\nQUIT :x;y=z"
    [said] = ann.read()
    assert (said.tags, said.params) == ((), ("#a", "hi"))


def test_an_answer_still_to_come_is_labeled_when_it_comes() -> None:
    send, inbox = trio.open_memory_channel[bytes](100)
    outbox = IRCOutbox(send)
    for n in range(MAX_LATE + 1):
        outbox.answer(f"x{n}")
        outbox.finish_later(b":z PRIVMSG #a :", 1, f"L{n}", SERVER)
    outbox.send_nowait(b":y PRIVMSG #a :other\r\n:z PRIVMSG #a :mine\r\n")
    # The oldest wait was given up: the first echo answers the second label.
    assert inbox.receive_nowait() == b":y PRIVMSG #a :other\r\n@label=x1 :z PRIVMSG #a :mine\r\n"
    outbox.send_nowait(b":z PRIVMSG #b :elsewhere\r\n")
    assert inbox.receive_nowait() == b":z PRIVMSG #b :elsewhere\r\n"


def test_a_labeled_answer_that_waits_for_an_effect() -> None:
    hub = Hub(history=10, clock=Clock())
    bob = LineUser(hub, "bob")
    hub.say(bob.member, "#a", ["kept"])
    caps = f"{LABELS} draft/chathistory"
    zoe = register(hub, "zoe", caps=caps, rules_=rules(store_history=True))
    zoe("JOIN #a")
    assert zoe("@label=h CHATHISTORY LATEST #a * 5") == []
    # What comes meanwhile is live, not the answer: it goes out unlabeled at once.
    hub.say(bob.member, "#a", ["live"])
    [live] = zoe.read()
    assert (live.params[1], live.tags) == ("live", ())
    zoe.irc.fetched("#a", hub.recent("#a", 10))
    start, inner, *lines, inner_end, end = zoe.read()
    assert (start.command, start.params[1]) == ("BATCH", "labeled-response")
    assert start.tag("label") == "h"
    ref = start.params[0][1:]
    # The chathistory batch is nested in the labeled one.
    assert (inner.command, inner.params[1], inner.tag("batch")) == ("BATCH", "chathistory", ref)
    assert [m.params[1] for m in lines] == ["kept", "live"]
    assert {m.tag("batch") for m in lines} == {inner.params[0][1:]}
    assert (inner_end.tag("batch"), end.params) == (ref, (f"-{ref}",))


# --- SASL PLAIN ----------------------------------------------------------------------


class Book:
    """The account book's synchronous side: ``zoe`` is registered."""

    def registered(self, name: str, /) -> bool:
        return p.name_key(name) == "zoe"

    def admin(self, name: str, /) -> bool:
        return False


def sasl_client(hub: Hub, delays: FailureDelays | None = None) -> Client:
    client = Client(hub, accounts=Book(), delays=delays)
    [ls] = client("CAP LS 302")
    assert "sasl=PLAIN" in ls.params[2].split()
    assert client("CAP REQ :sasl")[0].params[1] == "ACK"
    return client


def authenticate(client: Client, account: str, password: str, *after: str) -> s.AccountCall:
    """The client's exchange, up to the check; ``after`` are lines sent behind it."""
    [plus] = client("AUTHENTICATE PLAIN")
    assert (plus.command, plus.params) == ("AUTHENTICATE", ("+",))
    chunks = [f"AUTHENTICATE {c}" for c in irc_sasl.encode(account, password)]
    assert client(*chunks, *after) == []
    call = client.effects[-1]
    assert isinstance(call, s.AccountCall)
    assert (call.request.kind, call.request.name, call.request.password) == (
        "verify",
        account,
        password,
    )
    assert password not in repr(call)
    return call


def test_sasl_plain_logs_in_and_registration_asks_no_more(hub: Hub) -> None:
    zoe = sasl_client(hub)
    zoe("NICK zoe", "USER u 0 * :Zoe")
    # CAP END waits behind the check.
    call = authenticate(zoe, "zoe", "zoe-pw", "CAP END")
    assert len(zoe.irc.pending) == 1
    assert zoe.irc.account_result(Outcome(call.request, True)) == []
    logged, ok = zoe.read()
    assert (logged.command, logged.params[1:3]) == ("900", ("zoe!zoe@irc.test", "zoe"))
    assert ok.command == "903"
    zoe.effects += zoe.irc.resume()
    got = zoe.read()
    assert cmds(got)[0] == "001"
    assert "433" not in cmds(got)
    assert zoe.irc.session.account == "zoe"
    assert cmds(zoe("AUTHENTICATE PLAIN")) == ["907"]


def test_a_sasl_payload_in_chunks_of_400_and_a_final_plus(hub: Hub) -> None:
    long = "p" * 295  # "\0zoe\0" and 295 bytes: exactly 400 of base64
    assert [len(c) for c in irc_sasl.encode("zoe", long)] == [400, 1]
    assert [len(c) for c in irc_sasl.encode("zoe", long * 2)] == [400, 396]
    for password in (long, long * 2):
        call = authenticate(sasl_client(hub), "zoe", password)
        assert call.request.password == password


def test_a_wrong_sasl_password_waits_the_growing_delay_then_904(hub: Hub) -> None:
    delays = FailureDelays()
    zoe = sasl_client(hub, delays)
    waits = []
    for _ in range(2):
        call = authenticate(zoe, "zoe", "guess")
        [wait] = zoe.irc.account_result(Outcome(call.request, False, p.WRONG_PASSWORD))
        assert isinstance(wait, s.Wait)
        assert zoe.read() == []  # nothing until the delay is over
        waits.append(wait.seconds)
        assert zoe.irc.delay_elapsed() == []
        [failed] = zoe.read()
        assert failed.command == "904"
    assert waits[1] > waits[0] > 0
    # Per address, whatever the connection: a new one from there waits longer still,
    # as would the server password and the line door's account passwords.
    again = sasl_client(hub, delays)
    call = authenticate(again, "zoe", "guess")
    [wait] = again.irc.account_result(Outcome(call.request, False, p.WRONG_PASSWORD))
    assert isinstance(wait, s.Wait)
    assert wait.seconds > waits[1]
    # The nick is still registered to someone: without SASL's login, 433.
    assert "433" in cmds(zoe("NICK zoe", "USER u 0 * :Z", "CAP END"))


def test_sasl_refusals(hub: Hub) -> None:
    zoe = sasl_client(hub)
    assert [(m.command, m.params[1]) for m in zoe("AUTHENTICATE EXTERNAL")] == [
        ("908", "PLAIN"),
        ("904", "SASL authentication failed"),
    ]
    zoe("AUTHENTICATE PLAIN")
    assert cmds(zoe("AUTHENTICATE *")) == ["906"]
    zoe("AUTHENTICATE PLAIN")
    assert cmds(zoe("AUTHENTICATE " + "A" * 401)) == ["905"]  # a chunk over 400 bytes
    zoe("AUTHENTICATE PLAIN")
    too_long = zoe(*["AUTHENTICATE " + "A" * 400] * 21)  # 8,400 bytes: past the limit
    assert cmds(too_long) == ["905"]
    assert cmds(zoe("AUTHENTICATE QUFB")) == ["908", "904"]  # the exchange was dropped
    for payload in ("not base64!", irc_sasl.encode("zoe", "pw", authzid="ann")[0], "AGJvYg=="):
        zoe("AUTHENTICATE PLAIN")
        [failed] = zoe(f"AUTHENTICATE {payload}")
        assert failed.command == "904", payload
    assert not [e for e in zoe.effects if isinstance(e, s.AccountCall)]
    plain = Client(hub)  # no accounts: no sasl offered, nor taken
    [ls] = plain("CAP LS 302")
    assert "sasl" not in ls.params[2]
    assert plain("CAP REQ :sasl")[0].params[1] == "NAK"
    assert cmds(plain("AUTHENTICATE PLAIN")) == ["904"]


# --- anything a client may send ------------------------------------------------------

_verbs = st.sampled_from(
    [
        "CAP",
        "PASS",
        "NICK",
        "USER",
        "PING",
        "PONG",
        "QUIT",
        "JOIN",
        "PART",
        "PRIVMSG",
        "NOTICE",
        "NAMES",
        "WHO",
        "WHOIS",
        "LIST",
        "TOPIC",
        "MODE",
        "AWAY",
        "ISON",
        "USERHOST",
        "LUSERS",
        "MOTD",
        "CHATHISTORY",
        "AUTHENTICATE",
        "FOO",
        "001",
    ]
)
_words = st.sampled_from(
    ["#a", "#b", "#A", "0", "*", "bob", "zoe", "[x]", "", ",", "#a,#b", "+i", "-i", "+o", "b",
     "LS", "REQ", "END", "LIST", "302", "server-time", "LATEST", "BEFORE", "msgid=#a/1",
     "timestamp=2023-11-14T22:13:20.000Z", "5", "\x01ACTION x\x01", "\x01VERSION\x01",
     "x" * 30, "zoë", "-", "#", "PLAIN", "+", "AHpvZQB6b2VzLXBhc3N3b3Jk", "A" * 400, "sasl",
     "labeled-response batch away-notify echo-message"]
)  # fmt: skip
_tags = st.sampled_from(["", "@label=x ", "@label=a\\s;b ", "@label= ", "@time=1;label=y "])


@settings(deadline=None, max_examples=200)
@given(
    st.booleans(),
    st.sampled_from(["", "labeled-response batch away-notify echo-message"]),
    st.lists(st.tuples(_tags, _verbs, st.lists(_words, max_size=4)), max_size=30),
)
def test_no_sequence_of_messages_breaks_the_session(
    registered: bool, caps: str, script: list[tuple[str, str, list[str]]]
) -> None:
    hub = Hub(history=10, clock=Clock(), max_rooms_per_member=3)
    bob = LineUser(hub, "bob")
    hub.say(bob.member, "#a", ["hi"])
    client = register(hub, "zoe", caps=caps) if registered else Client(hub, accounts=Book())
    for tags, verb, words in script:
        params = [w for w in words[:-1] if w and " " not in w and not w.startswith(":")]
        last = f" :{words[-1]}" if words else ""
        line = tags + " ".join([verb, *params]) + last
        for msg in client(line):  # every line written parses
            assert msg.command
        if client.irc.closed:
            break
    client.irc.connection_lost("connection lost")
    assert client.irc.closed
    nick = client.irc.nick
    assert nick is None or hub.member(nick) is None  # whatever happened, it left
    assert [m.name for m in hub.local_members()] == ["bob"]


def test_the_outbox_takes_out_exactly_the_expected_own_lines() -> None:
    from triochat.core.irc_session import IRCOutbox

    sent: list[bytes] = []

    class Inner:
        def send_nowait(self, value: bytes) -> None:
            sent.append(value)

        def close(self) -> None:
            sent.append(b"<closed>")

    outbox = IRCOutbox(Inner())
    me = b":zoe!zoe@h PRIVMSG #a :"
    outbox.expect(me, 3)
    other = b":bob!bob@h PRIVMSG #a :hi\r\n"
    # Own lines mixed with others', over two hand-overs (as from a cluster).
    outbox.send_nowait(me + b"one\r\n" + other + b"@time=x " + me + b"two\r\n")
    outbox.send_nowait(b"@batch=h1 " + me + b"history\r\n" + me + b"three\r\n")
    outbox.send_nowait(me + b"four\r\n")  # no longer expected: passes
    assert sent == [other, b"@batch=h1 " + me + b"history\r\n", me + b"four\r\n"]
    # A JOIN: the first passes (the join's own answer), the copy is taken out.
    join = b":zoe!zoe@h JOIN #a"
    outbox.expect(join, after=1)
    outbox.send_nowait(join + b"\r\n" + other)
    outbox.send_nowait(b"@time=y " + join + b"\r\n")
    outbox.send_nowait(join + b"ed\r\n")  # another line: only whole lines match
    assert sent[3:] == [join + b"\r\n" + other, join + b"ed\r\n"]
    outbox.close()
    assert sent[-2:] == [b"ERROR :Closing link\r\n", b"<closed>"]
    outbox.close()
    assert sent[-1] == b"<closed>"
    assert sent.count(b"ERROR :Closing link\r\n") == 1


def test_messages_after_a_name_claim_wait_for_its_outcome(hub: Hub) -> None:
    client = register(hub, "zoe", rules_=rules(claim_names=True), claimed=True)
    assert client("NICK zed", "JOIN #a", "PRIVMSG #a :after") == []
    assert client.effects[-1] == s.ClaimName("zed")
    assert [type(m) for m in client.irc.pending] == [irc.Message, irc.Message]
    assert client.irc.claim_result(Claim.CLAIMED) == []
    [nick] = client.read()
    assert (nick.command, nick.params) == ("NICK", ("zed",))  # in no room: the door says it
    assert client.irc.resume() == []
    got = client.read()
    assert [m.command for m in got][:1] == ["JOIN"]
    assert got[0].source == f"zed!zed@{SERVER}"
    assert not client.irc.pending


def test_a_burst_is_rendered_once_per_set_of_capabilities(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    from triochat.protocol.irc.render import IRCDialect

    bob = LineUser(hub, "bob")
    plain = [register(hub, f"plain{i}") for i in range(3)]
    timed = [register(hub, f"timed{i}", caps="server-time") for i in range(2)]
    for client in (*plain, *timed):
        client("JOIN #a")
    for client in (*plain, *timed):
        client.read()
    renders: list[str] = []
    original = IRCDialect.render

    def counting(self: IRCDialect, events: Sequence[ev.Event], /) -> bytes:
        renders.append(self.name)
        return original(self, events)

    monkeypatch.setattr(IRCDialect, "render", counting)
    hub.say(bob.member, "#a", ["one", "two"])
    assert sorted(renders) == ["irc", "irc+server-time"]
    assert all(len(c.read()) == 2 for c in (*plain, *timed))
