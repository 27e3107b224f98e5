"""One engine per worker process: a coldstart job's chunks share their engines, so a loaded
model is loaded once and a requests-per-minute limit holds across chunks.

Embedded mode runs every chunk in this one process, as a single worker would.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from entrypoints.bootstrap import Embedded, embedded
from shared import engines
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec
from shared.datasets import register_dataset
from shared.engines.transformers_engine import TransformersEngine
from shared.settings import BaseVR1Settings
from tests.coldstart_support import engine, toy_subset
from tests.helpers import write_image
from tests.openai_standin import StandinServer, running

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def fresh_engines() -> Iterator[None]:
    """Each test starts and ends with no engine built in this process."""
    engines.close_engines()
    yield
    engines.close_engines()


def _dataset(emb: Embedded, folder: Path, path: Path) -> str:
    team = emb.team()
    with emb.db.session() as session:
        request = DatasetCreate(name="data", path=str(path))
        dataset, _ = register_dataset(
            session, team=team, request=request, roots=[folder], store=emb.store
        )
        return str(dataset.id)


def test_two_chunks_build_each_engine_once(
    tmp_path: Path, teachers: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    built: list[str] = []
    original = TransformersEngine.__init__

    def counting(self: TransformersEngine, spec: Any) -> None:
        built.append(spec.model)
        original(self, spec)

    monkeypatch.setattr(TransformersEngine, "__init__", counting)
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    folder = tmp_path / "data"
    dataset = _dataset(emb, folder, toy_subset(teachers["toy"], folder, 4))
    spec = ColdstartSpec(
        dataset_id=dataset,
        captioner=engine(teachers["describer"]),
        reasoner=engine(teachers["reasoner"]),
        chunk_size=2,
    )
    job = emb.run(spec)
    assert job.status == "succeeded", job.error
    assert job.chunks_total == 2
    # One captioner and one reasoner engine for the whole process: not one per chunk.
    assert sorted(built) == sorted([str(teachers["describer"]), str(teachers["reasoner"])])


_GOLD = re.compile(r"The correct answer is (.+?)\. Reach it")


def _reply(text: str) -> dict[str, Any]:
    """Captioner prompts get a description; reasoning prompts reach the gold answer."""
    gold = _GOLD.search(text)
    if gold is None:
        return {"role": "assistant", "content": "A red square on a white background."}
    answer = gold.group(1)
    cot = f"The image shows a {answer} square. So the answer is {answer}."
    return {"role": "assistant", "content": f"<think>{cot}</think>\nFinal Answer: {answer}"}


def test_a_requests_per_minute_limit_holds_across_chunks(tmp_path: Path) -> None:
    """300 requests/minute (5 a second, bursts of 5): over any one-second window the server
    sees at most 5 + 5 requests, across all 8 chunks.  With an engine per chunk, each chunk
    would start with a full bucket and its calls would go out unthrottled (measured: 17 in
    one second)."""
    folder = tmp_path / "data"
    rows = []
    for i in range(8):
        write_image(folder / f"{i}.png", "red")
        rows.append(f'{{"image": "{i}.png", "question": "Colour of {i}?", "answer": "red"}}')
    (folder / "rows.jsonl").write_text("\n".join(rows) + "\n")
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    dataset = _dataset(emb, folder, folder / "rows.jsonl")
    standin = StandinServer()
    standin.reply = _reply
    with running(standin):
        served = {
            "engine": "openai",
            "model": "standin",
            "base_url": standin.base_url,
            "requests_per_minute": 300,
            "max_in_flight": 16,
            "generation": {"max_new_tokens": 64, "temperature": 0},
        }
        spec = ColdstartSpec(dataset_id=dataset, captioner=served, reasoner=served, chunk_size=1)
        job = emb.run(spec)
    assert job.status == "succeeded", job.error
    assert job.chunks_total == 8
    stamps = sorted(r.at for r in standin.received)
    assert len(stamps) == 8 * 3
    busiest = max(sum(1 for t in stamps if start <= t < start + 1.0) for start in stamps)
    assert busiest <= 5 + 5, f"{busiest} requests within one second"
