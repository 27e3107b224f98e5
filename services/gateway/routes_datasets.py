"""Dataset routes: register (by path or by upload), list, get, list items."""

from __future__ import annotations

import json
import uuid
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from python_multipart.multipart import parse_options_header
from sqlalchemy.orm import Session

from services.gateway import uploads
from services.gateway.deps import Context, ContextDep, SessionDep, TeamDep
from services.gateway.paging import CONFLICT, NOT_FOUND, Limit, Offset, page_of
from shared import datasets
from shared.contracts.api import (
    DatasetCreate,
    DatasetCreated,
    DatasetOut,
    ErrorOut,
    ItemOut,
    Page,
    RowError,
)
from shared.db.models import Dataset, Team
from shared.errors import InvalidInput

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


class UnsupportedMediaType(InvalidInput):
    """A body that is neither a registration (JSON) nor an upload (multipart)."""

    status_code = 415
    code = "unsupported_media_type"


def _inlined(schema: dict[str, Any]) -> dict[str, Any]:
    """A pydantic JSON schema with its ``$defs`` written in place: inside an OpenAPI
    document a ``#/$defs/…`` reference would point at the document, not the schema."""
    defs = schema.pop("$defs", {})

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(value) for value in node]
        if not isinstance(node, dict):
            return node
        rest = {key: walk(value) for key, value in node.items() if key != "$ref"}
        ref = node.get("$ref")
        return {**walk(defs[ref.rsplit("/", 1)[-1]]), **rest} if ref else rest

    result: dict[str, Any] = walk(schema)
    return result


def _request_bodies() -> dict[str, Any]:
    """The two bodies the route takes, for the OpenAPI document (it reads the body itself,
    so that an upload is never held whole): DatasetCreate as JSON, or an upload whose
    form fields follow the same rules, ``path`` aside and ``columns`` as JSON text."""
    registration = _inlined(DatasetCreate.model_json_schema())
    shared = {k: v for k, v in registration["properties"].items() if k not in ("path", "columns")}
    upload = {
        "type": "object",
        "required": [uploads.FILE_FIELD, "name"],
        "additionalProperties": False,
        "properties": {
            uploads.FILE_FIELD: {
                "type": "string",
                "format": "binary",
                "description": "A JSONL or Parquet file, or a .tar, .tar.gz/.tgz or .zip "
                "archive holding one such file and the images its rows name by relative path.",
            },
            **shared,
            "columns": {
                "type": "string",
                "description": "The column mapping as a JSON object, e.g. "
                '{"image": "images", "question": "problem"}.',
            },
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": registration},
                "multipart/form-data": {"schema": upload},
            },
        }
    }


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetCreated,
    responses={
        **CONFLICT,
        413: {"model": ErrorOut, "description": "The upload is larger than the server takes"},
        415: {"model": ErrorOut, "description": "Neither JSON nor multipart/form-data"},
    },
    openapi_extra=_request_bodies(),
)
async def create_dataset(
    request: Request, session: SessionDep, team: TeamDep, context: ContextDep
) -> DatasetCreated:
    """Register a dataset: a JSON body names a file the server can read, a multipart body
    uploads one; every row is validated."""
    media = parse_options_header(request.headers.get("content-type"))[0].decode("latin-1")
    if media == "multipart/form-data":
        dataset, skipped = await _upload(request, session, team, context)
    elif media == "application/json" or media.endswith("+json"):
        body = _registration(await request.body())
        dataset, skipped = await run_in_threadpool(
            datasets.register_dataset,
            session,
            team=team,
            request=body,
            roots=context.settings.resolved_import_roots(),
            store=context.store,
        )
    else:
        raise UnsupportedMediaType(
            "send a registration as application/json or an upload as multipart/form-data"
        )
    return DatasetCreated.model_validate(
        {**DatasetOut.model_validate(dataset).model_dump(), "skipped": skipped}
    )


def _registration(body: bytes) -> DatasetCreate:
    """A JSON body as DatasetCreate, with the errors FastAPI gives for a declared body."""
    try:
        return DatasetCreate.model_validate(json.loads(body))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # not JSON, or not UTF-8 at all
        where = exc.pos if isinstance(exc, json.JSONDecodeError) else exc.start
        error = {"type": "json_invalid", "loc": ("body", where), "msg": "JSON decode error"}
        raise RequestValidationError([error]) from exc
    except ValidationError as exc:
        raise uploads.body_error(exc) from exc


async def _upload(
    request: Request, session: Session, team: Team, context: Context
) -> tuple[Dataset, list[RowError]]:
    """Stream the upload into the store, then register it; on any failure it is removed."""
    limit = context.settings.max_upload_bytes
    uploads.check_length(request, limit)
    await run_in_threadpool(session.commit)  # no connection is held while the body arrives
    store = context.store
    folder = store.local_path(store.uri_for(f"uploads/{team.id}/{uuid.uuid4()}"))
    folder.mkdir(parents=True)
    try:
        received = await uploads.receive(
            request, folder, limit=limit, check=lambda f: uploads.check_early(session, team, f)
        )
        return await run_in_threadpool(
            uploads.register_upload,
            session,
            team=team,
            received=received,
            store=store,
            limit=limit,
        )
    except BaseException:
        await run_in_threadpool(uploads.remove, folder)
        raise


@router.get("", response_model=Page[DatasetOut])
def list_datasets(
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 50,
    offset: Offset = 0,
    kind: str | None = None,
) -> Page[DatasetOut]:
    """The team's datasets, newest first."""
    rows, total = datasets.list_datasets(session, team=team, kind=kind, limit=limit, offset=offset)
    return page_of([DatasetOut.model_validate(r) for r in rows], total, limit, offset)


@router.get("/{dataset_id}", response_model=DatasetOut, responses=NOT_FOUND)
def get_dataset(dataset_id: uuid.UUID, session: SessionDep, team: TeamDep) -> DatasetOut:
    """One dataset."""
    return DatasetOut.model_validate(
        datasets.get_dataset(session, team=team, dataset_id=dataset_id)
    )


@router.get("/{dataset_id}/items", response_model=Page[ItemOut], responses=NOT_FOUND)
def list_items(
    dataset_id: uuid.UUID,
    session: SessionDep,
    team: TeamDep,
    limit: Limit = 50,
    offset: Offset = 0,
) -> Page[ItemOut]:
    """A page of a dataset's items, in file order."""
    dataset = datasets.get_dataset(session, team=team, dataset_id=dataset_id)
    rows = datasets.list_items(session, dataset=dataset, limit=limit, offset=offset)
    return page_of([ItemOut.model_validate(r) for r in rows], dataset.size, limit, offset)
