"""`vr1 reward score`: JSONL items on stdin, one JSON result per line on stdout."""

from __future__ import annotations

import json
from collections.abc import Iterator
from itertools import islice
from typing import Any, TextIO

from services.reward.settings import RewardSettings
from shared.contracts.rewards import ScoreDetail
from shared.rewards import Scorer, ScoreResult, VerifierPool, completion_text, get_reward
from shared.rewards.scoring import ScoreItem

BATCH_LINES = 256


def score_stream(
    reward: str,
    stdin: TextIO,
    stdout: TextIO,
    settings: RewardSettings | None = None,
    *,
    batch_lines: int = BATCH_LINES,
) -> int:
    """Score every JSONL line of ``stdin``; return 1 if any line was malformed, else 0."""
    settings = settings or RewardSettings()
    spec = get_reward(reward)
    malformed = 0
    with VerifierPool(settings.resolved_workers, timeout_s=settings.item_timeout_s) as pool:
        scorer = Scorer(pool)
        for lines in _batches(stdin, batch_lines):
            parsed = [parse_line(line, settings.max_completion_chars) for line in lines]
            items = [p for p in parsed if isinstance(p, ScoreItem)]
            results = iter(scorer.score(spec.combine, items, uses_answer=spec.uses_answer))
            for p in parsed:
                row = result_row(next(results)) if isinstance(p, ScoreItem) else error_row(p)
                stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
            malformed += sum(1 for p in parsed if isinstance(p, str))
            stdout.flush()
    return 1 if malformed else 0


def _batches(stdin: TextIO, size: int) -> Iterator[list[str]]:
    """Non-blank lines, a batch at a time (so the pool scores them in parallel)."""
    lines = (line for line in stdin if line.strip())
    while batch := list(islice(lines, size)):
        yield batch


def parse_line(line: str, max_chars: int) -> ScoreItem | str:
    """An item, or the reason the line cannot be scored."""
    try:
        row = json.loads(line)
    except json.JSONDecodeError as exc:
        return f"bad_input: invalid JSON ({exc.msg})"
    if not isinstance(row, dict) or "completion" not in row:
        return "bad_input: expected an object with a `completion` field"
    completion = row["completion"]
    if not isinstance(completion, str | list):
        return "bad_input: `completion` must be a string or a list of messages"
    text = completion_text(completion)
    if len(text) > max_chars:
        return f"bad_input: completion of {len(text)} characters; the limit is {max_chars}"
    answer = row.get("answer", "")
    return ScoreItem(text, answer if isinstance(answer, str) else json.dumps(answer))


def result_row(result: ScoreResult) -> dict[str, Any]:
    """The output line for a scored item: its reward and the service's detail fields."""
    detail = ScoreDetail.model_validate(result, from_attributes=True)
    return {"reward": result.reward, **detail.model_dump()}


def error_row(reason: str) -> dict[str, Any]:
    """The output line for a line that could not be scored."""
    return {"reward": None, "format_ok": None, "answer_ok": None, "extracted": "", "reason": reason}
