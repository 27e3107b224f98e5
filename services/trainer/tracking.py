"""What a training run writes about itself: heartbeat, stage rows, metrics, artifacts.

The run is the only writer of its job's stage state, and of a run of several processes
only the main one writes (``services.trainer.ranks``); the watcher reads the heartbeat to
tell a live run from a lost one.
"""

from __future__ import annotations

import math
import sys
import threading
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.trainer.ranks import Ranks
from shared.contracts.status import StageStatus
from shared.db.models import Artifact, Job, Metric, Stage, utcnow
from shared.db.session import Database
from shared.errors import NotFound
from shared.jobs import is_cancelled
from shared.storage import ArtifactStore

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
            self.beat()

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

    def should_stop(self) -> bool:
        """Whether the job was cancelled (asked once per training step, by every process;
        the main process's answer holds for all, so that they stop at the same step)."""
        if not self.cached_cancel and self.ranks.is_main:
            with self.db.session() as session:
                self.cached_cancel = is_cancelled(session, self.job_id)
        self.cached_cancel = self.ranks.from_main(self.cached_cancel)
        return self.cached_cancel

    def ensure_stages(self, configs: list[tuple[str, dict[str, Any]]]) -> list[Stage]:
        """The job's stage rows, created on the first launch and reused afterwards."""
        if self.ranks.is_main:
            with self.db.session() as session:
                existing = {s.idx for s in self._stage_rows(session)}
                for idx, (name, config) in enumerate(configs):
                    if idx not in existing:
                        session.add(Stage(job_id=self.job_id, idx=idx, name=name, config=config))
        self.ranks.barrier()  # the others read the rows the main process made
        with self.db.session() as session:
            return self._stage_rows(session)

    def _stage_rows(self, session: Session) -> list[Stage]:
        query = select(Stage).where(Stage.job_id == self.job_id).order_by(Stage.idx)
        return list(session.scalars(query))

    def stage(self, idx: int) -> Stage:
        """A fresh copy of one stage row."""
        with self.db.session() as session:
            row = session.scalar(select(Stage).where(Stage.job_id == self.job_id, Stage.idx == idx))
            if row is None:
                raise NotFound(f"job {self.job_id} has no stage {idx}", job_id=str(self.job_id))
            return row

    def update_stage(self, idx: int, **values: Any) -> None:
        """Change a stage row (the main process does)."""
        if not self.ranks.is_main:
            return
        with self.db.session() as session:
            session.execute(
                update(Stage).where(Stage.job_id == self.job_id, Stage.idx == idx).values(**values)
            )

    def start_stage(self, idx: int, resume_from: Path | None) -> None:
        """Mark a stage running; on a resume, drop metrics past the checkpoint (redone)."""
        if not self.ranks.is_main:
            return
        values: dict[str, Any] = {"status": StageStatus.RUNNING, "resume_checkpoint": None}
        if resume_from is not None:
            values["resume_checkpoint"] = str(resume_from)
            step = int(resume_from.name.rsplit("-", 1)[-1])
            with self.db.session() as session:
                session.execute(
                    delete(Metric).where(
                        Metric.job_id == self.job_id, Metric.stage_idx == idx, Metric.step > step
                    )
                )
        if self.stage(idx).started_at is None:
            values["started_at"] = utcnow()
        self.update_stage(idx, **values)

    def log(self, stage_idx: int | None, step: int, values: dict[str, float]) -> None:
        """One step's metrics (written once, by the main process); non-finite ones left out."""
        if not self.ranks.is_main:
            return
        rows = [
            Metric(job_id=self.job_id, stage_idx=stage_idx, step=step, name=k, value=float(v))
            for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]
        with self.db.session() as session:
            session.add_all(rows)
            session.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow()))
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
        with self.db.session() as session:
            session.add(
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
            )


def latest_checkpoint(out_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` folder a crashed attempt left, if any."""
    found = []
    for path in out_dir.glob("checkpoint-*"):
        suffix = path.name.rsplit("-", 1)[-1]
        if suffix.isdigit() and (path / "trainer_state.json").exists():
            found.append((int(suffix), path))
    return max(found)[1] if found else None
