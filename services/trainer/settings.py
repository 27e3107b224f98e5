"""Trainer settings: the worker that launches runs, and the run process itself."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.worker import WorkerSettings


class TrainerSettings(WorkerSettings):
    """The trainer worker (queue ``train``), its watcher, and the training runs it starts."""

    launcher: Literal["local", "kubernetes"] = "local"
    heartbeat_interval_s: float = Field(default=5.0, gt=0)
    stale_after_s: float = Field(default=120.0, gt=0)
    watch_interval_s: float = Field(default=15.0, gt=0)
    max_launches: int = Field(default=3, ge=1, description="Launches of one job in all.")
    checkpoint_every: int = Field(default=50, ge=1, description="Steps between checkpoints.")
    torch_threads: int | None = Field(default=None, ge=1)
    gpus_per_process: int = Field(default=0, ge=0, description="GPUs a run asks for per process.")
    k8s_namespace: str = "vr1"
    k8s_job_template: str = "/etc/vr1/job-template.yaml"
    k8s_image: str = ""
