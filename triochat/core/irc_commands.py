"""The IRC commands a registered (or registering) client may send, one function each.

Each takes the :class:`~triochat.core.irc_session.IRCSession` and the message,
writes the replies IRC wants through it, turns the request into the core's
commands (given to the shared session) or hub calls, and returns the effects
for the I/O layer. :data:`HANDLERS` says which command goes where, and which
may come before registration.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from ..protocol import line as p
from ..protocol.irc import history, names, sasl, wire
from ..protocol.irc.render import NOTHING, RENDER_CAPS, without
from . import commands as c, events as ev
from .accounts import Request
from .hub import Hub
from .session import AccountCall, Close, FetchHistory, Output, State

if TYPE_CHECKING:
    from .irc_session import IRCSession

CAPS: Final = (
    "away-notify",
    "batch",
    "draft/chathistory",
    "echo-message",
    "labeled-response",
    "message-tags",
    "multi-prefix",
    "server-time",
)
"""The capabilities offered; ``multi-prefix`` is trivially true (``@`` is the only prefix).
``sasl`` is offered too when the server has accounts (``--db``)."""

AWAYLEN: Final = 200
"""The longest away text kept (``AWAYLEN`` in 005)."""

USER_MODES: Final = frozenset("iw")
"""User modes a client may set on itself; they change nothing, clients expect them."""

_ACTION_START: Final = "\x01ACTION "

Handler = Callable[["IRCSession", wire.Message], list[Output]]


def _need(session: IRCSession, msg: wire.Message, count: int) -> bool:
    """Whether ``msg`` has ``count`` parameters; otherwise a 461 is sent."""
    if len(msg.params) >= count and all(msg.params[:count]):
        return True
    session.numeric("461", msg.command, "Not enough parameters")
    return False


def _cap(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    sub = msg.params[0].upper()
    me = session.target
    server = session.rules.server
    offered = _offered(session)
    if sub == "LS":
        if not session.registered:
            session.cap_open = True
        if len(msg.params) > 1 and msg.params[1].isdecimal():
            session.cap_version = int(msg.params[1])
        listed = [
            f"{cap}={','.join(sasl.MECHANISMS)}"
            if cap == "sasl" and session.cap_version >= 302
            else cap
            for cap in offered
        ]
        session.send(wire.message("CAP", me, "LS", " ".join(listed), source=server))
    elif sub == "LIST":
        session.send(wire.message("CAP", me, "LIST", " ".join(sorted(session.caps)), source=server))
    elif sub == "REQ":
        if not session.registered:
            session.cap_open = True
        asked = msg.params[1] if len(msg.params) > 1 else ""
        wanted = asked.split()
        adding = {cap for cap in wanted if not cap.startswith("-")}
        removing = {cap[1:] for cap in wanted if cap.startswith("-")}
        fixed = session.registered and bool((adding | removing) & RENDER_CAPS)
        if not wanted or not adding | removing <= set(offered) or fixed:
            session.send(wire.message("CAP", me, "NAK", asked, source=server))
        else:
            session.caps = (session.caps | adding) - removing or NOTHING
            session.labeled = {"labeled-response", "batch"} <= session.caps
            session.send(wire.message("CAP", me, "ACK", asked, source=server))
    elif sub == "END":
        if not session.registered:
            session.cap_open = False
            return session.try_register()
    else:
        session.numeric("410", msg.params[0], "Invalid CAP command")
    return []


def _offered(session: IRCSession) -> tuple[str, ...]:
    """The capabilities this session may ask for: ``sasl`` only where there are accounts."""
    if session.accounts is None:
        return CAPS
    return tuple(sorted((*CAPS, "sasl")))


def _authenticate(session: IRCSession, msg: wire.Message) -> list[Output]:
    """SASL PLAIN: ``AUTHENTICATE PLAIN``, ``+``, the base64 payload in chunks, then 903 or 904."""
    if not _need(session, msg, 1):
        return []
    if "sasl" not in session.caps:
        session.numeric("904", "SASL authentication failed (CAP REQ sasl first)")
        return []
    arg = msg.params[0]
    if session.logged_in is not None:
        session.numeric("907", "You have already authenticated using SASL")
        return []
    if session.registered:
        session.numeric("904", "SASL authentication is only before registration here")
        return []
    exchange = session.sasl
    if arg == "*":
        session.sasl = None
        session.numeric("906" if exchange is not None else "904", "SASL authentication aborted")
        return []
    if exchange is None:
        if arg.upper() not in sasl.MECHANISMS:
            session.numeric("908", ",".join(sasl.MECHANISMS), "are available SASL mechanisms")
            session.numeric("904", "SASL authentication failed")
            return []
        session.sasl = sasl.Exchange(session.rules.max_sasl)
        session.send(wire.message("AUTHENTICATE", "+"))
        return []
    try:
        payload = exchange.feed(arg)
    except sasl.TooLong:
        session.sasl = None
        session.numeric("905", "SASL message too long")
        return []
    if payload is None:
        return []
    session.sasl = None
    credentials = sasl.plain(payload)
    if isinstance(credentials, str):
        session.numeric("904", f"SASL authentication failed: {credentials}")
        return []
    limit = session.session.rules.max_password
    session.sasl_checking = credentials.account
    # A password past the limit is wrong all the same, and cheaper to hash cut.
    password = credentials.password[: limit + 1]
    return [AccountCall(Request("verify", credentials.account, password))]


def _pass(session: IRCSession, msg: wire.Message) -> list[Output]:
    if session.registered or session.session.state is not State.AWAITING_NAME:
        session.numeric("462", "You may not reregister")
    elif _need(session, msg, 1):
        session.password = msg.params[0]
    return []


def _nick(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not msg.params or not msg.params[0]:
        session.numeric("431", "No nickname given")
        return []
    nick = msg.params[0]
    error = names.nick_error(nick)
    if error is not None:
        session.numeric("432", nick, error)
        return []
    member = session.member
    if member is not None and nick == member.name:
        return []
    problem = session.hub.name_unavailable(nick, member)
    if problem is not None:
        code = nick_code(session.hub, nick)
        session.numeric(code, nick, problem if code == "432" else "Nickname is already in use")
        return []
    if member is None:
        session.nick = nick
        return session.try_register()
    if session.session.state is not State.CHATTING:
        session.numeric("400", "NICK", "A name change is already under way")
        return []
    old = member.name
    outputs = session.translate(session.session.command(c.Nick(nick)))
    session.renamed(old)
    return outputs


def nick_code(hub: Hub, nick: str) -> str:
    """``432`` if the server's name policy refuses ``nick``, else ``433`` (it is taken)."""
    return "432" if p.name_error(nick, hub.names) is not None else "433"


