"""Verifiers: where Math-Verify jobs run.

``VerifierPool`` keeps one worker process per slot. Each slot is fed by a thread that
sends one job, waits at most ``timeout_s`` for the verdict, and on overrun kills the
process (sympy cannot be interrupted from inside) and starts a fresh one; the item gets
``0.0`` with reason ``timeout``. Other slots keep working meanwhile, so one pathological
answer costs its time limit and nothing else. Verdicts are cached by (rule, gold, pred).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import select
import subprocess
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import asdict, dataclass
from typing import IO, Protocol

from shared.rewards.mathcheck import WORKER_READY, judge_math_guarded
from shared.rewards.rules import EXTRACTED_CHARS, TIMEOUT, VERIFIER_ERROR, MathJob, Verdict

log = logging.getLogger(__name__)

_START_LIMIT_S = 60.0
CacheKey = tuple[str, str, str]


class Verifier(Protocol):
    """Runs Math-Verify jobs and always returns one verdict per job, in order."""

    def check_many(self, jobs: Sequence[MathJob]) -> list[Verdict]:
        """Verdicts for ``jobs``, in order."""
        ...


class InlineVerifier:
    """In the calling process: for scripts and the in-process consistency check."""

    def __init__(self, seconds: int = 5) -> None:
        self.seconds = seconds

    def check_many(self, jobs: Sequence[MathJob]) -> list[Verdict]:
        """Verdicts computed one after the other in this process."""
        return [judge_math_guarded(job, seconds=self.seconds) for job in jobs]


class LRUCache:
    """A small thread-safe least-recently-used map from cache keys to verdicts."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: OrderedDict[CacheKey, Verdict] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def get(self, key: CacheKey) -> Verdict | None:
        """The cached verdict, refreshed as most recent; None when absent."""
        with self._lock:
            verdict = self._data.get(key)
            if verdict is not None:
                self._data.move_to_end(key)
                self.hits += 1
            return verdict

    def put(self, key: CacheKey, verdict: Verdict) -> None:
        """Store a verdict, evicting the oldest beyond ``size``."""
        with self._lock:
            self._data[key] = verdict
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)


@dataclass
class _Task:
    job: MathJob
    future: Future[Verdict]


class _Slot:
    """One worker process and the thread that feeds it and enforces the time limit."""

    def __init__(self, tasks: queue.SimpleQueue[_Task | None], timeout_s: float) -> None:
        self._tasks, self._timeout_s = tasks, timeout_s
        self._proc: subprocess.Popen[bytes] | None = None
        self._buffer = b""
        self.restarts = 0
        self.started = threading.Event()
        self._thread = threading.Thread(target=self._run, name="verifier-slot", daemon=True)
        self._thread.start()

    @property
    def alive(self) -> bool:
        """True while the slot's worker process runs."""
        return self._proc is not None and self._proc.poll() is None

    def _run(self) -> None:
        """Take tasks until the pool closes."""
        self._respawn_quietly()
        self.started.set()
        while (task := self._tasks.get()) is not None:
            if task.future.set_running_or_notify_cancel():
                task.future.set_result(self._check(task.job))
        self._kill()

    def _respawn_quietly(self) -> None:
        """Replace the worker; a failed start is retried on the next job, not raised."""
        try:
            self._replace()
        except (OSError, RuntimeError):
            log.exception("verifier worker failed to start")

    def _spawn(self) -> None:
        """Start a fresh interpreter running the worker and wait until it has warmed up."""
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "shared.rewards.worker"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            bufsize=0,
        )
        self._buffer = b""
        if self._read_line(_START_LIMIT_S) != WORKER_READY:
            raise RuntimeError("verifier worker did not start")

    def _read_line(self, seconds: float) -> str | None:
        """One line from the worker within ``seconds``; None on timeout or end of output."""
        fd = self._pipes()[1].fileno()
        deadline = time.monotonic() + seconds
        while b"\n" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            self._buffer += chunk
        line, _, self._buffer = self._buffer.partition(b"\n")
        return line.decode()

    def _pipes(self) -> tuple[IO[bytes], IO[bytes]]:
        """The worker's stdin and stdout; RuntimeError when there is no worker."""
        proc = self._proc
        if proc is None or proc.stdin is None or proc.stdout is None:
            raise RuntimeError("no verifier worker")
        return proc.stdin, proc.stdout

    def _check(self, job: MathJob) -> Verdict:
        """Send one job; kill and replace the worker when it overruns or dies."""
        try:
            if not self.alive:
                self._replace()
            self._pipes()[0].write(json.dumps(asdict(job)).encode() + b"\n")
            line = self._read_line(self._timeout_s)
            if line is not None:
                return Verdict(**json.loads(line))
            reason = TIMEOUT if self.alive else VERIFIER_ERROR
        except (OSError, RuntimeError, ValueError, TypeError):
            log.exception("verifier worker failed")
            reason = VERIFIER_ERROR
        log.warning(
            "verifier worker replaced after %s on gold %r, answer %r",
            reason,
            job.gold[:200],
            job.pred[:200],
        )
        self._respawn_quietly()
        return Verdict(False, reason, job.pred[:EXTRACTED_CHARS])

    def _replace(self) -> None:
        """Kill the current worker (if any) and start a new one."""
        if self._proc is not None:
            self.restarts += 1
        self._kill()
        self._spawn()

    def _kill(self) -> None:
        """SIGKILL: sympy holds the GIL in C code and ignores gentler requests."""
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(5)
            for stream in (self._proc.stdin, self._proc.stdout):
                if stream is not None:
                    stream.close()
        self._proc = None

    def join(self, seconds: float) -> None:
        """Wait for the feeding thread to finish."""
        self._thread.join(seconds)


