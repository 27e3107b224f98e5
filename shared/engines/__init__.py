"""Model engines: one interface (``Engine``), chosen by name in an ``EngineSpec``.

Backends are imported only when built, so importing this package loads neither torch
nor vLLM: the HTTP-only roles can use the request and result types freely.
"""

from __future__ import annotations

import importlib
from typing import cast

from shared.contracts.specs import EngineSpec
from shared.engines.base import Engine, GenerationRequest, GenerationResult
from shared.errors import InvalidInput
from shared.storage import path_from_uri

__all__ = ["BACKENDS", "Engine", "GenerationRequest", "GenerationResult", "make_engine"]

BACKENDS: dict[str, tuple[str, str]] = {
    "transformers": ("shared.engines.transformers_engine", "TransformersEngine"),
    "openai": ("shared.engines.openai_engine", "OpenAIEngine"),
    "vllm": ("shared.engines.vllm_engine", "VLLMEngine"),
}


def make_engine(spec: EngineSpec) -> Engine:
    """Build the engine that ``spec.engine`` names (its backend module is imported now)."""
    if spec.engine not in BACKENDS:
        raise InvalidInput(f"unknown engine {spec.engine!r}", engine=spec.engine)
    if spec.engine != "openai" and spec.model.startswith("file:"):
        # A checkpoint registered as an artifact (e.g. a stand-in teacher's sft output).
        spec = spec.model_copy(update={"model": str(path_from_uri(spec.model))})
    module_name, class_name = BACKENDS[spec.engine]
    backend = getattr(importlib.import_module(module_name), class_name)
    return cast(Engine, backend(spec))
