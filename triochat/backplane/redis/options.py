"""How a node talks to Redis: every interval and limit, with its default."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class RedisOptions:
    """How a node talks to Redis; every interval is an option so tests can shorten them."""

    url: str
    cluster: str = "triochat"
    history: int = 20
    """Events each room keeps in Redis (the server's ``--history``)."""
    resume_max: int = 1000
    """Events of every kind each room keeps in Redis for resumes on any node (``--resume-max``)."""
    heartbeat: float = 2.0
    """Seconds between this node's heartbeats (and its checks for dead nodes)."""
    node_ttl: float = 6.0
    """Seconds without a heartbeat before a node counts as dead (its names free)."""
    timeout: float = 3.0
    """Seconds any one Redis operation may take before the link counts as down."""
    backoff_min: float = 0.25
    backoff_max: float = 10.0
    publish_queue: int = 10_000
    """Items queued for Redis before events fall back to this node only."""
    batch: int = 512
    """Most items in one published batch."""
    undo_window: float = 60.0
    """Seconds Redis keeps a dropped history, so that a join that raced the drop can undo it."""

    def __post_init__(self) -> None:
        if not self.url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"not a Redis URL (redis://HOST:PORT/DB): {self.url}")
        if not self.cluster or any(c in self.cluster for c in " \t\n:{}*"):
            raise ValueError(f"invalid cluster name {self.cluster!r}")
        if not 0 < self.heartbeat < self.node_ttl:
            raise ValueError("need 0 < heartbeat < node_ttl")
        if self.undo_window <= 0:
            raise ValueError("undo_window must be positive")
        if self.timeout <= 0 or not 0 < self.backoff_min <= self.backoff_max:
            raise ValueError("timeout and backoff must be positive, backoff_min <= backoff_max")
        if self.publish_queue < 1 or self.batch < 1 or self.history < 0 or self.resume_max < 0:
            raise ValueError("publish_queue and batch must be >= 1, history and resume_max >= 0")
