"""``bench/gpu.py --cpu-smoke``: the GPU check's whole path runs here end to end, each phase
in its own process (a coldstart job with the captioner on vLLM, a GRPO stage with vLLM
rollouts forced to the cap, an eval job through vLLM), and its counts add up."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.gpu import CPU_SMOKE, check

ROOT = Path(__file__).resolve().parents[2]


def _smoke(out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    result = subprocess.run(
        [sys.executable, "bench/gpu.py", "--cpu-smoke", "--steps", "2", "--json", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=590,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result, json.loads(out.read_text())


@pytest.mark.timeout(600)
def test_the_gpu_check_runs_each_phase_in_its_own_process_on_a_cpu(tmp_path: Path) -> None:
    result, report = _smoke(tmp_path / "figures.json")
    profile = report["profile"]
    assert report["mode"] == "cpu-smoke"
    assert profile["size"] == "tiny-h32"
    assert report["problems"] == []
    assert "GPU check (CPU smoke" in result.stdout
    assert "job status" in result.stdout

    phases = report["phases"]
    assert list(phases) == ["caption", "grpo", "eval"]
    pids = [part["pid"] for part in phases.values()]
    assert all(part["ok"] and part["exit_code"] == 0 for part in phases.values())
    assert all(part["pid"] == part["spawned_pid"] for part in phases.values())
    assert len(set(pids)) == 3
    assert report["parent_pid"] not in pids

    # Every item went through both captioner calls; a random model's samples then fail
    # verification, which the table shows as the job's status.
    caption = phases["caption"]
    items = profile["caption_items"]
    assert caption["items"] == caption["records"] == caption["items_captioned"] == items
    assert caption["generate_calls"] == 2
    assert caption["tokens"] == caption["tokens_pseudo_cot"] + caption["tokens_description"]
    assert 0 < caption["tokens"] <= 2 * items * profile["caption_tokens"]
    assert caption["items_per_s"] > 0
    if caption["job_status"] != "succeeded":
        assert "no sample passed verification" in caption["job_error"]

    # Every completion was forced to the cap: the tokens of each step add up exactly.
    grpo = phases["grpo"]
    completions = profile["prompts_per_step"] * profile["group"]
    cap = profile["cap"]
    assert grpo["steps"] == report["steps"] == 2
    assert grpo["completions_per_step"] == [completions, completions]
    assert grpo["tokens_per_step"] == [completions * cap, completions * cap]
    assert grpo["tokens"] == 2 * completions * cap
    assert grpo["completion_len_max"] == cap
    assert grpo["vllm_max_model_len"] > cap
    assert grpo["startup_s"] >= grpo["first_step_s"] > 0
    assert grpo["step_s_median"] > 0
    assert grpo["tokens_per_s"] > 0
    assert grpo["rollout_logp_gap_median"] is not None

    evaluation = phases["eval"]
    assert evaluation["job_status"] == "succeeded"
    assert evaluation["items"] == evaluation["requests"] == profile["eval_items"]
    assert 0 < evaluation["tokens"] <= profile["eval_items"] * profile["eval_tokens"]
    assert evaluation["engine_start_s"] > 0
    assert evaluation["generate_s"] > 0

    # The same report with counts that do not add up is refused, each count by name.
    broken = copy.deepcopy(report)
    broken["phases"]["grpo"]["tokens_per_step"][1] -= 1
    broken["phases"]["caption"]["items_captioned"] -= 1
    broken["phases"]["eval"]["pid"] = broken["phases"]["grpo"]["pid"]
    problems = check(broken, CPU_SMOKE, 2)
    assert any(p.startswith("grpo: generated tokens per step") for p in problems)
    assert any(p.startswith("caption:") for p in problems)
    assert any("shared a process" in p for p in problems)
