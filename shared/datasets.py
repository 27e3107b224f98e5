"""Datasets: registering source files (JSONL or Parquet), listing them and their items.

Images may be file paths (relative to the dataset file's folder, never escaping it) or
embedded bytes as Hugging Face ``datasets`` writes them (``{"bytes": ..., "path": ...}``,
alone or in a list, as in the released Vision-R1-rl parquet).  Validation reads the whole
file first; with ``on_error="reject"`` one bad row fails the request and nothing is
written.  Images are copied into the artifact store so workers anywhere can read them.
Cold-start sets (``cold`` datasets) are made by ``shared.cold_data``.
"""

from __future__ import annotations

import io
import json
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, UnidentifiedImageError
from sqlalchemy import select
from sqlalchemy.orm import Session

from shared.contracts.api import DatasetCreate, RowError, nul_free
from shared.db.models import Dataset, Item, Team
from shared.db.session import count_rows
from shared.errors import (
    Conflict,
    DatasetInvalid,
    DatasetNotFound,
    InvalidInput,
    UnsafePath,
    VR1Error,
)
from shared.storage import ArtifactStore
from shared.teams import load_owned

MAX_REPORTED_ERRORS = 200
_IMAGE_SUFFIXES = {"PNG": ".png", "JPEG": ".jpg", "GIF": ".gif", "WEBP": ".webp", "BMP": ".bmp"}


class RowInvalid(Exception):
    """A row that cannot be imported; carries the field and reason."""

    def __init__(self, field: str | None, reason: str) -> None:
        super().__init__(reason)
        self.field = field
        self.reason = reason


@dataclass
class ImageSource:
    """One image of a row: a checked file path or checked bytes, and its format."""

    suffix: str
    path: Path | None = None
    data: bytes | None = None


@dataclass
class ParsedRow:
    number: int
    images: list[ImageSource]
    question: str
    answer: str
    extra: dict[str, Any] = field(default_factory=dict)


def resolve_import_path(path: str, roots: list[Path]) -> Path:
    """The dataset file, which must lie inside one of the server's import roots."""
    candidates = [Path(path)] if Path(path).is_absolute() else [r / path for r in roots]
    for candidate in candidates:
        resolved = candidate.resolve()
        inside = any(resolved.is_relative_to(root.resolve()) for root in roots)
        if not inside:
            continue
        if resolved.is_file():
            return resolved
    if not any(c.resolve().is_relative_to(r.resolve()) for c in candidates for r in roots):
        raise UnsafePath(f"path {path!r} is outside the server's import roots", field="path")
    raise InvalidInput(f"dataset file {path!r} not found", field="path")


def detect_format(path: Path, declared: str) -> str:
    """'jsonl' or 'parquet', from the request or the file name."""
    if declared != "auto":
        return declared
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise InvalidInput(f"cannot tell the format of {path.name}; set 'format'", field="format")


def _iter_records(path: Path, fmt: str) -> Iterator[tuple[int, dict[str, Any] | RowInvalid]]:
    if fmt == "parquet":
        try:
            parquet = pq.ParquetFile(path)
        except (pa.ArrowException, OSError) as exc:
            raise InvalidInput(f"not a readable Parquet file: {exc}", field="path") from exc
        number = 0
        for batch in parquet.iter_batches(batch_size=256):
            for record in batch.to_pylist():
                number += 1
                yield number, record
        return
    with path.open("r", encoding="utf-8", errors="replace") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                yield number, RowInvalid(None, f"malformed JSON: {exc.msg}")
                continue
            if not isinstance(record, dict):
                yield number, RowInvalid(None, "a row must be a JSON object")
                continue
            yield number, record


def _check_image_bytes(data: bytes, where: str) -> str:
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return _IMAGE_SUFFIXES.get(image.format or "", ".img")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise RowInvalid("image", f"{where} is not a readable image: {exc}") from exc


def _image_source(value: Any, folder: Path) -> ImageSource:
    if isinstance(value, dict):
        if value.get("bytes"):
            data = bytes(value["bytes"])
            return ImageSource(_check_image_bytes(data, "embedded image"), data=data)
        value = value.get("path")
    if not isinstance(value, str) or not value.strip():
        raise RowInvalid("image", "image must be a path or embedded bytes")
    relative = Path(value)
    resolved = (folder / relative).resolve()
    if relative.is_absolute() or not resolved.is_relative_to(folder):
        raise RowInvalid("image", f"image path {value!r} escapes the dataset folder")
    if not resolved.is_file():
        raise RowInvalid("image", f"image file {value!r} not found")
    with resolved.open("rb") as handle:
        suffix = _check_image_bytes(handle.read(), f"image file {value!r}")
    return ImageSource(suffix, path=resolved)


def _text(record: dict[str, Any], column: str, label: str) -> str:
    value = record.get(column)
    if isinstance(value, bool) or value is None:
        raise RowInvalid(column, f"{label} column {column!r} is missing")
    if isinstance(value, int | float):
        value = str(value)
    if not isinstance(value, str) or not value.strip():
        raise RowInvalid(column, f"{label} column {column!r} is empty or not text")
    _nul_free(column, value)
    return value.strip()


def _nul_free(column: str, value: Any) -> None:
    try:
        nul_free(value)
    except ValueError as exc:
        raise RowInvalid(column, f"column {column!r}: {exc}") from exc


