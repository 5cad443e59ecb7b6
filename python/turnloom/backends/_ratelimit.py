"""Token-bucket rate limits for hosted APIs (requests and tokens per minute)."""

from __future__ import annotations

import asyncio
import time


class TokenBucket:
    """Refills at `rate` units per second up to `capacity`.

    `acquire(n)` waits until n units are there; a request larger than the
    whole bucket waits for a full bucket and then drives it negative, so it
    is never stuck and the debt slows what follows.
    """

    def __init__(self, rate: float, capacity: float | None = None) -> None:
        if rate <= 0:
            raise ValueError("rate must be > 0")
        self.rate = rate
        self.capacity = capacity if capacity is not None else max(1.0, rate)
        self._level = self.capacity
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = time.monotonic()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    async def acquire(self, n: float = 1.0) -> None:
        async with self._lock:  # first come, first served
            need = min(n, self.capacity)
            while True:
                self._refill()
                if self._level >= need:
                    self._level -= n
                    return
                await asyncio.sleep((need - self._level) / self.rate)


def per_minute(limit: float | None, burst_seconds: float = 1.0) -> TokenBucket | None:
    """A bucket for `limit` units per minute, allowing bursts of `burst_seconds` worth."""
    if limit is None:
        return None
    rate = limit / 60.0
    return TokenBucket(rate, max(1.0, rate * burst_seconds))
