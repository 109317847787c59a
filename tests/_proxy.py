"""A TCP proxy for tests: it can cut its links (close both sides), refuse new ones, or stall.

``proxy = await nursery.start(Proxy(port).run)``; clients connect to
``proxy.port`` and reach the server at ``port``.
"""

from __future__ import annotations

from contextlib import suppress

import trio


class Proxy:
    """Forwards each accepted connection to ``127.0.0.1:target``, until told otherwise."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.refusing = False
        """While set, a new connection is accepted and closed at once."""
        self.flowing = trio.Event()
        self.flowing.set()
        self.accepted = 0
        self._links: set[trio.CancelScope] = set()

    async def run(self, *, task_status: trio.TaskStatus[Proxy] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
        self.port = listeners[0].socket.getsockname()[1]
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, self._link, listeners)
            task_status.started(self)

    def cut(self) -> int:
        """Close every link now, both sides; returns how many there were."""
        links = list(self._links)
        for scope in links:
            scope.cancel()
        return len(links)

    def stall(self) -> None:
        """Stop forwarding (the sockets stay open) until :meth:`resume`."""
        self.flowing = trio.Event()

    def resume(self) -> None:
        self.flowing.set()

    async def _link(self, client: trio.SocketStream) -> None:
        self.accepted += 1
        if self.refusing:
            await client.aclose()
            return
        try:
            server = await trio.open_tcp_stream("127.0.0.1", self.target)
        except OSError:
            await client.aclose()
            return
        try:
            with trio.CancelScope() as scope:
                self._links.add(scope)
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                        nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
                finally:
                    self._links.discard(scope)
        finally:
            # Shielded: when the proxy itself is cancelled, the first close's
            # Cancelled would skip the second.
            with trio.CancelScope(shield=True):
                await trio.aclose_forcefully(client)
                await trio.aclose_forcefully(server)

    async def _pump(
        self, source: trio.SocketStream, sink: trio.SocketStream, done: trio.CancelScope
    ) -> None:
        with suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            while data := await source.receive_some(65536):
                await self.flowing.wait()
                await sink.send_all(data)
        done.cancel()
