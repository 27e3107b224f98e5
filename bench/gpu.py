"""GPU check: the captioner, a GRPO stage and an eval job through vLLM, on one GPU, in minutes.

Builds a random Qwen2.5-VL-architecture model of about 2.5 B parameters offline (the
tiny-model builder at size "2b") and a small random text LM, then measures through the
platform's own code, each phase in a process of its own (``--phase``, see
``bench/gpu_phases.py``: vLLM frees its share of the GPU only when its process exits):

1. ``caption``: a ``coldstart`` job with the captioner on ``engine: vllm``: the captioner's
   items/s and generated tokens per step (Pseudo-CoT, description), from the job's records.
   A random model's samples fail verification, so the job ends ``failed`` ("no sample
   passed verification"); the table says so, and checks that every item was captioned.
2. ``grpo``: a PTST stage at cap 4096 x group 16 with vLLM rollouts, every completion forced
   to the cap (vLLM's ``min_tokens``: a random model stops early): start-up and first step
   apart from the median later step, rollout tokens/s, the rollout/policy log-prob gap,
   peak GPU memory.
3. ``eval``: an ``eval`` job with ``engine: vllm``: items/s and generated tokens.

One table, and ``--json PATH`` with every figure.  The counts must add up (every item
captioned, each step's tokens = completions x cap, every eval item stored, each phase in
its own process); if not, it says which and exits non-zero.  Without a CUDA GPU and vLLM
it stops at once, saying so.  ``--cpu-smoke`` runs the same processes on a CPU with tiny
sizes (vLLM's CPU build: run it with ``.venv-vllm/bin/python``)::

    python bench/gpu.py [--steps 3] [--json PATH] [--work DIR] [--verbose]
    .venv-vllm/bin/python bench/gpu.py --cpu-smoke --json PATH
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gpu_phases import PHASES, Plan, Profile, run_phase  # noqa: E402

# rollout_share: the 2b policy's training state (fp32 weights, gradients and AdamW state of
# ~1.9 B trained parameters, activations of 16 x 4 K tokens) takes about 50 GiB beside it.
GPU = Profile(
    size="2b", reasoner_size="small", dtype="bfloat16", enforce_eager=False,
    caption_items=64, caption_tokens=512, reason_tokens=256,
    cap=4096, group=16, prompts_per_step=1,
    eval_items=64, eval_tokens=1024,
    caption_share=0.6, reasoner_share=0.2, rollout_share=0.2,
)  # fmt: skip
CPU_SMOKE = Profile(
    size="tiny-h32", reasoner_size="tiny-h32", dtype="float32", enforce_eager=True,
    caption_items=8, caption_tokens=32, reason_tokens=16,
    cap=16, group=4, prompts_per_step=2,
    eval_items=8, eval_tokens=16,
    caption_share=0.6, reasoner_share=0.2, rollout_share=0.2,
)  # fmt: skip
# A phase that starts with more of the device in use than this holds memory of another.
LEFTOVER_SHARE = 0.05
LOG_TAIL = 60
# The random models' configs give 4096 positions (the toy world needs no more) and vLLM
# refuses a longer context, but a 4096-token stage needs the prompt + 4096; their rotary
# embeddings take any position, and their tokenizers already say 32768.
POSITIONS = 32768


def refuse_without_gpu() -> None:
    """Stop before building anything when this machine cannot run the GPU check."""
    import torch

    problems = []
    if not torch.cuda.is_available():
        problems.append("no CUDA GPU is visible")
    if importlib.util.find_spec("vllm") is None:
        problems.append("vLLM is not installed (the gpu extra)")
    if problems:
        raise SystemExit(f"bench/gpu.py needs a GPU: {'; '.join(problems)} (--cpu-smoke runs "
                         "the same path on a CPU with tiny sizes)")  # fmt: skip


def build(plan: Plan) -> float:
    """The random models and the toy data the phases read; returns the seconds it took."""
    from shared.fixtures.tiny import build_tiny_text_lm, build_tiny_vlm
    from shared.fixtures.toy import generate_toy_dataset

    started = time.perf_counter()
    profile = plan.profile
    for model in (
        build_tiny_vlm(plan.vlm, seed=0, size=profile.size),
        build_tiny_text_lm(plan.lm, seed=0, size=profile.reasoner_size),
    ):
        with_positions(model, POSITIONS)
    generate_toy_dataset(
        plan.work / "toy", seed=0, n_train=profile.caption_items, n_test=profile.eval_items,
        tasks=["shape_colour"],
    )  # fmt: skip
    (plan.work / "plan.json").write_text(
        json.dumps({"profile": asdict(profile), "steps": plan.steps})
    )
    return time.perf_counter() - started


def with_positions(model: Path, positions: int) -> None:
    """Let a saved model's text part take ``positions`` tokens of context."""
    path = model / "config.json"
    config = json.loads(path.read_text())
    for part in (config, config.get("text_config") or {}):
        if "max_position_embeddings" in part:
            part["max_position_embeddings"] = positions
    path.write_text(json.dumps(config, indent=2) + "\n")


