"""The IRC door's rules, sans-IO: IRC registration and commands over the shared session.

An :class:`IRCSession` takes parsed IRC messages (``protocol/irc/wire.py``)
and turns them into the core's commands, given to the shared
:class:`~triochat.core.session.Session` (registration, password, name claims,
joins, renames, quitting) or, for chat lines, to the hub in bursts. What the
IRC client must be told that is not a hub event (numerics, CAP, PONG) it
writes to the member's outbox itself, in order with what the hub sends there.
The effects that need I/O (claim a name, wait out a password delay, fetch
history, close) come back from every input, as from the session.

Registration follows the Modern IRC documentation: ``CAP LS 302`` / ``REQ`` /
``END`` (or no CAP at all), ``PASS``, ``NICK`` and ``USER``, in any order; when
NICK and USER are in and CAP negotiation is over, the nick is given to the
session (then the password), and on success 001-005, LUSERS and the MOTD go
out. Capabilities that change how events are written (``server-time``,
``message-tags``, ``echo-message``) are fixed at registration: the hub groups
members by dialect, so a later ``CAP REQ`` for one is refused with ``NAK``.

Nothing here does I/O or awaits.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Final

import trio

from ..backplane.base import Claim
from ..protocol import line as p
from ..protocol.irc import history, labels, names, sasl, wire
from ..protocol.irc.render import NOTHING, IRCDialect
from . import events as ev
from ._auth import FailureDelays
from .accounts import AccountBook, Outcome
from .hub import Hub, Member, Outbox
from .irc_commands import AWAYLEN, HANDLERS, USER_MODES, HistoryRequest, nick_code
from .moderation import Moderation
from .session import (
    AccountCall,
    ClaimName,
    Close,
    Door,
    FetchHistory,
    Output,
    Rules,
    Session,
    State,
    Wait,
    account_prompt,
)

_AWAITED: Final = (ClaimName, FetchHistory, Wait, AccountCall)
_CHAT_COMMANDS: Final = frozenset({"PRIVMSG", "NOTICE"})
"""Effects the door awaits before the client's next message may be handled."""


@dataclass(frozen=True, kw_only=True)
class IRCRules:
    """What an IRC session is told about its server."""

    server: str = "triochat"
    """The server's name: the source of numerics, and every user's host."""
    network: str = "triochat"
    version: str = "triochat"
    created: float = field(default_factory=time.time)
    motd: tuple[str, ...] = ()
    """The message of the day, one line each; none: 422."""
    max_rooms: int = 50
    """The hub's rooms-per-member limit, for ``CHANLIMIT`` and 405."""
    max_targets: int = 4
    """How many targets one PRIVMSG or NOTICE may name (``TARGMAX``)."""
    chathistory: int = 100
    """The most messages one ``CHATHISTORY`` answer carries (``CHATHISTORY=`` in 005)."""
    max_label: int = labels.MAX_LABEL
    """The longest ``labeled-response`` label taken, in bytes; a longer one is ignored."""
    max_sasl: int = sasl.MAX_PAYLOAD
    """The most bytes of base64 one SASL exchange may send (more: ``905``)."""
    session: Rules = field(default_factory=lambda: Rules(one_room=False, arrival_rooms=()))


MAX_LATE: Final = 32
"""Labeled answers a client may be waiting for from the cluster at once; past that the
oldest is given up (its echo was lost: a missed batch)."""


@dataclass(slots=True)
class _Late:
    """A labeled answer still to come: ``lines`` lines starting with ``start``."""

    start: bytes
    lines: int
    label: str
    ref: str
    server: str
    got: list[bytes] = field(default_factory=list)


