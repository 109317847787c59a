"""Backplanes: what links one server's hub to the other nodes of a cluster.

:class:`LocalBackplane` (the default) links nothing. ``RedisBackplane``
(:mod:`triochat.backplane.redis`, needs the ``redis`` extra) makes several
``triochat serve`` nodes one chat through Redis.
"""

from __future__ import annotations

from .base import (
    Backplane as Backplane,
    BackplaneError as BackplaneError,
    Claim as Claim,
    LocalMember as LocalMember,
    Node as Node,
)
from .local import LocalBackplane as LocalBackplane

__all__ = ["Backplane", "BackplaneError", "Claim", "LocalBackplane", "LocalMember", "Node"]
