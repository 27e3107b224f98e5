"""The lifecycles the platform tracks: jobs, cold-start records, training stages and runs.

Each status is an enum whose values are the strings stored in the database and shown by
the API; the named sets say which statuses are still moving and which are final.
"""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """queued → running → succeeded | failed | cancelled."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


JOB_ACTIVE: frozenset[str] = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
JOB_TERMINAL: frozenset[str] = frozenset(
    {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED}
)


class RecordStatus(StrEnum):
    """A cold-start item: pending until it is kept, rejected (with a reason) or failed."""

    PENDING = "pending"
    KEPT = "kept"
    REJECTED = "rejected"
    FAILED = "failed"


RECORD_TERMINAL: frozenset[str] = frozenset(
    {RecordStatus.KEPT, RecordStatus.REJECTED, RecordStatus.FAILED}
)


class RecordStep(StrEnum):
    """How far a cold-start item got: each step's output is stored once."""

    PENDING = "pending"
    CAPTIONED = "captioned"
    DESCRIBED = "described"
    REASONED = "reasoned"


class StageStatus(StrEnum):
    """A training stage: pending → running → succeeded | failed | cancelled."""

    PENDING = "pending"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


class RunStatus(StrEnum):
    """One launch of a training process, as the launcher and watcher see it."""

    STARTING = "starting"
    RUNNING = "running"
    ENDED = "ended"
    LOST = "lost"
