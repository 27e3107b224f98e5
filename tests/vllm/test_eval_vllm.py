"""Evaluation through vLLM (``engine: vllm``): the paper's sampling and resample rule, and
on greedy decoding the same completions as the transformers path on the same model."""

from __future__ import annotations

from pathlib import Path

from services.trainer.data import EvalRow
from services.trainer.evaluation import evaluate
from shared.contracts.specs import EvalOptions
from shared.rewards import InlineVerifier, Scorer
from tests.helpers import write_image

GREEDY = {"temperature": 0.0, "max_new_tokens": 12, "dtype": "float32", "batch_size": 4}


def _rows(root: Path) -> list[EvalRow]:
    colours = ("red", "blue", "green", "yellow")
    images = [write_image(root / f"{c}.png", c, size=56) for c in colours]
    return [EvalRow("What colour is the shape?", p.stem, (p,), id=p.stem) for p in images]


def test_greedy_vllm_agrees_with_the_transformers_path(
    vllm_models: dict[str, Path], tmp_path: Path
) -> None:
    rows, scorer = _rows(tmp_path), Scorer(InlineVerifier())
    through_vllm = evaluate(
        vllm_models["vlm"], rows, EvalOptions(engine="vllm", **GREEDY), scorer=scorer
    )
    through_hf = evaluate(
        vllm_models["vlm"], rows, EvalOptions(engine="transformers", **GREEDY), scorer=scorer
    )
    assert [i.completion for i in through_vllm.items] == [i.completion for i in through_hf.items]
    assert all(i.completion for i in through_vllm.items)
    assert [i.tries for i in through_vllm.items] == [1, 1, 1, 1]


def test_paper_sampling_resamples_a_missing_answer_block(
    vllm_models: dict[str, Path], tmp_path: Path
) -> None:
    options = EvalOptions(
        engine="vllm", temperature=0.6, top_p=0.95, max_new_tokens=8, max_tries=3, seed=3
    )
    summary = evaluate(
        vllm_models["vlm"], _rows(tmp_path), options, scorer=Scorer(InlineVerifier())
    )
    # A random model never closes an answer block in 8 tokens: every row used every try.
    assert [i.tries for i in summary.items] == [3, 3, 3, 3]
    assert summary.format_rate == 0.0
    assert all(i.error is None for i in summary.items)
