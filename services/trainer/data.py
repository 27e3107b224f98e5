"""Training data in the forms TRL wants.

- Cold-start SFT sets arrive in LLaMA-Factory "sharegpt" form (``shared.contracts.sharegpt``:
  one ``<image>`` token per image in the user text, image paths relative to the JSON
  file).  ``load_sft_records`` turns them into TRL's conversational format with typed
  image parts (vision-language model) or plain text turns (text-only model).
- RL and eval rows are ``PromptRow``s (image paths, question, gold answer);
  ``grpo_records`` turns them into conversational prompts with the image, no system prompt
  unless one is given (the paper uses none).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image
from pydantic import ValidationError

from shared.contracts.sharegpt import IMAGE_TOKEN, SharegptRow
from shared.errors import InvalidInput

Part = dict[str, Any]
Message = dict[str, Any]


@dataclass(frozen=True)
class PromptRow:
    """One RL or eval item: the images it shows, the question and the gold answer."""

    question: str
    answer: str
    images: tuple[Path, ...] = ()
    id: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


EvalRow = PromptRow


def open_image(path: Path) -> Image.Image:
    """Load an image fully into memory as RGB (the file handle is closed at once)."""
    with Image.open(path) as image:
        return image.convert("RGB")


def user_parts(text: str, n_images: int) -> list[Part]:
    """Split a user turn on ``<image>`` tokens into typed text and image parts, in order."""
    if text.count(IMAGE_TOKEN) != n_images:
        # LLaMA-Factory's most common data error; refuse it rather than guess a position.
        raise InvalidInput(
            f"{text.count(IMAGE_TOKEN)} {IMAGE_TOKEN} tokens but {n_images} images",
        )
    parts: list[Part] = []
    for i, chunk in enumerate(text.split(IMAGE_TOKEN)):
        if i > 0:
            parts.append({"type": "image", "text": None})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _text_part(text: str) -> list[Part]:
    return [{"type": "text", "text": text}]


def _sharegpt_messages(row: SharegptRow, *, vision: bool) -> list[Message]:
    """The row's turns; typed parts for a vision model, plain strings for a text model."""
    messages: list[Message] = []
    for turn in row.messages:
        if not vision:
            messages.append({"role": turn.role, "content": turn.content})
        elif turn.role == "user":
            n_here = turn.content.count(IMAGE_TOKEN)  # each image belongs to the turn naming it
            messages.append({"role": turn.role, "content": user_parts(turn.content, n_here)})
        else:
            messages.append({"role": turn.role, "content": _text_part(turn.content)})
    return messages


def _read_row(path: Path, index: int, data: Any) -> SharegptRow:
    try:
        return SharegptRow.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(error["msg"] for error in exc.errors())
        raise InvalidInput(f"{path}: row {index}: {problems}") from exc


def load_sft_records(path: Path, *, vision: bool) -> list[dict[str, Any]]:
    """Read a sharegpt JSON file into TRL conversational records (with PIL images if vision)."""
    rows = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(rows, list) or not rows:
        raise InvalidInput(f"{path}: expected a non-empty JSON list of sharegpt rows")
    root = Path(path).parent
    records: list[dict[str, Any]] = []
    for index, data in enumerate(rows):
        row = _read_row(path, index, data)
        if row.images and not vision:
            raise InvalidInput(f"{path}: row {index} has images but the model reads text only")
        record: dict[str, Any] = {"messages": _sharegpt_messages(row, vision=vision)}
        if vision:
            record["images"] = [open_image(root / p) for p in row.images]
        records.append(record)
    return records


def prompt_messages(
    row: PromptRow, *, vision: bool, system_prompt: str | None = None
) -> list[Message]:
    """The conversational prompt for one row: images first, then the question."""
    messages: list[Message] = []
    if system_prompt:
        messages.append({"role": "system", "content": _text_part(system_prompt)})
    if vision:
        parts = [{"type": "image", "text": None} for _ in row.images]
        messages.append({"role": "user", "content": [*parts, *_text_part(row.question)]})
    else:
        messages.append({"role": "user", "content": _text_part(row.question)})
    return messages


def grpo_records(
    rows: Sequence[PromptRow], *, vision: bool, system_prompt: str | None = None
) -> list[dict[str, Any]]:
    """GRPO prompt records: ``prompt`` messages, ``images`` (PIL), the gold ``answer`` and
    the ``item_id`` (TRL hands both columns to the reward functions)."""
    records = []
    for row in rows:
        if row.images and not vision:
            raise InvalidInput(f"row {row.id}: has images but the model reads text only")
        record: dict[str, Any] = {
            "prompt": prompt_messages(row, vision=vision, system_prompt=system_prompt),
            "answer": row.answer,
            "item_id": row.id,
        }
        if vision:
            record["images"] = [open_image(p) for p in row.images]
        records.append(record)
    return records


def load_prompt_rows(path: Path, *, limit: int | None = None) -> list[PromptRow]:
    """Read a source-format JSONL (``image`` or ``images`` relative to the file) into rows."""
    root = Path(path).parent
    rows: list[PromptRow] = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        data = json.loads(line)
        images = data.get("images") or ([data["image"]] if data.get("image") else [])
        rows.append(
            PromptRow(
                question=str(data["question"]),
                answer=str(data["answer"]),
                images=tuple(root / str(p) for p in images),
                id=str(data["id"]) if "id" in data else None,
            )
        )
        if limit is not None and len(rows) >= limit:
            break
    return rows