def _user(session: IRCSession, msg: wire.Message) -> list[Output]:
    if session.registered or session.user is not None:
        session.numeric("462", "You may not reregister")
        return []
    if not _need(session, msg, 4):
        return []
    session.user = msg.params[0]
    return session.try_register()


def _ping(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    server = session.rules.server
    session.send(wire.message("PONG", server, msg.params[0], source=server))
    return []


def _pong(session: IRCSession, msg: wire.Message) -> list[Output]:
    session.awaiting_pong = False
    return []


def _quit(session: IRCSession, msg: wire.Message) -> list[Output]:
    reason = wire.clean_text(msg.params[0]).strip() if msg.params else ""
    farewell = f"Closing link: {session.target} (Quit: {reason or 'quit'})"
    session.outbox.farewell = farewell
    if not session.registered:
        session.closed = True
        session.send(wire.message("ERROR", farewell))
        outputs = session.translate(session.session.close("quit"))
        return [*outputs, Close("quit")]
    return session.translate(session.session.command(c.Quit(reason)))


def _join(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    member = session.member
    assert member is not None
    if msg.params[0] == "0":
        return _part_rooms(session, list(member.rooms), "")
    outputs: list[Output] = []
    for name in msg.params[0].split(","):
        room = names.channel(name)
        if room is None:
            session.numeric("403", name or "*", f"No such channel: {p.ROOM_RULES}")
            continue
        if room in member.rooms:
            continue  # IRC servers ignore a JOIN to a channel one is in
        if len(member.rooms) >= session.rules.max_rooms:
            session.numeric("405", name, "You have joined too many channels")
            continue
        session.dialect.entering |= {room}
        # The join's answer brings the JOIN first; the room's JOIN after it is a copy.
        with session.own_lines(f":{session.me()} JOIN {room}", after=1):
            outputs += session.translate(session.session.command(c.Join(room)))
        session.dialect.entering = without(session.dialect.entering, room)
        if room in member.rooms:
            session.hub.audience(member, room)
    return outputs


def _part_rooms(session: IRCSession, rooms: list[str], reason: str) -> list[Output]:
    outputs: list[Output] = []
    member = session.member
    assert member is not None
    for name in rooms:
        room = names.channel(name)
        if room is None:
            session.numeric("403", name or "*", "No such channel")
        elif room not in member.rooms:
            session.numeric("442", name, "You're not on that channel")
        else:
            outputs += session.translate(session.session.command(c.Part(room, reason)))
            if room not in member.rooms:
                # The hub tells the room, which the member has already left.
                params = (room, reason) if reason else (room,)
                session.send(wire.Message("PART", params, session.me()))
    return outputs


def _part(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    reason = wire.clean_text(msg.params[1]).strip() if len(msg.params) > 1 else ""
    return _part_rooms(session, msg.params[0].split(","), reason)


def _privmsg(session: IRCSession, msg: wire.Message) -> list[Output]:
    notice = msg.command == "NOTICE"
    if not msg.params or not msg.params[0]:
        if not notice:
            session.numeric("411", f"No recipient given ({msg.command})")
        return []
    if len(msg.params) < 2 or not msg.params[1]:
        if not notice:
            session.numeric("412", "No text to send")
        return []
    targets, raw = msg.params[0].split(","), msg.params[1]
    if msg.params[0].lower() == "nickserv" and not notice:
        return _nickserv(session, raw)
    member = session.member
    assert member is not None
    action = raw.startswith(_ACTION_START)
    if "\x01" in raw and not action:
        if not notice:
            session.send(
                wire.message(
                    "NOTICE",
                    session.target,
                    "CTCP other than ACTION is not supported here",
                    source=session.rules.server,
                )
            )
        return []
    text = wire.clean_text(raw[len(_ACTION_START) :].rstrip("\x01") if action else raw)
    if not text.strip():
        if not notice:
            session.numeric("412", "No text to send")
        return []
    for target in targets[: session.rules.max_targets]:
        if target.startswith("#"):
            room = target.lower()
            if room not in member.rooms:
                if not notice:
                    code = "404" if names.channel(target) else "403"
                    session.numeric(code, target, "Cannot send to channel (join it first)")
                continue
            if action:
                if session.echo_answers_later:
                    me = session.me()
                    count = session.dialect.text_lines(room, text, me, action=True)
                    session.late_echo = (f":{me} PRIVMSG {room} :", count)
                session.translate(session.session.command(c.Me(text, room)))
            else:
                session.say(room, [text])
        elif names.nick_error(target) is not None or session.hub.name_unavailable(target) is None:
            if not notice:
                session.numeric("401", target, "No such nick")
        else:
            # A private action reaches the line door as text, which has no
            # private /me; CTCP's \x01 would be a control character there.
            private = f"* {text}" if action else text
            # An away recipient's 301 is the hub's answer (rendered so by the dialect);
            # a NOTICE is never answered, so there it is taken out.
            away = session.away_of(target) if notice else None
            if away is None:
                session.translate(session.session.command(c.Msg(target, private)))
                continue
            held = session.hub.member(target)
            key = p.name_key(target)
            shown = held.name if held is not None else session.hub.backplane.remote_name(key)
            reply = f":{session.rules.server} 301 {session.target} {shown} :".encode()
            session.outbox.expect(reply)
            try:
                session.translate(session.session.command(c.Msg(target, private)))
            finally:
                session.outbox.forget(reply)
    return []


def _names(session: IRCSession, msg: wire.Message) -> list[Output]:
    member = session.member
    assert member is not None
    rooms = msg.params[0].split(",") if msg.params and msg.params[0] else []
    for name in rooms:
        room = name.lower()
        if room in member.rooms:
            session.hub.audience(member, room)
        else:
            session.numeric("366", name, "End of /NAMES list")
    if not rooms:
        session.numeric("366", "*", "End of /NAMES list")
    return []


def _who(session: IRCSession, msg: wire.Message) -> list[Output]:
    member = session.member
    assert member is not None
    mask = msg.params[0] if msg.params and msg.params[0] else "*"
    server = session.rules.server
    room = mask.lower()
    if room in member.rooms:
        session.dialect.who |= {room}
        session.hub.audience(member, room)
        session.dialect.who = without(session.dialect.who, room)
        return []
    if names.nick_error(mask) is None and session.hub.name_unavailable(mask) is not None:
        held = session.hub.member(mask)
        nick = held.name if held is not None else mask
        flags = "G" if session.away_of(nick) else "H"
        session.numeric("352", "*", nick, server, server, nick, flags, f"0 {nick}")
    session.numeric("315", mask, "End of /WHO list")
    return []


def _whois(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not msg.params or not msg.params[-1]:
        session.numeric("431", "No nickname given")
        return []
    server = session.rules.server
    target = msg.params[-1].split(",")[0]
    if names.nick_error(target) is not None or session.hub.name_unavailable(target) is None:
        session.numeric("401", target, "No such nick")
        session.numeric("318", target, "End of /WHOIS list")
        return []
    held = session.hub.member(target)
    nick = held.name if held is not None else target
    session.numeric("311", nick, nick, server, "*", nick)
    if held is not None and held.rooms:
        session.numeric("319", nick, " ".join(held.rooms))
    session.numeric("312", nick, server, "triochat")
    away = session.away_of(nick)
    if away is not None:
        out: list[str] = []
        session.dialect.away_reply(out, nick, away)
        session.send_bytes("".join(out).encode())
    accounts = session.accounts
    if held is not None and accounts is not None and accounts.registered(nick):
        # Online under a registered name: it gave the password (or registered it).
        session.numeric("330", nick, nick, "is logged in as")
    session.numeric("318", nick, "End of /WHOIS list")
    return []


def _list(session: IRCSession, msg: wire.Message) -> list[Output]:
    member = session.member
    assert member is not None
    session.hub.room_list(member)
    return []


def _topic(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    member = session.member
    assert member is not None
    name = msg.params[0]
    room = name.lower()
    if room not in member.rooms:
        session.numeric("442", name, "You're not on that channel")
        return []
    if len(msg.params) > 1:
        if _no_operators(session, room):
            return []
        return session.translate(session.session.command(c.Topic(msg.params[1], room)))
    moderation = session.session.moderation
    held = moderation.topics.get(room) if moderation is not None else None
    if held is not None:
        session.numeric("332", room, held.text)
        by = names.source(held.by, session.rules.server)
        session.numeric("333", room, by, str(int(held.time)))
        return []
    topic = None
    for event in session.hub.recent(room, session.hub.history):
        if isinstance(event, ev.TopicSet):
            topic = event
    if topic is None:
        session.numeric("331", room, "No topic is set")
    else:
        session.numeric("332", room, topic.topic)
        session.numeric(
            "333", room, names.source(topic.name, session.rules.server), str(int(topic.time))
        )
    return []


def _mode(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    member = session.member
    assert member is not None
    target = msg.params[0]
    if target.startswith("#"):
        room = names.channel(target)
        if room is None:
            session.numeric("403", target, "No such channel")
        elif len(msg.params) == 1:
            session.numeric("324", room, "+nt")
            created = session.hub.created(room)
            if created is not None:
                session.numeric("329", room, str(int(created)))
        elif msg.params[1].lstrip("+") in ("b", "") and len(msg.params) == 2:
            _ban_list(session, room)
        elif room not in member.rooms:
            session.numeric("442", target, "You're not on that channel")
        elif not _no_operators(session, room):
            return _channel_modes(session, room, msg.params[1], msg.params[2:])
        return []
    if p.name_key(target) != member.key:
        session.numeric("502", "Cannot change mode for other users")
        return []
    if len(msg.params) == 1:
        session.numeric("221", "+" + "".join(sorted(session.user_modes)))
        return []
    changes = msg.params[1]
    adding = True
    applied = ""
    unknown = False
    for char in changes:
        if char in "+-":
            adding = char == "+"
            applied += char
        elif char in USER_MODES:
            if adding:
                session.user_modes |= {char}
            else:
                session.user_modes = without(session.user_modes, char)
            applied += char
        else:
            unknown = True
    if unknown:
        session.numeric("501", "Unknown MODE flag")
    if applied.strip("+-"):
        session.send(wire.message("MODE", session.target, applied, source=session.me()))
    return []


def _nickserv(session: IRCSession, text: str) -> list[Output]:
    """``PRIVMSG NickServ :IDENTIFY [NICK] PASSWORD`` (and ``REGISTER PASSWORD``)."""
    verb, _, rest = text.strip().partition(" ")
    words = rest.split()
    command: c.Command
    if verb.upper() == "IDENTIFY" and words:
        command = c.Identify(words[-1])
    elif verb.upper() == "REGISTER" and words:
        command = c.Register(words[0])
    else:
        session.notice("NickServ: IDENTIFY [NICK] PASSWORD or REGISTER PASSWORD")
        return []
    return session.translate(session.session.command(command))


def _no_operators(session: IRCSession, room: str) -> bool:
    """Whether this door has no moderation at all (told with 482)."""
    if session.session.moderation is not None:
        return False
    session.numeric("482", room, "You're not a channel operator (no one is, here)")
    return True


def _ban_list(session: IRCSession, room: str) -> None:
    """``MODE #room +b``: 367 per ban in force, then 368."""
    moderation = session.session.moderation
    server = session.rules.server
    for ban in moderation.bans(room) if moderation is not None else ():
        mask = ban.target if "." in ban.target or ":" in ban.target else f"{ban.target}!*@*"
        session.numeric("367", room, mask, names.source(ban.by, server), "0")
    session.numeric("368", room, "End of channel ban list")


def _ban_target(mask: str) -> str:
    """A ban mask's name or address: ``nick!*@*`` is ``nick``, ``*!*@1.2.3.4`` is the address."""
    nick, _, host = mask.partition("!")
    host = host.partition("@")[2]
    if nick in ("", "*") and host not in ("", "*"):
        return host
    return nick


def _channel_modes(
    session: IRCSession, room: str, changes: str, args: Sequence[str]
) -> list[Output]:
    """``MODE #room +o/-o NICK`` and ``+b/-b MASK``: the session's /op, /deop, /ban, /unban."""
    outputs: list[Output] = []
    adding = True
    given = iter(args)
    for char in changes:
        if char in "+-":
            adding = char == "+"
            continue
        arg = next(given, None)
        command: c.Command
        if char == "o" and arg:
            command = c.Op(arg, room) if adding else c.Deop(arg, room)
        elif char == "b" and arg:
            target = _ban_target(arg)
            command = c.Ban(target, None, "", room) if adding else c.Unban(target, room)
        elif char == "b":
            _ban_list(session, room)
            continue
        else:
            session.numeric("472", char, "is an unknown mode char to me")
            continue
        outputs += session.translate(session.session.command(command))
    return outputs


def _kick(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 2):
        return []
    member = session.member
    assert member is not None
    room = msg.params[0].lower()
    if room not in member.rooms:
        session.numeric("442", msg.params[0], "You're not on that channel")
        return []
    if _no_operators(session, room):
        return []
    reason = msg.params[2] if len(msg.params) > 2 else ""
    outputs: list[Output] = []
    for nick in msg.params[1].split(","):
        outputs += session.translate(session.session.command(c.Kick(nick, reason, room)))
    return outputs


def _away(session: IRCSession, msg: wire.Message) -> list[Output]:
    member = session.member
    assert member is not None
    text = wire.clean_text(msg.params[0]).strip()[:AWAYLEN] if msg.params else ""
    # The hub's away, as /away on the line door: every door sees it (and away-notify).
    session.hub.set_away(member, text or None)
    if text:
        session.numeric("306", "You have been marked as being away")
    else:
        session.numeric("305", "You are no longer marked as being away")
    return []


def _online(session: IRCSession, nick: str) -> str | None:
    """``nick`` as the chat spells it if someone holds it, else ``None``."""
    if names.nick_error(nick) is not None or session.hub.name_unavailable(nick) is None:
        return None
    held = session.hub.member(nick)
    return held.name if held is not None else nick


def _ison(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    held = [_online(session, nick) for nick in " ".join(msg.params).split()]
    session.numeric("303", " ".join(nick for nick in held if nick))
    return []


def _userhost(session: IRCSession, msg: wire.Message) -> list[Output]:
    if not _need(session, msg, 1):
        return []
    replies = []
    for nick in " ".join(msg.params).split()[:5]:
        held = _online(session, nick)
        if held is not None:
            away = "-" if session.away_of(held) else "+"
            replies.append(f"{held}={away}{held}@{session.rules.server}")
    session.numeric("302", " ".join(replies))
    return []


def _lusers(session: IRCSession, msg: wire.Message) -> list[Output]:
    session.lusers()
    return []


def _motd(session: IRCSession, msg: wire.Message) -> list[Output]:
    session.motd()
    return []


@dataclass(frozen=True, slots=True)
class HistoryRequest:
    """A ``CHATHISTORY`` request waiting for the store's events."""

    target: str
    room: str
    query: history.Query


def _fail(session: IRCSession, code: str, *context: str) -> None:
    *middle, text = context
    safe = (*map(wire.token, middle), text)
    session.send(wire.message("FAIL", "CHATHISTORY", code, *safe, source=session.rules.server))


def _chathistory(session: IRCSession, msg: wire.Message) -> list[Output]:
    member = session.member
    assert member is not None
    params = msg.params
    if len(params) < 3:
        _fail(session, "NEED_MORE_PARAMS", "Missing parameters")
        return []
    target = params[1]
    room = target.lower()
    if room not in member.rooms:
        _fail(session, "INVALID_TARGET", params[0], target, "Join the channel to read its history")
        return []
    query = history.parse(params[0], params[2:], session.rules.chathistory)
    if isinstance(query, str):
        _fail(session, "INVALID_PARAMS", params[0], query)
        return []
    request = HistoryRequest(target, room, query)
    rules = session.rules.session
    if rules.store_history:
        session.history_request = request
        return [FetchHistory(room, rules.history_limit)]
    session.answer_history(request, session.hub.recent(room, session.hub.history))
    return []


HANDLERS: Final[dict[str, tuple[Handler, bool]]] = {
    # command: (handler, allowed before registration)
    "CAP": (_cap, True),
    "AUTHENTICATE": (_authenticate, True),
    "PASS": (_pass, True),
    "NICK": (_nick, True),
    "USER": (_user, True),
    "PING": (_ping, True),
    "PONG": (_pong, True),
    "QUIT": (_quit, True),
    "JOIN": (_join, False),
    "PART": (_part, False),
    "PRIVMSG": (_privmsg, False),
    "NOTICE": (_privmsg, False),
    "NAMES": (_names, False),
    "WHO": (_who, False),
    "WHOIS": (_whois, False),
    "LIST": (_list, False),
    "TOPIC": (_topic, False),
    "KICK": (_kick, False),
    "MODE": (_mode, False),
    "AWAY": (_away, False),
    "ISON": (_ison, False),
    "USERHOST": (_userhost, False),
    "LUSERS": (_lusers, False),
    "MOTD": (_motd, False),
    "CHATHISTORY": (_chathistory, False),
}
