"""The toy world: deterministic files, disjoint splits, answers that match the pixels."""

from __future__ import annotations

import hashlib
import json
from collections import deque
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from shared.fixtures.commands import toy_data_command
from shared.fixtures.toy import (
    CHOICE_LETTERS,
    COLOURS,
    DEFAULT_TASKS,
    GRID_GREY,
    generate_toy_dataset,
    read_rows,
    write_hf_parquet,
)

N_TRAIN, N_TEST = 40, 16


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("toy")
    generate_toy_dataset(root, seed=0, n_train=N_TRAIN, n_test=N_TEST)
    return root


def _rows(root: Path) -> list[dict[str, Any]]:
    return read_rows(root / "train.jsonl") + read_rows(root / "test.jsonl")


def _pixels(root: Path, row: dict[str, Any]) -> np.ndarray:
    return np.asarray(Image.open(root / row["image"]).convert("RGB"))


def _mask_of(pixels: np.ndarray, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.all(pixels == np.array(rgb), axis=-1)


def _shape_mask(pixels: np.ndarray) -> np.ndarray:
    return np.any([_mask_of(pixels, rgb) for rgb in COLOURS.values()], axis=0)


def _colours_present(pixels: np.ndarray) -> set[str]:
    return {name for name, rgb in COLOURS.items() if _mask_of(pixels, rgb).any()}


def _components(mask: np.ndarray) -> int:
    """Count 8-connected blobs."""
    seen = np.zeros_like(mask)
    count = 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        queue = deque([start])
        seen[start] = True
        while queue:
            y, x = queue.popleft()
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    ny, nx = y + dy, x + dx
                    inside = 0 <= ny < mask.shape[0] and 0 <= nx < mask.shape[1]
                    if inside and mask[ny, nx] and not seen[ny, nx]:
                        seen[ny, nx] = True
                        queue.append((ny, nx))
    return count


def _shape_kind(mask: np.ndarray) -> str:
    """Recognise one filled shape from its fill ratio and where its widest row is."""
    ys, xs = np.nonzero(mask)
    box = (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)
    ratio = mask.sum() / box
    if ratio > 0.95:
        return "square"
    if ratio > 0.7:
        return "circle"
    widths = mask[ys.min() : ys.max() + 1].sum(axis=1)
    widest = int(np.argmax(widths)) / (len(widths) - 1)
    return "triangle" if widest > 0.8 else "diamond"


def _bars(pixels: np.ndarray) -> list[tuple[str, int]]:
    """Read (colour, value) of each bar, left to right, using the grid lines as the scale."""
    grid_rows = np.nonzero(_mask_of(pixels, GRID_GREY).any(axis=1))[0]
    unit = int(np.diff(grid_rows).min())
    base = int(grid_rows.max()) + unit  # the axis sits one unit below the lowest grid line
    bars = []
    for name, rgb in COLOURS.items():
        ys, xs = np.nonzero(_mask_of(pixels, rgb))
        if len(ys):
            bars.append((int(xs.min()), name, round((base - ys.min()) / unit)))
    return [(name, value) for _, name, value in sorted(bars)]


def test_same_seed_gives_identical_bytes(tmp_path: Path, toy: Path) -> None:
    generate_toy_dataset(tmp_path, seed=0, n_train=N_TRAIN, n_test=N_TEST)
    assert _files(tmp_path) == _files(toy)


def test_different_seed_gives_different_data(tmp_path: Path, toy: Path) -> None:
    generate_toy_dataset(tmp_path, seed=1, n_train=N_TRAIN, n_test=N_TEST)
    ours, theirs = _files(tmp_path), _files(toy)
    assert ours.keys() == theirs.keys()
    assert ours["train.jsonl"] != theirs["train.jsonl"]
    assert sum(ours[k] != theirs[k] for k in ours if k.endswith(".png")) > N_TRAIN // 2


def test_splits_are_disjoint(toy: Path) -> None:
    train, test = read_rows(toy / "train.jsonl"), read_rows(toy / "test.jsonl")
    assert (len(train), len(test)) == (N_TRAIN, N_TEST)
    assert not {r["id"] for r in train} & {r["id"] for r in test}

    def digests(rows: list[dict[str, Any]]) -> set[str]:
        return {hashlib.sha256((toy / r["image"]).read_bytes()).hexdigest() for r in rows}

    assert len(digests(train) | digests(test)) == N_TRAIN + N_TEST


def test_rows_are_complete_and_images_open(toy: Path) -> None:
    assert {row["task"] for row in _rows(toy)} == set(DEFAULT_TASKS)
    for row in _rows(toy):
        assert row["image"] == f"images/{row['id']}.png"
        with Image.open(toy / row["image"]) as image:
            assert image.size == (56, 56)
        assert set(row["reference"]) == {"caption", "reasoning", "description", "cot"}
        assert row["reference"]["cot"].endswith(f"So the answer is {row['answer']}.")
        assert "Wait" in row["reference"]["cot"] or "Hmm" in row["reference"]["cot"]


def test_answer_types(toy: Path) -> None:
    allowed = {
        "shape_colour": {"text"},
        "count": {"number"},
        "bar_chart": {"number", "text"},
        "choice": {"choice"},
    }
    for row in _rows(toy):
        assert row["answer_type"] in allowed[row["task"]]
        if row["answer_type"] == "number":
            assert row["answer"].isdigit()
        if row["answer_type"] == "choice":
            assert row["answer"] in CHOICE_LETTERS
        if row["answer_type"] == "text":
            assert row["answer"] in COLOURS


def test_answers_match_the_pixels(toy: Path) -> None:
    for row in _rows(toy):
        pixels, task, answer = _pixels(toy, row), row["task"], row["answer"]
        if task == "shape_colour":
            assert _colours_present(pixels) == {answer}
            assert f"one {answer} " in row["reference"]["description"]
        elif task == "count":
            assert _components(_shape_mask(pixels)) == int(answer)
        elif task == "choice":
            options = dict(line.split(". ", 1) for line in row["question"].splitlines()[1:5])
            assert options[answer] == _shape_kind(_shape_mask(pixels))
        else:
            bars = _bars(pixels)
            colour, value = max(bars, key=lambda bar: bar[1])
            assert answer == (str(value) if row["answer_type"] == "number" else colour)
            for name, height in bars:
                assert f"{name} {height}" in row["reference"]["description"]


def test_manifest(toy: Path) -> None:
    manifest = json.loads((toy / "manifest.json").read_text())
    assert manifest["seed"] == 0
    assert manifest["counts"] == {"train": N_TRAIN, "test": N_TEST}
    assert manifest["tasks"] == list(DEFAULT_TASKS)
    assert manifest["version"]


def test_one_task_and_stale_images_removed(tmp_path: Path) -> None:
    generate_toy_dataset(tmp_path, n_train=10, n_test=4)
    generate_toy_dataset(tmp_path, n_train=5, n_test=2, tasks=["shape_colour"])
    assert {row["task"] for row in _rows(tmp_path)} == {"shape_colour"}
    assert len(list((tmp_path / "images").glob("*.png"))) == 7


def test_unknown_task_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown"):
        generate_toy_dataset(tmp_path, n_train=1, n_test=1, tasks=["juggling"])


def test_hf_parquet_round_trip(toy: Path, tmp_path: Path) -> None:
    rows = read_rows(toy / "train.jsonl")
    path = write_hf_parquet(rows, toy, tmp_path / "rl" / "train.parquet")
    table = pq.read_table(path)
    assert table.column_names == ["images", "problem", "answer"]
    assert b"huggingface" in (table.schema.metadata or {})
    records = table.to_pylist()
    assert len(records) == len(rows)
    for row, record in zip(rows, records, strict=True):
        (image,) = record["images"]
        assert image["bytes"] == (toy / row["image"]).read_bytes()
        assert image["path"] == Path(row["image"]).name
        assert record["problem"] == "<image>" + row["question"]
        assert record["answer"] == row["answer"]
    # a bare images folder works as the base too
    again = write_hf_parquet(rows[:2], toy / "images", tmp_path / "two.parquet")
    assert pq.read_table(again).num_rows == 2


def test_toy_data_command_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    toy_data_command(tmp_path, seed=3, n_train=8, n_test=4, tasks=["count", "choice"])
    out = capsys.readouterr().out
    assert str(tmp_path) in out
    assert "count=4" in out
    assert "choice=4" in out
    assert len(read_rows(tmp_path / "test.jsonl")) == 4
