"""Limits an HTTP engine keeps for its whole process: calls in flight, requests and tokens
per minute.

An engine is shared by every chunk a worker runs, from any of its threads, each running
its own event loop for the length of one batch.  So these limits are plain thread-safe
objects that any loop can wait on: :class:`Slots` caps concurrent calls, and
:class:`TokenBucket` spends a per-minute quota evenly.

Providers enforce per-minute quotas and answer 429 beyond them; spending the quota evenly
avoids most 429s instead of only retrying them.  A bucket holds at most one second's
worth (at least one unit), so a burst is spread out from the start.  A charge may exceed
what the bucket holds (a long request under a small token quota): the balance goes
negative and later callers wait it off, which keeps the long-run rate.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable
from types import TracebackType


class TokenBucket:
    """A bucket refilled continuously at ``per_minute / 60`` units per second.

    ``reserve`` spends at once and says how long the caller must wait before using what it
    spent; callers queue up in the order they reserved, whichever thread or loop they
    wait on.
    """

    def __init__(self, per_minute: float, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self._clock = clock
        self._level = self.capacity
        self._stamp = clock()
        self._lock = threading.Lock()

    def _refill(self) -> None:
        now = self._clock()
        self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    def reserve(self, amount: float = 1.0) -> float:
        """Spend ``amount`` now; the seconds until it is covered (0 when it already is)."""
        with self._lock:
            self._refill()
            wait = max(0.0, (min(amount, self.capacity) - self._level) / self.rate)
            self._level -= amount
            return wait

    async def take(self, amount: float = 1.0) -> float:
        """Reserve ``amount`` and sleep until it is covered; returns the seconds waited."""
        wait = self.reserve(amount)
        if wait > 0:
            await asyncio.sleep(wait)
        return wait

    def give_back(self, amount: float) -> None:
        """Return an over-estimated charge (negative: charge an under-estimate)."""
        with self._lock:
            self._refill()
            self._level = min(self.capacity, self._level + amount)


class Slots:
    """At most ``size`` holders at a time across every thread and event loop of the process.

    ``asyncio.Semaphore`` belongs to one loop; this one hands a freed slot to the oldest
    waiter on whatever loop it waits, through that loop's thread-safe callback queue.
    """

    def __init__(self, size: int) -> None:
        self.size = size
        self._free = size
        self._lock = threading.Lock()
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self.in_use_peak = 0

    @property
    def in_use(self) -> int:
        """How many slots are held now."""
        with self._lock:
            return self.size - self._free

    async def acquire(self) -> None:
        """Wait for a slot (first come, first served)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._free > 0 and not self._waiters:
                self._take()
                return
            waiter: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            with self._lock:
                if (loop, waiter) in self._waiters:  # not handed a slot yet: just leave
                    self._waiters.remove((loop, waiter))
            raise  # a slot already on its way is passed on by _hand_over

    def release(self) -> None:
        """Give a slot back: to the oldest waiter if there is one."""
        with self._lock:
            while self._waiters:
                loop, waiter = self._waiters.popleft()
                if not loop.is_closed():
                    loop.call_soon_threadsafe(self._hand_over, waiter)
                    return
            self._free += 1

    def _take(self) -> None:
        self._free -= 1
        self.in_use_peak = max(self.in_use_peak, self.size - self._free)

    def _hand_over(self, waiter: asyncio.Future[None]) -> None:
        """On the waiter's loop: wake it, or pass the slot on if it gave up meanwhile."""
        if waiter.done():
            self.release()
        else:
            waiter.set_result(None)

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()
