"""Property: whatever the interleaving of sends, cuts and reconnects, the resuming client
shows exactly the room's lines, once each, in order. In process, on trio's mock clock."""

from __future__ import annotations

from typing import Any

import trio
import trio.testing
from hypothesis import HealthCheck, given, settings, strategies as st

from triochat import ChatServer, ServerConfig
from triochat.client.connection import ChatClient, ConnectOptions
from triochat.client.resuming import ResumingClient

Op = tuple[str, int]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("say"), st.integers(1, 30)),
        st.tuples(st.just("cut"), st.just(0)),
        st.tuples(st.just("wait"), st.integers(0, 20)),
    ),
    max_size=20,
)


async def _scenario(plan: list[Op]) -> tuple[list[str], list[str], int]:
    server = ChatServer(ServerConfig(port=0, rate=0, send_queue=8192))
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        mine: list[trio.StapledStream[Any, Any]] = []

        def stream() -> trio.StapledStream[Any, Any]:
            client, server_side = trio.testing.memory_stream_pair()
            nursery.start_soon(server.handle_stream, server_side)
            return client

        async def opener() -> ChatClient:
            mine.append(stream())
            return ChatClient(mine[-1])

        shown: list[str] = []
        ended = trio.Event()

        async def show(lines: list[str]) -> None:
            shown.extend(lines)
            if any(line.endswith("<ann> end") for line in lines):
                ended.set()

        dave = ResumingClient(ConnectOptions(), "dave", show, opener=opener)
        shown.extend(await dave.start())
        nursery.start_soon(dave.receive)
        ann = ChatClient(stream())
        await ann.register("ann")
        said: list[str] = []
        for kind, amount in plan:
            if kind == "say":
                for _ in range(amount):
                    said.append(f"line {len(said)}")
                    await ann.send_line(said[-1])
            elif kind == "cut":
                await mine[-1].aclose()
            else:
                await trio.sleep(amount / 10)
        await ann.send_line("end")
        said.append("end")
        with trio.fail_after(200):
            await ended.wait()
        nursery.cancel_scope.cancel()
    return [line.split("> ", 1)[1] for line in shown if "<ann> " in line], said, dave.reconnects


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_the_client_shows_the_rooms_history_once_in_order(plan: list[Op]) -> None:
    clock = trio.testing.MockClock(autojump_threshold=0)
    shown, said, reconnects = trio.run(_scenario, plan, clock=clock)
    assert shown == said
    assert (reconnects > 0) == any(kind == "cut" for kind, _ in plan)
