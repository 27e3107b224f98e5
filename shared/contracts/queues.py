"""Queue and task names: the only strings services use to talk to each other."""

from __future__ import annotations

from typing import Final

CAPTION_QUEUE: Final = "caption"
REASON_QUEUE: Final = "reason"
TRAIN_QUEUE: Final = "train"
QUEUES: Final = (CAPTION_QUEUE, REASON_QUEUE, TRAIN_QUEUE)

# Tasks are named "<domain>.<action>"; the domain names the queue that carries them.
CAPTION_BATCH: Final = "caption.batch"
REASON_BATCH: Final = "reason.batch"
TRAIN_LAUNCH: Final = "train.launch"
TRAIN_WATCH: Final = "train.watch"
JOB_ADVANCE: Final = "train.advance"

TASK_QUEUES: Final[dict[str, str]] = {
    CAPTION_BATCH: CAPTION_QUEUE,
    REASON_BATCH: REASON_QUEUE,
    TRAIN_LAUNCH: TRAIN_QUEUE,
    TRAIN_WATCH: TRAIN_QUEUE,
    JOB_ADVANCE: TRAIN_QUEUE,
}


def queue_for(task_name: str) -> str:
    """The queue a task is routed to."""
    return TASK_QUEUES[task_name]
