"""A coldstart job whose captioner is the ``openai`` engine against a real
``transformers serve`` process running the stand-in describer (embedded mode).

The image must reach the served model: each Pseudo-CoT call's prompt-token count, as the
server reported it and the record keeps it, exceeds the same prompt sent without the
image by exactly the image tokens the describer's processor makes for that picture.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import select

from entrypoints.bootstrap import embedded
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec, EngineSpec
from shared.datasets import register_dataset
from shared.db.models import GenerationRecord, Item
from shared.engines import GenerationRequest, make_engine
from shared.prompts import template_for
from shared.settings import BaseVR1Settings
from tests.coldstart_support import check_export, engine, toy_subset, transformers_serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]
N_ITEMS = 6


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A fixed thread count for the in-process reasoner on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_openai_captioner_against_transformers_serve(
    tmp_path: Path, teachers: dict[str, Path]
) -> None:
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    folder = tmp_path / "data"
    path = toy_subset(teachers["toy"], folder, N_ITEMS)
    with emb.db.session() as session:
        dataset, _ = register_dataset(
            session,
            team=emb.team(),
            request=DatasetCreate(name="toy", path=str(path)),
            roots=[folder],
            store=emb.store,
        )
        items = {
            i.id: i for i in session.scalars(select(Item).where(Item.dataset_id == dataset.id))
        }

    with transformers_serve(teachers["describer"], tmp_path / "logs") as base_url:
        captioner = EngineSpec(
            engine="openai",
            model=str(teachers["describer"]),
            base_url=base_url,
            max_in_flight=4,
            timeout_s=120,
            generation={"max_new_tokens": 128, "temperature": 0},
        )
        spec = ColdstartSpec(
            dataset_id=str(dataset.id),
            captioner=captioner,
            reasoner=engine(teachers["reasoner"]),
            chunk_size=N_ITEMS,
        )
        job = emb.run(spec)
        # The same Pseudo-CoT prompt without its image, through the same server.
        first = next(iter(items.values()))
        prompt = template_for("pseudo_cot", None).render(
            question=first.question, answer=first.answer
        )
        served = make_engine(captioner)
        try:
            (text_only,) = served.generate([GenerationRequest(prompt=prompt)])
        finally:
            served.close()

    # What the describer's own processor makes of one toy picture, in-process.
    local = make_engine(EngineSpec(**{**engine(teachers["describer"]), "batch_size": 1}))
    with_image, without = local.generate(
        [
            GenerationRequest(prompt=prompt, images=tuple(first.images)),
            GenerationRequest(prompt=prompt),
        ]
    )
    image_tokens = with_image.prompt_tokens - without.prompt_tokens
    assert image_tokens > 0

    assert job.status == "succeeded", job.error
    assert (job.items_done, job.items_failed) == (N_ITEMS, 0)
    with emb.db.session() as session:
        query = select(GenerationRecord).where(GenerationRecord.job_id == job.id)
        records = {r.item_id: r for r in session.scalars(query)}
    assert text_only.ok, text_only.error
    pseudo = records[first.id].tokens["pseudo_cot"]
    assert pseudo["cached"] is False
    assert pseudo["prompt"] == text_only.prompt_tokens + image_tokens  # the image got there
    assert all(r.tokens["description"]["prompt"] > 0 for r in records.values())
    assert all(r.pseudo_cot and r.description for r in records.values())

    kept = [r for r in records.values() if r.status == "kept"]
    assert len(kept) >= 1, [(r.reject_reason, r.description) for r in records.values()]
    gold = {str(item_id): item.answer for item_id, item in items.items()}
    rows = check_export(emb.store.local_path(job.output["export_uri"]), gold)
    assert len(rows) == len(kept)
