"""Artifact routes: metadata and download (a folder comes as a .tar.gz)."""

from __future__ import annotations

import io
import tarfile
import uuid

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response

from services.gateway.deps import ContextDep, SessionDep, TeamDep
from shared import artifacts
from shared.contracts.api import ArtifactOut
from shared.errors import ArtifactNotFound

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_model=ArtifactOut)
def get_artifact(artifact_id: uuid.UUID, session: SessionDep, team: TeamDep) -> ArtifactOut:
    """One artifact's metadata."""
    artifact = artifacts.get_artifact(session, team=team, artifact_id=artifact_id)
    return ArtifactOut.model_validate(artifact)


@router.get(
    "/{artifact_id}/download",
    response_class=Response,
    responses={200: {"content": {"application/octet-stream": {}, "application/gzip": {}}}},
)
def download_artifact(
    artifact_id: uuid.UUID, session: SessionDep, team: TeamDep, context: ContextDep
) -> Response:
    """The artifact's bytes; a folder artifact is sent as a gzipped tar."""
    artifact = artifacts.get_artifact(session, team=team, artifact_id=artifact_id)
    path = context.store.local_path(artifact.uri)
    if path.is_file():
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")
    if not path.is_dir():
        raise ArtifactNotFound(artifact.id, uri=artifact.uri)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(path, arcname=artifact.name)
    headers = {"Content-Disposition": f'attachment; filename="{artifact.name}.tar.gz"'}
    return Response(buffer.getvalue(), media_type="application/gzip", headers=headers)
