"""One PTST stage = one TRL GRPOTrainer run, started from the previous stage's weights.

TRL cannot change the completion cap or the group size inside a run, so Progressive
Thinking Suppression Training is a sequence of these calls, each with its own cap
(``max_completion_tokens``), group size and step count; the caller passes the previous
stage's ``final`` folder as ``model_dir``.  Per step, ``on_step`` receives what the
completions looked like (from a zero-weight recording reward) with the loss and KL, and
``on_samples`` (just before) a few of the completions themselves.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from transformers import (
    PrinterCallback,
    set_seed,
)
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer

from services.trainer.callbacks import (
    ForwardLogs,
    LogFn,
    StepTimer,
    StopFn,
    StopWhenAsked,
    TrainingStopped,
    run_arguments,
)
from services.trainer.data import PromptRow, grpo_records
from services.trainer.models import (
    Policy,
    freeze_vision,
    load_policy,
    restore_checkpoint_weights,
    save_policy,
    vision_token_ids,
)
from services.trainer.onpolicy import (
    OnPolicyGRPOTrainer,
    correction_arguments,
    rollout_dtype,
    sampling_rules,
)
from services.trainer.rollouts import Paid, RewardFn, RolloutRecorder, Sample
from shared.contracts.specs import GrpoOptions, StageSpec
from shared.engines.vllm_cpu_compat import keep_cpu_weights_updatable
from shared.errors import InvalidInput
from shared.rewards import Scorer, default_scorer

log = logging.getLogger(__name__)
SamplesFn = Callable[[int, list[Sample]], None]
# Measured by OnPolicyGRPOTrainer on every step with vLLM rollouts.
OFF_POLICY_KEYS = (
    "rollout_logp_gap",
    "rollout_logp_gap_signed",
    "rollout_logp_gap_max",
    "is_ratio_min",
    "is_ratio_mean",
    "is_ratio_max",
    "is_clipped_frac",
)


def completions_per_step(stage: StageSpec, options: GrpoOptions) -> tuple[int, int]:
    """(prompts, completions) per optimizer step for this stage."""
    prompts = stage.prompts_per_step or options.prompts_per_step
    return prompts, prompts * stage.group_size


def prompt_length(record: dict[str, Any], policy: Policy) -> int:
    """Tokens of one GRPO prompt as the policy sees it: chat template and image tokens."""
    text = policy.processing_class.apply_chat_template(
        record["prompt"], add_generation_prompt=True, tokenize=False
    )
    if record.get("images"):
        encoded = policy.processing_class(text=[text], images=record["images"])
        return len(encoded["input_ids"][0])
    return len(policy.tokenizer(text, add_special_tokens=False)["input_ids"])


def within_prompt_length(
    records: list[dict[str, Any]], lengths: list[int], limit: int
) -> tuple[list[dict[str, Any]], list[int]]:
    """The prompts of at most ``limit`` tokens, with their lengths (as verl and EasyR1
    filter overlong prompts); ``lengths`` are the records' ``prompt_length``s."""
    kept = [(r, n) for r, n in zip(records, lengths, strict=True) if n <= limit]
    if not kept:
        raise InvalidInput(f"no prompt fits in max_prompt_length={limit} tokens")
    if len(kept) < len(records):
        log.warning("%d of %d prompts are over %d tokens: left out", len(records) - len(kept),
                    len(records), limit)  # fmt: skip
    return [r for r, _ in kept], [n for _, n in kept]


