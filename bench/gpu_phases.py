"""The GPU check's three phases, each run by ``bench/gpu.py --phase NAME`` in its own process.

vLLM frees the memory of an engine (its weights and KV cache, up to the share of the GPU it
was given) only when its process exits: ``close()`` drops a reference and nothing more.  So
each phase is a process of its own, and none starts while another one's engine is alive.

- ``caption``: a platform ``coldstart`` job with the captioner (and reasoner) on ``engine:
  vllm``; the captioner's own calls are timed, its tokens read from the job's records.
- ``grpo``: one PTST stage through ``run_grpo_stage`` with vLLM rollouts, every completion
  forced to the stage's cap (see :func:`forced_to_cap`).
- ``eval``: a platform ``eval`` job with ``engine: vllm``, its run process started as
  ``bench/gpu_eval_run.py`` so that vLLM's own token counts and times come back.

Each phase returns a dict of figures (with its pid) that the parent writes into one table.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GIB = 2**30


@dataclass(frozen=True)
class Profile:
    """Sizes of one run of the check."""

    size: str  # the VLM: captioner, GRPO policy and eval model
    reasoner_size: str  # the text LM behind the coldstart job's reasoner
    dtype: str
    enforce_eager: bool
    caption_items: int
    caption_tokens: int
    reason_tokens: int
    cap: int
    group: int
    prompts_per_step: int
    eval_items: int
    eval_tokens: int
    # vLLM's share of the device per engine: the captioner and the reasoner share one
    # process (and so the device); the rollout engine shares it with the training state.
    caption_share: float
    reasoner_share: float
    rollout_share: float


@dataclass(frozen=True)
class Plan:
    """What the parent built for the phases and how they should run."""

    work: Path
    profile: Profile
    steps: int

    @property
    def vlm(self) -> Path:
        """The random VLM (captioner, policy, eval model)."""
        return self.work / "vlm"

    @property
    def lm(self) -> Path:
        """The random text LM (reasoner)."""
        return self.work / "lm"

    @property
    def train(self) -> Path:
        """Toy rows to caption and to train on."""
        return self.work / "toy" / "train.jsonl"

    @property
    def test(self) -> Path:
        """Toy rows to evaluate on."""
        return self.work / "toy" / "test.jsonl"


# --- device memory ----------------------------------------------------------------------


class DeviceMemory:
    """Memory in use on the GPU (every process's, as NVML sees it), sampled in a thread.

    NVML rather than torch: vLLM's engine may live in a child process, and asking torch
    would put a CUDA context into this one.  Nothing is measured where NVML is missing.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.handle: Any = None
        self.at_start = self.peak = self.total = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)

    def __enter__(self) -> DeviceMemory:
        try:
            import pynvml

            pynvml.nvmlInit()
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(_visible_index())
            info = pynvml.nvmlDeviceGetMemoryInfo(self.handle)
        except Exception:  # no NVML, no driver or no GPU: nothing to measure
            self.handle = None
            return self
        self.at_start = self.peak = int(info.used)
        self.total = int(info.total)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.handle is not None:
            self._stop.set()
            self._thread.join()

    def _watch(self) -> None:
        import pynvml

        while not self._stop.wait(self.interval_s):
            with contextlib.suppress(Exception):
                used = int(pynvml.nvmlDeviceGetMemoryInfo(self.handle).used)
                self.peak = max(self.peak, used)

    def figures(self) -> dict[str, float | None]:
        """GiB in use when the phase started, at its peak, and the device's total."""
        if self.handle is None:
            return {"gpu_used_at_start_gb": None, "gpu_used_peak_gb": None, "gpu_total_gb": None}
        return {
            "gpu_used_at_start_gb": self.at_start / GIB,
            "gpu_used_peak_gb": self.peak / GIB,
            "gpu_total_gb": self.total / GIB,
        }


