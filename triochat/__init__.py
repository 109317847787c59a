"""triochat: a realtime multi-user chat built on Trio's structured concurrency.

The layers, inside out, each a folder:

- :mod:`triochat.protocol`: the wire dialects, sans-IO (bytes in, events out; no trio).
- :mod:`triochat.core`: the chat's state and rules (the hub), synchronous.
- :mod:`triochat.backplane`: what links a hub to other nodes (none, or Redis).
- :mod:`triochat.server`: sockets, tasks, outboxes, history store, metrics.
- :mod:`triochat.client`: the client side (connection, ``join``, terminal UI, bots).
- :mod:`triochat.cli`: the ``triochat`` command.

Importing this package imports nothing else; the names below load their layer
on first use, so ``import triochat.protocol.line`` never pulls in trio.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from .core.hub import Hub as Hub
    from .server.listener import ChatServer as ChatServer, ServerConfig as ServerConfig

_LAZY = {
    "Hub": "triochat.core.hub",
    "ChatServer": "triochat.server.listener",
    "ServerConfig": "triochat.server.listener",
}

__all__ = ["ChatServer", "Hub", "ServerConfig", "__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'triochat' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
