"""Evaluation through vLLM (``engine: vllm``): the paper's sampling and resample rule, and
eval jobs that decode greedily write the same completions as through transformers."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import select

from services.trainer.data import EvalRow
from services.trainer.evaluation import evaluate
from shared.contracts.specs import EvalOptions, EvalSpec
from shared.db.models import EvalResult, Job
from shared.rewards import InlineVerifier, Scorer
from tests.helpers import write_image
from tests.learning.test_learning import ColdStarted


def _rows(root: Path) -> list[EvalRow]:
    colours = ("red", "blue", "green", "yellow")
    images = [write_image(root / f"{c}.png", c, size=56) for c in colours]
    return [EvalRow("What colour is the shape?", p.stem, (p,), id=p.stem) for p in images]


def _completions(cold: ColdStarted, job: Job) -> dict[str, str]:
    with cold.platform.db.session() as session:
        rows = session.scalars(select(EvalResult).where(EvalResult.job_id == job.id))
        return {str(r.item_id): r.completion for r in rows}


@pytest.mark.timeout(600)
def test_greedy_eval_jobs_agree_across_engines(
    cold_started: Callable[[int], ColdStarted], monkeypatch: pytest.MonkeyPatch
) -> None:
    """An eval job through vLLM and one through transformers, greedy, on the cold-started
    model of the learning tests: the same completion for every held-out item."""
    monkeypatch.setenv("VR1_TORCH_THREADS", "1")
    cold = cold_started(0)
    greedy = {"temperature": 0.0, "max_new_tokens": 64, "dtype": "float32", "limit": 32}
    eager = {"vllm": {"enforce_eager": True}}  # no graph compilation on a CPU
    jobs = {
        engine: cold.platform.run(
            EvalSpec(
                model=cold.model,
                dataset_ids=[cold.held_out],
                engine=engine,
                **greedy,
                **(eager if engine == "vllm" else {}),
            )
        )
        for engine in ("vllm", "transformers")
    }
    assert all(job.status == "succeeded" for job in jobs.values()), [j.error for j in jobs.values()]
    through_vllm, through_hf = (_completions(cold, jobs[e]) for e in ("vllm", "transformers"))
    assert len(through_vllm) == 32
    assert through_vllm == through_hf
    assert all("</answer>" in c for c in through_vllm.values())  # a trained model, not noise
    (vllm_table,) = jobs["vllm"].output["accuracy"].values()
    (hf_table,) = jobs["transformers"].output["accuracy"].values()
    assert vllm_table == hf_table


def test_paper_sampling_resamples_a_missing_answer_block(
    vllm_models: dict[str, Path], tmp_path: Path
) -> None:
    options = EvalOptions(
        engine="vllm",
        temperature=0.6,
        top_p=0.95,
        max_new_tokens=8,
        max_tries=3,
        seed=3,
        vllm={"enforce_eager": True},
    )
    summary = evaluate(
        vllm_models["vlm"], _rows(tmp_path), options, scorer=Scorer(InlineVerifier())
    )
    # A random model never closes an answer block in 8 tokens: every row used every try.
    assert [i.tries for i in summary.items] == [3, 3, 3, 3]
    assert summary.format_rate == 0.0
    assert all(i.error is None for i in summary.items)