def _visible_index() -> int:
    """NVML's index of the first device CUDA sees (CUDA_VISIBLE_DEVICES may name one)."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "0").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


# --- platform helpers -------------------------------------------------------------------


def _platform(home: Path) -> Any:
    from entrypoints.bootstrap import embedded
    from shared.settings import BaseVR1Settings

    return embedded(BaseVR1Settings(home=home))


def _register(platform: Any, path: Path, name: str, kind: str) -> str:
    """Register a toy JSONL as a dataset; returns its id."""
    from shared.contracts.api import DatasetCreate
    from shared.datasets import register_dataset

    with platform.db.session() as session:
        request = DatasetCreate(name=name, kind=kind, path=str(path))
        dataset, _ = register_dataset(
            session, team=platform.team(), request=request, roots=[path.parent],
            store=platform.store,
        )  # fmt: skip
        return str(dataset.id)


def _first_line(text: str | None) -> str | None:
    """A job's error, short enough for a table cell."""
    return None if not text else text.splitlines()[0].split("; funnel")[0][:120]


# --- caption ----------------------------------------------------------------------------


class TimedCalls:
    """Times every ``generate`` call of one engine (the captioner's, shared by the job)."""

    def __init__(self, engine: Any) -> None:
        self.seconds = 0.0
        self.calls = 0
        self._generate = engine.generate
        engine.generate = self._timed

    def _timed(self, requests: Any) -> Any:
        started = time.perf_counter()
        try:
            return self._generate(requests)
        finally:
            self.seconds += time.perf_counter() - started
            self.calls += 1


def _engine_spec(model: Path, profile: Profile, share: float, tokens: int) -> Any:
    """A coldstart step's engine: vLLM with the profile's precision and a device share."""
    from shared.contracts.specs import EngineSpec

    return EngineSpec(
        engine="vllm",
        model=str(model),
        dtype=profile.dtype,
        vllm={"gpu_memory_utilization": share, "enforce_eager": profile.enforce_eager},
        generation={"max_new_tokens": tokens, "temperature": 1.0, "seed": 0},
    )


def caption_phase(plan: Plan) -> dict[str, Any]:
    """A coldstart job on ``engine: vllm``: the captioner's items/s and tokens per step."""
    from sqlalchemy import select

    from shared.contracts.specs import ColdstartSpec
    from shared.db.models import GenerationRecord
    from shared.engines import close_engines, engine_for

    profile = plan.profile
    platform = _platform(plan.work / "home-caption")
    source = _register(platform, plan.train, "toy-source", "source")
    spec = ColdstartSpec(
        dataset_id=source,
        captioner=_engine_spec(plan.vlm, profile, profile.caption_share, profile.caption_tokens),
        reasoner=_engine_spec(plan.lm, profile, profile.reasoner_share, profile.reason_tokens),
        chunk_size=profile.caption_items,  # one chunk: vLLM batches every item at once
    )
    started = time.perf_counter()
    timer = TimedCalls(engine_for(spec.captioner))  # the job finds this engine and uses it
    engine_start = time.perf_counter() - started
    job = platform.run(spec, name="gpu check: caption")
    job_s = time.perf_counter() - started - engine_start
    with platform.db.session() as session:
        query = select(GenerationRecord).where(GenerationRecord.job_id == job.id)
        usage = [dict(record.tokens) for record in session.scalars(query)]
    close_engines()
    return caption_figures(job, usage, timer, engine_start, job_s)


def caption_figures(
    job: Any, usage: list[dict[str, Any]], timer: TimedCalls, engine_start: float, job_s: float
) -> dict[str, Any]:
    """The captioner's figures from the job's records (one ``tokens`` dict per item)."""

    def fresh(entry: dict[str, Any], step: str) -> bool:
        return step in entry and not entry[step].get("cached")

    def completion(step: str) -> int:
        return sum(int(entry.get(step, {}).get("completion", 0)) for entry in usage)

    captioned = sum(fresh(e, "pseudo_cot") and fresh(e, "description") for e in usage)
    tokens = completion("pseudo_cot") + completion("description")
    generate_s = timer.seconds or float("nan")
    return {
        "job_status": job.status,
        "job_error": _first_line(job.error),
        "items": job.items_total,
        "records": len(usage),
        "items_captioned": captioned,
        "engine_start_s": engine_start,
        "generate_calls": timer.calls,
        "generate_s": timer.seconds,
        "items_per_s": captioned / generate_s,
        "tokens_pseudo_cot": completion("pseudo_cot"),
        "tokens_description": completion("description"),
        "tokens": tokens,
        "tokens_per_s": tokens / generate_s,
        "reasoner_tokens": completion("reasoning"),
        "job_s": job_s,
    }