class IRCOutbox:
    """A member's outbox as the IRC door hands it to the hub.

    Two things the hub does not know about IRC happen here:

    - Closing it writes ``ERROR :<farewell>`` first, so that every way the hub
      ends a member (quit, eviction, name conflict) ends as IRC clients expect.
    - A member's own JOIN comes with the join's answer and again as the room's
      event; and an away recipient's ``301`` answers a NOTICE, which IRC never
      answers. While the session expects such lines (:meth:`expect`), they are
      taken out of what is handed over, as many as expected; in a cluster they
      come back from Redis later, in as many hand-overs as it takes. Only then
      is a hand-over looked at, line by line; otherwise it is passed on as it
      is. (A client without ``echo-message`` is never handed its own chat
      lines: the dialect says ``echo = False``, and the hub leaves them out.)

    And while a labeled command is answered (:meth:`answer`), what is handed
    over is kept, to go out as one labeled answer (:meth:`finish`).
    """

    __slots__ = ("_answer", "_capturing", "_expected", "_inner", "_label", "_late", "farewell")

    def __init__(self, inner: Outbox) -> None:
        self._inner = inner
        # A line's start -> [matching lines to let through, then to take out]. Each of
        # the tables and lists below is None while empty: an empty dict or list kept
        # by every idle client costs 64 or 56 bytes (docs/benchmarks.md).
        self._expected: dict[bytes, list[int]] | None = None
        self.farewell: str | None = "Closing link"
        """The ``ERROR`` text closing sends; ``None`` once an ERROR has gone out."""
        self._label: str | None = None
        self._answer: list[bytes] | None = None
        self._capturing = False
        self._late: list[_Late] | None = None
        """Labeled answers still to come (echoes coming back from the cluster)."""

    # --- labeled-response --------------------------------------------------------

    @property
    def answering(self) -> str | None:
        """The label of the command being answered, if any."""
        return self._label

    @property
    def kept(self) -> bool:
        """Whether anything was kept for the answer being made."""
        return bool(self._answer)

    def answer(self, label: str) -> None:
        """Keep what is handed over from now on: the answer to the command labeled ``label``."""
        self._label = label
        self._answer = []
        self._capturing = True

    def hold(self, capturing: bool) -> None:
        """Stop keeping (an effect is awaited: live lines meanwhile are no answer), or go on."""
        self._capturing = capturing and self._label is not None

    def finish(self, ref: str, server: str) -> bytes:
        """The labeled answer kept so far (an ``ACK`` if nothing); keeping stops."""
        label, data = self._label, b"".join(self._answer or ())
        self._label, self._answer, self._capturing = None, None, False
        assert label is not None
        return labels.answer(data, label, ref, server)

    def finish_later(self, start: bytes, lines: int, ref: str, server: str) -> None:
        """The answer is the next ``lines`` lines starting with ``start``, still to come
        (an echo coming back from the cluster): they go out labeled when they are in."""
        label = self._label
        assert label is not None
        self._label, self._answer, self._capturing = None, None, False
        if self._late is None:
            self._late = []
        self._late.append(_Late(start, lines, label, ref, server))
        if len(self._late) > MAX_LATE:  # an echo lost on the way: stop waiting for it
            del self._late[0]

    def _label_late(self, value: bytes) -> bytes:
        out: list[bytes] = []
        waiting = self._late
        assert waiting is not None
        for line in value.split(b"\r\n")[:-1]:
            bare = line.partition(b" ")[2] if line[:1] == b"@" else line
            late = next((e for e in waiting if bare.startswith(e.start)), None)
            if late is None or b"batch=" in line.partition(b" ")[0]:
                out.append(line + b"\r\n")
                continue
            late.got.append(line + b"\r\n")
            if len(late.got) == late.lines:
                waiting.remove(late)
                if not waiting:
                    self._late = None
                out.append(labels.answer(b"".join(late.got), late.label, late.ref, late.server))
        return b"".join(out)

    def send_raw(self, value: bytes, /) -> None:
        """Hand over ``value`` as it is: no line taken out, none kept."""
        self._inner.send_nowait(value)

    def expect(self, start: bytes, lines: int = 1, *, after: int = 0) -> None:
        """Take out the next ``lines`` lines (tags aside) that start with ``start``.

        With ``after``, that many such lines pass first, and an earlier
        expectation for ``start`` is replaced rather than added to. A ``start``
        that does not end in ``:`` must be the whole line. Lines in a batch
        (a ``CHATHISTORY`` answer) are history, never taken out.
        """
        if self._expected is None:
            self._expected = {}
        entry = self._expected.setdefault(start, [0, 0])
        if after:
            entry[:] = [after, lines]
        else:
            entry[1] += lines

    def forget(self, start: bytes) -> None:
        """Stop expecting lines starting with ``start``."""
        if self._expected is not None:
            self._expected.pop(start, None)
            self._emptied()

    def _emptied(self) -> None:
        if not self._expected:
            self._expected = None  # an emptied dict would keep its table: 160 bytes

    def send_nowait(self, value: bytes, /) -> None:
        if self._expected:
            value = self._without_own(value)
            if not value:
                return
        if self._capturing:
            assert self._answer is not None  # capturing: answer() made it
            self._answer.append(value)
            return
        if self._late:
            value = self._label_late(value)
            if not value:
                return
        self._inner.send_nowait(value)

    def _without_own(self, value: bytes) -> bytes:
        lines = value.split(b"\r\n")
        kept: list[bytes] = []
        for line in lines[:-1]:
            if line[:1] == b"@":
                tags, _, bare = line.partition(b" ")
                if b"batch=" in tags:
                    kept.append(line)
                    continue
            else:
                bare = line
            if not self._take(bare):
                kept.append(line)
        if len(kept) == len(lines) - 1:
            return value
        return b"".join(line + b"\r\n" for line in kept) + lines[-1]

    def _take(self, line: bytes) -> bool:
        """Whether ``line`` is one of the member's own lines to take out."""
        expected = self._expected
        assert expected is not None  # only asked while some lines are expected
        for start, entry in expected.items():
            if not (line.startswith(start) if start.endswith(b":") else line == start):
                continue
            if entry[0]:
                entry[0] -= 1
                return False
            entry[1] -= 1
            if not entry[1]:
                del expected[start]
                self._emptied()
            return True
        return False

    def close(self) -> None:
        if self._label is not None:
            # A labeled QUIT (or an eviction mid-answer): what was kept goes first, as it is.
            data = b"".join(self._answer or ())
            self._label, self._answer, self._capturing = None, None, False
            with contextlib.suppress(
                trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
            ):
                self._inner.send_nowait(data)
        if self.farewell is not None:
            # Full or closed already: it goes without its ERROR.
            with contextlib.suppress(
                trio.WouldBlock, trio.ClosedResourceError, trio.BrokenResourceError
            ):
                self._inner.send_nowait(wire.serialize(wire.message("ERROR", self.farewell)))
            self.farewell = None
        self._inner.close()


