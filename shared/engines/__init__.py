"""Model engines: one interface (``Engine``), chosen by name in an ``EngineSpec``.

Backends are imported only when built, so importing this package loads neither torch
nor vLLM: the HTTP-only roles can use the request and result types freely.

A worker process builds each engine once (:func:`engine_for`) and shares it across the
chunks and jobs it runs, so a loaded model, a concurrency cap and request/token rate
limits hold per process, not per chunk.  Sampling settings travel with each request,
so specs that differ only in ``generation`` share one engine.
"""

from __future__ import annotations

import importlib
import logging
import threading
from typing import cast

from shared.contracts.specs import EngineSpec
from shared.engines.base import Engine, GenerationRequest, GenerationResult
from shared.errors import InvalidInput
from shared.storage import path_from_uri

__all__ = [
    "BACKENDS",
    "Engine",
    "GenerationRequest",
    "GenerationResult",
    "close_engines",
    "engine_for",
    "make_engine",
]

log = logging.getLogger(__name__)

BACKENDS: dict[str, tuple[str, str]] = {
    "transformers": ("shared.engines.transformers_engine", "TransformersEngine"),
    "openai": ("shared.engines.openai_engine", "OpenAIEngine"),
    "vllm": ("shared.engines.vllm_engine", "VLLMEngine"),
}

_BUILT: dict[str, Engine] = {}
_BUILT_LOCK = threading.Lock()  # held while building: two threads never load one model twice


def make_engine(spec: EngineSpec) -> Engine:
    """Build a new engine of the backend ``spec.engine`` names (imported now)."""
    if spec.engine not in BACKENDS:
        raise InvalidInput(f"unknown engine {spec.engine!r}", engine=spec.engine)
    if spec.engine != "openai" and spec.model.startswith("file:"):
        # A checkpoint registered as an artifact (e.g. a stand-in teacher's sft output).
        spec = spec.model_copy(update={"model": str(path_from_uri(spec.model))})
    module_name, class_name = BACKENDS[spec.engine]
    backend = getattr(importlib.import_module(module_name), class_name)
    return cast(Engine, backend(spec))


def engine_key(spec: EngineSpec) -> str:
    """What makes two specs share an engine: everything but the sampling settings."""
    return spec.model_dump_json(exclude={"generation"})


def engine_for(spec: EngineSpec) -> Engine:
    """This process's engine for ``spec``: built on first use, then shared."""
    key = engine_key(spec)
    with _BUILT_LOCK:
        engine = _BUILT.get(key)
        if engine is None:
            log.info("building the %s engine for %s", spec.engine, spec.model)
            engine = _BUILT[key] = make_engine(spec)
        return engine


def close_engines() -> None:
    """Close and forget every engine this process built (tests, shutdown)."""
    with _BUILT_LOCK:
        engines = list(_BUILT.values())
        _BUILT.clear()
    for engine in engines:
        engine.close()
