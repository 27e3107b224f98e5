"""``bench/gpu.py --cpu-smoke``: the GPU check's whole path (model build, vLLM captioner
step, a GRPO job with vLLM rollouts, an eval job through vLLM) runs here end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.timeout(600)
def test_the_gpu_check_runs_end_to_end_on_a_cpu(tmp_path: Path) -> None:
    out = tmp_path / "figures.json"
    result = subprocess.run(
        [sys.executable, "bench/gpu.py", "--cpu-smoke", "--steps", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["profile"]["size"] == "tiny-h32"
    assert figures["caption_tokens"] > 0
    assert figures["grpo_rollout_tokens_per_step"] > 0
    assert figures["eval_items_per_s"] > 0
    assert "GPU check (CPU smoke" in result.stdout
