"""The ``vllm`` engine (vLLM's offline engine in this process) runs a coldstart job's
captioner and reasoner steps, images included, to a kept, exported training set; and it
keeps the vision placeholders out of its samples as the transformers engine does."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select

from entrypoints.bootstrap import embedded
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec, EngineSpec
from shared.datasets import register_dataset
from shared.db.models import GenerationRecord, Item
from shared.engines import GenerationRequest, engine_for, make_engine
from shared.engines.loading import SUPPRESSED_LOGIT_BIAS, vision_token_ids
from shared.settings import BaseVR1Settings
from tests.coldstart_support import check_export, toy_subset
from tests.helpers import write_image

GREEDY = {"max_new_tokens": 128, "temperature": 0}
N_ITEMS = 6
SAMPLES = 32  # requests, each with its own seed


def _engine(model: Path, **fields: Any) -> dict[str, Any]:
    return {
        "engine": "vllm",
        "model": str(model),
        "dtype": "float32",
        "vllm": {"enforce_eager": True},
        "generation": GREEDY,
        **fields,
    }


def test_a_coldstart_job_runs_through_vllm_and_keeps_samples(
    tmp_path: Path, vllm_teachers: dict[str, Path]
) -> None:
    """Both steps on the ``vllm`` engine, with stand-in teachers whose answers can pass
    verification: the job succeeds with an export, and every call carried its image."""
    folder = tmp_path / "data"
    path = toy_subset(vllm_teachers["toy"], folder, N_ITEMS)
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    with emb.db.session() as session:
        request = DatasetCreate(name="toy", path=str(path))
        dataset, _ = register_dataset(
            session, team=emb.team(), request=request, roots=[folder], store=emb.store
        )
        items = {
            i.id: i for i in session.scalars(select(Item).where(Item.dataset_id == dataset.id))
        }
    captioner = _engine(vllm_teachers["describer"])
    spec = ColdstartSpec(
        dataset_id=str(dataset.id),
        captioner=captioner,
        reasoner=_engine(vllm_teachers["reasoner"]),
        chunk_size=2,
    )
    job = emb.run(spec)
    assert job.status == "succeeded", job.error
    assert (job.items_done, job.items_failed) == (N_ITEMS, 0)
    with emb.db.session() as session:
        query = select(GenerationRecord).where(GenerationRecord.job_id == job.id)
        records = list(session.scalars(query))
    kept = [r for r in records if r.status == "kept"]
    assert kept, [(r.reject_reason, r.answer) for r in records]
    gold = {str(item_id): item.answer for item_id, item in items.items()}
    rows = check_export(emb.store.local_path(job.output["export_uri"]), gold)
    assert len(rows) == len(kept)

    # The image reached the model: the same prompt without it is shorter by the image's
    # tokens, and the transformers engine counts the same prompt alike.
    engine = engine_for(EngineSpec(**captioner))
    prompt, image = "Describe the image.", str(next(iter(items.values())).images[0])
    [text_only] = engine.generate([GenerationRequest(prompt=prompt)])
    [imaged] = engine.generate([GenerationRequest(prompt=prompt, images=(image,))])
    local = make_engine(EngineSpec(engine="transformers", model=str(vllm_teachers["describer"])))
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


def test_vision_placeholders_are_never_sampled(
    vllm_models: dict[str, Path], tmp_path: Path
) -> None:
    """The engine sends vLLM the suppression the transformers engine puts in the model's
    head (the same -100 per placeholder); a random model at a high temperature would
    otherwise write placeholders within a few hundred tokens."""
    from transformers import AutoConfig
    from vllm import SamplingParams

    model = vllm_models["vlm"]
    spec = EngineSpec(**_engine(model, generation={"max_new_tokens": 64, "temperature": 1.5}))
    engine = make_engine(spec)
    try:
        suppress = set(
            vision_token_ids(AutoConfig.from_pretrained(model), engine._llm.get_tokenizer())
        )
        biased = [engine._sampling(spec.generation, seed) for seed in range(SAMPLES)]
        assert biased[0].logit_bias == dict.fromkeys(suppress, SUPPRESSED_LOGIT_BIAS)
        plain = [SamplingParams(max_tokens=64, temperature=1.5, seed=s) for s in range(SAMPLES)]
        image = str(write_image(tmp_path / "red.png", "red", size=56))
        conversation = engine._messages(GenerationRequest(prompt="Describe it.", images=(image,)))

        def sampled(sampling: list[Any]) -> list[int]:
            outputs = engine._llm.chat([conversation] * SAMPLES, sampling, use_tqdm=False)
            return [t for output in outputs for t in output.outputs[0].token_ids]

        assert not set(sampled(biased)) & suppress
        # Unbiased, the same requests write placeholders (~0.7% of tokens): the check can fail.
        assert set(sampled(plain)) & suppress
    finally:
        engine.close()
