"""An event loop on a thread of its own, so synchronous callers can run async engines.

Workers call engines synchronously, from the main thread or from pool threads, some of
which may already run an event loop.  One loop per engine, kept for the engine's life,
also keeps its HTTP connections, concurrency cap and rate limits shared by every caller.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from shared.errors import EngineError

T = TypeVar("T")


class BackgroundLoop:
    """A daemon thread running one asyncio loop until :meth:`stop`."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()
        self._stopped = False

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run ``coro`` on the loop and block the calling thread until it finishes."""
        if self._stopped:
            coro.close()
            raise EngineError("the engine is closed")
        if threading.current_thread() is self._thread:
            coro.close()
            raise EngineError("a synchronous engine call from inside its own event loop")
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result()

    def stop(self) -> None:
        """Stop the loop and wait for its thread; safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        if not self._thread.is_alive():
            self.loop.close()
