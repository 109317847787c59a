"""triochat: a realtime multi-user chat built on Trio's structured concurrency.

The layers, inside out: :mod:`triochat.protocol` (sans-IO wire format),
:mod:`triochat.hub` (the chat's state and rules, synchronous),
:mod:`triochat.server` (sockets, tasks and shutdown) and :mod:`triochat.cli`.
"""

from __future__ import annotations

__version__ = "0.1.0"

from .hub import Hub as Hub
from .server import ChatServer as ChatServer
from .server import ServerConfig as ServerConfig

__all__ = ["ChatServer", "Hub", "ServerConfig", "__version__"]
