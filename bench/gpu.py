"""GPU check: generation, a GRPO stage and an eval job through vLLM, on one GPU, in minutes.

Builds a random Qwen2.5-VL-architecture model of about 2.5 B parameters offline (the
tiny-model builder at size "2b"), then measures through the platform's own code:

1. the captioner step: the ``vllm`` engine describing toy images (tokens/s);
2. a PTST stage as a platform ``grpo`` job at cap 4096 x group 16 with vLLM rollouts, for a
   few steps: step time, rollout tokens/s per GPU, peak GPU memory of the training process;
3. an ``eval`` job through vLLM (items/s).

One table, and ``--json PATH``.  Without a CUDA GPU and vLLM it stops at once, saying so.
``--cpu-smoke`` runs the same path end to end on a CPU with tiny sizes (vLLM's CPU build:
run it with ``.venv-vllm/bin/python``)::

    python bench/gpu.py [--steps 3] [--json PATH]
    .venv-vllm/bin/python bench/gpu.py --cpu-smoke --json PATH
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Profile:
    """Sizes of one run of the check."""

    size: str
    dtype: str
    caption_items: int
    caption_tokens: int
    cap: int
    group: int
    prompts_per_step: int
    eval_items: int
    eval_tokens: int


GPU = Profile("2b", "bfloat16", 64, 512, 4096, 16, 1, 64, 1024)
CPU_SMOKE = Profile("tiny-h32", "float32", 8, 32, 16, 4, 1, 8, 16)


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


def build(work: Path, profile: Profile) -> tuple[Path, Any]:
    """The random model and the toy data (images, train and test JSONL)."""
    from shared.fixtures.tiny import build_tiny_vlm
    from shared.fixtures.toy import generate_toy_dataset

    started = time.perf_counter()
    model = build_tiny_vlm(work / "model", seed=0, size=profile.size)
    toy = generate_toy_dataset(
        work / "toy", seed=0, n_train=64, n_test=profile.eval_items, tasks=["shape_colour"]
    )
    print(f"built the {profile.size} model in {time.perf_counter() - started:.0f} s")
    return model, toy


def caption_throughput(model: Path, toy: Any, profile: Profile) -> dict[str, float]:
    """The captioner step's generation through the ``vllm`` engine."""
    from shared.contracts.specs import EngineSpec
    from shared.engines import GenerationRequest, make_engine
    from shared.fixtures.toy import read_rows
    from shared.prompts import template_for

    rows = read_rows(toy.train_path)[: profile.caption_items]
    template = template_for("pseudo_cot", None)
    spec = EngineSpec(
        engine="vllm",
        model=str(model),
        dtype=profile.dtype,
        generation={"max_new_tokens": profile.caption_tokens, "temperature": 1.0, "seed": 0},
    )
    started = time.perf_counter()
    engine = make_engine(spec)
    ready = time.perf_counter()
    requests = [
        GenerationRequest(
            prompt=template.render(question=row["question"], answer=row["answer"]),
            images=(str(toy.root / row["image"]),),
        )
        for row in rows
    ]
    results = engine.generate(requests)
    done = time.perf_counter()
    engine.close()
    tokens = sum(r.completion_tokens for r in results)
    return {
        "caption_engine_start_s": ready - started,
        "caption_items": len(results),
        "caption_tokens": tokens,
        "caption_tokens_per_s": tokens / (done - ready),
    }


def _platform(work: Path) -> Any:
    from entrypoints.bootstrap import embedded
    from shared.settings import BaseVR1Settings

    return embedded(BaseVR1Settings(home=work / "platform"))


def _register(platform: Any, path: Path, name: str, kind: str) -> str:
    from shared.contracts.api import DatasetCreate
    from shared.datasets import register_dataset

    with platform.db.session() as session:
        request = DatasetCreate(name=name, kind=kind, path=str(path))
        dataset, _ = register_dataset(
            session, team=platform.team(), request=request, roots=[path.parent],
            store=platform.store,
        )  # fmt: skip
        return str(dataset.id)


def grpo_stage(
    platform: Any, model: Path, rl: str, profile: Profile, steps: int
) -> dict[str, float]:
    """A PTST stage as a platform job, vLLM rollouts; figures from its stored metrics."""
    from sqlalchemy import select

    from shared.contracts.specs import GrpoSpec, StageSpec
    from shared.db.models import Metric

    stage = StageSpec(
        max_completion_tokens=profile.cap,
        group_size=profile.group,
        steps=steps,
        prompts_per_step=profile.prompts_per_step,
    )
    spec = GrpoSpec(
        model=str(model), dataset_id=rl, stages=[stage], rollout_engine="vllm", beta=0.0, seed=0
    )
    started = time.perf_counter()
    job = platform.run(spec)
    wall = time.perf_counter() - started
    if job.status != "succeeded":
        raise SystemExit(f"the grpo job ended {job.status}: {job.error}")
    with platform.db.session() as session:
        rows = session.scalars(select(Metric).where(Metric.job_id == job.id))
        per_step: dict[int, dict[str, float]] = {}
        for row in rows:
            per_step.setdefault(row.step, {})[row.name] = row.value
    timed = [per_step[s] for s in sorted(per_step)][1:] or list(per_step.values())  # warm
    step_s = sum(s["step_time_s"] for s in timed) / len(timed)
    tokens = sum(s["completions"] * s["completion_len_mean"] for s in timed) / len(timed)
    return {
        "grpo_job_s": wall,
        "grpo_step_s": step_s,
        "grpo_rollout_tokens_per_step": tokens,
        "grpo_tokens_per_s_per_gpu": tokens / step_s,
        "grpo_gpu_memory_peak_gb": max(s.get("gpu_memory_peak_gb", 0.0) for s in timed),
    }


def eval_job(platform: Any, model: Path, test: str, profile: Profile) -> dict[str, float]:
    """An eval job through vLLM: the paper's sampling, one try."""
    from shared.contracts.specs import EvalSpec

    spec = EvalSpec(
        model=str(model),
        dataset_ids=[test],
        engine="vllm",
        dtype=profile.dtype,
        max_new_tokens=profile.eval_tokens,
        max_tries=1,
        limit=profile.eval_items,
    )
    started = time.perf_counter()
    job = platform.run(spec)
    wall = time.perf_counter() - started
    if job.status != "succeeded":
        raise SystemExit(f"the eval job ended {job.status}: {job.error}")
    return {"eval_job_s": wall, "eval_items_per_s": profile.eval_items / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes, on a CPU")
    parser.add_argument("--steps", type=int, default=3, help="GRPO steps (the first warms)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    profile = CPU_SMOKE if args.cpu_smoke else GPU
    if args.cpu_smoke:
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    else:
        refuse_without_gpu()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="vr1-gpu-check-") as tmp:
        work = Path(tmp)
        model, toy = build(work, profile)
        figures: dict[str, Any] = {"profile": asdict(profile)}
        figures |= caption_throughput(model, toy, profile)
        platform = _platform(work)
        rl = _register(platform, toy.train_path, "rl", "rl")
        test = _register(platform, toy.test_path, "test", "eval")
        figures |= grpo_stage(platform, model, rl, profile, args.steps)
        figures |= eval_job(platform, model, test, profile)
    figures["total_s"] = time.perf_counter() - started
    print(f"\nGPU check ({'CPU smoke, tiny sizes' if args.cpu_smoke else profile.size + ' model'})")
    print(f"{'measure':<34}{'value':>14}")
    for key, value in figures.items():
        if key != "profile":
            print(
                f"{key:<34}{value:>14.2f}" if isinstance(value, float) else f"{key:<34}{value:>14}"
            )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
