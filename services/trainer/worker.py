"""Trainer queue worker: ``vr1 worker trainer`` launches runs, watches them, advances pipelines."""

from __future__ import annotations

from services.trainer import watcher
from services.trainer.launcher import Launcher, LocalLauncher
from services.trainer.settings import TrainerSettings
from shared import pipeline, worker
from shared.contracts import queues
from shared.db.session import Database


def make_launcher(settings: TrainerSettings) -> Launcher:
    """The launcher the settings ask for."""
    if settings.launcher == "kubernetes":
        from services.trainer.k8s_launcher import KubernetesLauncher

        return KubernetesLauncher.from_settings(settings)
    return LocalLauncher()


def tasks(db: Database, launcher: Launcher, settings: TrainerSettings) -> worker.Tasks:
    """The trainer's task handlers by name."""

    def train_launch(job_id: str) -> None:
        """Start a training run for a job and return; the run reports for itself."""
        watcher.launch(db, launcher, settings, job_id)

    def job_advance(parent_id: str) -> None:
        """Start a pipeline's next child job, or settle the pipeline."""
        with db.session() as session:
            pipeline.advance(session, parent_id)

    return {queues.TRAIN_LAUNCH: train_launch, queues.JOB_ADVANCE: job_advance}


def main() -> None:
    """Run the worker and its watcher until stopped."""
    settings = TrainerSettings()
    app, db, _store = worker.build(settings, "trainer")
    launcher = make_launcher(settings)
    worker.register(app, tasks(db, launcher, settings))
    watcher.Watcher(db, launcher, settings).start()
    worker.run(app, queues.TRAIN_QUEUE, settings)
