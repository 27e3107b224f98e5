"""Request and response models of the public REST API."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Generic, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from shared.contracts.specs import JobSpec
from shared.contracts.status import JobStatus

T = TypeVar("T")

DatasetKind = Literal["source", "cold", "rl", "eval"]


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


def nul_free(value: Any, where: str = "") -> None:
    """Raise if any text in ``value`` (keys included) holds a NUL character: no database
    column can store one, and no model input needs one."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"NUL characters (\\u0000) are not allowed in text{where}")
    elif isinstance(value, dict):
        for key, item in value.items():
            nul_free(key, where)
            nul_free(item, f" (in {key!s:.40})")
    elif isinstance(value, list | tuple):
        for item in value:
            nul_free(item, where)


class In(BaseModel):
    """Base of request bodies: unknown fields and NUL characters are refused with a 422."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _no_nul(cls, data: Any) -> Any:
        nul_free(data)
        return data


class Page(BaseModel, Generic[T]):
    """One page of a list; ask again with ``offset=next_offset`` while it is not null."""

    items: list[T]
    total: int
    limit: int
    offset: int
    next_offset: int | None


class ErrorOut(BaseModel):
    """Every error the API returns has this shape (plus the IDs it is about)."""

    model_config = ConfigDict(extra="allow")

    error: str
    message: str


class ColumnMapping(BaseModel):
    """Which columns of the file hold the image(s), the question and the answer."""

    model_config = ConfigDict(extra="forbid")

    image: str = Field(default="image", description="A path, a list of paths, or HF image dicts.")
    question: str = "question"
    answer: str = "answer"
    id: str | None = Field(default=None, description="Optional column with a row ID.")


class DatasetCreate(In):
    """Register a dataset from a JSONL or Parquet file the server can read."""

    name: str = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    kind: Literal["source", "rl", "eval"] = "source"
    path: str = Field(
        min_length=1,
        description="File path, relative to one of the server's import roots (or absolute "
        "inside one). Image paths in rows are resolved against the file's folder.",
    )
    format: Literal["auto", "jsonl", "parquet"] = "auto"
    columns: ColumnMapping = Field(default_factory=ColumnMapping)
    on_error: Literal["reject", "skip"] = Field(
        default="reject",
        description="reject: any bad row fails the request and nothing is written; "
        "skip: bad rows are reported and left out.",
    )


class RowError(BaseModel):
    row: int = Field(description="1-based line (JSONL) or row number (Parquet).")
    field: str | None = None
    reason: str


class DatasetOut(Out):
    id: uuid.UUID
    name: str
    kind: str
    format: str
    size: int
    uri: str
    meta: dict[str, Any]
    produced_by_job_id: uuid.UUID | None
    created_at: datetime


class DatasetCreated(DatasetOut):
    skipped: list[RowError] = Field(default_factory=list)


class ItemOut(Out):
    id: uuid.UUID
    idx: int
    images: list[str]
    question: str
    answer: str
    extra: dict[str, Any]


class JobCreate(In):
    name: str | None = Field(default=None, max_length=200)
    spec: JobSpec


class ProgressOut(BaseModel):
    """How far a job is: ``done`` of ``total`` (None: not known yet) ``unit``; ``stage``
    says where it is (a GRPO stage, a pipeline's step), ``detail`` its latest figures."""

    model_config = ConfigDict(frozen=True)

    done: int
    total: int | None
    unit: Literal["items", "steps", "jobs"]
    stage: str | None = None
    detail: str = ""


class JobOut(Out):
    id: uuid.UUID
    parent_id: uuid.UUID | None
    name: str
    kind: str
    status: JobStatus
    spec: dict[str, Any]
    warnings: list[str]
    items_total: int
    items_done: int
    items_failed: int
    counters: dict[str, Any]
    output: dict[str, Any]
    error: str | None
    cancel_requested: bool
    heartbeat_at: datetime | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: ProgressOut


class StageOut(Out):
    idx: int
    name: str
    config: dict[str, Any]
    status: str
    started_at: datetime | None
    finished_at: datetime | None
    checkpoint_uri: str | None
    summary: dict[str, Any]


class MetricOut(Out):
    stage_idx: int | None
    step: int
    name: str
    value: float
    created_at: datetime


class ArtifactOut(Out):
    id: uuid.UUID
    job_id: uuid.UUID | None
    kind: str
    name: str
    uri: str
    size_bytes: int
    checksum: str
    meta: dict[str, Any]
    created_at: datetime


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    database: bool
    broker: bool | None = Field(description="None when no broker is configured.")
    version: str


class EventOut(Out):
    """One entry of a job's event log (the shape fine-tuning APIs use: time, level,
    type, message, data)."""

    id: int
    created_at: datetime
    level: Literal["info", "warning", "error"]
    type: str = Field(
        description="created, queued, started, stage.started, stage.finished, "
        "checkpoint.saved, item.failed, retried, relaunched, cancelled, "
        "failed, succeeded, …"
    )
    message: str
    stage_idx: int | None
    data: dict[str, Any]


class SampleOut(Out):
    """One GRPO completion the trainer kept, with how it was scored."""

    id: int
    stage_idx: int
    step: int
    idx: int
    item_id: uuid.UUID | None
    images: list[str] = Field(description="Image URLs, relative to the API root.")
    prompt: str
    completion: str
    answer: str
    reward: float | None
    correct: bool | None
    well_formed: bool | None
    reason: str | None
    length: int
    created_at: datetime


class RecordOut(BaseModel):
    """One coldstart item as the job saw it: its inputs, each step's output, its verdict."""

    item_id: uuid.UUID
    idx: int
    question: str
    answer: str = Field(description="The gold answer.")
    images: list[str] = Field(description="Image URLs, relative to the API root.")
    step: str = Field(description="How far the item got: pending, captioned, described, reasoned.")
    status: str = Field(description="pending, kept, rejected or failed.")
    pseudo_cot: str | None
    description: str | None
    reasoning: str | None
    final_answer: str | None
    verdict: bool | None
    reject_reason: str | None
    error: str | None
    attempts: int
    updated_at: datetime


class FunnelOut(BaseModel):
    """A coldstart job's funnel, counted now: items in → captioned → described → reasoned →
    verified → kept, and why the others stopped (the vocabulary of the job's final
    ``output.funnel``)."""

    items_in: int
    pending: int = Field(description="Items not settled yet.")
    captioned: int
    described: int
    reasoned: int
    verified: int
    kept: int
    rejected: dict[str, int] = Field(description="Rejected items by reason.")
    failed: dict[str, int] = Field(description="Failed items by reason.")
    errors: dict[str, int] = Field(
        description="Failed items by error: its class, or its first 80 characters."
    )


class EvalResultOut(BaseModel):
    """One eval item's outcome: what the model said and how it was judged."""

    dataset_id: uuid.UUID
    item_id: uuid.UUID
    idx: int
    question: str
    answer: str = Field(description="The gold answer.")
    images: list[str] = Field(description="Image URLs, relative to the API root.")
    label: str
    tries: int
    completion: str
    extracted: str | None
    correct: bool | None
    reason: str | None