class VerifierPool:
    """Math-Verify in worker processes, a hard per-item limit, a verdict cache."""

    def __init__(
        self, workers: int | None = None, *, timeout_s: float = 5.0, cache_size: int = 100_000
    ) -> None:
        self.workers = max(1, workers or os.cpu_count() or 1)
        self.timeout_s = timeout_s
        self.cache = LRUCache(cache_size)
        self.failures: Counter[str] = Counter()  # verdicts that are timeouts or verifier errors
        self._tasks: queue.SimpleQueue[_Task | None] = queue.SimpleQueue()
        self._pending: dict[CacheKey, Future[Verdict]] = {}
        self._lock = threading.Lock()
        self._closed = False
        self._slots = [_Slot(self._tasks, timeout_s) for _ in range(self.workers)]
        for slot in self._slots:
            slot.started.wait(_START_LIMIT_S)

    def submit(self, job: MathJob) -> Future[Verdict]:
        """A future verdict for one job; cached and in-flight duplicates are shared."""
        key: CacheKey = ("math", job.gold, job.pred)
        cached = self.cache.get(key)
        if cached is not None:
            done: Future[Verdict] = Future()
            done.set_result(cached)
            return done
        with self._lock:
            if self._closed:
                raise RuntimeError("verifier pool is closed")
            future = self._pending.get(key)
            if future is None:
                future = Future()
                self._pending[key] = future
                future.add_done_callback(lambda f: self._finish(key, f))
                self._tasks.put(_Task(job, future))
        return future

    def _finish(self, key: CacheKey, future: Future[Verdict]) -> None:
        """Move a finished verdict from the in-flight table to the cache."""
        with self._lock:
            self._pending.pop(key, None)
        if not future.cancelled() and future.exception() is None:
            verdict = future.result()
            if verdict.reason in (TIMEOUT, VERIFIER_ERROR):
                with self._lock:
                    self.failures[verdict.reason] += 1
            self.cache.put(key, verdict)

    def check_many(self, jobs: Sequence[MathJob]) -> list[Verdict]:
        """Verdicts for ``jobs``, computed in parallel across the workers."""
        futures = [self.submit(job) for job in jobs]
        return [future.result() for future in futures]

    def alive_workers(self) -> int:
        """How many worker processes are running now."""
        return sum(slot.alive for slot in self._slots)

    def restarts(self) -> int:
        """How many times a worker was killed and replaced."""
        return sum(slot.restarts for slot in self._slots)

    def close(self) -> None:
        """Stop every worker; pending jobs still finish first."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        for _ in self._slots:
            self._tasks.put(None)
        for slot in self._slots:
            slot.join(self.timeout_s + 10)

    def __enter__(self) -> VerifierPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
