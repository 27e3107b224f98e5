"""The one sharegpt form: what the export writes is what SFT reads, and LLaMA-Factory's
common data errors are refused with a reason."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from services.trainer.data import load_sft_records
from shared.contracts.sharegpt import (
    DATA_FILE,
    SharegptRow,
    assistant_turn,
    dataset_info,
    sharegpt_row,
)
from tests.helpers import write_image


def test_a_written_row_reads_back_as_a_trl_record(tmp_path: Path) -> None:
    write_image(tmp_path / "images" / "a.png")
    turn = assistant_turn("It is red.", "red")
    row = sharegpt_row("<image> What colour?", turn, ["images/a.png"])
    assert row.messages[0].content == "<image>What colour?"
    (tmp_path / DATA_FILE).write_text(json.dumps([row.model_dump()]))
    [record] = load_sft_records(tmp_path / DATA_FILE, vision=True)
    user, assistant = record["messages"]
    assert [p["type"] for p in user["content"]] == ["image", "text"]
    assert assistant["content"][0]["text"] == "<think>\nIt is red.\n</think>\n<answer>red</answer>"
    assert len(record["images"]) == 1


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"messages": [{"role": "user", "content": "<image>Q"}], "images": "a.png"},
         "not a string"),
        ({"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
          "images": ["a.png"]}, "0 <image> tokens but 1 images"),
        ({"messages": [{"role": "user", "content": "<image>Q"}], "images": ["a.png"]},
         "no assistant turn"),
        ({"messages": [{"role": "robot", "content": "Q"}]}, "role"),
        ({"messages": []}, "at least 1"),
    ],
)  # fmt: skip
def test_llamafactory_data_errors_are_refused(data: dict[str, object], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        SharegptRow.model_validate(data)


def test_dataset_info_names_the_data_file() -> None:
    (entry,) = dataset_info("my-cold").values()
    assert entry["file_name"] == DATA_FILE
    assert entry["formatting"] == "sharegpt"
    assert entry["columns"] == {"messages": "messages", "images": "images"}
