"""Experiment trackers a job reports to besides the platform's own metrics (TRL's
``report_to``): checked before training, named after the job, their files kept as
artifacts.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from services.trainer.tracking import Tracker
from shared.db.models import Job
from shared.errors import InvalidInput

# The package each tracker needs in the training image.
TRACKER_PACKAGES = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "trackio": "trackio",
    "mlflow": "mlflow",
}
# Where file-based trackers write inside a stage's output folder: TensorBoard's default
# (``<output_dir>/runs/<time>_<host>``).
TRACKER_DIRS = ("runs",)


def tracker_arguments(report_to: Sequence[str], run_name: str) -> dict[str, Any]:
    """TRL's ``report_to`` and ``run_name``; a tracker whose package is missing fails the
    run here, before training, with what to install rather than a traceback."""
    for tracker in report_to:
        package = TRACKER_PACKAGES[tracker]
        if importlib.util.find_spec(package) is None:
            raise InvalidInput(
                f"report_to {tracker} needs the '{package}' package in the trainer image"
            )
    if "wandb" in report_to:  # a training image has no W&B login: keep runs local
        os.environ.setdefault("WANDB_MODE", "offline")
    return {"report_to": list(report_to) or "none", "run_name": run_name or None}


def run_name(tracker: Tracker) -> str:
    """How trackers label the run: the job's name and ID."""
    with tracker.db.session() as session:
        job = session.get(Job, tracker.job_id)
        name = job.name if job is not None else ""
    return f"{name} {tracker.job_id}".strip()


def save_tracker_files(tracker: Tracker, out_dir: Path, stage_idx: int) -> list[str]:
    """Store what file-based trackers wrote in one stage as ``logs`` artifacts; their URIs."""
    uris = []
    for folder in TRACKER_DIRS:
        source = out_dir / folder
        if source.is_dir():
            uris.append(
                tracker.save_artifact(
                    source,
                    f"runs/{tracker.job_id}/trackers/stage-{stage_idx}/{folder}",
                    kind="logs",
                    name=f"{folder} stage-{stage_idx}",
                    stage=stage_idx,
                )
            )
    return uris