class _OwnSession(Session[Member]):
    """The shared session of one IRC client, whose member is registered with the
    client's own dialect (its nick, its capabilities) rather than its door's: so
    the door's sessions share one :class:`Door` (88 bytes each otherwise)."""

    __slots__ = ("_dialect",)

    def __init__(
        self,
        door: Door[Member],
        dialect: ev.Dialect,
        *,
        outbox: Outbox,
        disconnect: Callable[[], None],
        address: str,
    ) -> None:
        super().__init__(door, outbox=outbox, disconnect=disconnect, address=address)
        self._dialect = dialect

    def _member_dialect(self) -> ev.Dialect:
        return self._dialect


class IRCSession:
    """One IRC connection's protocol state, registration to QUIT.

    Args:
      hub: the chat's state.
      rules: the server's IRC rules (and the shared session rules inside).
      outbox: where the client's bytes go (the hub gets it wrapped, :class:`IRCOutbox`).
      disconnect: given to the hub, called if it evicts the member.
      address, delays, clock: for the shared session's password delays.
      door: what the door's IRC sessions share (its dialect unused: each member gets
        the session's own); made from the arguments above if not given.
    """

    # Slots: one per IRC client, and without them its attributes took 296 bytes.
    __slots__ = (
        "_batches",
        "_disconnect",
        "_door",
        "accounts",
        "awaiting_pong",
        "cap_open",
        "cap_version",
        "caps",
        "closed",
        "dialect",
        "history_request",
        "hub",
        "labeled",
        "late_echo",
        "logged_in",
        "nick",
        "outbox",
        "password",
        "pending",
        "rules",
        "sasl",
        "sasl_checking",
        "session",
        "user",
        "user_modes",
    )

    def __init__(
        self,
        hub: Hub,
        rules: IRCRules,
        *,
        outbox: Outbox,
        disconnect: Callable[[], None],
        address: str = "",
        delays: FailureDelays | None = None,
        clock: Callable[[], float],
        accounts: AccountBook | None = None,
        moderation: Moderation | None = None,
        door: Door[Member] | None = None,
    ) -> None:
        self.hub = hub
        self.rules = rules
        self._disconnect = disconnect
        self.outbox = IRCOutbox(outbox)
        self.dialect = IRCDialect(rules.server)
        if door is None:
            door = Door(
                hub=hub,
                rules=rules.session,
                dialect=self.dialect,
                delays=delays if delays is not None else FailureDelays(),
                clock=clock,
                accounts=accounts,
                moderation=moderation,
            )
        self._door = door
        self.accounts = accounts
        self.session: Session[Member] = _OwnSession(
            door, self.dialect, outbox=self.outbox, disconnect=disconnect, address=address
        )
        self.caps = NOTHING
        self.nick: str | None = None
        self.user: str | None = None
        self.password: str | None = None
        self.sasl: sasl.Exchange | None = None
        """The ``AUTHENTICATE PLAIN`` exchange under way, if any."""
        self.sasl_checking: str | None = None
        """The account whose SASL password is being checked (or its failure waited out)."""
        self.logged_in: str | None = None
        """The account SASL logged in to."""
        self.user_modes = NOTHING
        self.cap_open = False  # CAP LS or REQ before registration: wait for CAP END
        self.cap_version = 0
        self.awaiting_pong = False
        self.closed = False
        self.history_request: HistoryRequest | None = None
        self.pending: Sequence[wire.Received] = ()
        """Messages read but not yet handled: they came after one whose effect is awaited."""
        self._batches = 0
        self.labeled = False
        """Whether the client gets labeled answers (``labeled-response`` and ``batch``)."""
        self.late_echo: tuple[str, int] | None = None
        """The echo a labeled chat line's answer is, when it comes back from the cluster."""

    # --- what the I/O layer feeds in ------------------------------------------------

    @property
    def registered(self) -> bool:
        return self.session.member is not None and self.session.state is not State.CLOSED

    @property
    def member(self) -> Member | None:
        return self.session.member

    def receive(self, events: Iterable[wire.Received]) -> list[Output]:
        """What the framer gave, in order; consecutive PRIVMSGs to one channel as one burst.

        A message whose effect must be awaited (a name claim, the store's
        history) ends the call: the messages after it wait in :attr:`pending`
        until the door has carried the effect out and calls :meth:`resume`.
        """
        outputs: list[Output] = []
        burst: list[str] = []
        burst_room = ""
        queue = [*self.pending, *events]
        self.pending = ()  # a tuple: an empty list kept per idle client is 56 bytes
        if queue and not self.closed:
            self.awaiting_pong = False  # the client is there (only idle() sets it again)
        for i, event in enumerate(queue):
            if self.closed or self.session.state is State.CLOSED:
                break
            room, text = self._chat_line(event)
            if room is not None and (not burst or room == burst_room):
                burst.append(text)
                burst_room = room
                continue
            if burst:
                self.say(burst_room, burst)
                burst = []
            if room is not None:
                burst, burst_room = [text], room
                continue
            label = self._label(event)
            if label is not None:
                self.outbox.answer(label)
            handled = self.handle(event)
            outputs += handled
            awaited = any(isinstance(o, _AWAITED) for o in handled)
            self._answered(awaited)
            if awaited:
                self.pending = queue[i + 1 :]
                break
        if burst and not self.closed:
            self.say(burst_room, burst)
        return outputs

    def resume(self) -> list[Output]:
        """Go on with the messages that waited for an effect (see :meth:`receive`)."""
        return self.receive(())

    # --- labeled-response --------------------------------------------------------

    def _label(self, event: wire.Received) -> str | None:
        """The label the answer to ``event`` carries, if the client gets labeled answers."""
        if (
            not self.labeled
            or not isinstance(event, wire.Message)
            or not event.tags
            or not self.registered  # registration's answers are no one command's
        ):
            return None
        return labels.usable(event.tag("label"), self.rules.max_label)

    def _answered(self, awaited: bool) -> None:
        """A labeled command's handling is over for now: its answer goes out, unless an
        effect is awaited (then live lines pass meanwhile, and the effect's result is kept
        too: see :meth:`_result`)."""
        outbox = self.outbox
        late, self.late_echo = self.late_echo, None
        if outbox.answering is None:
            return
        if awaited:
            outbox.hold(False)
            return
        self._batches += 1
        ref = f"L{self._batches}"
        if late is not None and not outbox.kept:
            outbox.finish_later(late[0].encode(), late[1], ref, self.rules.server)
            return
        self.send_bytes(outbox.finish(ref, self.rules.server), raw=True)

    @contextlib.contextmanager
    def _result(self) -> Iterator[list[Output]]:
        """Around the handling of an awaited effect's result: part of a labeled answer."""
        self.outbox.hold(True)
        outputs: list[Output] = []
        yield outputs
        self._answered(any(isinstance(o, _AWAITED) for o in outputs))

    def handle(self, event: wire.Received) -> list[Output]:
        """One message (or framing problem) from the client."""
        if isinstance(event, wire.InputTooLong):
            self.numeric("417", "Input line was too long")
            return []
        if isinstance(event, wire.Malformed):
            self.numeric("421", "*", f"Malformed message: {event.reason}")
            return []
        handler = HANDLERS.get(event.command)
        if handler is None:
            if not self.registered:
                self.numeric("451", "You have not registered")
            else:
                self.numeric("421", event.command, "Unknown command")
            return []
        fn, before_registration = handler
        if not self.registered and not before_registration:
            self.numeric("451", "You have not registered")
            return []
        return fn(self, event)

    def claim_result(self, claim: Claim) -> list[Output]:
        """The outcome of a :class:`~triochat.core.session.ClaimName` asked for."""
        with self._result() as outputs:
            renaming = self.session.state is State.RENAMING
            old = self.member.name if self.member is not None else None
            outputs += self.translate(self.session.claim_result(claim))
            if renaming:
                self.renamed(old)
            else:
                outputs += self._after_register_attempt()
        return outputs

    def delay_elapsed(self) -> list[Output]:
        """The wrong password's delay is over."""
        with self._result() as outputs:
            if self.sasl_checking is not None:
                self.sasl_checking = None
                self.numeric("904", "SASL authentication failed")
            else:
                outputs += self.translate(self.session.delay_elapsed())
        return outputs

    def account_result(self, outcome: Outcome) -> list[Output]:
        """The outcome of an :class:`~triochat.core.session.AccountCall` asked for."""
        if self.sasl_checking is not None:
            with self._result() as outputs:
                outputs += self._sasl_result(outcome)
            return outputs
        with self._result() as outputs:
            registering = self.session.state is State.VERIFYING
            outputs += self.translate(self.session.account_result(outcome))
            if registering:
                outputs += self._after_register_attempt()
        return outputs

    def _sasl_result(self, outcome: Outcome) -> list[Output]:
        """The verdict on a SASL PLAIN password: logged in (900, 903), or 904 after the delay."""
        account = outcome.request.name
        if not outcome.ok:
            # The same growing delay per address as every other password; 904 after it.
            door = self._door
            return [Wait(door.delays.fail(self.session.address, door.clock()))]
        self.sasl_checking = None
        self.logged_in = account
        self.session.logged_in(account)
        self.numeric("900", self.me(), account, f"You are now logged in as {account}")
        self.numeric("903", "SASL authentication successful")
        return []

    def deadline_passed(self) -> list[Output]:
        """Registration did not finish in time."""
        return self.translate(self.session.deadline_passed())

    def fetched(self, room: str, events: Sequence[ev.RoomEvent]) -> list[Output]:
        """History read from the store, for a ``/history``-like request or CHATHISTORY."""
        with self._result() as outputs:
            request = self.history_request
            if request is not None:
                self.history_request = None
                self.answer_history(request, events)
            else:
                outputs += self.translate(self.session.fetched(room, events))
        return outputs

    def answer_history(self, request: HistoryRequest, events: Sequence[ev.RoomEvent]) -> None:
        member = self.member
        if member is None or request.room not in member.rooms:
            return
        self._batches += 1
        chosen = history.select(events, request.query)
        self.send_bytes(self.dialect.history_batch(request.target, chosen, f"h{self._batches}"))

    def idle(self) -> list[Output]:
        """Nothing came from the client for a while: PING it, or give up if it did not answer."""
        if self.closed:
            return []
        if self.awaiting_pong:
            return self.connection_lost("connection lost")
        self.awaiting_pong = True
        self.send(wire.message("PING", self.rules.server))
        return []

    def connection_lost(self, reason: str) -> list[Output]:
        """The connection is over (EOF, reset, ping timeout, shutdown); idempotent."""
        if self.closed:
            return []
        self.closed = True
        outputs = self.translate(self.session.close(reason))
        return [*outputs, Close(reason)]

    # --- writing --------------------------------------------------------------------

    @property
    def target(self) -> str:
        return self.nick or "*"

    def send(self, *messages: wire.Message) -> None:
        if any(m.command == "ERROR" for m in messages):
            self.outbox.farewell = None  # one ERROR, the last line
        self.send_bytes(b"".join(map(wire.serialize, messages)))

    def send_bytes(self, data: bytes, *, raw: bool = False) -> None:
        """Hand ``data`` to the outbox (``raw``: as it is, see :meth:`IRCOutbox.send_raw`)."""
        try:
            if raw:
                self.outbox.send_raw(data)
            else:
                self.outbox.send_nowait(data)
        except trio.WouldBlock:
            # A slow consumer, as the hub treats one: it goes, nothing is dropped quietly.
            member = self.member
            if member is not None:
                self.hub.leave(member, "too slow")
            self._disconnect()
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            pass  # the connection is on its way out

    def notice(self, text: str) -> None:
        self.send(wire.message("NOTICE", self.target, text, source=self.rules.server))

    def numeric(self, code: str, *params: str) -> None:
        """``:server CODE nick PARAMS``; the middle ones may echo the client, so are made tokens."""
        *middle, last = (self.target, *params)
        safe = (*map(wire.token, middle), last)
        self.send(wire.Message(code, safe, self.rules.server))

    def me(self) -> str:
        return names.source(self.target, self.rules.server)

    def translate(self, outputs: Iterable[Output]) -> list[Output]:
        """The session's outputs: events written in IRC terms, effects passed on."""
        effects: list[Output] = []
        for output in outputs:
            if isinstance(output, ev.Notice):
                if output.text in (p.NAME_QUESTION, p.PASSWORD_PROMPT) or (
                    self.nick is not None and output.text == account_prompt(self.nick)
                ):
                    continue  # IRC asks none: NICK and PASS (or SASL) come unasked
                self.send(
                    wire.message("NOTICE", self.target, output.text, source=self.rules.server)
                )
            elif isinstance(output, ev.Error):
                self._error(output.text)
            else:
                if isinstance(output, Close):
                    self.closed = True
                effects.append(output)
        return effects

    def _error(self, text: str) -> None:
        state = self.session.state
        if text.startswith("You are not an operator of "):
            room = text.rsplit(" ", 1)[-1]
            self.numeric("482", room, "You're not a channel operator")
        elif text == p.WRONG_PASSWORD and state is State.CHATTING:
            self.notice(text)  # an account command's: the link stays up
        elif text == p.WRONG_PASSWORD:
            self.numeric("464", "Password incorrect")
            self.send(wire.message("ERROR", "Closing link: wrong password"))
        elif state is State.CLOSED and self.session.member is None:
            self.send(wire.message("ERROR", f"Closing link: {text}"))
        elif state is State.AWAITING_NAME and self.nick is not None:
            # The session refused the nick: invalid, or taken (here or elsewhere).
            self.numeric(nick_code(self.hub, self.nick), self.nick, text)
        else:
            self.notice(text)

    # --- registration ---------------------------------------------------------------

    def _after_register_attempt(self) -> list[Output]:
        if self.registered and self.session.member is not None:
            self.nick = self.session.member.name
            self.dialect.nick = self.nick
            self._welcome()
        return []

    def try_register(self) -> list[Output]:
        session = self.session
        if (
            self.nick is None
            or self.user is None
            or self.cap_open
            or session.state is not State.AWAITING_NAME
        ):
            return []
        if self.user == self.nick:
            self.user = self.nick  # one string kept, not two alike (52 bytes per client)
        self.dialect.negotiate(self.caps)
        self.dialect.history_on_join = "draft/chathistory" not in self.caps
        self.dialect.nick = self.nick
        outputs = session.receive_line(self.nick)
        state: State = session.state  # changed by the call
        if state is State.AWAITING_PASSWORD:
            outputs += session.receive_line(self.password or "")
            state = session.state
        if state is State.AWAITING_ACCOUNT:
            # A registered nick that SASL did not log in to: PASS, on a server without one.
            given = self.password if self.rules.session.password is None else None
            outputs += session.receive_line(given or "")
            if not given:
                self.numeric(
                    "433", self.nick, "Nickname is registered: give its password (SASL or PASS)"
                )
        effects = self.translate(outputs)
        return effects + self._after_register_attempt()

    def _welcome(self) -> None:
        rules = self.rules
        nick = self.target
        created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(rules.created))
        self.numeric("001", f"Welcome to the {rules.network} IRC network, {nick}")
        self.numeric("002", f"Your host is {rules.server}, running version {rules.version}")
        self.numeric("003", f"This server was created {created}")
        self.numeric("004", rules.server, rules.version, "".join(sorted(USER_MODES)), "bo")
        for chunk in _chunks(self.isupport(), 12):
            self.numeric("005", *chunk, "are supported by this server")
        self.lusers()
        self.motd()

    def isupport(self) -> list[str]:
        """The ``005`` tokens."""
        rules = self.rules
        return [
            f"CASEMAPPING={names.CASEMAPPING}",
            "CHANTYPES=#",
            f"CHANLIMIT=#:{rules.max_rooms}",
            f"CHANNELLEN={names.CHANNELLEN}",
            "CHANMODES=b,,,",
            f"NICKLEN={names.NICKLEN}",
            "PREFIX=(o)@",
            f"NETWORK={rules.network}",
            f"TARGMAX=PRIVMSG:{rules.max_targets},NOTICE:{rules.max_targets},JOIN:,PART:,"
            "NAMES:1,WHOIS:1,ISON:,USERHOST:5",
            f"MAXTARGETS={rules.max_targets}",
            f"AWAYLEN={AWAYLEN}",
            "UTF8ONLY",
            f"CHATHISTORY={rules.chathistory}",
            "MSGREFTYPES=msgid,timestamp",
        ]

    def lusers(self) -> None:
        online = self.hub.online()
        self.numeric("251", f"There are {online} users and 0 invisible on 1 servers")
        self.numeric("255", f"I have {online} clients and 1 servers")

    def motd(self) -> None:
        if not self.rules.motd:
            self.numeric("422", "MOTD File is missing")
            return
        self.numeric("375", f"- {self.rules.server} Message of the day - ")
        for text in self.rules.motd:
            self.numeric("372", f"- {text}")
        self.numeric("376", "End of /MOTD command")

    # --- chat lines -----------------------------------------------------------------

    def _chat_line(self, event: wire.Received) -> tuple[str | None, str]:
        """A PRIVMSG or NOTICE to one channel the member is in, as ``(room, text)``."""
        if (
            not isinstance(event, wire.Message)
            or event.command not in _CHAT_COMMANDS
            or len(event.params) != 2
            or (event.tags and self._label(event) is not None)  # answered alone
        ):
            return None, ""
        session = self.session
        member = session.member
        if member is None or session.state is State.CLOSED:  # not registered
            return None, ""
        target, text = event.params
        room = target.lower()
        if room not in member.rooms or "\x01" in text:
            return None, ""
        text = wire.clean_text(text)
        if not text.strip():
            return None, ""
        return room, text

    def say(self, room: str, texts: list[str]) -> None:
        member = self.member
        if member is None or not self.hub.is_member(member):
            return
        if self.echo_answers_later:
            me = self.me()
            count = sum(self.dialect.text_lines(room, text, me) for text in texts)
            self.late_echo = (f":{me} PRIVMSG {room} :", count)
        self.hub.say(member, room, texts)

    @property
    def echo_answers_later(self) -> bool:
        """Whether the labeled command being answered is answered by the echo of a chat
        line (``echo-message``) that comes back from the cluster after the call."""
        return self.dialect.echo and self.hub.backplane.remote and self.outbox.answering is not None

    @contextlib.contextmanager
    def own_lines(self, prefix: str, lines: int = 1, *, after: int = 0) -> Iterator[None]:
        """Around a hub call that hands the member ``lines`` of its own, which it does not want.

        ``after``: how many such lines it does want first (see :meth:`IRCOutbox.expect`).
        (Its own chat lines and actions never need this: the hub does not hand them to
        a dialect that does not echo.)
        """
        self.outbox.expect(prefix.encode(), lines, after=after)
        try:
            yield
        finally:
            # With the local backplane the hand-over happened during the call; one
            # still expected never comes. In a cluster it comes back later.
            if not self.hub.backplane.remote:
                self.outbox.forget(prefix.encode())

    def renamed(self, old: str | None) -> None:
        member = self.member
        if member is None or old is None or member.name == old:
            return
        self.nick = member.name
        self.dialect.nick = member.name
        if not member.rooms:
            # No room saw the rename, so no NICK came back: the client needs one.
            self.send(
                wire.message("NICK", member.name, source=names.source(old, self.rules.server))
            )

    def away_of(self, name: str) -> str | None:
        """Why the user called ``name`` is away, if it is online and away (the hub's ``/away``),
        on this node or another."""
        return self.hub.away_of(name)


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
