"""Stand-in teachers for the demo: tiny models taught the toy world's reference texts.

No real teacher (Qwen2.5-VL-72B, DeepSeek-R1) can be downloaded here, so the demo
trains two tiny stand-ins with the platform's own ``sft`` job: a vision-language
describer that answers the platform's Pseudo-CoT and description prompts, and a text
reasoner that answers its reasoning prompt with a short R1-style CoT.  They are labelled
as stand-ins wherever they appear; real runs point the same specs at real models.
Their training sets are ``cold`` datasets like any other (``shared.cold_data``).
"""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from shared.cold_data import ColdSample, create_cold_dataset
from shared.prompts import template_for
from shared.storage import ArtifactStore


def describer_rows(rows: list[dict[str, Any]], image_root: Path) -> list[ColdSample]:
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
            examples.append(ColdSample(prompt, target, [image_root / row["image"]]))
    return examples


def reasoner_target(row: dict[str, Any]) -> str:
    """A short R1-style answer that speaks of 'the description' (the pipeline rewrites it).

    Short on purpose: the student's first PTST stage caps completions at a few dozen
    tokens, and the cold-start samples are what teaches it the length of its thoughts.
    """
    answer = row["answer"]
    return f"<think>The description says it is {answer}.</think>\nFinal Answer: {answer}"


def reasoner_rows(rows: list[dict[str, Any]]) -> list[ColdSample]:
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
            examples.append(ColdSample(prompt, reasoner_target(row), []))
    return examples


def register_teacher_data(
    session: Session,
    store: ArtifactStore,
    *,
    team_id: uuid.UUID,
    name: str,
    samples: list[ColdSample],
) -> str:
    """Store a stand-in teacher's training set as a `cold` dataset; returns its ID."""
    dataset = create_cold_dataset(
        session,
        store,
        team_id=team_id,
        name=name,
        prefix=f"demo/{name}",
        samples=samples,
        parquet=False,
        meta={"stand_in_teacher_data": True},
    )
    return str(dataset.id)
