"""Evaluation as in the paper: sample, resample when ``</answer>`` is missing, judge.

Each round generates for every row still lacking a closed answer block, in batches, until
``max_tries`` rounds have run.  The answer is read from the last ``<answer>`` block (after
``Final Answer:`` when the block has one) by the reward library's one rule, which also
gives the verdict.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from services.trainer.data import EvalRow, open_image, prompt_messages
from services.trainer.models import Policy, load_policy, vision_token_ids
from shared.contracts.specs import EvalOptions
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


@dataclass(frozen=True)
class EvalSummary:
    """Per-item results with accuracy and format rate over the items judged."""

    items: list[EvalItem]
    accuracy: float
    format_rate: float

    @property
    def n(self) -> int:
        """Number of rows evaluated."""
        return len(self.items)


ItemFn = Callable[[EvalItem], None]


def _encode(policy: Policy, rows: Sequence[EvalRow]) -> dict[str, Any]:
    """Left-padded model inputs for a batch of rows (images included for a VLM)."""
    texts = [
        policy.processing_class.apply_chat_template(
            prompt_messages(row, vision=policy.vision), add_generation_prompt=True, tokenize=False
        )
        for row in rows
    ]
    if not policy.vision:
        encoded = policy.tokenizer(texts, padding=True, padding_side="left", return_tensors="pt")
        return dict(encoded)
    images = [[open_image(p) for p in row.images] for row in rows]
    has_images = any(images)
    encoded = policy.processing_class(
        text=texts,
        images=images if has_images else None,
        padding=True,
        padding_side="left",
        return_tensors="pt",
    )
    return dict(encoded)


def generate(
    policy: Policy, rows: Sequence[EvalRow], options: EvalOptions, suppress: list[int]
) -> list[str]:
    """One completion per row, in order, sampled (or greedy at temperature 0)."""
    inputs = _encode(policy, rows)
    sampling: dict[str, Any] = {"do_sample": False}
    if options.temperature > 0:
        sampling = {"do_sample": True, "temperature": options.temperature, "top_p": options.top_p}
    model: Any = policy.model  # generate() is untyped in transformers
    with torch.inference_mode():
        output = model.generate(
            **inputs,
            max_new_tokens=options.max_new_tokens,
            suppress_tokens=suppress,  # a sampled image placeholder breaks the next forward
            pad_token_id=policy.tokenizer.pad_token_id,
            **sampling,
        )
    new_tokens = output[:, inputs["input_ids"].shape[1] :]
    texts: list[str] = policy.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
    return texts


def evaluate(
    model_dir: Path,
    rows: list[EvalRow],
    options: EvalOptions,
    *,
    on_item: ItemFn | None = None,
    scorer: Scorer | None = None,
) -> EvalSummary:
    """Accuracy and format rate of a model on ``rows``, reproducible for ``options.seed``."""
    rows = rows[: options.limit] if options.limit else rows
    policy = load_policy(model_dir)
    policy.model.train(False)  # no dropout while generating
    suppress = vision_token_ids(policy)
    torch.manual_seed(options.seed)
    completions = [""] * len(rows)
    tries = [0] * len(rows)
    # Greedy decoding gives the same text again, so resampling only helps when sampling.
    rounds = options.max_tries if options.temperature > 0 else 1
    pending = list(range(len(rows)))
    for _ in range(rounds):
        for start in range(0, len(pending), options.batch_size):
            batch = pending[start : start + options.batch_size]
            texts = generate(policy, [rows[i] for i in batch], options, suppress)
            for i, text in zip(batch, texts, strict=True):
                completions[i], tries[i] = text, tries[i] + 1
        pending = [i for i in pending if ANSWER_CLOSE not in completions[i].lower()]
        if not pending:
            break
    return _judge(rows, completions, tries, scorer or default_scorer(), on_item)


def _judge(
    rows: Sequence[EvalRow],
    completions: list[str],
    tries: list[int],
    scorer: Scorer,
    on_item: ItemFn | None,
) -> EvalSummary:
    """Verdicts for every completion, and the summary."""
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
            tries=tries[index],
        )
        results.append(item)
        if on_item is not None:
            on_item(item)
    judged = [r for r in results if r.correct is not None]
    accuracy = sum(bool(r.correct) for r in judged) / len(judged) if judged else 0.0
    format_rate = sum(r.format_ok for r in results) / len(results) if results else 0.0
    return EvalSummary(results, accuracy, format_rate)
