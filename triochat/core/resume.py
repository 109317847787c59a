"""Resume, sans-IO: the tokens that take a held member back, and the sessions that resume.

A v2 member gets a resume token when it is named (:class:`~.events.Welcome`).
If its connection ends without ``/quit``, it is *held*: it stays in the chat
and in its rooms, unannounced, for the grace period, and what is said there
meanwhile waits in the rooms' resume buffers (:meth:`Hub.resume
<triochat.core.hub.Hub.resume>`). A new connection that gives the token within
the grace takes the member back and resumes each room from the client's
``EPOCH:SEQ``; nobody sees it leave or join. Past the grace it leaves
``(connection lost)``, as a v1 member does at once.

Tokens are 128 random bits from :mod:`secrets`. Only their SHA-256 digests are
kept, so neither a memory dump nor a log shows one. Each is single-use: a
resume gives a new token, and the old one stays valid until the client
confirms the new one (``/ack``), so a connection lost during the handshake
does not lock the client out. A failed attempt says only that the token is
not valid, whatever the reason, and a connection gets ``attempts`` tries
(:data:`RESUME_ATTEMPTS`).

In a cluster the tokens are the cluster's (:class:`Tokens` mirrors each
entry to the backplane, digests only), so a client may come back on any node:
the session asks the cluster to take the member over (:class:`~.session.TakeOver`),
wherever it is held, and the node that held it lets it go unannounced.

A bad token costs the same growing delay per address as a wrong password
(:class:`~._auth.FailureDelays`, shared with the server password), and a good
one does not clear it: a client cannot wipe its record with a token of its own
between guesses.

Nothing here awaits; the times come from the door's clock.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterable
from typing import Final

from ..backplane.base import Backplane, Claim, Handover
from ..protocol import line as p
from ..protocol.v2 import HELLO as HELLO, Ack, BadResume, Resume, parse_resume
from . import commands as c
from .events import (
    Error,
    Event,
    Hello,
    Left,
    Notice,
    Recovery,
    ResumeFailed,
    RoomState,
    Welcome,
)
from .hub import Hub, Member, recover
from .session import (
    Close,
    Door,
    Input,
    Outbox,
    Output,
    Session,
    State,
    TakeOver,
    Wait,
)

log: Final = logging.getLogger("triochat.resume")

RESUME_ATTEMPTS: Final = 3
"""Bad tokens one connection may try before it is closed (the default of ``--resume-attempts``)."""

BAD_TOKEN: Final = "That resume token is not valid (unknown, used or expired); give your name"
TOO_MANY: Final = "Too many bad resume tokens, closing"
CANNOT_RESUME: Final = (
    "Cannot resume right now: the link to the rest of the chat is down; try again later"
)
"""The answer to a resume the cluster cannot be asked about: no verdict on the token."""


def token_digest(token: str) -> bytes:
    """What is kept of a token (its SHA-256), here and in the cluster."""
    return hashlib.sha256(token.encode()).digest()


_digest = token_digest


class _Entry:
    """A member that can be resumed: its valid token digests (the newest last)."""

    __slots__ = ("account", "deadline", "digests", "id", "member", "owner")

    def __init__(self, member: Member, id: str = "") -> None:
        self.member = member
        self.id = id or secrets.token_hex(8)
        """The entry's name in the cluster (the member's name may change)."""
        self.digests: list[bytes] = []
        self.owner: ResumableSession | None = None
        """The session serving the member now; ``None`` while it is held."""
        self.deadline: float | None = None
        """While held: when the grace is over."""
        self.account: str | None = None
        """While held: the account its session had proved (``--db``), for the next one."""


class Tokens:
    """Every v2 member's resume tokens, and who is held until when.

    Args:
      grace: seconds a member whose connection broke is held.
      clock: the time (the server's trio clock).
      cluster: in a cluster, its backplane: every entry is mirrored there (digests
        only), and tokens are taken through it, on any node.
    """

    def __init__(
        self, grace: float, clock: Callable[[], float], cluster: Backplane | None = None
    ) -> None:
        self.grace = grace
        self._clock = clock
        self.cluster = cluster
        self._by_digest: dict[bytes, _Entry] = {}
        self._by_member: dict[Member, _Entry] = {}
        # The grace is the same for all, so deadlines come in order: a FIFO,
        # whose stale entries (resumed since) are skipped.
        self._held: deque[tuple[float, _Entry]] = deque()
        self.changed: Callable[[], None] = lambda: None
        """Called when a member is held (the server's expiry task waits for it)."""

    @property
    def held(self) -> int:
        """How many members are held now."""
        return sum(1 for entry in self._by_member.values() if entry.deadline is not None)

    def issue(self, member: Member, owner: ResumableSession, entry_id: str = "") -> str:
        """A new token for ``member``, served by ``owner``; earlier ones stay valid until
        :meth:`confirm`. ``entry_id``: the cluster's entry of a member taken over."""
        entry = self._by_member.get(member)
        if entry is None:
            entry = self._by_member[member] = _Entry(member, entry_id)
        token = secrets.token_hex(16)
        digest = _digest(token)
        entry.digests.append(digest)
        self._by_digest[digest] = entry
        entry.owner = owner
        if self.cluster is not None:
            self.cluster.resumable(entry.id, member.key, member.name, digest)
        return token

    def renamed(self, member: Member) -> None:
        """``member`` has a new name: the cluster's entry follows."""
        entry = self._by_member.get(member)
        if entry is not None and self.cluster is not None and entry.digests:
            self.cluster.resumable(entry.id, member.key, member.name, entry.digests[-1])

    def confirm(self, member: Member, token: str) -> bool:
        """The client holds ``token`` (its newest): the tokens before it are no longer valid."""
        entry = self._by_member.get(member)
        digest = _digest(token)
        if entry is None or not entry.digests or entry.digests[-1] != digest:
            return False
        for old in entry.digests[:-1]:
            del self._by_digest[old]
        entry.digests = [digest]
        if self.cluster is not None:
            self.cluster.keep_token(entry.id, digest)
        return True

    def take(self, token: str) -> _Entry | None:
        """The member ``token`` resumes, if it is valid; it is then no longer held."""
        entry = self._by_digest.get(_digest(token))
        if entry is None:
            return None
        entry.deadline = None
        return entry

    def hold(self, member: Member) -> bool:
        """``member``'s connection broke: hold it for the grace (False: it has no token)."""
        entry = self._by_member.get(member)
        if entry is None or not self.grace:
            return False
        if entry.owner is not None:
            entry.account = entry.owner.account
        entry.owner = None
        entry.deadline = self._clock() + self.grace
        self._held.append((entry.deadline, entry))
        if self.cluster is not None:
            self.cluster.hold(entry.id)
        log.info("%s held for %g s", member.name, self.grace)
        self.changed()
        return True

    def forget(self, member: Member) -> None:
        """``member`` left the chat: its tokens are no longer valid."""
        entry = self._drop(member)
        if entry is not None and self.cluster is not None:
            self.cluster.unresumable(entry.id)

    def cluster_forget(self, entry: str) -> None:
        """The cluster's entry ``entry`` (of a member that left here) resumes nobody now."""
        if self.cluster is not None:
            self.cluster.unresumable(entry)

    def handed_off(self, member: Member) -> None:
        """A node took ``member`` over: its entry here goes (the cluster's is the new node's
        now), and a connection still serving it ends without a word."""
        entry = self._drop(member)
        if entry is not None and entry.owner is not None:
            entry.owner._hand_over()

    def _drop(self, member: Member) -> _Entry | None:
        entry = self._by_member.pop(member, None)
        if entry is not None:
            for digest in entry.digests:
                self._by_digest.pop(digest, None)
            entry.deadline = None
        return entry

    def next_deadline(self) -> float | None:
        """When the first held member's grace is over, if any is held."""
        while self._held and self._held[0][1].deadline != self._held[0][0]:
            self._held.popleft()
        return self._held[0][0] if self._held else None

    def expired(self) -> list[tuple[Member, str]]:
        """The members whose grace is over, with their entries' ids (forgotten here, not
        yet in the cluster: :meth:`Backplane.expire`); the caller makes them leave."""
        now = self._clock()
        gone = []
        while (deadline := self.next_deadline()) is not None and deadline <= now:
            _, entry = self._held.popleft()
            log.info("%s not back within %g s", entry.member.name, self.grace)
            gone.append((entry.member, entry.id))
            self._drop(entry.member)
        return gone


HELD_REASONS: Final = frozenset({"connection lost", "ping timeout"})
"""Why a connection may end and its member be held: it broke, or its peer went silent."""


class ResumableSession(Session[Member]):
    """A member's session that can come back: a token at registration, held when its
    connection breaks, a resume instead of a name, and each room's epoch when it joins
    one. The v2 line door (:class:`V2Session`) and the web door share it."""

    __slots__ = (
        "_asked",
        "_attempts",
        "_handed_over",
        "_most_attempts",
        "_resume_max",
        "_tokens",
        "_v2hub",
    )

    def __init__(
        self,
        door: Door[Member],
        hub: Hub,
        tokens: Tokens,
        *,
        outbox: Outbox,
        disconnect: Callable[[], None],
        address: str = "",
        resume_max: int = 0,
        attempts: int = RESUME_ATTEMPTS,
    ) -> None:
        super().__init__(door, outbox=outbox, disconnect=disconnect, address=address)
        self._v2hub = hub
        self._tokens = tokens
        self._attempts = 0
        self._handed_over = False
        self._started = True
        self._resume_max = resume_max
        self._most_attempts = attempts
        self._asked: Resume | None = None

    # --- inputs --------------------------------------------------------------------

    def resume(self, resume: Resume) -> list[Output]:
        """Instead of a name: take the held member of ``resume.token`` back, or say no."""
        return self._resume(resume)

    def command(self, command: c.Command | Ack) -> list[Output]:
        member = self.member
        if isinstance(command, Ack):
            self._take_command()
            assert member is not None
            if not self._tokens.confirm(member, command.token):
                return [Error("That is not your newest resume token")]
            return []
        before = set(member.rooms) if member is not None else set()
        key = member.key if member is not None else ""
        outputs = super().command(command)
        if isinstance(command, c.Quit) and member is not None:
            self._tokens.forget(member)
        if member is not None and self.state is not State.CLOSED:
            if member.key != key:
                self._tokens.renamed(member)
            outputs.extend(self._states(r for r in member.rooms if r not in before))
        return outputs

    def claim_result(self, claim: Claim) -> list[Output]:
        member = self.member
        key = member.key if member is not None else ""
        outputs = super().claim_result(claim)
        if member is not None and member.key != key:
            self._tokens.renamed(member)  # a /nick the cluster allowed
        return outputs

    def close(self, reason: str, *, hold: bool = True) -> list[Output]:
        """The connection is over: a member whose connection broke is held, not gone
        (``hold=False``: the client went away on purpose, it leaves at once)."""
        member = self.member
        if self._handed_over or (
            hold
            and member is not None
            and self.state is State.CHATTING
            and reason in HELD_REASONS
            and self._v2hub.is_member(member)
            and self._tokens.hold(member)
        ):
            if member is not None and not self._handed_over:
                self._v2hub.hold(member)
            self._take_close()
            self.state = State.CLOSED
            return []
        if member is not None and self.state is not State.CLOSED:
            self._tokens.forget(member)
        return super().close(reason)

    def delay_elapsed(self) -> list[Output]:
        """A bad resume token's delay is over: the verdict."""
        if self.state is not State.RESUME_REFUSING:
            return super().delay_elapsed()
        self._take(Input.DELAY_ELAPSED)
        if self._attempts >= self._most_attempts:
            self._to(State.CLOSED)
            return [Error(TOO_MANY), Close("bad resume tokens")]
        self._to(State.AWAITING_NAME)
        return [Error(BAD_TOKEN), Notice(p.NAME_QUESTION)]

    # --- the moves ---------------------------------------------------------------------

    def _take_line(self) -> None:
        self._take(Input.LINE)
        self._to(State.AWAITING_NAME)

    def _take_command(self) -> None:
        self._take(Input.COMMAND)
        self._to(State.CHATTING)

    def _take_close(self) -> None:
        self._take(Input.CLOSE)

    def _states(self, rooms: Iterable[str]) -> list[Output]:
        return list(self._room_states(rooms))

    def _room_states(self, rooms: Iterable[str]) -> list[RoomState]:
        states = []
        for room in rooms:
            state = self._v2hub.room_state(room)
            if state is not None:
                states.append(state)
        return states

    def _welcome(self, member: Member, entry: str = "") -> Welcome:
        """A new token for ``member``, served by this session."""
        return Welcome(member.name, self._tokens.issue(member, self, entry), self._tokens.grace)

    def _arrived(self, member: Member) -> list[Output]:
        if self.state is State.CHATTING:
            self._v2hub.tell(member, self._welcome(member))
        return []

    def _bad_token(self) -> list[Output]:
        """A token that resumes nobody (forged, used, acknowledged away or expired): the
        verdict waits, as a wrong password's, and the same words whatever the reason."""
        self._attempts += 1
        log.warning("a bad resume token from %s", self.address or "a client")
        self._to(State.RESUME_REFUSING)
        delay = self._door.delays.fail(self.address, self._door.clock())
        return [Wait(delay, "resume token")]

    def _resume(self, resume: Resume) -> list[Output]:
        self._take(Input.LINE)
        if self._tokens.cluster is not None:
            # The cluster's tokens: the member may be held on any node (this one too).
            self._to(State.RESUMING)
            positions = tuple((room, seq) for room, _, seq in resume.rooms)
            self._asked = resume
            return [TakeOver(resume.token, positions)]
        entry = self._tokens.take(resume.token)
        if entry is not None and entry.member.dialect is not self._door.dialect:
            # Another door's member (its lines could not be shown here): a bad token.
            if entry.owner is None:
                self._tokens.hold(entry.member)  # take() let go of it: held again
            entry = None
        hub = self._v2hub
        if entry is None or not hub.is_member(entry.member):
            if entry is not None:
                self._tokens.forget(entry.member)
            return self._bad_token()
        member = entry.member
        owner = entry.owner
        if owner is not None and owner is not self:
            owner._hand_over()  # its connection is dead but has not noticed yet
        hub.reattach(member, self._outbox, self._disconnect)

        def recovery(room: str, epoch: str, seq: int) -> Recovery:
            return hub.resume(room, epoch, seq)

        # The token proved this is the same session: it is identified as that one was.
        self.account = owner.account if owner is not None else entry.account
        return self._resumed(member, resume, recovery)

    def taken_over(self, handover: Handover | None) -> list[Output]:
        """The cluster's answer to :class:`TakeOver`: the member, adopted by this node's hub
        (its outbox waiting), or ``None`` for a token that resumes nobody."""
        self._take(Input.TAKEN_OVER)
        hub = self._v2hub
        if handover is None:
            if self.state is State.CLOSED:
                return []
            return self._bad_token()
        member = handover.member
        assert isinstance(member, Member)
        if self.state is State.CLOSED:
            hub.abandon(member)  # its connection ended meanwhile: as a cut past the grace
            self._tokens.cluster_forget(handover.entry)
            return []
        resume = self._asked
        assert resume is not None
        hub.reattach(member, self._outbox, self._disconnect)
        # Identified as it was on its old node: the cluster's record says so, not the client.
        self.account = member.account
        tails = handover.tails

        def recovery(room: str, epoch: str, seq: int) -> Recovery:
            tail = tails.get(room)
            if tail is None or not tail.epoch:
                return ResumeFailed(room, "", 0, 0, "no such room")
            return recover(
                room, tail.epoch, tail.seq, epoch, seq, tail.events, self._v2hub.resume_max
            )

        return self._resumed(member, resume, recovery, handover.entry)

    def cluster_unreachable(self) -> list[Output]:
        """The cluster could not be asked about the token (this node's link is down): say so
        and close, without a bad try or its delay, so the client comes back later."""
        self._take(Input.TAKEN_OVER)
        if self.state is State.CLOSED:
            return []
        log.info("a resume from %s while the link is down", self.address or "a client")
        self._to(State.CLOSED)
        return [Error(CANNOT_RESUME), Close("cannot resume now")]

    def _resumed(
        self,
        member: Member,
        resume: Resume,
        recovery: Callable[[str, str, int], Recovery],
        entry: str = "",
    ) -> list[Output]:
        """``member`` is this connection's again: its new token, each room's recovery, the
        rooms not asked about, then what waited and the private messages kept for it."""
        hub = self._v2hub
        log.info("%s resumed", member.name)
        self.member = member
        self.authenticated = True
        self._to(State.CHATTING)
        events: list[Event] = [self._welcome(member, entry)]
        asked = set()
        for room, epoch, seq in resume.rooms:
            asked.add(room)
            if room not in member.rooms:
                known = hub.room_state(room) is not None
                why = "you are not in that room" if known else "no such room"
                events.append(ResumeFailed(room, "", 0, 0, why))
            else:
                events.append(recovery(room, epoch, seq))
        events.extend(self._room_states(r for r in member.rooms if r not in asked))
        # In the outbox now, before what waited for the member and its kept messages.
        hub.tell(member, *events)
        hub.resumed(member)
        self._follow(member)
        return []

    @property
    def handed_over(self) -> bool:
        """Whether another connection took this member back (this one just ends)."""
        return self._handed_over

    def _hand_over(self) -> None:
        """Another connection took this member back: end without leaving or holding."""
        self._handed_over = True
        self._disconnect()


class V2Session(ResumableSession):
    """A v2 line member's session: ``hello``, ``/resume`` lines instead of a name, and
    the arrival rooms joined after the token."""

    __slots__ = ()

    def hello(self) -> list[Output]:
        """What the door says to a client that opted into v2."""
        return [Hello(2, self._tokens.grace, self._resume_max), Notice(self._question())]

    def receive_line(self, text: str) -> list[Output]:
        if self.state is State.AWAITING_NAME:
            resume = parse_resume(p.clean_text(text).strip())
            if isinstance(resume, BadResume):
                self._take_line()
                return [Error(resume.message), Notice(p.NAME_QUESTION)]
            if resume is not None:
                return self._resume(resume)
        return super().receive_line(text)

    def command(self, command: c.Command | Ack) -> list[Output]:
        outputs = super().command(command)
        member = self.member
        if (
            isinstance(command, c.Part)
            and member is not None
            and self.state is not State.CLOSED
            and command.room not in member.rooms
        ):
            # The room's own Left went to those still in it; the leaver hears it
            # unnumbered, as it is no longer the room's to number for it.
            outputs.append(Left(command.room, 0, time.time(), member.name, command.reason))
        return outputs

    def _registered(self, member: Member) -> None:
        # The token first, so the client can resume even what its arrival brings.
        self._v2hub.tell(member, self._welcome(member))

    def _arrived(self, member: Member) -> list[Output]:
        return self._states(member.rooms)


__all__ = [
    "CANNOT_RESUME",
    "HELD_REASONS",
    "HELLO",
    "RESUME_ATTEMPTS",
    "ResumableSession",
    "Tokens",
    "V2Session",
    "token_digest",
]
