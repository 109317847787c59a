"""The server password, pure: checking it, and slowing down whoever keeps guessing.

The caller supplies the time and does the waiting, as with the token bucket.
"""

from __future__ import annotations

import hmac
from collections import OrderedDict


def password_matches(given: str, expected: str) -> bool:
    """Compare in constant time, so timing does not reveal how much of a guess was right."""
    return hmac.compare_digest(given.encode(), expected.encode())


class FailureDelays:
    """How long to wait before answering a wrong password, per address.

    Each failure from an address doubles its delay, from ``base`` up to
    ``cap`` seconds; an address that has not failed for ``forget`` seconds
    starts again from ``base``. At most ``max_addresses`` addresses are
    remembered (the least recently failing are forgotten first), so a flood
    of addresses cannot grow memory without bound.
    """

    def __init__(
        self,
        *,
        base: float = 1.0,
        cap: float = 30.0,
        forget: float = 600.0,
        max_addresses: int = 4096,
    ) -> None:
        self.base = base
        self.cap = cap
        self.forget = forget
        self.max_addresses = max_addresses
        # address -> (consecutive failures, time of the last one)
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._failures)

    def fail(self, address: str, now: float) -> float:
        """Record a wrong password from ``address``; return the seconds to wait."""
        count, last = self._failures.pop(address, (0, now))
        if now - last > self.forget:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        while len(self._failures) > self.max_addresses:
            self._failures.popitem(last=False)
        return float(min(self.cap, self.base * 2 ** min(count - 1, 32)))

    def succeed(self, address: str) -> None:
        """The right password: forget the address's failures."""
        self._failures.pop(address, None)
