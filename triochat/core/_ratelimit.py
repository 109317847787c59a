"""A token bucket, pure: the caller supplies the time and does the waiting."""

from __future__ import annotations


class TokenBucket:
    """Allows ``rate`` events a second on average, in bursts of up to ``burst``.

    :meth:`take` never refuses: it says how long to wait before the event, so
    a reader that sleeps that long slows its peer down through TCP
    backpressure instead of dropping what the peer sent.
    """

    def __init__(self, rate: float, burst: float, now: float) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be positive and burst at least 1")
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = now

    def take(self, now: float) -> float:
        """Spend one token; return the seconds to wait before acting (0 if none)."""
        self._tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        self._tokens -= 1
        if self._tokens >= 0:
            return 0.0
        return -self._tokens / self.rate
