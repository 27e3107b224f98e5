"""What a run reads: dataset items as prompts with local images, SFT files."""

from __future__ import annotations

import uuid
from pathlib import Path

from sqlalchemy import select

from services.trainer.data import PromptRow
from shared.cold_data import cold_data_file
from shared.db.models import Item
from shared.db.session import Database
from shared.storage import ArtifactStore


def prompt_rows(db: Database, store: ArtifactStore, dataset_id: str) -> list[PromptRow]:
    """A dataset's items as training or eval prompts with local image paths."""
    with db.session() as session:
        items = session.scalars(
            select(Item).where(Item.dataset_id == uuid.UUID(dataset_id)).order_by(Item.idx)
        )
        return [
            PromptRow(
                question=item.question,
                answer=item.answer,
                images=tuple(store.local_path(uri) for uri in item.images),
                id=str(item.id),
            )
            for item in items
        ]


def sft_train_file(db: Database, store: ArtifactStore, dataset_id: str) -> Path:
    """The sharegpt file of a ``cold`` dataset."""
    with db.session() as session:
        return cold_data_file(session, store, dataset_id)
