"""Client-side rate limits for HTTP engines: token buckets for requests and tokens per minute.

Providers enforce per-minute quotas and answer 429 beyond them; spending the quota evenly
avoids most 429s instead of only retrying them.  A bucket holds at most one second's
worth (at least one unit), so a burst is spread out from the start.  A charge may exceed
what the bucket holds (a long request under a small token quota): the caller waits until
the bucket is not empty and the balance goes negative, which keeps the long-run rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable


class TokenBucket:
    """A bucket refilled continuously at ``per_minute / 60`` units per second."""

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()
        self._lock = asyncio.Lock()  # first come, first served among waiters
        self._returned = asyncio.Event()  # wakes a waiter early when a charge is given back

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def wait_time(self, amount: float) -> float:
        """Seconds until ``amount`` (capped at the capacity) could be taken."""
        self._refill()
        missing = min(amount, self.capacity) - self._level
        return max(0.0, missing / self.rate)

    async def take(self, amount: float = 1.0) -> float:
        """Wait until ``amount`` may be spent, spend it, and return the seconds waited."""
        started = self._clock()
        async with self._lock:
            while (delay := self.wait_time(amount)) > 0:
                self._returned.clear()
                with contextlib.suppress(TimeoutError):  # a timeout means: refilled by now
                    await asyncio.wait_for(self._returned.wait(), delay)
            self._level -= amount
        return self._clock() - started

    def give_back(self, amount: float) -> None:
        """Return an over-estimated charge (negative: charge an under-estimate)."""
        self._refill()
        self._level = min(self.capacity, self._level + amount)
        if amount > 0:
            self._returned.set()