def read_plan(work: Path) -> Plan:
    """The plan the parent wrote for its phases."""
    data = json.loads((work / "plan.json").read_text())
    return Plan(work, Profile(**data["profile"]), int(data["steps"]))


def spawn(name: str, plan: Plan, *, verbose: bool) -> dict[str, Any]:
    """Run one phase in a fresh process of this interpreter; its figures, or why none."""
    part, log = plan.work / f"{name}.json", plan.work / f"{name}.log"
    command = [sys.executable, str(Path(__file__).resolve()), "--phase", name,
               "--work", str(plan.work), "--json", str(part)]  # fmt: skip
    started = time.perf_counter()
    with log.open("wb") as out:
        sink = None if verbose else out
        process = subprocess.Popen(command, cwd=ROOT, stdout=sink, stderr=sink)
        code = process.wait()
    figures: dict[str, Any] = {"phase": name}
    ok = code == 0 and part.exists()
    if ok:
        figures = json.loads(part.read_text())
    elif not verbose:
        tail = log.read_text(errors="replace").splitlines()[-LOG_TAIL:]
        print(f"--- phase {name} exited {code}; its last lines:", *tail, sep="\n", file=sys.stderr)
    return {**figures, "ok": ok, "spawned_pid": process.pid, "exit_code": code,
            "wall_s": time.perf_counter() - started}  # fmt: skip


# --- checks -----------------------------------------------------------------------------


def check(report: dict[str, Any], profile: Profile, steps: int) -> list[str]:
    """What does not add up, in words; empty when every count does."""
    phases = report["phases"]
    problems = [
        f"{name}: its process exited {part['exit_code']} without figures (see its log)"
        for name, part in phases.items()
        if not part["ok"]
    ]
    problems += check_processes(phases, report["parent_pid"])
    done = {name: part for name, part in phases.items() if part["ok"]}
    if "caption" in done:
        problems += check_caption(done["caption"], profile)
    if "grpo" in done:
        problems += check_grpo(done["grpo"], profile, steps)
    if "eval" in done:
        problems += check_eval(done["eval"], profile)
    for name, part in done.items():
        at_start, total = part.get("gpu_used_at_start_gb"), part.get("gpu_total_gb")
        if at_start is not None and total and at_start > LEFTOVER_SHARE * total:
            problems.append(f"{name}: {at_start:.1f} GiB of the GPU was in use when it started")
    return problems


def check_processes(phases: dict[str, dict[str, Any]], parent: int) -> list[str]:
    """Each phase ran in the process the parent started for it, none in another's."""
    done = {name: part for name, part in phases.items() if part["ok"]}
    pids = [part["pid"] for part in done.values()]
    problems = [
        f"{name}: figures from pid {part['pid']}, not its process {part['spawned_pid']}"
        for name, part in done.items()
        if part["pid"] != part["spawned_pid"]
    ]
    if len(set(pids)) != len(pids) or parent in pids:
        problems.append(f"phases shared a process: pids {pids}, parent {parent}")
    return problems