def _extra(record: dict[str, Any], used: set[str]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    for key, value in record.items():
        if key in used:
            continue
        try:
            json.dumps(value)
        except (TypeError, ValueError):
            continue  # binary or exotic columns stay in the source file
        _nul_free(str(key), [key, value])
        extra[key] = value
    return extra


def parse_row(
    number: int, record: dict[str, Any], request: DatasetCreate, folder: Path
) -> ParsedRow:
    """Validate one row; raises RowInvalid naming the field."""
    columns = request.columns
    raw = record.get(columns.image)
    values = raw if isinstance(raw, list) else [raw] if raw is not None else []
    if not values:
        raise RowInvalid(columns.image, f"image column {columns.image!r} is missing or empty")
    images = [_image_source(value, folder) for value in values]
    question = _text(record, columns.question, "question")
    answer = _text(record, columns.answer, "answer")
    used = {columns.image, columns.question, columns.answer}
    return ParsedRow(number, images, question, answer, _extra(record, used))


def validate_file(request: DatasetCreate, path: Path) -> tuple[list[ParsedRow], list[RowError]]:
    """Every row of the file, parsed, and every bad row with its number and reason."""
    fmt = detect_format(path, request.format)
    rows: list[ParsedRow] = []
    errors: list[RowError] = []
    for number, record in _iter_records(path, fmt):
        try:
            if isinstance(record, RowInvalid):
                raise record
            rows.append(parse_row(number, record, request, path.parent.resolve()))
        except RowInvalid as exc:
            errors.append(RowError(row=number, field=exc.field, reason=exc.reason))
    return rows, errors


def ensure_name_free(session: Session, *, team: Team, name: str) -> None:
    """Refuse a dataset name the team already uses (a 409)."""
    taken = select(Dataset.id).where(Dataset.team_id == team.id, Dataset.name == name)
    if session.scalar(taken) is not None:
        raise Conflict(f"dataset {name!r} already exists", name=name)


def register_dataset(
    session: Session,
    *,
    team: Team,
    request: DatasetCreate,
    roots: list[Path],
    store: ArtifactStore,
) -> tuple[Dataset, list[RowError]]:
    """Validate and store a dataset; nothing is written unless it is accepted."""
    ensure_name_free(session, team=team, name=request.name)
    path = resolve_import_path(request.path, roots)
    rows, errors = validate_file(request, path)
    if errors and request.on_error == "reject":
        shown = [e.model_dump() for e in errors[:MAX_REPORTED_ERRORS]]
        raise DatasetInvalid(
            f"{len(errors)} of {len(rows) + len(errors)} rows are invalid; nothing was stored",
            errors=shown,
        )
    if not rows:
        raise InvalidInput("the dataset has no valid rows", field="path")
    dataset = Dataset(
        team_id=team.id,
        name=request.name,
        kind=request.kind,
        format=detect_format(path, request.format),
        size=len(rows),
        meta={"source": str(path), "columns": request.columns.model_dump(), "skipped": len(errors)},
    )
    session.add(dataset)
    session.flush()
    prefix = f"datasets/{dataset.id}"
    dataset.uri = store.uri_for(prefix)
    try:
        _store_items(session, dataset, rows, store, prefix)
    except BaseException:
        _remove_prefix(store, prefix)
        raise
    return dataset, errors


def _store_items(
    session: Session, dataset: Dataset, rows: list[ParsedRow], store: ArtifactStore, prefix: str
) -> None:
    for idx, row in enumerate(rows):
        uris = []
        for k, image in enumerate(row.images):
            key = f"{prefix}/images/{idx:07d}_{k}{image.suffix}"
            if image.path is not None:
                uris.append(store.put_file(image.path, key).uri)
            else:
                uris.append(store.put_bytes(image.data or b"", key).uri)
        session.add(
            Item(
                dataset_id=dataset.id,
                idx=idx,
                images=uris,
                question=row.question,
                answer=row.answer,
                extra={"row": row.number, **row.extra},
            )
        )
        if idx % 500 == 499:
            session.flush()


def _remove_prefix(store: ArtifactStore, prefix: str) -> None:
    try:
        folder = store.local_path(store.uri_for(prefix))
    except VR1Error:  # non-local stores clean up through their own lifecycle rules
        return
    shutil.rmtree(folder, ignore_errors=True)


def get_dataset(session: Session, *, team: Team | None, dataset_id: uuid.UUID) -> Dataset:
    """A dataset by ID; another team's dataset does not exist for the caller."""
    return load_owned(session, Dataset, dataset_id, team=team, missing=DatasetNotFound)


def list_datasets(
    session: Session, *, team: Team, kind: str | None, limit: int, offset: int
) -> tuple[list[Dataset], int]:
    """A page of the team's datasets, newest first, and how many match in all."""
    query = select(Dataset).where(Dataset.team_id == team.id)
    if kind:
        query = query.where(Dataset.kind == kind)
    total = count_rows(session, query)
    rows = session.scalars(query.order_by(Dataset.created_at.desc()).limit(limit).offset(offset))
    return list(rows), total


def list_items(session: Session, *, dataset: Dataset, limit: int, offset: int) -> list[Item]:
    """A page of a dataset's items, in file order."""
    query = select(Item).where(Item.dataset_id == dataset.id).order_by(Item.idx)
    return list(session.scalars(query.limit(limit).offset(offset)))
