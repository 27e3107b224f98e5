"""Evaluation mechanics on tiny random models: resampling, tries, reproducibility."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from services.trainer.data import EvalRow
from services.trainer.evaluation import EvalItem, EvalSummary, evaluate
from shared.contracts.specs import EvalOptions
from shared.fixtures.tiny import build_tiny_text_lm, build_tiny_vlm
from shared.rewards import InlineVerifier, Scorer
from tests.helpers import write_image

SAMPLED = EvalOptions(temperature=1.0, max_new_tokens=8, max_tries=3, batch_size=2, seed=7)


@pytest.fixture(autouse=True)
def one_torch_thread() -> Iterator[None]:
    """Tiny models run fastest and reproducibly on one thread (2 threads are ~7x slower here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm"))


def _rows(root: Path) -> list[EvalRow]:
    images = [write_image(root / f"{c}.png", c, size=56) for c in ("red", "blue", "green")]
    return [EvalRow("What colour is the shape?", p.stem, (p,), id=p.stem) for p in images]


def test_rows_without_an_answer_block_are_resampled_up_to_max_tries(
    vlm: Path, tmp_path: Path
) -> None:
    seen: list[int] = []
    summary = evaluate(
        vlm,
        _rows(tmp_path),
        SAMPLED,
        scorer=Scorer(InlineVerifier()),
        on_item=lambda i: seen.append(i.index),
    )
    assert seen == [0, 1, 2]
    # A random model never closes an answer block in 8 tokens: every row used every try.
    assert [item.tries for item in summary.items] == [3, 3, 3]
    assert summary.format_rate == 0.0
    assert summary.accuracy == 0.0
    assert all(item.correct is False for item in summary.items)
    assert (summary.missing_answer_rate, summary.resampled) == (1.0, 3)


def test_missing_answers_and_resamples_are_counted_per_row() -> None:
    def item(index: int, completion: str, tries: int) -> EvalItem:
        return EvalItem(index, str(index), completion, None, None, False, tries)

    rows = [item(0, "<answer>red</answer>", 1), item(1, "<answer>blue", 3), item(2, "x", 2)]
    summary = EvalSummary(rows, accuracy=0.0, format_rate=0.0)
    assert summary.missing_answer_rate == pytest.approx(2 / 3)
    assert summary.resampled == 2


def test_same_seed_same_completions_and_greedy_tries_once(vlm: Path, tmp_path: Path) -> None:
    rows = _rows(tmp_path)
    scorer = Scorer(InlineVerifier())
    first = evaluate(vlm, rows, SAMPLED, scorer=scorer)
    again = evaluate(vlm, rows, SAMPLED, scorer=scorer)
    assert [i.completion for i in first.items] == [i.completion for i in again.items]
    greedy = evaluate(vlm, rows, EvalOptions(temperature=0.0, max_new_tokens=8), scorer=scorer)
    assert [item.tries for item in greedy.items] == [1, 1, 1]


def test_text_only_model_is_evaluated_without_images(tmp_path: Path) -> None:
    model = build_tiny_text_lm(tmp_path / "lm")
    rows = [EvalRow("What is 2 + 3?", "5"), EvalRow("What is 1 + 1?", "2")]
    summary = evaluate(model, rows, SAMPLED, scorer=Scorer(InlineVerifier()))
    assert summary.n == 2
    assert all(item.completion for item in summary.items)
