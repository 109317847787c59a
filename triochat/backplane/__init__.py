"""Backplanes: what links one server's hub to the other nodes of a cluster.

The seam is two small interfaces (:mod:`.base`): a hub publishes through its
:class:`Backplane`, and a backplane delivers into a :class:`Node`.
:class:`LocalBackplane` (the default) is a loopback that links nothing.
``RedisBackplane`` (:mod:`triochat.backplane.redis`, needs the ``redis``
extra) makes several ``triochat serve`` nodes one chat through Redis, and
``MemoryCluster`` (:mod:`triochat.backplane.memory`) does the same in one
process, for tests.
"""

from __future__ import annotations

from .base import (
    Backplane as Backplane,
    BackplaneError as BackplaneError,
    Claim as Claim,
    Handover as Handover,
    LocalMember as LocalMember,
    Node as Node,
    RemoteUser as RemoteUser,
    Tail as Tail,
    Takeover as Takeover,
)
from .local import LocalBackplane as LocalBackplane

__all__ = [
    "Backplane",
    "BackplaneError",
    "Claim",
    "Handover",
    "LocalBackplane",
    "LocalMember",
    "Node",
    "RemoteUser",
    "Tail",
    "Takeover",
]
