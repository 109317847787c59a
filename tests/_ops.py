"""Helpers for the operations tests: servers with a store or TLS, and the CLI as a subprocess."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

from triochat import ChatServer, ServerConfig
from triochat.server.store import HistoryStore, StoreConfig, open_history_store

REPO = Path(__file__).resolve().parent.parent


@asynccontextmanager
async def running_server(
    *,
    db: Path | None = None,
    store_options: dict[str, Any] | None = None,
    ssl_context: ssl.SSLContext | None = None,
    **options: Any,
) -> AsyncIterator[tuple[ChatServer, int]]:
    """A server on a free port (with a history store if ``db``), shut down gracefully on exit."""
    options.setdefault("port", 0)
    options.setdefault("rate", 0)
    config = ServerConfig(**options)
    async with _maybe_store(db, config.history, store_options or {}) as store:
        server = ChatServer(config, store=store, ssl_context=ssl_context)
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(server.serve)
            yield server, listeners[0].socket.getsockname()[1]
            server.shutdown()


@asynccontextmanager
async def _maybe_store(
    db: Path | None, history: int, options: dict[str, Any]
) -> AsyncIterator[HistoryStore | None]:
    if db is None:
        yield None
        return
    async with open_history_store(StoreConfig(path=db, history=history, **options)) as store:
        yield store


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("TRIOCHAT_PASSWORD", None)
    return env


async def start_cli(*args: str, env: dict[str, str] | None = None) -> tuple[trio.Process, int]:
    """``triochat serve --port 0 ARGS`` in a subprocess; returns it once it is listening.

    Its stdout is read up to the ``listening`` line; what came before (the
    metrics line, say) is kept in ``proc.banner``.
    """
    proc = await trio.lowlevel.open_process(
        [sys.executable, "-m", "triochat", "serve", "--port", "0", "--log-level", "error", *args],
        stdout=subprocess.PIPE,
        env=env or cli_env(),
    )
    assert proc.stdout is not None
    buffer = b""
    with trio.fail_after(10):
        while b"triochat listening on " not in buffer or not buffer.endswith(b"\n"):
            data = await proc.stdout.receive_some(4096)
            assert data, f"server exited early: {buffer!r}"
            buffer += data
    line = buffer.decode().split("triochat listening on ")[1].splitlines()[0]
    proc.banner = buffer.decode()  # type: ignore[attr-defined]
    return proc, int(line.rsplit(":", 1)[1])
