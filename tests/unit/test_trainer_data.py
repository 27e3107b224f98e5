"""Training data conversion: sharegpt rows to TRL records, prompt rows to GRPO prompts,
and the evaluator's answer extraction."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.trainer.data import (
    PromptRow,
    grpo_records,
    load_prompt_rows,
    load_sft_records,
    user_parts,
)
from shared.errors import InvalidInput
from shared.rewards import extract_final_answer
from tests.helpers import write_image


def _sharegpt(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text(json.dumps(rows))
    return path


def _row(user: str, images: object = None) -> dict[str, object]:
    row: dict[str, object] = {
        "messages": [
            {"role": "user", "content": user},
            {"role": "assistant", "content": "<think>t</think><answer>a</answer>"},
        ]
    }
    if images is not None:
        row["images"] = images
    return row


def test_image_tokens_become_image_parts_in_place() -> None:
    assert user_parts("<image>What?", 1) == [
        {"type": "image", "text": None},
        {"type": "text", "text": "What?"},
    ]
    assert [p["type"] for p in user_parts("A <image> and <image> B", 2)] == [
        "text", "image", "text", "image", "text",
    ]  # fmt: skip
    with pytest.raises(InvalidInput):
        user_parts("<image>What?", 2)


def test_sharegpt_rows_load_with_images_relative_to_the_file(tmp_path: Path) -> None:
    write_image(tmp_path / "data" / "images" / "x.png", "red")
    path = _sharegpt(
        tmp_path / "data" / "cold.json",
        [_row("<image>Colour?", ["images/x.png"]), _row("Text only.", [])],
    )
    records = load_sft_records(path, vision=True)
    assert records[0]["images"][0].size == (32, 32)
    assert records[0]["messages"][0]["content"][0]["type"] == "image"
    assert records[1]["images"] == []
    assert records[1]["messages"][1]["content"] == [
        {"type": "text", "text": "<think>t</think><answer>a</answer>"}
    ]


def test_text_only_model_gets_plain_turns_and_refuses_images(tmp_path: Path) -> None:
    text = _sharegpt(tmp_path / "text.json", [_row("Question?")])
    assert load_sft_records(text, vision=False) == [{"messages": _row("Question?")["messages"]}]
    with_image = _sharegpt(tmp_path / "img.json", [_row("<image>Q?", ["x.png"])])
    with pytest.raises(InvalidInput):
        load_sft_records(with_image, vision=False)


@pytest.mark.parametrize(
    "row",
    [_row("<image>Q?", "images/x.png"), _row("Q?", ["images/x.png"]), _row("<image>Q?", [])],
)
def test_llamafactory_mistakes_are_refused(tmp_path: Path, row: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        load_sft_records(_sharegpt(tmp_path / "bad.json", [row]), vision=True)


def test_grpo_prompts_carry_the_image_and_the_gold_answer(tmp_path: Path) -> None:
    image = write_image(tmp_path / "images" / "x.png", "red")
    (tmp_path / "rl.jsonl").write_text(
        json.dumps({"id": "a", "image": "images/x.png", "question": "Colour?", "answer": "red"})
    )
    rows = load_prompt_rows(tmp_path / "rl.jsonl")
    assert rows == [PromptRow("Colour?", "red", (image,), id="a")]
    [record] = grpo_records(rows, vision=True)
    assert record["answer"] == "red"
    assert len(record["images"]) == 1
    assert [m["role"] for m in record["prompt"]] == ["user"]  # no system prompt by default
    assert [p["type"] for p in record["prompt"][0]["content"]] == ["image", "text"]
    [with_system] = grpo_records(rows, vision=True, system_prompt="Think first.")
    assert [m["role"] for m in with_system["prompt"]] == ["system", "user"]


@pytest.mark.parametrize(
    ("completion", "expected"),
    [
        ("<think>x</think><answer>red</answer>", "red"),
        ("<think>x</think><answer> Final Answer: 42 </answer>", "42"),
        ("<think>x</think><answer>The sum. Final answer: 7</answer>", "7"),
        ("<answer>1</answer> later <answer>2</answer>", "2"),
        ("<think>x</think><answer>blue", "blue"),
        ("<think>no answer block</think>", ""),
    ],
)
def test_answer_is_read_from_the_last_answer_block(completion: str, expected: str) -> None:
    assert extract_final_answer(completion, require_answer_block=True) == expected
