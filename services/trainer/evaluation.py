"""Evaluation as in the paper: sample, resample when ``</answer>`` is missing, judge.

Generation goes through the engine the spec names (``transformers``, or ``vllm`` as the
paper served its models), through the same ``Engine`` interface the cold-start steps use.
Each round generates for every row still lacking a closed answer block until
``max_tries`` rounds have run, each round with its own seed (a resample must be able to
differ).  The answer is read from the last ``<answer>`` block (after ``Final Answer:``
when the block has one) by the reward library's one rule, which also gives the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from services.trainer.data import EvalRow
from shared.contracts.specs import EngineSpec, EvalOptions, GenerationParams
from shared.engines import Engine, GenerationRequest, make_engine
from shared.rewards import (
    ScoreItem,
    Scorer,
    check_format,
    default_scorer,
    extract_final_answer,
    score,
)

ANSWER_CLOSE = "</answer>"


@dataclass(frozen=True)
class EvalItem:
    """The verdict on one row: what the model wrote, what was read as its answer, and why."""

    index: int
    id: str | None
    completion: str
    extracted: str
    correct: bool | None
    format_ok: bool
    tries: int
    error: str | None = None


@dataclass(frozen=True)
class EvalSummary:
    """Per-item results with accuracy over the items judged, format rate, how many never
    closed their answer (``</answer>`` missing after every try) and how many were resampled."""

    items: list[EvalItem]
    accuracy: float
    format_rate: float

    @property
    def missing_answer_rate(self) -> float:
        """Share of rows whose last completion still has no ``</answer>``."""
        missing = sum(ANSWER_CLOSE not in r.completion for r in self.items)
        return missing / len(self.items) if self.items else 0.0

    @property
    def resampled(self) -> int:
        """Rows that needed more than one try."""
        return sum(r.tries > 1 for r in self.items)

    @property
    def n(self) -> int:
        """Number of rows evaluated."""
        return len(self.items)


ItemFn = Callable[[EvalItem], None]


def eval_engine_spec(model: Path | str, options: EvalOptions) -> EngineSpec:
    """The engine an eval job generates with."""
    return EngineSpec(
        engine=options.engine,
        model=str(model),
        dtype=options.dtype,
        batch_size=options.batch_size,
        generation=round_params(options, 0),
        vllm=options.vllm,
    )


def round_params(options: EvalOptions, round_index: int) -> GenerationParams:
    """The paper's sampling, seeded per round so that a resample can differ."""
    return GenerationParams(
        max_new_tokens=options.max_new_tokens,
        temperature=options.temperature,
        top_p=options.top_p,
        seed=options.seed + round_index,
    )


@dataclass
class _Sampled:
    completions: list[str]
    tries: list[int]
    errors: list[str | None]


def sample_until_answered(
    engine: Engine, rows: Sequence[EvalRow], options: EvalOptions
) -> _Sampled:
    """One completion per row; rows without a closed answer block are sampled again."""
    sampled = _Sampled([""] * len(rows), [0] * len(rows), [None] * len(rows))
    # Greedy decoding gives the same text again, so resampling only helps when sampling.
    rounds = options.max_tries if options.temperature > 0 else 1
    pending = list(range(len(rows)))
    for round_index in range(rounds):
        params = round_params(options, round_index)
        requests = [
            GenerationRequest(
                prompt=rows[i].question, images=tuple(str(p) for p in rows[i].images), params=params
            )
            for i in pending
        ]
        for i, result in zip(pending, engine.generate(requests), strict=True):
            sampled.completions[i], sampled.tries[i] = result.completion, sampled.tries[i] + 1
            sampled.errors[i] = None if result.ok else f"{result.error_kind}: {result.error}"
        pending = [i for i in pending if ANSWER_CLOSE not in sampled.completions[i].lower()]
        if not pending:
            break
    return sampled


def evaluate(
    model_dir: Path,
    rows: list[EvalRow],
    options: EvalOptions,
    *,
    on_item: ItemFn | None = None,
    scorer: Scorer | None = None,
    engine: Engine | None = None,
) -> EvalSummary:
    """Accuracy and format rate of a model on ``rows``, reproducible for ``options.seed``."""
    rows = rows[: options.limit] if options.limit else rows
    owned = engine is None
    engine = engine or make_engine(eval_engine_spec(model_dir, options))
    try:
        sampled = sample_until_answered(engine, rows, options)
    finally:
        if owned:
            engine.close()
    return _judge(rows, sampled, scorer or default_scorer(), on_item)


def _judge(
    rows: Sequence[EvalRow], sampled: _Sampled, scorer: Scorer, on_item: ItemFn | None
) -> EvalSummary:
    """Verdicts for every completion, and the summary."""
    completions = sampled.completions
    extracted = [extract_final_answer(c, require_answer_block=True) for c in completions]
    # The extracted answer alone is judged, so the verdict reads exactly what we extracted.
    items = [ScoreItem(e, row.answer) for e, row in zip(extracted, rows, strict=True)]
    verdicts = score("accuracy", items, scorer=scorer)
    results = []
    for index, row in enumerate(rows):
        item = EvalItem(
            index=index,
            id=row.id,
            completion=completions[index],
            extracted=extracted[index],
            correct=verdicts[index].answer_ok,
            format_ok=check_format(completions[index]).ok,
            tries=sampled.tries[index],
            error=sampled.errors[index],
        )
        results.append(item)
        if on_item is not None:
            on_item(item)
    return summarize(results)


def summarize(items: list[EvalItem]) -> EvalSummary:
    """Accuracy over the items judged and format rate over all."""
    judged = [r for r in items if r.correct is not None]
    accuracy = sum(bool(r.correct) for r in judged) / len(judged) if judged else 0.0
    format_rate = sum(r.format_ok for r in items) / len(items) if items else 0.0
    return EvalSummary(items, accuracy, format_rate)
