"""The ``vllm`` engine (vLLM's offline engine in this process) runs a coldstart job's
captioner and reasoner steps, images included."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import select

from entrypoints.bootstrap import embedded
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec, EngineSpec
from shared.datasets import register_dataset
from shared.db.models import GenerationRecord
from shared.engines import GenerationRequest, engine_for, make_engine
from shared.settings import BaseVR1Settings
from tests.helpers import write_image

GREEDY = {"max_new_tokens": 16, "temperature": 0}


def _engine(model: Path, **fields: Any) -> dict[str, Any]:
    return {
        "engine": "vllm",
        "model": str(model),
        "dtype": "float32",
        "vllm": {"enforce_eager": True},
        "generation": GREEDY,
        **fields,
    }


def test_coldstart_steps_run_through_vllm_with_the_image(
    tmp_path: Path, vllm_models: dict[str, Path]
) -> None:
    folder = tmp_path / "data"
    rows = []
    for i, colour in enumerate(("red", "blue", "green", "yellow")):
        write_image(folder / f"{i}.png", colour, size=56)
        rows.append(
            {"image": f"{i}.png", "question": "What colour is the shape?", "answer": colour}
        )
    (folder / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    with emb.db.session() as session:
        request = DatasetCreate(name="toy", path=str(folder / "rows.jsonl"))
        dataset, _ = register_dataset(
            session, team=emb.team(), request=request, roots=[folder], store=emb.store
        )
    captioner = _engine(vllm_models["vlm"])
    spec = ColdstartSpec(
        dataset_id=str(dataset.id),
        captioner=captioner,
        reasoner=_engine(vllm_models["lm"]),
        chunk_size=2,
    )
    job = emb.run(spec)
    # Random models say nothing useful: every item went through all three vLLM calls and
    # was then rejected by the rules (the job has no sample to export).
    assert job.counters["reasoned"] == 4, job.error
    with emb.db.session() as session:
        records = list(session.scalars(select(GenerationRecord)))
    assert {r.step for r in records} == {"reasoned"}
    assert len({r.tokens["pseudo_cot"]["prompt"] for r in records}) == 1  # same prompt shape

    # The image reached the model: the same prompt without it is shorter by the image's
    # tokens, and the transformers engine counts the same prompt alike.
    engine = engine_for(EngineSpec(**captioner))
    prompt, image = "Describe the image.", str(folder / "0.png")
    [text_only] = engine.generate([GenerationRequest(prompt=prompt)])
    [imaged] = engine.generate([GenerationRequest(prompt=prompt, images=(image,))])
    local = make_engine(EngineSpec(engine="transformers", model=str(vllm_models["vlm"])))
    [reference] = local.generate([GenerationRequest(prompt=prompt, images=(image,))])
    assert imaged.prompt_tokens > text_only.prompt_tokens
    assert imaged.prompt_tokens == reference.prompt_tokens


def test_a_bad_image_fails_alone(vllm_models: dict[str, Path], tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    good = write_image(tmp_path / "good.png", "red", size=56)
    engine = make_engine(EngineSpec(**_engine(vllm_models["vlm"])))
    try:
        results = engine.generate(
            [
                GenerationRequest(prompt="What colour?", images=(str(good),)),
                GenerationRequest(prompt="What colour?", images=(str(corrupt),)),
            ]
        )
    finally:
        engine.close()
    assert results[0].ok
    assert results[0].completion_tokens > 0
    assert results[1].error_kind == "image_unreadable"