def grpo_config(
    stage: StageSpec,
    options: GrpoOptions,
    out_dir: Path,
    *,
    suppress: list[int],
    checkpoint_every: int | None,
    run_name: str = "",
    max_model_len: int | None = None,
) -> GRPOConfig:
    """TRL settings for one stage: the stage's cap, group and overrides on the shared options.

    Sampling is set once, for the rollouts and the loss alike: TRL divides the policy's
    logits by the same ``temperature`` it samples with, the suppression is in the policy's
    head and (for vLLM) in ``logit_bias`` with the same numbers, and ``top_p`` is 1.
    """
    _, completions = completions_per_step(stage, options)
    processes = PartialState().num_processes
    if completions % processes:
        raise InvalidInput(f"{completions} completions per step do not split over {processes}")
    on_gpu = torch.cuda.is_available()
    vllm = options.rollout_engine == "vllm"
    return GRPOConfig(
        output_dir=str(out_dir),
        max_steps=stage.steps,
        # One generation batch per optimizer step: every step sees prompts x group fresh
        # completions and updates once on them (on-policy, as in the paper).
        per_device_train_batch_size=completions // processes,
        generation_batch_size=completions,
        gradient_accumulation_steps=1,
        num_iterations=1,
        num_generations=stage.group_size,
        max_completion_length=stage.max_completion_tokens,
        temperature=stage.temperature or options.temperature,
        top_p=options.top_p,
        generation_kwargs=sampling_rules(suppress, vllm=vllm),
        learning_rate=stage.learning_rate or options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,  # restarts per stage: each stage is a new run
        warmup_steps=0,
        epsilon=options.epsilon,
        beta=options.beta if stage.beta is None else stage.beta,  # > 0 loads a reference model
        loss_type=options.loss_type,
        use_vllm=vllm,
        vllm_mode="colocate",  # the server mode's weight sync needs CUDA (NCCL)
        vllm_gpu_memory_utilization=options.vllm.gpu_memory_utilization,
        vllm_tensor_parallel_size=options.vllm.tensor_parallel_size,
        vllm_max_model_length=max_model_len,
        **correction_arguments(options.off_policy),
        use_cpu=not on_gpu,
        bf16=on_gpu and torch.cuda.is_bf16_supported(),
        **run_arguments(
            options.seed,
            checkpoint_every,
            options.distributed.deepspeed_config,
            report_to=options.report_to,
            run_name=run_name,
        ),
    )


