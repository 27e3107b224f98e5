"""What a training run writes about itself: heartbeat, stage rows, metrics, artifacts.

The run is the only writer of its job's stage state, and of a run of several processes
only the main one writes (``services.trainer.ranks``); the watcher reads the heartbeat to
tell a live run from a lost one.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from services.trainer.ranks import Ranks
from services.trainer.rollouts import Sample
from shared import events
from shared.contracts.status import StageStatus
from shared.db.models import Artifact, Item, Job, Metric, RolloutSample, Stage, utcnow
from shared.db.session import UNREACHABLE, Database, outlasting
from shared.errors import NotFound
from shared.events import EventType
from shared.jobs import is_cancelled
from shared.storage import ArtifactStore

log = logging.getLogger(__name__)
T = TypeVar("T")
PROGRESS_EVERY = 10
PROGRESS_KEYS = ("loss", "reward_mean", "accuracy", "format_rate", "completion_len_mean")
# The summary figures a finished stage's event carries (its message names the first two).
FINISH_KEYS = ("reward_mean", "accuracy", "format_rate", "completion_len_mean", "steps")
LEVELS = {StageStatus.SUCCEEDED: "info", StageStatus.CANCELLED: "warning"}


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
    # Completions kept for people to read, by (stage, step), until that step's metrics go.
    _samples: dict[tuple[int, int], list[Sample]] = field(default_factory=dict, init=False)

    def in_session(self, work: Callable[[Session], T], what: str) -> T:
        """``work`` in one transaction, waiting out a database outage."""

        def once() -> T:
            with self.db.session() as session:
                return work(session)

        return outlasting(once, within_s=self.db_patience_s, what=f"job {self.job_id}: {what}")

    def should_stop(self) -> bool:
        """Whether the job was cancelled (asked once per training step, by every process;
        the main process's answer holds for all, so that they stop at the same step)."""
        if not self.cached_cancel and self.ranks.is_main:
            self.cached_cancel = self.in_session(
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

            self.in_session(create, "stage rows")
        self.ranks.barrier()  # the others read the rows the main process made
        return self.in_session(self._stage_rows, "stage rows")

    def _stage_rows(self, session: Session) -> list[Stage]:
        query = select(Stage).where(Stage.job_id == self.job_id).order_by(Stage.idx)
        return list(session.scalars(query))

    def update_stage(self, idx: int, **values: Any) -> None:
        """Change a stage row (the main process does)."""
        if not self.ranks.is_main:
            return
        change = update(Stage).where(Stage.job_id == self.job_id, Stage.idx == idx).values(**values)
        self.in_session(lambda session: session.execute(change), "stage update")

    def _stage_row(self, session: Session, idx: int) -> Stage:
        query = select(Stage).where(Stage.job_id == self.job_id, Stage.idx == idx)
        row = session.scalar(query)
        if row is None:
            raise NotFound(f"job {self.job_id} has no stage {idx}", job_id=str(self.job_id))
        return row

    def start_stage(self, idx: int, resume_from: Path | None) -> None:
        """Mark a stage running and log it; what an earlier attempt wrote past the step this
        one resumes from (its checkpoint's, else the start) is dropped: those steps are
        done again, and their metrics and samples written again."""
        if not self.ranks.is_main:
            return
        step = int(resume_from.name.rsplit("-", 1)[-1]) if resume_from is not None else 0

        def start(session: Session) -> None:
            for table in (Metric, RolloutSample):
                session.execute(
                    delete(table).where(
                        table.job_id == self.job_id, table.stage_idx == idx, table.step > step
                    )
                )
            stage = self._stage_row(session, idx)
            stage.status = StageStatus.RUNNING
            stage.resume_checkpoint = str(resume_from) if resume_from is not None else None
            stage.started_at = stage.started_at or utcnow()
            verb = f"resumed from step {step}" if step else "started"
            events.record(
                session,
                self.job_id,
                EventType.STAGE_STARTED,
                f"{_title(stage)} {verb}",
                stage_idx=idx,
                resumed_from_step=step or None,
                **_facts(stage),
            )

        self.in_session(start, "stage start")

    def finish_stage(self, idx: int, status: StageStatus, **values: Any) -> None:
        """Settle a stage (succeeded, failed or cancelled) with ``values`` (summary,
        checkpoint…) and log it with its summary figures."""
        if not self.ranks.is_main:
            return

        def finish(session: Session) -> None:
            stage = self._stage_row(session, idx)
            for name, value in {"finished_at": utcnow(), **values}.items():
                setattr(stage, name, value)
            stage.status = status
            figures = {k: stage.summary[k] for k in FINISH_KEYS if k in stage.summary}
            shown = ", ".join(
                f"{k.removesuffix('_mean')} {figures[k]:.3g}"
                for k in FINISH_KEYS[:2]
                if k in figures
            )
            events.record(
                session,
                self.job_id,
                EventType.STAGE_FINISHED,
                f"{_title(stage)} {status}" + (f": {shown}" if shown else ""),
                level=LEVELS.get(status, "error"),
                stage_idx=idx,
                status=str(status),
                summary=figures,
                **_facts(stage),
            )

        self.in_session(finish, "stage finish")

    def warn(self, type: EventType, message: str, *, stage_idx: int, **facts: Any) -> None:
        """A warning event about the run (written by the main process)."""
        if not self.ranks.is_main:
            return

        def write(session: Session) -> None:
            events.record(
                session, self.job_id, type, message, level="warning", stage_idx=stage_idx, **facts
            )

        self.in_session(write, "event")

    def keep_samples(self, stage_idx: int, step: int, samples: Sequence[Sample]) -> None:
        """Hold a step's kept completions until its metrics are logged: both are written in
        one transaction, so a relaunch that drops a redone step's metrics drops these too."""
        if self.ranks.is_main and samples:
            self._samples[(stage_idx, step)] = list(samples)

    def log(self, stage_idx: int | None, step: int, values: dict[str, float]) -> None:
        """One step's metrics (written once, by the main process); non-finite ones left out."""
        if not self.ranks.is_main:
            return
        rows = [  # plain values: a retried transaction adds fresh rows
            {"job_id": self.job_id, "stage_idx": stage_idx, "step": step, "name": k, "value": v}
            for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)
        ]

        samples = self._samples.pop((stage_idx, step), []) if stage_idx is not None else []

        def write(session: Session) -> None:
            session.add_all([Metric(**row) for row in rows])
            if samples and stage_idx is not None:
                session.add_all(self._sample_rows(session, stage_idx, step, samples))
            session.execute(update(Job).where(Job.id == self.job_id).values(heartbeat_at=utcnow()))

        self.in_session(write, "metrics")
        if step % PROGRESS_EVERY == 0:  # for the run's log; consoles read the metric rows
            shown = ", ".join(f"{k} {v:.3g}" for k, v in values.items() if k in PROGRESS_KEYS)
            log.info("job %s stage %s step %d: %s", str(self.job_id)[:8], stage_idx, step, shown)

    def _sample_rows(
        self, session: Session, stage_idx: int, step: int, samples: list[Sample]
    ) -> list[RolloutSample]:
        """Rows for a step's samples, each with its item's images (as the item stores them)."""
        items = {_uuid(s.item_id) for s in samples} - {None}
        query = select(Item.id, Item.images).where(Item.id.in_(items))
        images = {item: list(uris) for item, uris in session.execute(query)} if items else {}
        return [
            RolloutSample(
                job_id=self.job_id,
                stage_idx=stage_idx,
                step=step,
                idx=idx,
                item_id=item,
                images=list(images.get(item, [])) if item else [],
                prompt=sample.prompt,
                completion=sample.completion,
                answer=sample.answer,
                reward=sample.reward,
                correct=sample.correct,
                well_formed=sample.well_formed,
                reason=sample.reason[:64],
                length=sample.length,
            )
            for idx, sample in enumerate(samples)
            for item in [_uuid(sample.item_id)]
        ]

    def save_artifact(self, source: Path, key: str, *, kind: str, name: str, **meta: Any) -> str:
        """Store a file or folder under the job's artifacts and register it (the main
        process does; every process gets its URI once it is stored)."""
        return self._save(source, key, kind=kind, name=name, meta=meta)

    def save_checkpoint(self, source: Path, key: str, *, name: str, stage_idx: int) -> str:
        """Store a stage's final weights as a checkpoint artifact, and log where and at
        which step (the stage's last) they were saved."""

        def saved(session: Session, uri: str) -> None:
            last = select(func.max(Metric.step)).where(
                Metric.job_id == self.job_id, Metric.stage_idx == stage_idx
            )
            step = session.scalar(last)
            message = f"Checkpoint saved at step {step}" if step else "Checkpoint saved"
            events.record(
                session,
                self.job_id,
                EventType.CHECKPOINT_SAVED,
                message,
                stage_idx=stage_idx,
                step=step,
                uri=uri,
            )

        meta = {"stage": stage_idx}
        return self._save(source, key, kind="checkpoint", name=name, meta=meta, also=saved)

    def _save(
        self,
        source: Path,
        key: str,
        *,
        kind: str,
        name: str,
        meta: dict[str, Any],
        also: Callable[[Session, str], None] | None = None,
    ) -> str:
        if self.ranks.is_main:
            stored = (
                self.store.put_tree(source, key)
                if source.is_dir()
                else self.store.put_file(source, key)
            )

            def register(session: Session) -> None:
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
                if also is not None:
                    also(session, stored.uri)

            self.in_session(register, "artifact")
        self.ranks.barrier()
        return self.store.uri_for(key)


def fail_running_stages(session: Session, job_id: uuid.UUID) -> None:
    """Settle as failed the stages a failed run leaves running, in the caller's transaction
    (the one that fails the job)."""
    running = select(Stage).where(Stage.job_id == job_id, Stage.status == StageStatus.RUNNING)
    for stage in session.scalars(running).all():
        stage.status, stage.finished_at = StageStatus.FAILED, utcnow()
        events.record(
            session,
            job_id,
            EventType.STAGE_FINISHED,
            f"{_title(stage)} failed",
            level="error",
            stage_idx=stage.idx,
            status=str(StageStatus.FAILED),
            **_facts(stage),
        )


def _title(stage: Stage) -> str:
    """'Stage 2 (48 tokens × 4)' for a GRPO stage, 'Stage 1 (sft)' for others."""
    config = stage.config
    if "max_completion_tokens" in config and "group_size" in config:
        shape = f"{config['max_completion_tokens']} tokens × {config['group_size']}"
    else:
        shape = stage.name
    return f"Stage {stage.idx + 1} ({shape})"


def _facts(stage: Stage) -> dict[str, Any]:
    """What a stage's events say about it: its name, completion cap, group size, steps."""
    names = {"max_completion_tokens": "cap", "group_size": "group_size", "steps": "steps"}
    facts = {fact: stage.config[key] for key, fact in names.items() if key in stage.config}
    return {"name": stage.name, **facts}


def _uuid(value: str | None) -> uuid.UUID | None:
    try:
        return uuid.UUID(value) if value else None
    except ValueError:  # a prompt file's own row ID, not a platform item
        return None


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
