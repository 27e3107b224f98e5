"""`vr1 reward score`: JSONL in, one JSON result per line out, malformed lines reported."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest

from services.reward.cli import score_stream
from services.reward.settings import RewardSettings
from shared.errors import UnknownReward

GOOD = "<think>6/2 = 3</think><answer>3</answer>"
LINES = [
    json.dumps({"completion": GOOD, "answer": "3"}),
    "",
    "{not json",
    json.dumps({"completion": [{"role": "assistant", "content": GOOD}], "answer": 4}),
    json.dumps({"answer": "3"}),
    json.dumps(
        {"completion": "<think>x</think><answer>\\sqrt{12}</answer>", "answer": "2\\sqrt{3}"}
    ),
]
SETTINGS = RewardSettings(workers=1, item_timeout_s=2.0, max_completion_chars=10_000)


def test_score_stream_in_process() -> None:
    out = io.StringIO()
    code = score_stream("hfrrf", io.StringIO("\n".join(LINES) + "\n"), out, SETTINGS)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert code == 1
    assert [r["reward"] for r in rows] == [1.0, None, 0.0, None, 1.0]
    assert rows[0] == {
        "reward": 1.0,
        "format_ok": True,
        "answer_ok": True,
        "extracted": "3",
        "reason": "ok",
    }
    assert rows[1]["reason"].startswith("bad_input: invalid JSON")
    assert rows[2]["reason"] == "wrong"
    assert rows[3]["reason"].startswith("bad_input: expected an object")


def test_score_stream_small_batches_keep_order() -> None:
    lines = [json.dumps({"completion": f"<think>t</think><answer>{i}</answer>", "answer": "3"})
             for i in range(7)]  # fmt: skip
    out = io.StringIO()
    assert (
        score_stream("accuracy", io.StringIO("\n".join(lines)), out, SETTINGS, batch_lines=3) == 0
    )
    assert [json.loads(x)["reward"] for x in out.getvalue().splitlines()] == [
        0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0
    ]  # fmt: skip


def test_unknown_reward_raises() -> None:
    with pytest.raises(UnknownReward):
        score_stream("nope", io.StringIO(""), io.StringIO(), SETTINGS)


def test_score_stream_with_real_pipes() -> None:
    program = (
        "import sys\n"
        "from services.reward.cli import score_stream\n"
        "from services.reward.settings import RewardSettings\n"
        "sys.exit(score_stream('format', sys.stdin, sys.stdout, RewardSettings(workers=1)))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", program],
        input="\n".join(LINES[:1] + LINES[3:4]) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["reward"], r["format_ok"]) for r in rows] == [(1.0, True), (1.0, True)]
