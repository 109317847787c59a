"""The servers' accept loop (``listener.serve_listeners``): trio's, without its wrapper task."""

from __future__ import annotations

import errno
import logging
from functools import partial
from typing import cast

import pytest
import trio
import trio.testing

from triochat.server.listener import serve_listeners


class Flaky(trio.abc.Listener[trio.SocketStream]):
    """A listener whose accepts fail with ``errors`` first, then wait for ever."""

    def __init__(self, *errors: int) -> None:
        self.errors = list(errors)
        self.accepts = 0

    async def accept(self) -> trio.SocketStream:
        self.accepts += 1
        if self.errors:
            code = self.errors.pop(0)
            raise OSError(code, "injected")
        await trio.sleep_forever()

    async def aclose(self) -> None:
        pass


async def handler(stream: trio.SocketStream) -> None:
    raise AssertionError("no stream is accepted")


async def test_out_of_descriptors_is_logged_and_retried(
    autojump_clock: trio.testing.MockClock, caplog: pytest.LogCaptureFixture
) -> None:
    flaky = Flaky(errno.EMFILE, errno.ENOBUFS)
    listeners = [cast(trio.SocketListener, flaky)]
    async with trio.open_nursery() as nursery:
        serve = partial(serve_listeners, handler, listeners, handler_nursery=nursery, name="x")
        assert await nursery.start(serve) == listeners
        await trio.sleep(1)
        assert flaky.accepts == 3
        nursery.cancel_scope.cancel()
    failed = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert [r.getMessage().partition(":")[0] for r in failed] == ["accept failed"] * 2


async def test_any_other_accept_error_is_raised() -> None:
    listeners = [cast(trio.SocketListener, Flaky(errno.EBADF))]
    with pytest.RaisesGroup(
        pytest.RaisesExc(OSError, check=lambda e: e.errno == errno.EBADF), flatten_subgroups=True
    ):
        async with trio.open_nursery() as nursery:
            await nursery.start(
                partial(serve_listeners, handler, listeners, handler_nursery=nursery, name="x")
            )
