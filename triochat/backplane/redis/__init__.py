"""Several ``triochat serve`` nodes as one chat, through Redis (coredis, native on trio).

The design, in short (docs/scaling.md has the long form):

- **One channel per cluster.** Every room event from every node is published
  on ``triochat:CLUSTER:events`` and delivered to local members only when it
  comes back from Redis, the sender's node included. Redis delivers one
  channel's messages in one order to every subscriber, so everyone in a room
  sees the same order. Events travel as the hub made them (:mod:`.wire`).
- **Writes are atomic with their announcement** (:mod:`.publisher`): each
  batch is one MULTI of history, presence, the node's batch number and the
  PUBLISH. A (re)connecting node subscribes first, then takes a snapshot in
  one Lua script (:mod:`.scripts`) and skips batches the snapshot holds.
- **Names** are claimed by a Lua script that treats a name held by a dead
  node as free (:mod:`.claims`). Each node refreshes a TTL'd heartbeat key;
  survivors reap a node whose key expired, and their hub announces its users
  ``left (connection lost)``.
- **A room's history goes with its last member anywhere** (holds, drops and
  the undo of a drop that raced a join: docs/scaling.md).
- **The hub never waits.** It asks the replica of remote presence kept here
  (:mod:`.replica`), and queues its events on a bounded channel that the
  publisher drains. The link loop (:mod:`.link`) maps coredis's exceptions to
  "the link is down" and reconnects with backoff.

Every key is computed in :mod:`.keys`; every option is in :mod:`.options`.
"""

from __future__ import annotations

from .backplane import RedisBackplane as RedisBackplane
from .options import RedisOptions as RedisOptions

__all__ = ["RedisBackplane", "RedisOptions"]
