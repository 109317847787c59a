"""The token bucket, with the time supplied by the test."""

from __future__ import annotations

import itertools

import pytest

from triochat.core._ratelimit import TokenBucket


def test_a_full_burst_is_free() -> None:
    bucket = TokenBucket(rate=10, burst=5, now=100.0)
    assert [bucket.take(100.0) for _ in range(5)] == [0.0] * 5


def test_past_the_burst_each_event_waits_one_interval_more() -> None:
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    waits = [bucket.take(0.0) for _ in range(6)]
    assert waits[:3] == [0.0, 0.0, 0.0]
    assert waits[3:] == pytest.approx([0.1, 0.2, 0.3])


def test_a_caller_that_waits_as_told_is_paced_at_the_rate() -> None:
    bucket = TokenBucket(rate=4, burst=2, now=0.0)
    now = 0.0
    times = []
    for _ in range(10):
        now += bucket.take(now)
        times.append(now)
    assert times[:2] == [0.0, 0.0]
    # After the burst, one event every 1/rate seconds: nothing refused, nothing dropped.
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    assert gaps == pytest.approx([0.25] * 8)


def test_tokens_refill_with_time_but_never_beyond_the_burst() -> None:
    bucket = TokenBucket(rate=2, burst=3, now=0.0)
    for _ in range(3):
        bucket.take(0.0)
    assert bucket.take(0.0) == pytest.approx(0.5)  # now one token in debt
    # After an hour idle the bucket holds only `burst` tokens again.
    assert [bucket.take(3600.0) for _ in range(3)] == [0.0] * 3
    assert bucket.take(3600.0) == pytest.approx(0.5)
    # Once the debt is paid off, the next event again waits one interval.
    assert bucket.take(3600.5) == pytest.approx(0.5)


def test_partial_refill() -> None:
    bucket = TokenBucket(rate=10, burst=1, now=0.0)
    assert bucket.take(0.0) == 0.0
    assert bucket.take(0.05) == pytest.approx(0.05)


@pytest.mark.parametrize(("rate", "burst"), [(0, 5), (-1, 5), (10, 0), (10, 0.5)])
def test_rejects_nonsense(rate: float, burst: float) -> None:
    with pytest.raises(ValueError, match="rate must be positive"):
        TokenBucket(rate=rate, burst=burst, now=0.0)
