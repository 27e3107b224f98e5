"""Bad rows and a flaky server at job level (embedded mode, the stand-in teachers).

A missing image file, an unreadable image, a 100-megapixel image and an empty question
each fail their own item with a recorded reason while the rest of the job succeeds; a
reasoning server answering 429, then 500, then a completion is retried and survives.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select, update

from entrypoints.bootstrap import Embedded, embedded
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec
from shared.datasets import register_dataset
from shared.db.models import GenerationRecord, Item
from shared.settings import BaseVR1Settings
from shared.storage import path_from_uri
from tests.coldstart_support import check_export, engine, toy_subset
from tests.openai_standin import StandinServer, Step, running

pytestmark = [
    pytest.mark.integration,
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),
]


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A fixed thread count: reproducible outputs, and no spinning on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _platform(tmp_path: Path, toy: Path, n: int) -> tuple[Embedded, str, list[Item]]:
    """An embedded platform holding the first ``n`` toy items; the dataset and its items."""
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    folder = tmp_path / "data"
    path = toy_subset(toy, folder, n)
    team = emb.team()
    with emb.db.session() as session:
        request = DatasetCreate(name="toy", path=str(path))
        dataset, _ = register_dataset(
            session, team=team, request=request, roots=[folder], store=emb.store
        )
        items = list(session.scalars(select(Item).where(Item.dataset_id == dataset.id)))
    return emb, str(dataset.id), sorted(items, key=lambda i: i.idx)


def _outcomes(emb: Embedded, job_id: uuid.UUID) -> dict[uuid.UUID, GenerationRecord]:
    with emb.db.session() as session:
        query = select(GenerationRecord).where(GenerationRecord.job_id == job_id)
        return {r.item_id: r for r in session.scalars(query)}


def test_bad_rows_fail_alone_with_their_reasons(tmp_path: Path, teachers: dict[str, Path]) -> None:
    emb, dataset_id, items = _platform(tmp_path, teachers["toy"], 8)
    missing, garbage, huge, empty = items[:4]
    path_from_uri(missing.images[0]).unlink()
    path_from_uri(garbage.images[0]).write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    # 100 megapixels in a few kilobytes: the size is refused from the header, never decoded.
    Image.new("1", (10_000, 10_000)).save(path_from_uri(huge.images[0]), format="PNG")
    with emb.db.session() as session:
        session.execute(update(Item).where(Item.id == empty.id).values(question=""))

    spec = ColdstartSpec(
        dataset_id=dataset_id,
        captioner=engine(teachers["describer"]),
        reasoner=engine(teachers["reasoner"]),
        chunk_size=8,
    )
    job = emb.run(spec)
    assert job.status == "succeeded", job.error
    assert (job.items_total, job.items_done, job.items_failed) == (8, 4, 4)

    records = _outcomes(emb, job.id)
    failed = {
        item.id: (records[item.id].status, records[item.id].reject_reason) for item in items[:4]
    }
    assert failed == {
        missing.id: ("failed", "pseudo_cot_image_unreadable"),
        garbage.id: ("failed", "pseudo_cot_image_unreadable"),
        huge.id: ("failed", "pseudo_cot_image_too_large"),
        empty.id: ("failed", "empty_question"),
    }
    assert "not found" in (records[missing.id].error or "")
    assert "10000x10000" in (records[huge.id].error or "")
    # The item's own data is at fault: no second try is spent on it.
    assert [records[i.id].attempts for i in items[:3]] == [1, 1, 1]
    assert all(records[i.id].status in ("kept", "rejected") for i in items[4:])
    assert all(records[i.id].step == "pending" for i in items[:4])

    funnel = job.output["funnel"]
    assert funnel["failed"] == {
        "pseudo_cot_image_unreadable": 2,
        "pseudo_cot_image_too_large": 1,
        "empty_question": 1,
    }
    assert funnel["captioned"] == funnel["described"] == funnel["reasoned"] == 4
    assert funnel["kept"] >= 1
    assert funnel["kept"] + sum(funnel["rejected"].values()) == 4
    rows = check_export(
        emb.store.local_path(job.output["export_uri"]), {str(i.id): i.answer for i in items}
    )
    assert len(rows) == funnel["kept"]


_GOLD = re.compile(r"The correct answer is (.+?)\. Reach it")


def _reasoner_reply(text: str) -> dict[str, Any]:
    """A short R1-style completion that reaches the gold answer the prompt names."""
    match = _GOLD.search(text)
    answer = match.group(1) if match else "unknown"
    cot = f"The description says the shape is {answer}. So the answer is {answer}."
    return {"role": "assistant", "content": f"<think>{cot}</think>\nFinal Answer: {answer}"}


def test_rate_limited_and_failing_server_is_retried(
    tmp_path: Path, teachers: dict[str, Path]
) -> None:
    emb, dataset_id, items = _platform(tmp_path, teachers["toy"], 4)
    with emb.db.session() as session:  # one reasoning prompt per item, none shared
        for item in items:
            question = f"{item.question} (photo {item.idx})"
            session.execute(update(Item).where(Item.id == item.id).values(question=question))
    standin = StandinServer()
    standin.reply = _reasoner_reply
    standin.default_steps = [Step(status=429, headers={"Retry-After": "0"}), Step(500), Step()]
    with running(standin):
        spec = ColdstartSpec(
            dataset_id=dataset_id,
            captioner=engine(teachers["describer"]),
            reasoner={
                "engine": "openai",
                "model": "reasoner-standin",
                "base_url": standin.base_url,
                "max_retries": 3,
                "timeout_s": 30,
                "generation": {"max_new_tokens": 128, "temperature": 0},
            },
            chunk_size=4,
        )
        job = emb.run(spec)
    assert job.status == "succeeded", job.error
    assert (job.items_done, job.items_failed) == (4, 0)
    # Every reasoning prompt was sent three times: 429, 500, then the completion.
    assert len(standin.attempts) == 4
    assert set(standin.attempts.values()) == {3}
    assert len(standin.received) == 12
    records = _outcomes(emb, job.id)
    assert all(r.status == "kept" for r in records.values()), [
        (r.reject_reason, r.error) for r in records.values()
    ]
    assert all(r.attempts == 0 for r in records.values())  # no step had to be tried again
    assert all(r.tokens["reasoning"]["calls"] == 3 for r in records.values())
    assert all(r.tokens["pseudo_cot"]["calls"] == 1 for r in records.values())
    assert all("The image shows" in (r.reasoning or "") for r in records.values())
    check_export(
        emb.store.local_path(job.output["export_uri"]), {str(i.id): i.answer for i in items}
    )
