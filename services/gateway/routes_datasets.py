"""Dataset routes: register, list, get, list items."""

from __future__ import annotations

import uuid

from fastapi import APIRouter, status

from services.gateway.deps import ContextDep, SessionDep, TeamDep
from services.gateway.paging import CONFLICT, NOT_FOUND, Limit, Offset, page_of
from shared import datasets
from shared.contracts.api import DatasetCreate, DatasetCreated, DatasetOut, ItemOut, Page

router = APIRouter(prefix="/v1/datasets", tags=["datasets"])


@router.post(
    "", status_code=status.HTTP_201_CREATED, response_model=DatasetCreated, responses=CONFLICT
)
def create_dataset(
    body: DatasetCreate, session: SessionDep, team: TeamDep, context: ContextDep
) -> DatasetCreated:
    """Register a dataset from a JSONL or Parquet file; every row is validated."""
    dataset, skipped = datasets.register_dataset(
        session,
        team=team,
        request=body,
        roots=context.settings.resolved_import_roots(),
        store=context.store,
    )
    return DatasetCreated.model_validate(
        {**DatasetOut.model_validate(dataset).model_dump(), "skipped": skipped}
    )


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