# --- grpo -------------------------------------------------------------------------------


@contextlib.contextmanager
def forced_to_cap(cap: int) -> Iterator[dict[str, int]]:
    """Every rollout exactly ``cap`` tokens long: vLLM's ``min_tokens`` added to the
    sampling rules the trainer hands TRL (which passes them to vLLM's SamplingParams).

    A random model ends most completions early, so without this "4096 x 16" would time
    completions far shorter than 4096 tokens.  Only a benchmark may do this: the end
    tokens' probability is taken away until the cap, a shift the measured log-prob gap
    between vLLM and the policy includes (small: two tokens of a whole vocabulary).
    Also yields vLLM's context length as the trainer computed it.
    """
    from services.trainer import grpo

    rules, model_len = grpo.sampling_rules, grpo.rollout_model_len
    seen: dict[str, int] = {}

    def forced(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**rules(*args, **kwargs), "min_tokens": cap}

    def measured(*args: Any, **kwargs: Any) -> int:
        seen["max_model_len"] = model_len(*args, **kwargs)
        return seen["max_model_len"]

    grpo.sampling_rules, grpo.rollout_model_len = forced, measured  # type: ignore[assignment]
    try:
        yield seen
    finally:
        grpo.sampling_rules, grpo.rollout_model_len = rules, model_len  # type: ignore[assignment]


def grpo_phase(plan: Plan) -> dict[str, Any]:
    """One PTST stage with vLLM rollouts at the profile's cap x group, lengths forced."""
    from services.trainer.data import load_prompt_rows
    from services.trainer.grpo import run_grpo_stage
    from shared.contracts.specs import GrpoOptions, RolloutVllmOptions, StageSpec
    from shared.rewards import reward_fn

    profile = plan.profile
    stage = StageSpec(
        max_completion_tokens=profile.cap,
        group_size=profile.group,
        steps=plan.steps,
        prompts_per_step=profile.prompts_per_step,
    )
    vllm = RolloutVllmOptions(
        gpu_memory_utilization=profile.rollout_share,
        dtype=profile.dtype,
        enforce_eager=profile.enforce_eager,
    )  # max_model_len left to the platform: the longest prompt + the cap
    # beta 0: no reference model, so the step is rollouts + one policy update (as TRL's
    # default); a job at the paper's 1e-2 adds a reference forward pass to each step.
    options = GrpoOptions(
        stages=[stage], rollout_engine="vllm", vllm=vllm, beta=0.0, seed=0, samples_per_step=0
    )
    started = time.perf_counter()
    steps: list[tuple[float, dict[str, float]]] = []

    def on_step(step: int, metrics: dict[str, float]) -> None:
        steps.append((time.perf_counter() - started, {"step": step, **metrics}))

    with forced_to_cap(profile.cap) as seen:
        run_grpo_stage(
            plan.vlm,
            load_prompt_rows(plan.train),
            stage,
            options,
            plan.work / "grpo-out",
            reward_funcs=[reward_fn("hfrrf")],
            on_step=on_step,
        )
    figures = grpo_figures(steps, profile)
    return {**figures, "vllm_max_model_len": seen.get("max_model_len"),
            "stage_s": time.perf_counter() - started}  # fmt: skip