def check_caption(part: dict[str, Any], profile: Profile) -> list[str]:
    """Every dataset item went through both captioner calls (none from the cache), in the
    two calls that were timed (one chunk, one call per captioner step)."""
    expected = profile.caption_items
    problems = []
    if not part["items"] == part["records"] == part["items_captioned"] == expected:
        problems.append(
            f"caption: {part['items_captioned']} of {part['items']} items captioned "
            f"({part['records']} records, {expected} in the dataset)"
        )
    if part["generate_calls"] != 2:
        problems.append(f"caption: {part['generate_calls']} captioner calls timed, expected 2")
    return problems


def check_grpo(part: dict[str, Any], profile: Profile, steps: int) -> list[str]:
    """Every step had prompts x group completions, each exactly the cap long."""
    completions = profile.prompts_per_step * profile.group
    per_step = completions * profile.cap
    problems = []
    if part["steps"] != steps:
        problems.append(f"grpo: {part['steps']} steps logged, {steps} asked for")
    if any(n != completions for n in part["completions_per_step"]):
        problems.append(f"grpo: completions per step {part['completions_per_step']}, "
                        f"expected {completions}")  # fmt: skip
    if any(t != per_step for t in part["tokens_per_step"]):
        problems.append(
            f"grpo: generated tokens per step {part['tokens_per_step']}, expected "
            f"{completions} x {profile.cap} = {per_step}: lengths were not forced"
        )
    if part["tokens"] != steps * per_step:
        problems.append(f"grpo: {part['tokens']} tokens in all, expected {steps * per_step}")
    return problems


def check_eval(part: dict[str, Any], profile: Profile) -> list[str]:
    """The job succeeded and stored every item asked for."""
    expected = profile.eval_items
    if part["job_status"] == "succeeded" and part["items"] == part["requests"] == expected:
        return []
    return [
        f"eval: job {part['job_status']} ({part['job_error']}), {part['items']} items stored "
        f"and {part['requests']} generated of {expected}"
    ]


# --- the table --------------------------------------------------------------------------

ROWS: dict[str, list[tuple[str, str]]] = {
    "caption": [
        ("pid", "process id"),
        ("job_status", "job status"),
        ("items", "items in the dataset"),
        ("items_captioned", "items through both captioner calls"),
        ("engine_start_s", "captioner vLLM start-up s"),
        ("generate_s", "captioner generation s"),
        ("generate_calls", "captioner generate calls"),
        ("items_per_s", "items/s (captioner calls)"),
        ("tokens_pseudo_cot", "generated tokens: pseudo-CoT step"),
        ("tokens_description", "generated tokens: description step"),
        ("tokens", "generated tokens: both steps"),
        ("tokens_per_s", "generated tokens/s"),
        ("reasoner_tokens", "reasoner tokens (not timed)"),
        ("job_s", "whole job s (reasoner included)"),
    ],
    "grpo": [
        ("pid", "process id"),
        ("steps", "steps"),
        ("shape", "cap x group (prompts per step)"),
        ("vllm_max_model_len", "vLLM max_model_len"),
        ("construction_s", "trainer + vLLM construction s"),
        ("startup_s", "start to first step's end s"),
        ("first_step_s", "first step s"),
        ("step_s_median", "median later step s"),
        ("tokens_per_step", "generated tokens per step"),
        ("tokens", "generated tokens in all"),
        ("tokens_per_s", "rollout tokens/s (later steps)"),
        ("rollout_logp_gap_median", "rollout/policy |log p| gap, median"),
        ("rollout_logp_gap_max", "rollout/policy |log p| gap, worst token"),
        ("is_ratio_mean_median", "IS ratio mean, median"),
        ("is_clipped_frac_max", "IS ratios clipped, max share"),
        ("torch_peak_gb", "peak torch GPU memory GiB"),
        ("stage_s", "whole stage s (save included)"),
    ],
    "eval": [
        ("pid", "process id"),
        ("job_status", "job status"),
        ("items_requested", "items asked for"),
        ("items", "items stored"),
        ("engine_start_s", "vLLM start-up s (in the job's run)"),
        ("generate_s", "generation s"),
        ("items_per_s", "items/s (generation)"),
        ("tokens", "generated tokens"),
        ("tokens_per_s", "generated tokens/s"),
        ("job_s", "whole job s (run process included)"),
    ],
}
COMMON = [
    ("gpu_used_at_start_gb", "GPU memory in use at start GiB"),
    ("gpu_used_peak_gb", "GPU memory in use, peak GiB"),
    ("exit_code", "process exit code"),
    ("wall_s", "process wall s"),
]


