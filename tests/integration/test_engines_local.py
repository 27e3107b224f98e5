"""Engines on real tiny models: the transformers engine in-process, and the openai engine
against a real ``transformers serve`` process (the image must reach the model)."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from shared.contracts.specs import EngineSpec, GenerationParams
from shared.engines import GenerationRequest, make_engine
from shared.engines.transformers_engine import TransformersEngine
from shared.errors import NotAvailable
from shared.fixtures.toy import generate_toy_dataset, read_rows
from tests.helpers import served_model

REPO = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}
SHORT = GenerationParams(max_new_tokens=12, temperature=1.0, seed=0)
pytestmark = pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")


@dataclass(frozen=True)
class World:
    vlm: Path
    text_lm: Path
    images: list[Path]
    questions: list[str]
    corrupt: Path
    huge: Path


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """A fixed thread count: reproducible sampling, and no spinning on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    from shared.fixtures.tiny import build_tiny_text_lm, build_tiny_vlm

    root = tmp_path_factory.mktemp("engines")
    toy = generate_toy_dataset(root / "toy", seed=0, n_train=5, n_test=0)
    rows = read_rows(toy.train_path)
    corrupt = root / "corrupt.png"
    corrupt.write_bytes(toy.root.joinpath(rows[0]["image"]).read_bytes()[:60])
    huge = root / "huge.png"
    Image.new("1", (10_000, 10_000)).save(huge)  # 100 megapixels in a few KB
    return World(
        vlm=build_tiny_vlm(root / "vlm", seed=0),
        text_lm=build_tiny_text_lm(root / "text-lm", seed=0),
        images=[toy.root / row["image"] for row in rows],
        questions=[row["question"] for row in rows],
        corrupt=corrupt,
        huge=huge,
    )


def _engine(model: Path, **fields: Any) -> TransformersEngine:
    spec = EngineSpec(model=str(model), device="cpu", generation=SHORT, **fields)
    engine = make_engine(spec)
    assert isinstance(engine, TransformersEngine)
    return engine


def test_vlm_batch_with_bad_images_failing_alone(world: World) -> None:
    engine = _engine(world.vlm, batch_size=3)
    requests = [
        GenerationRequest(prompt=q, images=(str(i),))
        for q, i in zip(world.questions, world.images, strict=True)
    ]
    requests.insert(1, GenerationRequest(prompt="corrupt", images=(str(world.corrupt),)))
    requests.insert(4, GenerationRequest(prompt="huge", images=(world.huge.as_uri(),)))
    requests.append(GenerationRequest(prompt=world.questions[0], system="Answer briefly."))
    results = engine.generate(requests)
    assert len(results) == len(requests)
    assert (results[1].error_kind, results[4].error_kind) == ("image_unreadable", "image_too_large")
    good = [r for i, r in enumerate(results) if i not in (1, 4)]
    assert all(r.ok and r.error is None for r in good)
    for result in good:
        assert 0 < result.completion_tokens <= SHORT.max_new_tokens
        assert result.finish_reason in {"stop", "length"}
        if result.finish_reason == "length":
            assert result.completion_tokens == SHORT.max_new_tokens
    # 56×56 toy image → vision start + 4 image tokens + vision end in the prompt
    with_image = engine.generate([GenerationRequest(prompt="Hi", images=(str(world.images[0]),))])
    without = engine.generate([GenerationRequest(prompt="Hi")])
    assert with_image[0].prompt_tokens == without[0].prompt_tokens + 6


def test_vision_tokens_are_suppressed_and_models_cached(world: World) -> None:
    engine = _engine(world.vlm)
    again = _engine(world.vlm, batch_size=2)
    assert engine.loaded is again.loaded  # one copy per process
    assert len(engine.loaded.suppress_ids) == 5
    long = GenerationParams(max_new_tokens=48, temperature=1.5, seed=3)
    requests = [GenerationRequest(prompt="?", images=(str(i),), params=long) for i in world.images]
    assert all(r.ok for r in engine.generate(requests))  # no stray image tokens


def test_seeded_sampling_and_greedy_are_reproducible(world: World) -> None:
    engine = _engine(world.vlm, batch_size=2)
    pairs = list(zip(world.questions, world.images, strict=True))[:3]
    requests = [GenerationRequest(prompt=q, images=(str(i),)) for q, i in pairs]
    first = [r.text for r in engine.generate(requests)]
    assert [r.text for r in engine.generate(requests)] == first
    other_seed = GenerationParams(max_new_tokens=12, temperature=1.0, seed=1)
    reseeded = [
        GenerationRequest(prompt=r.prompt, images=r.images, params=other_seed) for r in requests
    ]
    assert [r.text for r in engine.generate(reseeded)] != first
    greedy = [
        GenerationRequest(
            prompt="colour?", params=GenerationParams(max_new_tokens=8, temperature=0.0)
        )
    ]
    assert engine.generate(greedy)[0].text == engine.generate(greedy)[0].text


def test_text_model_generates_and_refuses_images(world: World) -> None:
    engine = _engine(world.text_lm, batch_size=2)
    requests = [
        GenerationRequest(prompt="What is 2 + 3?"),
        GenerationRequest(prompt="Name a colour.", system="You are terse."),
        GenerationRequest(prompt="What is shown?", images=(str(world.images[0]),)),
        GenerationRequest(prompt="Count to three.", params=GenerationParams(max_new_tokens=4)),
    ]
    results = engine.generate(requests)
    assert [r.ok for r in results] == [True, True, False, True]
    assert results[2].error_kind == "images_unsupported"
    assert results[3].completion_tokens <= 4
    assert all(r.prompt_tokens > 0 for r in results if r.ok)
    engine.close()
    with pytest.raises(Exception, match="closed"):
        engine.generate(requests)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vllm is installed")
def test_vllm_engine_without_the_extra_says_so(world: World) -> None:
    with pytest.raises(NotAvailable, match="gpu extra"):
        make_engine(EngineSpec(engine="vllm", model=str(world.vlm)))


# --- the openai engine against a real `transformers serve` ------------------------------


@pytest.fixture(scope="module")
def served_vlm(world: World, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of ``transformers serve`` running the tiny VLM, started with the processor
    registration so images are not dropped."""
    log = tmp_path_factory.mktemp("serve") / "serve.log"
    with served_model(world.vlm, log, env=OFFLINE_ENV) as base:
        yield base


@pytest.mark.integration
@pytest.mark.slow
def test_openai_engine_image_reaches_transformers_serve(world: World, served_vlm: str) -> None:
    spec = EngineSpec(
        engine="openai",
        model=str(world.vlm),
        base_url=served_vlm,
        max_in_flight=2,
        timeout_s=60,
        generation=GenerationParams(max_new_tokens=8, temperature=0.0),
    )
    engine = make_engine(spec)
    try:
        question = world.questions[0]
        results = engine.generate(
            [
                GenerationRequest(prompt=question, images=(str(world.images[0]),)),
                GenerationRequest(prompt=question),
                GenerationRequest(prompt=question, images=(str(world.corrupt),)),
            ]
        )
    finally:
        engine.close()
    with_image, text_only, corrupt = results
    assert with_image.ok, with_image.error
    assert text_only.ok, text_only.error
    assert with_image.completion_tokens > 0
    assert with_image.finish_reason in {"stop", "length"}
    # vision start + 4 image tokens + vision end: the image reached the model
    assert with_image.prompt_tokens == text_only.prompt_tokens + 6
    assert corrupt.error_kind == "image_unreadable"
