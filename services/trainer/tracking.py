"""What a training run writes about itself: heartbeat, stage rows, metrics, artifacts.

The run is the only writer of its job's stage state, and of a run of several processes
only the main one writes (``services.trainer.ranks``); the watcher reads the heartbeat to
tell a live run from a lost one.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.trainer.ranks import Ranks
from shared.contracts.status import StageStatus
from shared.db.models import Artifact, Job, Metric, Stage, utcnow
from shared.db.session import UNREACHABLE, Database, outlasting
from shared.errors import NotFound
from shared.jobs import is_cancelled
from shared.storage import ArtifactStore

log = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_EVERY = 10
PROGRESS_KEYS = ("loss", "reward_mean", "accuracy", "format_rate", "completion_len_mean")


class Heartbeat:
    """Stamps the job's heartbeat from a background thread while the run lives."""

    def __init__(self, db: Database, job_id: uuid.UUID, interval_s: float) -> None:
        self.db, self.job_id, self.interval_s = db, job_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="heartbeat", daemon=True)

    def beat(self) -> None:
        """One heartbeat now."""
        with self.db.session() as session:
            session.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow()))

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.beat()
            except UNREACHABLE as exc:  # the next beat tries again; the run goes on
                log.warning("heartbeat of job %s missed: %s", self.job_id, exc)

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.interval_s + 5)


@dataclass
class Tracker:
    """The run's handle on its job: stages, metrics, cancellation, artifacts."""

    db: Database
    store: ArtifactStore
    job_id: uuid.UUID
    team_id: uuid.UUID
    workdir: Path
    ranks: Ranks = field(default_factory=Ranks)
    cached_cancel: bool = field(default=False)
    # A database outage shorter than this is waited out: the run pauses at its next write.
    db_patience_s: float = 600.0

    def _in_session(self, work: Callable[[Session], T], what: str) -> T:
        """``work`` in one transaction, waiting out a database outage."""

        def once() -> T:
            with self.db.session() as session:
                return work(session)

        return outlasting(once, within_s=self.db_patience_s, what=f"job {self.job_id}: {what}")

    def should_stop(self) -> bool:
        """Whether the job was cancelled (asked once per training step, by every process;
        the main process's answer holds for all, so that they stop at the same step)."""
        if not self.cached_cancel and self.ranks.is_main:
            self.cached_cancel = self._in_session(
                lambda session: is_cancelled(session, self.job_id), "cancellation"
            )
        self.cached_cancel = self.ranks.from_main(self.cached_cancel)
        return self.cached_cancel

    def ensure_stages(self, configs: list[tuple[str, dict[str, Any]]]) -> list[Stage]:
        """The job's stage rows, created on the first launch and reused afterwards."""
        if self.ranks.is_main:

            def create(session: Session) -> None:
                existing = {s.idx for s in self._stage_rows(session)}
                for idx, (name, config) in enumerate(configs):
                    if idx not in existing:
                        session.add(Stage(job_id=self.job_id, idx=idx, name=name, config=config))

            self._in_session(create, "stage rows")
        self.ranks.barrier()  # the others read the rows the main process made
        return self._in_session(self._stage_rows, "stage rows")

    def _stage_rows(self, session: Session) -> list[Stage]:
        query = select(Stage).where(Stage.job_id == self.job_id).order_by(Stage.idx)
        return list(session.scalars(query))

    def stage(self, idx: int) -> Stage:
        """A fresh copy of one stage row."""
        query = select(Stage).where(Stage.job_id == self.job_id, Stage.idx == idx)
        row = self._in_session(lambda session: session.scalar(query), "stage")
        if row is None:
            raise NotFound(f"job {self.job_id} has no stage {idx}", job_id=str(self.job_id))
        return row

    def update_stage(self, idx: int, **values: Any) -> None:
        """Change a stage row (the main process does)."""
        if not self.ranks.is_main:
            return
        change = update(Stage).where(Stage.job_id == self.job_id, Stage.idx == idx).values(**values)
        self._in_session(lambda session: session.execute(change), "stage update")

    def start_stage(self, idx: int, resume_from: Path | None) -> None:
        """Mark a stage running; on a resume, drop metrics past the checkpoint (redone)."""
        if not self.ranks.is_main:
            return
        values: dict[str, Any] = {"status": StageStatus.RUNNING, "resume_checkpoint": None}
        if resume_from is not None:
            values["resume_checkpoint"] = str(resume_from)
            step = int(resume_from.name.rsplit("-", 1)[-1])
            redone = delete(Metric).where(
                Metric.job_id == self.job_id, Metric.stage_idx == idx, Metric.step > step
            )
            self._in_session(lambda session: session.execute(redone), "metrics")
        if self.stage(idx).started_at is None:
            values["started_at"] = utcnow()
        self.update_stage(idx, **values)

    def log(self, stage_idx: int | None, step: int, values: dict[str, float]) -> None:
        """One step's metrics (written once, by the main process); non-finite ones left out."""
        if not self.ranks.is_main:
            return
        rows = [  # plain values: a retried transaction adds fresh rows
            {"job_id": self.job_id, "stage_idx": stage_idx, "step": step, "name": k, "value": v}
            for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]

        def write(session: Session) -> None:
            session.add_all([Metric(**row) for row in rows])
            session.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow()))

        self._in_session(write, "metrics")
        if step % PROGRESS_EVERY == 0:
            shown = ", ".join(f"{k} {v:.3g}" for k, v in values.items() if k in PROGRESS_KEYS)
            sys.stderr.write(
                f"[job {str(self.job_id)[:8]} stage {stage_idx}] step {step}: {shown}\n"
            )

    def save_artifact(self, source: Path, key: str, *, kind: str, name: str, **meta: Any) -> str:
        """Store a file or folder under the job's artifacts and register it (the main
        process does; every process gets its URI once it is stored)."""
        if self.ranks.is_main:
            self._store_artifact(source, key, kind=kind, name=name, **meta)
        self.ranks.barrier()
        return self.store.uri_for(key)

    def _store_artifact(self, source: Path, key: str, *, kind: str, name: str, **meta: Any) -> None:
        stored = (
            self.store.put_tree(source, key)
            if source.is_dir()
            else self.store.put_file(source, key)
        )
        self._in_session(
            lambda session: session.add(
                Artifact(
                    team_id=self.team_id,
                    job_id=self.job_id,
                    kind=kind,
                    name=name,
                    uri=stored.uri,
                    size_bytes=stored.size_bytes,
                    checksum=stored.checksum,
                    meta=meta,
                )
            ),
            "artifact",
        )


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder a crashed attempt left, if any.

    A checkpoint is complete when its trainer state (written last) reads back: an attempt
    killed while saving leaves a folder whose state is missing, empty or cut off, and the
    one before it is used instead."""
    found = []
    for path in out_dir.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and _readable_state(path / "trainer_state.json"):
            found.append((int(suffix), path))
    return max(found)[1] if found else None


def _readable_state(path: Path) -> bool:
    try:
        return isinstance(json.loads(path.read_text()), dict)
    except (OSError, ValueError):
        return False
