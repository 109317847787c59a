"""Helpers for the accounts and moderation tests: a migrated ``--db`` file, line clients."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio
from argon2 import PasswordHasher

from triochat.client.connection import ChatClient, open_chat_client
from triochat.server.accounts import AccountStore
from triochat.server.store import StoreConfig, _open_sync

CHEAP: PasswordHasher = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1)
"""Argon2 at its cheapest: the same code paths, a thousand times faster."""
WAIT = 10.0
STAMP = re.compile(r"^\[[\d: -]+\] ")


def open_accounts(path: Path) -> AccountStore:
    """The accounts of a freshly migrated ``--db`` file at ``path``."""
    writer, reader, _, _ = _open_sync(StoreConfig(path=path))
    writer.close()
    reader.close()
    return AccountStore.open(path, CHEAP)


class Client:
    """A raw line client: what it sends and every line it reads (times made ``[T]``)."""

    def __init__(self, client: ChatClient) -> None:
        self.client = client
        self.seen: list[str] = []

    async def send(self, line: str) -> None:
        await self.client.send_line(line)

    async def until(self, wanted: str) -> list[str]:
        """Lines up to and including ``wanted``."""
        lines: list[str] = []
        with trio.fail_after(WAIT):
            while True:
                line = STAMP.sub("[T] ", await self.client.receive_line())
                lines.append(line)
                self.seen.append(line)
                if line == wanted:
                    return lines


OPEN: list[ChatClient] = []


@pytest.fixture(name="net")
async def net_fixture() -> AsyncIterator[None]:
    """Closes the clients a test opened with :func:`dial`."""
    yield
    while OPEN:
        await OPEN.pop().aclose()


async def dial(port: int) -> Client:
    """A connected client, closed after the test."""
    client = await open_chat_client("127.0.0.1", port)
    OPEN.append(client)
    return Client(client)


async def named(port: int, name: str) -> Client:
    client = await dial(port)
    await client.until("* What is your name?")
    await client.send(name)
    await client.until(f"[T] * {name} joined #lobby")
    return client
