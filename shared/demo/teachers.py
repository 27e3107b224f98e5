"""Stand-in teachers for the demo: tiny models taught the toy world's reference texts.

No real teacher (Qwen2.5-VL-72B, DeepSeek-R1) can be downloaded here, so the demo
trains two tiny stand-ins with the platform's own ``sft`` job: a vision-language
describer that answers the platform's Pseudo-CoT and description prompts, and a text
reasoner that answers its reasoning prompt with a short R1-style CoT.  They are labelled
as stand-ins wherever they appear; real runs point the same specs at real models.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from shared.db.models import Dataset
from shared.prompts import template_for
from shared.runner import Embedded

IMAGE = "<image>"


def describer_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Two examples per toy item: the Pseudo-CoT call and the description call."""
    pseudo, described = template_for("pseudo_cot", None), template_for("description", None)
    examples = []
    for row in rows:
        ref = row["reference"]
        pseudo_cot = f"Caption: {ref['caption']}\nReasoning: {ref['reasoning']}"
        prompts = [
            (pseudo.render(question=row["question"], answer=row["answer"]), pseudo_cot),
            (described.render(question=row["question"], pseudo_cot=pseudo_cot), ref["description"]),
        ]
        for prompt, target in prompts:
            examples.append(
                {
                    "messages": [
                        {"role": "user", "content": IMAGE + prompt},
                        {"role": "assistant", "content": target},
                    ],
                    "images": [row["image"]],
                }
            )
    return examples


def reasoner_target(row: dict[str, Any]) -> str:
    """A short R1-style answer that speaks of 'the description' (the pipeline rewrites it).

    Short on purpose: the student's first PTST stage caps completions at a few dozen
    tokens, and the cold-start samples are what teaches it the length of its thoughts.
    """
    answer = row["answer"]
    return f"<think>The description says it is {answer}.</think>\nFinal Answer: {answer}"


def reasoner_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Text-only examples of the reasoning prompt and its target.

    Each item appears twice: with its own description, and with another item's (a
    describer can be wrong). The target always reaches the gold answer, so the stand-in
    learns to reason towards the answer it is given, as the real recipe's reasoner does.
    """
    template = template_for("reasoning", None)
    examples = []
    for k, row in enumerate(rows):
        other = rows[(k + 1) % len(rows)]
        for description in (row["reference"]["description"], other["reference"]["description"]):
            prompt = template.render(
                description=description, question=row["question"], answer=row["answer"]
            )
            examples.append(
                {
                    "messages": [
                        {"role": "user", "content": prompt},
                        {"role": "assistant", "content": reasoner_target(row)},
                    ],
                    "images": [],
                }
            )
    return examples


def register_sharegpt(
    platform: Embedded, *, name: str, examples: list[dict[str, Any]], image_root: Path
) -> str:
    """Store a sharegpt training set (and its images) and register it as a `cold` dataset."""
    prefix = f"demo/{name}"
    for example in examples:
        for image in example["images"]:
            platform.store.put_file(image_root / image, f"{prefix}/{image}")
    platform.store.put_bytes(json.dumps(examples).encode(), f"{prefix}/train.json")
    team = platform.team()
    with platform.db.session() as session:
        dataset = Dataset(
            team_id=team.id,
            name=name,
            kind="cold",
            format="sharegpt",
            size=len(examples),
            uri=platform.store.uri_for(prefix),
            meta={"file": "train.json", "stand_in_teacher_data": True},
        )
        session.add(dataset)
        session.flush()
        return str(dataset.id)
