"""Where a cluster lives in Redis: every key and the channel, computed in one place.

Everything of cluster ``C`` starts with ``triochat:C:``, so clusters on one
Redis never meet, and a test can delete a cluster by that prefix.

``events``
    the pub/sub channel every batch goes through
``presence``
    hash: user key -> its node, name and rooms (:func:`.wire.encode_presence`)
``seqs``
    hash: node -> the number of its last batch
``nodes``
    set of the nodes that have beaten at least once
``rooms``
    set of the rooms with a history list
``name:KEY``
    ``NODE:SERIAL``, the claim on a name (KEY is the case-folded name)
``alive:NODE``
    a TTL'd key: the node's heartbeat
``history:ROOM``
    list of encoded events, newest first
``dropped:ROOM``
    a dropped history, kept for ``undo_window``
``numbers:ROOM``
    hash: the room's ``epoch`` and the last ``seq`` given out (made anew when missing)
``resume:ROOM``
    list of the room's last ``resume_max`` events of every kind, newest first
``resumable:ID``
    hash: a resumable v2 member's ``node``, name ``key``, ``name`` and ``held`` flag
``tokens:ID``, ``token:DIGEST``
    the SHA-256 digests (hex) of its valid resume tokens, and each one's entry id
``holders:ROOM``, ``held:NODE``
    which nodes have members in ROOM, and the same from the node's side
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Keys:
    """The keys of ``cluster`` in Redis."""

    cluster: str

    @property
    def prefix(self) -> str:
        return f"triochat:{self.cluster}:"

    @property
    def channel(self) -> str:
        return self.prefix + "events"

    @property
    def presence(self) -> str:
        return self.prefix + "presence"

    @property
    def seqs(self) -> str:
        return self.prefix + "seqs"

    @property
    def nodes(self) -> str:
        return self.prefix + "nodes"

    @property
    def rooms(self) -> str:
        return self.prefix + "rooms"

    # Prefixes, for the Lua scripts that make keys themselves.

    @property
    def name_prefix(self) -> str:
        return self.prefix + "name:"

    @property
    def alive_prefix(self) -> str:
        return self.prefix + "alive:"

    @property
    def history_prefix(self) -> str:
        return self.prefix + "history:"

    @property
    def dropped_prefix(self) -> str:
        return self.prefix + "dropped:"

    @property
    def numbers_prefix(self) -> str:
        return self.prefix + "numbers:"

    @property
    def resume_prefix(self) -> str:
        return self.prefix + "resume:"

    @property
    def resumable_prefix(self) -> str:
        return self.prefix + "resumable:"

    @property
    def tokens_prefix(self) -> str:
        return self.prefix + "tokens:"

    @property
    def token_prefix(self) -> str:
        return self.prefix + "token:"

    @property
    def holders_prefix(self) -> str:
        return self.prefix + "holders:"

    def name(self, key: str) -> str:
        return self.name_prefix + key

    def alive(self, node: str) -> str:
        return self.alive_prefix + node

    def history(self, room: str) -> str:
        return self.history_prefix + room

    def dropped(self, room: str) -> str:
        return self.dropped_prefix + room

    def numbers(self, room: str) -> str:
        return self.numbers_prefix + room

    def resume(self, room: str) -> str:
        return self.resume_prefix + room

    def holders(self, room: str) -> str:
        return self.holders_prefix + room

    def held(self, node: str) -> str:
        return self.prefix + "held:" + node
