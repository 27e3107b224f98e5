"""What a person sees while a long command (``vr1 demo``, ``vr1 run``) works.

One progress display per phase (what runs, its counts, elapsed time and ETA), then one
summary line that stays (``✓ name — figures — time``).  On a terminal the display is a
``rich`` live bar; elsewhere (CI, a pipe, a file) a few plain lines per phase.  Progress
comes from the database (``shared.progress``), never from parsing text.  Everything
libraries write — warnings, loggers, progress bars, C extensions, child processes — goes
to a log file instead of the screen, unless the command runs verbose.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, TextIO

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from sqlalchemy.orm import Session

from shared import progress
from shared.contracts.api import ProgressOut
from shared.contracts.status import JOB_TERMINAL, JobStatus
from shared.db.models import Job
from shared.db.session import UNREACHABLE, Database
from shared.storage import ArtifactStore

log = logging.getLogger(__name__)
Clock = Callable[[], float]


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def summary_line(title: str, ok: bool, figures: str, seconds: float) -> str:
    """The line a phase leaves behind."""
    parts = [f"{'✓' if ok else '✗'} {title}", figures, duration(seconds)]
    return " — ".join(p for p in parts if p)


class Display(Protocol):
    """Where phases are shown; ``key`` tells concurrent phases apart."""

    def begin(self, key: str, title: str) -> None: ...
    def show(self, key: str, snap: ProgressOut) -> None: ...
    def end(self, key: str, ok: bool, figures: str) -> None: ...
    def say(self, text: str) -> None: ...
    def close(self) -> None: ...


@dataclass
class _Shown:
    title: str
    started: float
    last_line: float
    last_done: int = 0


class PlainDisplay:
    """Plain, sparse lines for a non-terminal: a phase's start and end, and a progress line
    when it has advanced a tenth, at most every ``every_s`` seconds (a line every
    ``6 * every_s`` when the total is not known)."""

    def __init__(self, stream: TextIO, *, every_s: float = 10.0, clock: Clock = time.monotonic):
        self.stream, self.every_s, self.clock = stream, every_s, clock
        self._phases: dict[str, _Shown] = {}
        self._lock = threading.Lock()

    def _write(self, text: str) -> None:
        self.stream.write(text + "\n")
        self.stream.flush()

    def begin(self, key: str, title: str) -> None:
        with self._lock:
            now = self.clock()
            self._phases[key] = _Shown(title, now, now)
            self._write(f"▶ {title}")

    def show(self, key: str, snap: ProgressOut) -> None:
        with self._lock:
            shown = self._phases.get(key)
            if shown is None or not self._due(shown, snap):
                return
            now = self.clock()
            shown.last_line, shown.last_done = now, snap.done
            self._write(f"  {shown.title}: {progress_text(snap, now - shown.started)}")

    def _due(self, shown: _Shown, snap: ProgressOut) -> bool:
        waited = self.clock() - shown.last_line
        if snap.done == shown.last_done or waited < self.every_s:
            return False
        if snap.total:
            return (snap.done - shown.last_done) * 10 >= snap.total
        return waited >= 6 * self.every_s

    def end(self, key: str, ok: bool, figures: str) -> None:
        with self._lock:
            shown = self._phases.pop(key, None)
            if shown is not None:
                self._write(summary_line(shown.title, ok, figures, self.clock() - shown.started))

    def say(self, text: str) -> None:
        with self._lock:
            self._write(text)

    def close(self) -> None:
        self.stream.flush()


def progress_text(snap: ProgressOut, elapsed: float) -> str:
    """``48/150 steps (32%) · stage 2/2 · 48×4 · reward 0.42 · 1m10s elapsed, ~2m29s left``."""
    parts = []
    if snap.total:
        parts.append(f"{snap.done}/{snap.total} {snap.unit} ({100 * snap.done // snap.total}%)")
    else:
        parts.append(f"{snap.done} {snap.unit}")
    parts.extend(part for part in (snap.stage, snap.detail) if part)
    timing = f"{duration(elapsed)} elapsed"
    if snap.total and snap.done:
        timing += f", ~{duration(elapsed * (snap.total - snap.done) / snap.done)} left"
    return " · ".join([*parts, timing])


class LiveDisplay:
    """A ``rich`` live bar per running phase; a finished phase leaves its summary line."""

    def __init__(self, console: RichConsole) -> None:
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            BarColumn(),
            TextColumn("{task.fields[count]}"),
            TextColumn("{task.fields[detail]}"),
            TimeElapsedColumn(),
            TextColumn("eta"),
            TimeRemainingColumn(),
            console=console,
            redirect_stdout=False,  # what Python code prints belongs in the log file
            redirect_stderr=False,
        )
        self._tasks: dict[str, tuple[TaskID, str, float]] = {}

    def begin(self, key: str, title: str) -> None:
        self.progress.start()  # a no-op once started
        task = self.progress.add_task(title, total=None, count="", detail="")
        self._tasks[key] = (task, title, time.monotonic())

    def show(self, key: str, snap: ProgressOut) -> None:
        shown = self._tasks.get(key)
        if shown is not None:
            count = f"{snap.done}/{snap.total or '?'} {snap.unit}"
            self.progress.update(
                shown[0],
                completed=snap.done,
                total=snap.total,
                count=count,
                detail=" · ".join(part for part in (snap.stage, snap.detail) if part),
            )

    def end(self, key: str, ok: bool, figures: str) -> None:
        shown = self._tasks.pop(key, None)
        if shown is not None:
            task, title, started = shown
            self.progress.remove_task(task)
            line = summary_line(title, ok, figures, time.monotonic() - started)
            self.progress.console.print(line, highlight=False, markup=False)

    def say(self, text: str) -> None:
        self.progress.console.print(text, highlight=False, markup=False)

    def close(self) -> None:
        self.progress.stop()


@dataclass
class Phase:
    """A phase without a job of its own; the caller sets the figures it ends with."""

    figures: str = ""


class JobFollower(threading.Thread):
    """Shows a job's progress, read from the database every ``interval_s`` while it runs;
    each child of a pipeline gets its own display in turn."""

    def __init__(
        self, db: Database, store: ArtifactStore, display: Display, job_id: uuid.UUID,
        title: str, interval_s: float,
    ) -> None:  # fmt: skip
        super().__init__(name="job-progress", daemon=True)
        self.db, self.store, self.display = db, store, display
        self.job_id, self.title, self.interval_s = job_id, title, interval_s
        self.stopped = threading.Event()
        self._begun: set[uuid.UUID] = set()
        self._ended: set[uuid.UUID] = set()

    def run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            try:
                self.look()
            except UNREACHABLE as exc:  # the database is busy or away: look again later
                log.debug("progress of job %s not read: %s", self.job_id, exc)

    def look(self) -> None:
        """One look at the job (and a pipeline's children)."""
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            if job is None:
                return
            if job.kind != "pipeline":
                self.display.show(str(job.id), progress.job_progress(session, job))
                return
            for child in progress.children(session, job):
                self._child(session, child)

    def _child(self, session: Session, child: Job) -> None:
        key = str(child.id)
        if child.id not in self._begun:
            self._begun.add(child.id)
            self.display.begin(key, f"{self.title} › {child.kind}")
        if child.status in JOB_TERMINAL and child.id not in self._ended:
            self._ended.add(child.id)
            ok = child.status == JobStatus.SUCCEEDED
            self.display.end(key, ok, self._figures(session, child))
        elif child.id not in self._ended:
            self.display.show(key, progress.job_progress(session, child))

    def _figures(self, session: Session, job: Job) -> str:
        figures = progress.figures(session, job)
        log = progress.run_log(self.store, job) if job.status == JobStatus.FAILED else None
        return f"{figures} (full log: {shown_path(log)})" if log else figures

    def finish(self) -> Job:
        """Stop following; the job's last state is shown and returned."""
        self.stopped.set()
        self.join()
        self.look()
        with self.db.session() as session:
            job = session.get(Job, self.job_id)
            assert job is not None, f"job {self.job_id} vanished"
            ok = job.status == JobStatus.SUCCEEDED
            self.display.end(str(job.id), ok, self._figures(session, job))
            return job


def shown_path(path: Path) -> str:
    """A path as a person at this prompt would type it: relative when under the cwd (links
    kept: a virtualenv's python is a link)."""
    absolute, cwd = Path(os.path.abspath(path)), Path.cwd()
    return str(absolute.relative_to(cwd)) if absolute.is_relative_to(cwd) else str(absolute)


@dataclass
class Console:
    """The console of one command: phases shown on ``display``, library output kept in
    ``log_path`` (None: it goes to the screen, as when verbose)."""

    display: Display
    log_path: Path | None = None
    interval_s: float = 1.0

    @property
    def verbose(self) -> bool:
        """Whether library output (training runs' included) stays on the screen."""
        return self.log_path is None

    @contextmanager
    def phase(self, title: str) -> Iterator[Phase]:
        """A phase of the command's own work (no job): shown while it runs."""
        key, phase = f"phase-{uuid.uuid4().hex}", Phase()
        self.display.begin(key, title)
        try:
            yield phase
        except BaseException:
            self.display.end(key, False, "failed")
            raise
        self.display.end(key, True, phase.figures)

    @contextmanager
    def job(
        self, db: Database, store: ArtifactStore, job_id: uuid.UUID, title: str
    ) -> Iterator[JobFollower]:
        """A job's phase: its progress followed from the database while the body works it;
        ``follower.finish()`` (called on the way out) gives its last state."""
        self.display.begin(str(job_id), title)
        follower = JobFollower(db, store, self.display, job_id, title, self.interval_s)
        follower.start()
        try:
            yield follower
        finally:
            if not follower.stopped.is_set():
                follower.finish()

    def say(self, text: str) -> None:
        """A line of the command's own."""
        self.display.say(text)


@contextmanager
def quiet_output(log_path: Path) -> Iterator[TextIO]:
    """Send all this process writes to stdout and stderr — Python, C extensions, child
    processes alike — to ``log_path``; yields a stream to the real stderr."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with log_path.open("wb") as log:  # this command's output only
        for fd in saved:
            os.dup2(log.fileno(), fd)
    screen = os.fdopen(os.dup(saved[2]), "w", buffering=1, encoding="utf-8")
    try:
        yield screen
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        for fd, copy in saved.items():
            os.dup2(copy, fd)
            os.close(copy)
        screen.close()


def _log_to_stderr(level: str) -> None:
    """Library loggers and Python warnings to stderr (the log file, once redirected)."""
    logging.basicConfig(
        level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True
    )
    logging.captureWarnings(True)


@contextmanager
def open_console(
    log_path: Path, *, verbose: bool = False, level: str = "INFO"
) -> Iterator[Console]:
    """A command's console.  Quiet (the default): library output goes to ``log_path``, the
    screen gets a live display (plain lines when stderr is not a terminal) and, at the end,
    where the log is.  Verbose: everything stays on the screen, progress in plain lines."""
    if verbose:
        _log_to_stderr(level)
        console = Console(PlainDisplay(sys.stderr))
        yield console
        console.display.close()
        return
    with quiet_output(log_path) as screen:
        _log_to_stderr(level)
        live = screen.isatty()
        display: Display = LiveDisplay(RichConsole(file=screen)) if live else PlainDisplay(screen)
        console = Console(display, log_path, interval_s=0.5 if live else 2.0)
        try:
            yield console
        finally:
            display.close()
            screen.write(f"library output: {shown_path(log_path)}\n")