def grpo_figures(steps: list[tuple[float, dict[str, float]]], profile: Profile) -> dict[str, Any]:
    """Start-up (to the first step's end) apart from the steady state (the later steps)."""
    per_step = [
        {**m, "tokens": round(m["completions"] * m["completion_len_mean"]), "ended_s": at}
        for at, m in steps
    ]
    first, later = (per_step[0] if per_step else None), per_step[1:]
    median = statistics.median

    def of(key: str, rows: list[dict[str, Any]], pick: Any = median) -> float | None:
        values = [r[key] for r in rows if key in r]
        return pick(values) if values else None

    steady = [r["tokens"] / r["step_time_s"] for r in later if r["step_time_s"] > 0]
    return {
        "steps": len(per_step),
        "cap": profile.cap,
        "group": profile.group,
        "prompts_per_step": profile.prompts_per_step,
        "startup_s": first["ended_s"] if first else None,
        "construction_s": first["ended_s"] - first["step_time_s"] if first else None,
        "first_step_s": first["step_time_s"] if first else None,
        "step_s_median": of("step_time_s", later),
        "tokens_per_step": [r["tokens"] for r in per_step],
        "completions_per_step": [round(r["completions"]) for r in per_step],
        "completion_len_max": of("completion_len_max", per_step, max),
        "tokens": sum(r["tokens"] for r in per_step),
        "tokens_per_s": median(steady) if steady else None,
        "rollout_logp_gap_median": of("rollout_logp_gap", per_step),
        "rollout_logp_gap_max": of("rollout_logp_gap_max", per_step, max),
        "is_ratio_mean_median": of("is_ratio_mean", per_step),
        "is_clipped_frac_max": of("is_clipped_frac", per_step, max),
        "torch_peak_gb": of("gpu_memory_peak_gb", per_step, max),
        "per_step": per_step,
    }


# --- eval -------------------------------------------------------------------------------


@contextlib.contextmanager
def counted_eval_runs(out: Path) -> Iterator[None]:
    """Training runs launched meanwhile start as ``bench/gpu_eval_run.py``: the platform's
    run, its engine's tokens and times written to ``out`` (the job stores only text)."""
    from bench.gpu_eval_run import OUT_ENV
    from services.trainer import launcher

    entry = launcher._entry
    script = str(Path(__file__).with_name("gpu_eval_run.py"))
    launcher._entry = lambda job_id: [script, job_id]
    os.environ[OUT_ENV] = str(out)
    try:
        yield
    finally:
        launcher._entry = entry


def eval_phase(plan: Plan) -> dict[str, Any]:
    """An eval job with ``engine: vllm``: items/s and generated tokens."""
    from sqlalchemy import func, select

    from shared.contracts.specs import EvalSpec
    from shared.db.models import EvalResult

    profile = plan.profile
    platform = _platform(plan.work / "home-eval")
    test = _register(platform, plan.test, "toy-test", "eval")
    spec = EvalSpec(
        model=str(plan.vlm),
        dataset_ids=[test],
        engine="vllm",
        dtype=profile.dtype,
        max_new_tokens=profile.eval_tokens,
        max_tries=1,
        limit=profile.eval_items,
        vllm={"enforce_eager": profile.enforce_eager},
    )
    out = plan.work / "eval-run.json"
    started = time.perf_counter()
    with counted_eval_runs(out):
        job = platform.run(spec, name="gpu check: eval")
    job_s = time.perf_counter() - started
    with platform.db.session() as session:
        query = select(func.count()).select_from(EvalResult).where(EvalResult.job_id == job.id)
        stored = int(session.scalar(query) or 0)
    if not out.exists():
        raise RuntimeError("the eval job's run did not report its engine's figures")
    run = json.loads(out.read_text())
    generate_s = run["generate_s"] or float("nan")
    return {
        "job_status": job.status,
        "job_error": _first_line(job.error),
        "items_requested": profile.eval_items,
        "items": stored,
        "requests": run["requests"],
        "engine_start_s": run["engine_start_s"],
        "generate_s": run["generate_s"],
        "items_per_s": stored / generate_s,
        "tokens": run["tokens"],
        "tokens_per_s": run["tokens"] / generate_s,
        "job_s": job_s,
    }


PHASES = {"caption": caption_phase, "grpo": grpo_phase, "eval": eval_phase}


def run_phase(name: str, plan: Plan) -> dict[str, Any]:
    """Run one phase in this process, with its pid, wall time and device memory."""
    started = time.perf_counter()
    with DeviceMemory() as memory:
        figures = PHASES[name](plan)
    return {
        "phase": name,
        "pid": os.getpid(),
        **figures,
        **memory.figures(),
        "process_s": time.perf_counter() - started,
    }
