"""The outbox and the flusher on a real socket pair (SOCK_SEQPACKET: one record per write)."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from triochat.server.outbox import IOV_MAX, PAUSE_AFTER, PAUSE_FACTOR, Flusher, Outbox
from triochat.server.stats import ServerStats


class Owner:
    """A connection as the outbox sees it: counts writer starts and ends."""

    def __init__(self) -> None:
        self.writers = 0
        self.ended = 0

    def start_writer(self) -> None:
        self.writers += 1

    def end(self) -> None:
        self.ended += 1


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ours.setblocking(False)
    theirs.setblocking(False)
    with ours, theirs:
        yield ours, theirs


def stream_pair(send_buffer: int) -> tuple[socket.socket, socket.socket]:
    """A non-blocking stream socket pair (it takes part of a write) whose sending end
    buffers about ``send_buffer`` bytes."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    ours.setblocking(False)
    theirs.setblocking(False)
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, send_buffer)
    return ours, theirs


@asynccontextmanager
async def flushing(flusher: Flusher) -> AsyncIterator[None]:
    """The flusher's task running, as in a serving server."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(flusher.run)
        await trio.testing.wait_all_tasks_blocked()
        yield
        nursery.cancel_scope.cancel()


def records(sock: socket.socket) -> list[bytes]:
    """Every write that reached ``sock``, one item each."""
    got = []
    while True:
        try:
            got.append(sock.recv(1 << 20))
        except BlockingIOError:
            return got


async def test_lines_of_one_round_go_out_in_one_write(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    owner = Owner()
    outbox = Outbox(owner, flusher, 100, ours.fileno())
    async with flushing(flusher):
        for i in range(5):  # as if five readers each broadcast a line in one round
            outbox.send_nowait(b"line %d\n" % i)
        assert records(theirs) == []  # nothing is written during the round
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == [b"".join(b"line %d\n" % i for i in range(5))]
        assert flusher.stats.bytes_out == 35
        outbox.send_nowait(b"next\n")
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == [b"next\n"]
    assert owner.writers == 0


def test_without_a_running_flusher_lines_are_written_at_once(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    outbox = Outbox(Owner(), Flusher(ServerStats()), 100, ours.fileno())
    outbox.send_nowait(b"a\n")
    outbox.send_nowait(b"b\n")
    assert records(theirs) == [b"a\n", b"b\n"]


def test_what_the_kernel_refuses_goes_to_a_writer_and_counts_toward_the_bound(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    stats = ServerStats()
    owner = Owner()
    outbox = Outbox(owner, Flusher(stats), 3, ours.fileno())
    big = b"x" * 200_000 + b"\n"  # more than the socket buffer takes
    outbox.send_nowait(big)
    assert owner.writers == 1
    outbox.send_nowait(b"1\n")
    outbox.send_nowait(b"2\n")
    assert stats.queue_high_water == 3
    with pytest.raises(trio.WouldBlock):
        outbox.send_nowait(b"3\n")
    rest = outbox.take()
    assert rest is not None
    assert rest.endswith(b"x\n1\n2\n")
    assert outbox.take() is None  # the writer ends; the outbox takes lines again
    assert b"".join(records(theirs)) + rest[: -len(b"1\n2\n")] == big
    outbox.send_nowait(b"3\n")
    assert records(theirs) == [b"3\n"]


async def test_a_round_s_chunks_go_out_whole_and_in_order_when_the_kernel_takes_part() -> None:
    ours, theirs = stream_pair(65536)
    flusher = Flusher(ServerStats())
    owner = Owner()
    outbox = Outbox(owner, flusher, 100, ours.fileno())
    chunks = [b"%d" % i + b"x" * 30_000 + b"\n" for i in range(8)]  # more than the buffer takes
    with ours, theirs:
        async with flushing(flusher):
            for chunk in chunks:
                outbox.send_nowait(chunk)
            await trio.testing.wait_all_tasks_blocked()
        written = b"".join(records(theirs))  # the first chunks whole, maybe part of the next
    assert 0 < len(written) < sum(map(len, chunks))
    assert owner.writers == 1
    outbox.send_nowait(b"more\n")  # the lines not written still count toward the bound
    assert flusher.stats.queue_high_water == b"".join(chunks)[len(written) :].count(b"\n") + 1
    rest = outbox.take()
    assert rest is not None
    assert written + rest == b"".join(chunks) + b"more\n"
    assert flusher.stats.bytes_out == len(written)


async def test_a_round_of_more_chunks_than_one_writev_takes_leaves_the_rest_to_the_writer(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    owner = Owner()
    outbox = Outbox(owner, flusher, 10 * IOV_MAX, ours.fileno())
    chunks = [b"%d\n" % i for i in range(IOV_MAX + 3)]
    async with flushing(flusher):
        for chunk in chunks:
            outbox.send_nowait(chunk)
        await trio.testing.wait_all_tasks_blocked()
    assert records(theirs) == [b"".join(chunks[:IOV_MAX])]
    assert owner.writers == 1
    assert outbox.take() == b"".join(chunks[IOV_MAX:])


async def test_a_big_round_is_flushed_early_instead_of_counting_as_slow(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    owner = Owner()
    outbox = Outbox(owner, flusher, 4, ours.fileno())
    async with flushing(flusher):
        for i in range(10):
            outbox.send_nowait(b"%d\n" % i)  # no WouldBlock: the kernel takes them
        await trio.testing.wait_all_tasks_blocked()
    assert b"".join(records(theirs)) == b"".join(b"%d\n" % i for i in range(10))
    assert owner.writers == 0


async def test_close_ends_the_connection_once_the_last_line_is_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    idle, busy = Owner(), Owner()
    Outbox(idle, flusher, 10, ours.fileno()).close()
    assert idle.ended == 1
    async with flushing(flusher):
        outbox = Outbox(busy, flusher, 10, ours.fileno())
        outbox.send_nowait(b"Bye!\n")
        outbox.close()
        with pytest.raises(trio.ClosedResourceError):
            outbox.send_nowait(b"more\n")
        assert busy.ended == 0
        await trio.testing.wait_all_tasks_blocked()
        assert busy.ended == 1
        assert records(theirs) == [b"Bye!\n"]


async def test_a_stopped_outbox_never_writes_to_its_old_socket_number(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    outbox = Outbox(Owner(), flusher, 10, ours.fileno())
    async with flushing(flusher):
        outbox.send_nowait(b"late\n")
        outbox.stop()  # the connection ended before the flusher's round
        await trio.testing.wait_all_tasks_blocked()
    assert records(theirs) == []
    with pytest.raises(trio.BrokenResourceError):
        outbox.send_nowait(b"more\n")


class ClosedOwner(Owner):
    """A connection whose nursery has closed: no writer can start any more."""

    def start_writer(self) -> None:
        raise trio.BrokenResourceError("the connection is not open")


async def test_a_backlog_for_a_connection_that_is_over_never_stops_the_flusher(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    flusher = Flusher(ServerStats())
    over = Outbox(ClosedOwner(), flusher, 10, ours.fileno())
    fine = Outbox(Owner(), flusher, 10, theirs.fileno())
    async with flushing(flusher):
        over.send_nowait(b"x" * 200_000 + b"\n")  # the kernel refuses it: a writer is needed
        fine.send_nowait(b"still here\n")
        await trio.testing.wait_all_tasks_blocked()
        with pytest.raises(trio.BrokenResourceError):
            over.send_nowait(b"more\n")
        fine.send_nowait(b"and here\n")
        await trio.testing.wait_all_tasks_blocked()
    assert records(ours) == [b"still here\n", b"and here\n"]


async def test_the_writer_of_a_plain_socket_writes_the_backlog_as_the_peer_reads_it() -> None:
    ours, theirs = stream_pair(65536)
    flusher = Flusher(ServerStats())
    owner = Owner()
    outbox = Outbox(owner, flusher, 1000, ours.fileno())
    lines = [b"%03d" % i + b"x" * 9_996 + b"\n" for i in range(60)]  # 600 kB: far over the buffer
    received = bytearray()
    with ours, theirs:
        for line in lines[:30]:
            outbox.send_nowait(line)
        assert owner.writers == 1  # what the kernel refused waits for the writer
        async with trio.open_nursery() as nursery:
            nursery.start_soon(outbox.write_backlog)
            await trio.testing.wait_all_tasks_blocked()
            # Only the lines the kernel has not taken count toward the bound.
            unsent = b"".join(lines[:30])[flusher.stats.bytes_out :].count(b"\n")
            for line in lines[30:]:
                outbox.send_nowait(line)  # the writer takes these too
            assert flusher.stats.queue_high_water == unsent + 30
            while len(received) < sum(map(len, lines)):
                await trio.lowlevel.wait_readable(theirs)
                received += theirs.recv(1 << 20)
        assert bytes(received) == b"".join(lines)
        assert flusher.stats.bytes_out == len(received)
        outbox.send_nowait(b"idle again\n")  # the writer is done: the flusher writes again
        assert theirs.recv(100) == b"idle again\n"


async def test_the_writer_of_a_plain_socket_reports_a_broken_one() -> None:
    ours, theirs = stream_pair(4096)
    owner = Owner()
    outbox = Outbox(owner, Flusher(ServerStats()), 100, ours.fileno())
    with ours:
        outbox.send_nowait(b"x" * 200_000 + b"\n")
        assert owner.writers == 1
        theirs.close()  # the peer went away with the backlog unread
        with pytest.raises(trio.BrokenResourceError):
            await outbox.write_backlog()


class SlowOutbox(Outbox):
    """An outbox whose every write takes ``took`` seconds of the mock clock."""

    def __init__(self, clock: trio.testing.MockClock, took: float, *args: Any) -> None:
        super().__init__(*args)
        self._clock, self._took = clock, took

    def flush(self) -> None:
        super().flush()
        self._clock.jump(self._took)


async def test_after_a_long_round_of_writes_the_flusher_pauses_so_lines_share_writes(
    pair: tuple[socket.socket, socket.socket], mock_clock: trio.testing.MockClock
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    took = PAUSE_AFTER * 2
    outbox = SlowOutbox(mock_clock, took, Owner(), flusher, 100, ours.fileno())
    async with flushing(flusher):
        outbox.send_nowait(b"one\n")
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == [b"one\n"]  # the round took `took`: now it pauses
        outbox.send_nowait(b"two\n")
        outbox.send_nowait(b"three\n")
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == []
        mock_clock.jump(took * PAUSE_FACTOR)
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == [b"two\nthree\n"]  # both in one write


async def test_after_a_short_round_the_flusher_writes_the_next_at_once(
    pair: tuple[socket.socket, socket.socket], mock_clock: trio.testing.MockClock
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    outbox = SlowOutbox(mock_clock, PAUSE_AFTER / 2, Owner(), flusher, 100, ours.fileno())
    async with flushing(flusher):
        for line in (b"one\n", b"two\n"):
            outbox.send_nowait(line)
            await trio.testing.wait_all_tasks_blocked()
            assert records(theirs) == [line]


async def test_a_last_chunk_after_close_goes_out_after_the_queued_lines_or_not_at_all(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    flusher = Flusher(ServerStats())
    owner = Owner()
    outbox = Outbox(owner, flusher, 100, ours.fileno())
    async with flushing(flusher):
        outbox.send_nowait(b"you are out\n")
        outbox.close()
        outbox.send_last(b"<close frame>")
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == [b"you are out\n<close frame>"]
        assert owner.ended == 1
        outbox.send_last(b"too late")  # all is out and the connection is ending
        await trio.testing.wait_all_tasks_blocked()
        assert records(theirs) == []
