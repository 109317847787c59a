"""Cluster test helpers: a reachable Redis, unique cluster names, a private redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import urllib.parse
import uuid
from collections.abc import Callable

import pytest
import trio

from triochat.client.connection import ChatClient, ConnectionClosed

coredis = pytest.importorskip("coredis", reason="the 'redis' extra (coredis) is not installed")

TEST_REDIS = os.environ.get("TRIOCHAT_TEST_REDIS", "redis://127.0.0.1:6379/0")
IN_CI = os.environ.get("CI", "").lower() == "true"

# Short intervals, so a dead node or a lost link shows within a second or two.
FAST = {
    "heartbeat": 0.2,
    "node_ttl": 0.8,
    "timeout": 1.0,
    "backoff_min": 0.05,
    "backoff_max": 0.3,
    "undo_window": 0.5,
}


def unavailable(reason: str) -> None:
    """Skip, or fail under CI, where a Redis must answer."""
    if IN_CI:
        pytest.fail(f"CI=true but {reason}")
    pytest.skip(reason)


def answers(url: str) -> bool:
    """Whether a Redis answers PING at ``url`` (a plain socket: no event loop needed)."""
    parts = urllib.parse.urlsplit(url)
    try:
        with socket.create_connection(
            (parts.hostname or "127.0.0.1", parts.port or 6379), timeout=1
        ) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


async def ping(url: str) -> bool:
    answered = False
    try:
        with trio.move_on_after(2):
            async with coredis.Redis.from_url(url, connect_timeout=1, stream_timeout=1) as client:
                answered = bool(await client.ping())
    except* (coredis.exceptions.RedisError, OSError):
        pass  # coredis raises inside its task group, hence the group.
    return answered


async def delete_cluster_keys(url: str, cluster: str) -> None:
    with trio.move_on_after(3):
        async with coredis.Redis.from_url(url) as client:
            keys = [key async for key in client.scan_iter(match=f"triochat:{cluster}:*")]
            if keys:
                await client.delete(keys)


async def cluster_keys(url: str, cluster: str) -> list[bytes]:
    async with coredis.Redis.from_url(url) as client:
        return [key async for key in client.scan_iter(match=f"triochat:{cluster}:*")]


async def room_keys(url: str, cluster: str, room: str) -> dict[str, set[str]]:
    """What Redis keeps about ``room``: each key named after it, with its members for a set.

    ``rooms`` is there too if the set of rooms with history lists the room.
    """
    prefix = f"triochat:{cluster}:"
    found: dict[str, set[str]] = {}
    async with coredis.Redis.from_url(url, decode_responses=True) as client:
        async for key in client.scan_iter(match=f"{prefix}*:{room}"):
            kind = await client.type(key)
            members = await client.smembers(key) if kind == "set" else set()
            found[key.removeprefix(prefix)] = set(members)
        if await client.sismember(prefix + "rooms", room):
            found["rooms"] = {room}
    return found


async def room_keys_become(
    url: str, cluster: str, room: str, expected: dict[str, set[str]], seconds: float = 5
) -> None:
    """Wait until :func:`room_keys` is ``expected``."""
    with trio.move_on_after(seconds):
        # Redis announces none of this: nothing to wait on but the answer.
        while await room_keys(url, cluster, room) != expected:  # noqa: ASYNC110
            await trio.sleep(0.02)
        return
    found = await room_keys(url, cluster, room)
    assert found == expected, f"{room}: {found} != {expected}"


async def wait_until(condition: Callable[[], bool], seconds: float = 5) -> None:
    """Poll ``condition`` (state of this process that nothing announces) until it holds."""
    with trio.fail_after(seconds):
        while not condition():  # noqa: ASYNC110
            await trio.sleep(0.01)


def unique_cluster() -> str:
    return "test-" + uuid.uuid4().hex[:10]


_NO_DISK = ("--save", "", "--appendonly", "no")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A private ``redis-server`` on a free port, for tests that stop and restart it."""

    def __init__(self) -> None:
        self.binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not os.path.exists(self.binary):
            unavailable("redis-server is not installed (the outage tests start their own)")
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: trio.Process | None = None

    async def start(self) -> None:
        self.process = await trio.lowlevel.open_process(
            [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", *_NO_DISK],
            stdout=subprocess.DEVNULL,
        )
        with trio.fail_after(5):
            # An outside process: nothing to wait on but its answer.
            while not await ping(self.url):  # noqa: ASYNC110
                await trio.sleep(0.02)

    async def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            with trio.fail_after(5):
                await self.process.wait()
            self.process = None


async def expect(client: ChatClient, match: str | Callable[[str], bool], seconds: float = 5) -> str:
    """Read lines until one ends with ``match`` (or satisfies it); return that line."""
    test = match if callable(match) else (lambda line: line.endswith(match))
    with trio.fail_after(seconds):
        while True:
            line = await client.receive_line()
            if test(line):
                return line


async def quiet(client: ChatClient, seconds: float = 0.3) -> list[str]:
    """Lines that arrive within ``seconds`` (to check that something does *not* arrive)."""
    lines = []
    with trio.move_on_after(seconds):
        try:
            while True:
                lines.append(await client.receive_line())
        except ConnectionClosed:
            pass  # What it said before hanging up still counts.
    return lines
