"""No silent spec fields: every field a job spec accepts is read by the code that runs the
job (or is on the short list below, with the reason it needs no reader of its own)."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from pydantic import BaseModel, ValidationError

from shared.contracts import specs

ROOT = Path(__file__).resolve().parents[2]
# Fields read only through a generic mechanism, not by name.
READ_GENERICALLY = {
    ("*", "kind"): "the discriminator that picks the spec model",
}


def _production_source() -> str:
    paths = [*(ROOT / "services").rglob("*.py"), *(ROOT / "shared").rglob("*.py")]
    return "\n".join(
        p.read_text() for p in paths if p.name != "specs.py" and "fixtures" not in p.parts
    )


def _spec_models() -> list[type[BaseModel]]:
    return [
        model
        for model in vars(specs).values()
        if inspect.isclass(model)
        and issubclass(model, BaseModel)
        and model.__module__ == specs.__name__
        and model is not specs.Strict
    ]


def test_every_spec_field_is_read_somewhere() -> None:
    source = _production_source()
    unread = [
        f"{model.__name__}.{name}"
        for model in _spec_models()
        for name in model.model_fields
        if ("*", name) not in READ_GENERICALLY
        and not re.search(rf"\.{name}\b|[\"']{name}[\"']", source)
    ]
    assert unread == []


def test_engine_options_for_another_engine_are_refused() -> None:
    with pytest.raises(ValidationError, match="apply to engine 'vllm'"):
        specs.EngineSpec(engine="transformers", model="m", vllm={"tensor_parallel_size": 2})


def test_coldstart_always_keeps_its_sharegpt_export() -> None:
    engine = {"engine": "transformers", "model": "m"}
    with pytest.raises(ValidationError, match="must include 'sharegpt'"):
        specs.ColdstartSpec(
            dataset_id="d", captioner=engine, reasoner=engine, export_formats=["parquet"]
        )
