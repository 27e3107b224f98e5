"""Artifact routes: metadata and download (a folder comes as a tar archive)."""

from __future__ import annotations

import uuid

from fastapi import APIRouter
from fastapi.responses import FileResponse, Response, StreamingResponse

from services.gateway.deps import ContextDep, SessionDep, TeamDep
from services.gateway.paging import NOT_FOUND
from services.gateway.streaming import tar_length, tar_members, tar_stream
from shared import artifacts
from shared.contracts.api import ArtifactOut
from shared.errors import ArtifactNotFound

router = APIRouter(prefix="/v1/artifacts", tags=["artifacts"])


@router.get("/{artifact_id}", response_model=ArtifactOut, responses=NOT_FOUND)
def get_artifact(artifact_id: uuid.UUID, session: SessionDep, team: TeamDep) -> ArtifactOut:
    """One artifact's metadata."""
    artifact = artifacts.get_artifact(session, team=team, artifact_id=artifact_id)
    return ArtifactOut.model_validate(artifact)


@router.get(
    "/{artifact_id}/download",
    response_class=Response,
    responses={
        **NOT_FOUND,
        200: {
            "content": {"application/octet-stream": {}, "application/x-tar": {}},
            "description": "A file's bytes, or a folder as a tar archive",
        },
        206: {
            "content": {"application/octet-stream": {}},
            "description": "The requested byte range of a file",
        },
        416: {"description": "The requested range is outside the file"},
    },
)
def download_artifact(
    artifact_id: uuid.UUID, session: SessionDep, team: TeamDep, context: ContextDep
) -> Response:
    """The artifact's bytes: a file as it is (with ``Range`` support), a folder as a tar
    archive streamed while it is read, with its exact ``Content-Length``."""
    artifact = artifacts.get_artifact(session, team=team, artifact_id=artifact_id)
    path = context.store.local_path(artifact.uri)
    if path.is_file():
        return FileResponse(path, filename=path.name, media_type="application/octet-stream")
    if not path.is_dir():
        raise ArtifactNotFound(artifact.id, uri=artifact.uri)
    members = tar_members(path, artifact.name)
    headers = {
        "Content-Disposition": f'attachment; filename="{artifact.name}.tar"',
        "Content-Length": str(tar_length(members)),
    }
    # A plain generator: each chunk is read in the thread pool, the event loop stays free.
    return StreamingResponse(tar_stream(members), media_type="application/x-tar", headers=headers)