def cell(value: Any) -> str:
    """A figure as the table shows it."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2e}" if 0 < abs(value) < 0.01 else f"{value:.2f}"
    if isinstance(value, list):
        shown = ", ".join(cell(v) for v in value[:6])
        return shown + (f", ... ({len(value)})" if len(value) > 6 else "")
    return str(value)


def shown(name: str, part: dict[str, Any]) -> dict[str, Any]:
    """A phase's figures with the composite cells the table adds."""
    view = dict(part)
    if part.get("job_error"):
        view["job_status"] = f"{part['job_status']}: {part['job_error']}"
    if name == "grpo" and "cap" in part:
        view["shape"] = f"{part['cap']} x {part['group']} ({part['prompts_per_step']})"
    return view


def print_table(report: dict[str, Any], title: str) -> None:
    """One table: a row per figure, grouped by phase."""
    print(f"\n{title}")
    print(f"{'phase':<9}{'measure':<42}value")
    for name, part in report["phases"].items():
        view = shown(name, part)
        for key, label in [*ROWS[name], *COMMON]:
            print(f"{name:<9}{label:<42}{cell(view.get(key))}")
    print(f"{'all':<9}{'model build s':<42}{cell(report['build_s'])}")
    print(f"{'all':<9}{'total s':<42}{cell(report['total_s'])}")
    for problem in report["problems"]:
        print(f"DOES NOT ADD UP: {problem}")


# --- entry points -----------------------------------------------------------------------


@contextlib.contextmanager
def workspace(given: Path | None) -> Iterator[Path]:
    """The folder the models, data, platform homes and phase logs go to: the one given
    (kept), else a temporary one (removed)."""
    if given is not None:
        given.mkdir(parents=True, exist_ok=True)
        if any(given.iterdir()):
            raise SystemExit(f"--work {given} is not empty: each check starts from nothing")
        yield given.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="vr1-gpu-check-") as tmp:
        yield Path(tmp)


def run_all(args: argparse.Namespace) -> int:
    """Build, run each phase in its own process, print the table; 1 if anything is off."""
    profile = CPU_SMOKE if args.cpu_smoke else GPU
    if args.cpu_smoke:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB per engine: plenty here
    else:
        refuse_without_gpu()
    started = time.perf_counter()
    with workspace(args.work) as work:
        plan = Plan(work, profile, args.steps)
        build_s = build(plan)
        phases = {name: spawn(name, plan, verbose=args.verbose) for name in PHASES}
    report: dict[str, Any] = {
        "mode": "cpu-smoke" if args.cpu_smoke else "gpu",
        "profile": asdict(profile),
        "steps": args.steps,
        "parent_pid": os.getpid(),
        "build_s": build_s,
        "phases": phases,
        "total_s": time.perf_counter() - started,
    }
    report["problems"] = check(report, profile, args.steps)
    kind = "CPU smoke, tiny sizes" if args.cpu_smoke else f"{profile.size} model"
    print_table(report, f"GPU check ({kind}; each phase in its own process)")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    if report["problems"]:
        print(f"bench/gpu.py: {len(report['problems'])} check(s) failed", file=sys.stderr)
        return 1
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, on a CPU")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (the first warms up)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--verbose", action="store_true", help="show the phases' own output")
    parser.add_argument(
        "--work", type=Path, help="build and keep everything here (phase logs included)"
    )
    parser.add_argument("--phase", choices=sorted(PHASES), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1:
        parser.error("--steps must be at least 1")
    if args.phase is None:
        raise SystemExit(run_all(args))
    if args.work is None or args.json is None:
        parser.error("--phase needs --work and --json")  # as the parent passes them
    figures = run_phase(args.phase, read_plan(args.work))
    args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
