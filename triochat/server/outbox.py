"""Outgoing lines: a bounded outbox per client, and one flusher that writes them in rounds.

A broadcast appends the same ``bytes`` to every member's outbox; nothing is
written yet. The :class:`Flusher` task runs once the readers that were ready
have had their turn, and writes each outbox that has lines with one
non-blocking ``os.write`` (``writev`` for a round's several chunks): under
load, one system call per recipient carries what many senders said, and an
idle client needs no task of its own. Only
what the kernel will not take stays queued, and then the outbox's owner starts
a writer task that waits until the socket is writable.
"""

from __future__ import annotations

import logging
import os
from contextlib import suppress
from typing import TYPE_CHECKING, Final, Protocol

import trio

if TYPE_CHECKING:
    from .stats import ServerStats

log: Final = logging.getLogger("triochat.server")

_IDLE: Final = 0  # nothing queued
_DIRTY: Final = 1  # lines queued, waiting for the flusher
_WRITING: Final = 2  # the kernel refused some: the owner's writer task has them

PAUSE_AFTER: Final = 0.0002
"""Seconds a round of writes may take before the flusher pauses after it (see :class:`Flusher`)."""
PAUSE_FACTOR: Final = 2.0
"""How long the flusher pauses after a long round, as a multiple of the round's own time."""
PAUSE_MAX: Final = 0.005
"""The longest pause, in seconds: the most a line can wait for its round because of one."""

IOV_MAX: Final = 1024
"""Chunks one ``writev`` takes at most (POSIX's minimum for ``IOV_MAX`` is 16; Linux's is 1024)."""


class Owner(Protocol):
    """What an outbox needs from the connection it belongs to."""

    def start_writer(self) -> None:
        """Start a task that sends :meth:`Outbox.take` until it returns ``None``."""

    def end(self) -> None:
        """The outbox is closed and its last line is out: end the connection."""


