"""Shared fixtures: a real server on a free port, and real TCP clients for it."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import trio
from hypothesis import settings

from triochat import ChatServer, ServerConfig
from triochat.client.connection import ChatClient, open_chat_client

# Hypothesis's per-example deadline (200 ms) measures the machine, not the code: on two
# shared cores a slow moment fails a correct property as "flaky". The properties stay.
settings.register_profile("triochat", deadline=None)
settings.load_profile("triochat")

StartServer = Callable[..., Awaitable[tuple[ChatServer, int]]]
Connect = Callable[..., Awaitable[ChatClient]]


@pytest.fixture
async def start_server(nursery: trio.Nursery) -> StartServer:
    """``server, port = await start_server(rate=0, ...)``: a server in the test's nursery."""

    async def start(**options: Any) -> tuple[ChatServer, int]:
        options.setdefault("port", 0)
        server = ChatServer(ServerConfig(**options))
        listeners = await nursery.start(server.serve)
        return server, listeners[0].socket.getsockname()[1]

    return start


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """``client = await connect(port, "name")``: a registered client, closed after the test.

    With ``name=None`` the client is connected but not registered.
    """
    clients: list[ChatClient] = []

    async def open_client(port: int, name: str | None = None) -> ChatClient:
        client = await open_chat_client("127.0.0.1", port)
        clients.append(client)
        if name is not None:
            await client.register(name)
        return client

    yield open_client
    for client in clients:
        await client.aclose()