class StepMetrics(ForwardLogs):
    """Join the recorder's rollout figures with TRL's reward, loss and KL for ``on_step``;
    the step's kept samples go to ``on_samples`` just before."""

    def __init__(
        self,
        sink: LogFn,
        recorder: RolloutRecorder,
        timer: StepTimer,
        on_samples: SamplesFn | None = None,
    ) -> None:
        super().__init__(self._forward)
        self.step_sink, self.on_samples = sink, on_samples
        self.recorder, self.timer = recorder, timer
        self._samples: list[Sample] = []

    def _forward(self, step: int, metrics: dict[str, float]) -> None:
        if self.on_samples is not None:
            self.on_samples(step, self._samples)
        self.step_sink(step, metrics)

    def metrics(self, values: dict[str, float]) -> dict[str, float]:
        self._samples = self.recorder.pop_samples()  # every process takes part, as in pop()
        metrics = {
            "reward_mean": values.get("reward", 0.0),
            **self.recorder.pop(),
            "kl": values.get("kl", 0.0),  # TRL measures KL only when beta > 0
            "loss": values["loss"],
            "learning_rate": values.get("learning_rate", 0.0),
            "step_time_s": self.timer.last_step_s,
        }
        # How far vLLM's sampling was from the policy, and what the correction did.
        metrics.update({k: values[k] for k in OFF_POLICY_KEYS if k in values})
        if torch.cuda.is_available():
            metrics["gpu_memory_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
        return metrics


def build_grpo_trainer(
    model_dir: Path,
    prompts: list[PromptRow],
    stage: StageSpec,
    options: GrpoOptions,
    out_dir: Path,
    *,
    reward_funcs: list[RewardFn],
    scorer: Scorer | None = None,
    checkpoint_every: int | None = None,
    run_name: str = "",
    keep_samples: int = 0,
) -> tuple[GRPOTrainer, Policy, RolloutRecorder]:
    """A GRPOTrainer for one stage, the policy it trains, and its rollout recorder (which
    keeps ``keep_samples`` completions per step, with the rewards the trainer paid)."""
    set_seed(options.seed)
    policy = load_policy(model_dir)
    if policy.vision and options.freeze_vision:
        freeze_vision(policy.model)
    records = grpo_records(prompts, vision=policy.vision, system_prompt=options.system_prompt)
    vllm = options.rollout_engine == "vllm"
    # Each prompt is measured once (images processed): to filter, and to size vLLM.
    measure = vllm or options.max_prompt_length
    lengths = [prompt_length(r, policy) for r in records] if measure else []
    if options.max_prompt_length:
        records, lengths = within_prompt_length(records, lengths, options.max_prompt_length)
    suppress = vision_token_ids(policy)
    if keep_samples:
        reward_funcs = [Paid(fn) for fn in reward_funcs]
    recorder = RolloutRecorder(
        stage.max_completion_tokens,
        scorer or default_scorer(),
        keep=keep_samples,
        paid=[fn for fn in reward_funcs if isinstance(fn, Paid)],
    )
    args = grpo_config(
        stage,
        options,
        out_dir,
        suppress=suppress,
        checkpoint_every=checkpoint_every,
        run_name=run_name,
        max_model_len=rollout_model_len(max(lengths), stage, options) if vllm else None,
    )
    args.reward_weights = [1.0] * len(reward_funcs) + [0.0]  # the recorder only watches
    if args.use_vllm and not torch.cuda.is_available():
        keep_cpu_weights_updatable()  # the colocated vLLM runs in this process
    trainer = OnPolicyGRPOTrainer(
        model=policy.model,
        reward_funcs=[*reward_funcs, recorder],
        args=args,
        train_dataset=Dataset.from_list(records),
        processing_class=policy.processing_class,
        options=options,
        suppress=suppress,
        dtype=rollout_dtype(options.vllm, args, policy.model.dtype),
    )
    recorder.eos_ids = set(trainer.eos_token_ids)
    trainer.remove_callback(PrinterCallback)  # metrics go to on_step, not to stdout
    return trainer, policy, recorder


def rollout_model_len(longest_prompt: int, stage: StageSpec, options: GrpoOptions) -> int:
    """vLLM's context length for a stage: the spec's, which must hold the longest prompt
    and the stage's cap, or (unset) exactly that."""
    needed = longest_prompt + stage.max_completion_tokens
    given = options.vllm.max_model_len
    if given is not None and given < needed:
        raise InvalidInput(
            f"vllm.max_model_len={given} cannot hold the longest prompt and this stage's "
            f"{stage.max_completion_tokens} completion tokens ({needed} in all)"
        )
    return given or needed


def run_grpo_stage(
    model_dir: Path,
    prompts: list[PromptRow],
    stage: StageSpec,
    options: GrpoOptions,
    out_dir: Path,
    *,
    reward_funcs: list[RewardFn],
    on_step: LogFn | None = None,
    on_samples: SamplesFn | None = None,
    should_stop: StopFn | None = None,
    resume_from: Path | None = None,
    checkpoint_every: int | None = None,
    scorer: Scorer | None = None,
    run_name: str = "",
) -> Path:
    """Train one PTST stage from ``model_dir``; save to ``out_dir/final`` and return it."""
    keep = options.samples_per_step if on_step is not None and on_samples is not None else 0
    trainer, policy, recorder = build_grpo_trainer(
        model_dir,
        prompts,
        stage,
        options,
        out_dir,
        reward_funcs=reward_funcs,
        scorer=scorer,
        checkpoint_every=checkpoint_every,
        run_name=run_name,
        keep_samples=keep,
    )
    if resume_from is not None:
        restore_checkpoint_weights(trainer, policy.model, resume_from)
    timer = StepTimer()
    trainer.add_callback(timer)
    if on_step is not None:
        trainer.add_callback(StepMetrics(on_step, recorder, timer, on_samples))
    stopper = StopWhenAsked(should_stop) if should_stop is not None else None
    if stopper is not None:
        trainer.add_callback(stopper)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stopper is not None and stopper.stopped_at is not None:
        raise TrainingStopped(stopper.stopped_at, str(out_dir / f"checkpoint-{stopper.stopped_at}"))
    return save_policy(policy, out_dir / "final", trainer=trainer)
