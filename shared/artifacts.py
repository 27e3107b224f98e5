"""Artifacts: what jobs stored (checkpoints, exports, reports), as a team sees them."""

from __future__ import annotations

import uuid

from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.db.models import Artifact, Job, Team
from shared.errors import ArtifactNotFound
from shared.teams import load_owned


def get_artifact(session: Session, *, team: Team | None, artifact_id: uuid.UUID) -> Artifact:
    """An artifact by ID; another team's artifact does not exist for the caller."""
    return load_owned(session, Artifact, artifact_id, team=team, missing=ArtifactNotFound)


def list_artifacts(session: Session, *, job: Job) -> list[Artifact]:
    """What a job stored, oldest first."""
    query = select(Artifact).where(Artifact.job_id == job.id).order_by(Artifact.created_at)
    return list(session.scalars(query))
