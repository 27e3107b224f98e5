"""Cold-start SFT sets (``cold`` datasets): written one way, read one way.

:func:`create_cold_dataset` writes the sharegpt file with its ``dataset_info.json`` entry
(``shared.contracts.sharegpt``), the images beside it, optionally a Parquet copy, and
registers the dataset with one item per row; the coldstart export and the demo's
stand-in teacher data both go through it.  :func:`cold_data_file` is where SFT reads it.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from shared.contracts import sharegpt
from shared.db.models import Dataset, Item
from shared.errors import InvalidInput
from shared.storage import ArtifactStore


@dataclass(frozen=True)
class ColdSample:
    """One training conversation of a cold dataset: what is asked, about which images, and
    the assistant turn to learn; ``source_item_id`` names the item it was made from."""

    question: str
    assistant: str
    images: list[Path]
    answer: str = ""
    source_item_id: str | None = None


def create_cold_dataset(
    session: Session,
    store: ArtifactStore,
    *,
    team_id: uuid.UUID,
    name: str,
    prefix: str,
    samples: Sequence[ColdSample],
    parquet: bool = True,
    produced_by_job_id: uuid.UUID | None = None,
    meta: dict[str, Any] | None = None,
) -> Dataset:
    """Write a sharegpt training set under ``prefix`` (images, ``dataset_info.json``, and
    optionally Parquet) and register it as a ``cold`` dataset with one item per row."""
    rows, image_uris = _write_images(store, prefix, samples)
    payload = [row.model_dump() for row in rows]
    store.put_bytes(
        json.dumps(payload, ensure_ascii=False, indent=1).encode(),
        f"{prefix}/{sharegpt.DATA_FILE}",
    )
    info = json.dumps(sharegpt.dataset_info(name), indent=2).encode()
    store.put_bytes(info, f"{prefix}/{sharegpt.DATASET_INFO_FILE}")
    if parquet:
        store.put_bytes(_parquet_bytes(payload, samples), f"{prefix}/cold.parquet")
    dataset = Dataset(
        team_id=team_id,
        name=name,
        kind="cold",
        format="sharegpt",
        size=len(rows),
        uri=store.uri_for(prefix),
        produced_by_job_id=produced_by_job_id,
        meta={**(meta or {}), "file": sharegpt.DATA_FILE},
    )
    session.add(dataset)
    session.flush()
    for idx, (sample, uris) in enumerate(zip(samples, image_uris, strict=True)):
        extra = {"assistant": sample.assistant, "source_item_id": sample.source_item_id}
        session.add(
            Item(
                dataset_id=dataset.id,
                idx=idx,
                images=uris,
                question=sample.question,
                answer=sample.answer,
                extra=extra,
            )
        )
    return dataset


def _write_images(
    store: ArtifactStore, prefix: str, samples: Sequence[ColdSample]
) -> tuple[list[sharegpt.SharegptRow], list[list[str]]]:
    """Copy each sample's images beside the data file; the rows name them relatively."""
    rows, stored = [], []
    for idx, sample in enumerate(samples):
        relative, uris = [], []
        for k, image in enumerate(sample.images):
            name = f"images/{idx:07d}_{k}{image.suffix or '.png'}"
            uris.append(store.put_file(image, f"{prefix}/{name}").uri)
            relative.append(name)
        rows.append(sharegpt.sharegpt_row(sample.question, sample.assistant, relative))
        stored.append(uris)
    return rows, stored


def _parquet_bytes(rows: list[dict[str, Any]], samples: Sequence[ColdSample]) -> bytes:
    table = pa.table(
        {
            "messages": [row["messages"] for row in rows],
            "images": [row["images"] for row in rows],
            "question": [sample.question for sample in samples],
            "answer": [sample.answer for sample in samples],
            "source_item_id": [sample.source_item_id for sample in samples],
        }
    )
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def cold_data_file(session: Session, store: ArtifactStore, dataset_id: str) -> Path:
    """The sharegpt file of a ``cold`` dataset; InvalidInput for any other dataset."""
    dataset = session.get(Dataset, uuid.UUID(dataset_id))
    if dataset is None or dataset.kind != "cold":
        raise InvalidInput(f"sft needs a cold (sharegpt) dataset; {dataset_id} is not one")
    return store.local_path(dataset.uri) / str(dataset.meta.get("file", sharegpt.DATA_FILE))