class Outbox:
    """A client's outgoing lines, bounded, with the contract of a memory channel's send end.

    ``send_nowait`` raises ``WouldBlock`` when ``capacity`` lines wait that
    the kernel would not take, ``ClosedResourceError`` after :meth:`close`
    and ``BrokenResourceError`` once writing failed (the hub's
    :class:`~triochat.hub.Outbox`). ``fd`` is the socket to write to, or -1
    for a stream that is not a plain socket (TLS, a test's stream): its lines
    always go through the owner's writer task.
    """

    __slots__ = (
        "_broken",
        "_capacity",
        "_chunks",
        "_flusher",
        "_owner",
        "_queued",
        "_state",
        "closed",
        "fd",
    )

    def __init__(self, owner: Owner, flusher: Flusher, capacity: int, fd: int) -> None:
        self._owner = owner
        self._flusher = flusher
        self._capacity = capacity
        self.fd = fd
        self._chunks: list[bytes] = []  # a list: an empty deque costs 600 bytes
        self._queued = 0  # lines in _chunks
        self._state = _IDLE
        self.closed = False
        self._broken = False

    def send_nowait(self, data: bytes, /) -> None:
        if self.closed:
            raise trio.ClosedResourceError
        if self._broken:
            raise trio.BrokenResourceError
        if self._queued >= self._capacity:
            if self._state == _DIRTY:
                self.flush()  # a big round: see what the kernel takes now
            if self._queued >= self._capacity:
                raise trio.WouldBlock
        self._chunks.append(data)
        self._queued += self._flusher.lines_in(data)
        if self._state == _IDLE:
            if self.fd < 0:
                self._start_writer()
            else:
                self._state = _DIRTY
                self._flusher.add(self)
        elif self._state == _WRITING:
            stats = self._flusher.stats
            if self._queued > stats.queue_high_water:
                stats.queue_high_water = self._queued

    def close(self) -> None:
        """No more lines; the connection ends once those queued are out."""
        self.closed = True
        if self._state == _IDLE:
            self._owner.end()

    def send_last(self, data: bytes, /) -> None:
        """After :meth:`close`: one more chunk, after the queued ones (a WebSocket's close
        frame, once the hub has closed the outbox). Dropped if the lines are all out already
        (the connection is ending) or the socket is gone."""
        if not self.closed:
            self.send_nowait(data)
        elif self._state != _IDLE and not self._broken:
            self._chunks.append(data)

    def stop(self) -> None:
        """Drop what is queued and refuse more (``BrokenResourceError``): the socket is gone."""
        self._broken = True
        self._chunks.clear()
        self._queued = 0
        self._state = _IDLE

    def flush(self) -> None:
        """Write what is queued, if the flusher has not yet; queue for the writer what is left."""
        if self._state != _DIRTY:
            return
        try:
            done = self._write()
        except OSError:
            done = False  # failed: the writer meets the error again and reports it
        if not done:
            with suppress(trio.BrokenResourceError):  # the connection is over: it is stopped
                self._start_writer()
        elif self.closed:
            self._owner.end()

    async def write_backlog(self, stream: trio.abc.SendStream | None = None) -> None:
        """For the owner's writer task: write the backlog until nothing is queued.

        On a plain socket the chunks go out as they are, with ``writev``, as the
        kernel takes them: joining a big backlog first copied every byte of it once
        more. Any other stream (``fd`` -1: TLS, a test's) gets everything queued in
        one ``send_all`` at a time. Raises ``BrokenResourceError`` (or
        ``ClosedResourceError``) if writing failed.
        """
        if self.fd < 0:
            assert stream is not None, "a stream that is not a plain socket is written through"
            while (data := self.take()) is not None:
                self._flusher.stats.bytes_out += len(data)
                await stream.send_all(data)
            return
        while True:
            await trio.lowlevel.wait_writable(self.fd)
            try:
                done = self._write()
            except OSError as exc:
                raise trio.BrokenResourceError from exc
            if done:
                return

    def _write(self) -> bool:
        """Write what the kernel takes now (one ``write`` or ``writev``); True once all is out.

        Raises ``OSError`` if the socket failed; a full one (EAGAIN) is just not done.
        """
        chunks = self._chunks
        if not chunks:
            self._state = _IDLE
            return True
        try:
            if len(chunks) == 1:
                sent = os.write(self.fd, chunks[0])
            else:
                sent = os.writev(self.fd, chunks[:IOV_MAX])
        except BlockingIOError:
            return False
        self._flusher.stats.bytes_out += sent
        if sent == (len(chunks[0]) if len(chunks) == 1 else sum(map(len, chunks))):
            chunks.clear()
            self._queued = 0
            self._state = _IDLE
            return True
        # Only the lines written are counted off: counting what is left would
        # read the whole backlog at every partial write.
        done = 0
        while len(chunks[done]) <= sent:
            sent -= len(chunks[done])
            self._queued -= chunks[done].count(b"\n")
            done += 1
        del chunks[:done]
        if sent:
            self._queued -= chunks[0].count(b"\n", 0, sent)
            chunks[0] = chunks[0][sent:]
        return False

    def take(self) -> bytes | None:
        """For the writer of a stream that is not a plain socket: everything queued, joined;
        ``None`` when nothing is (it then ends)."""
        if not self._chunks:
            self._state = _IDLE
            return None
        return self._drain()

    def _drain(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._queued = 0
        return data

    def _start_writer(self) -> None:
        self._state = _WRITING
        try:
            self._owner.start_writer()
        except trio.BrokenResourceError:
            self.stop()
            raise


class Flusher:
    """Writes every outbox that has lines, once per round of the scheduler, from one task.

    A round of writes that took longer than :data:`PAUSE_AFTER` (a line to a few
    hundred members already does) is followed by a pause of twice its time, at
    most :data:`PAUSE_MAX`: the lines said meanwhile then share each member's
    next write. At a steady 2,000 lines/s to 200 members, one round per line kept
    the server's core nearly full with system calls and the 99th percentile of
    latency at 14 to 42 ms; with the pause it was 5 ms (docs/benchmarks.md). A
    quiet room never waits: its rounds are short.

    Until :meth:`run` is running (a server used without :meth:`ChatServer.serve`),
    outboxes are written as soon as they get lines.
    """

    __slots__ = ("_counted", "_dirty", "_lines", "_lot", "_running", "stats")

    def __init__(self, stats: ServerStats) -> None:
        self.stats = stats
        self._dirty: list[Outbox] = []
        self._lot = trio.lowlevel.ParkingLot()
        self._running = False
        self._counted = b""
        self._lines = 0

    def lines_in(self, data: bytes) -> int:
        """How many lines ``data`` holds, counted once for all the members it is handed to."""
        if data is not self._counted:
            self._counted = data
            self._lines = data.count(b"\n")
        return self._lines

    def add(self, outbox: Outbox) -> None:
        if not self._running:
            outbox.flush()
            return
        if not self._dirty:
            self._lot.unpark_all()
        self._dirty.append(outbox)

    async def run(self) -> None:
        """Flush outboxes until cancelled; whatever is queued then is written at once."""
        self._running = True
        try:
            while True:
                # Woken by the first outbox of a round, this task runs after every
                # task that was ready with it: the readers of that round.
                if self._dirty:
                    await trio.lowlevel.checkpoint()
                else:
                    await self._lot.park()
                dirty, self._dirty = self._dirty, []
                began = trio.current_time()
                for outbox in dirty:
                    try:
                        outbox.flush()
                    except Exception:
                        # One client's bug must never stop everyone's lines.
                        log.exception("writing to a client failed")
                        outbox.stop()
                took = trio.current_time() - began
                if took > PAUSE_AFTER:
                    await trio.sleep(min(took * PAUSE_FACTOR, PAUSE_MAX))
        finally:
            self._running = False
            for outbox in self._dirty:
                outbox.flush()
            self._dirty.clear()
