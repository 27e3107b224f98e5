"""Rollouts from vLLM sampled from the distribution the loss scores, and the proof per step.

TRL's colocated vLLM samples the completions; the loss then scores them under the policy.
Three things made them two different distributions, each measured on this platform:

1. **The prompt.** TRL hands vLLM the processor's *expanded* prompt ids (one
   ``<|image_pad|>`` per image token) plus the image; vLLM expects a tokenizer's ids (one
   pad per image) and expands the first pad again, keeping the others as text: 31 ids with
   4 pads became 34 with 7, ~0.3 nats/token apart.  :func:`hand_over_unexpanded` gives vLLM
   one pad per image and checks, every rollout, that vLLM's own expansion is the policy's
   prompt exactly.
2. **Sampling rules on one side.** Vision placeholders were kept out of vLLM's sampling by
   ``logit_bias`` only; the loss biased nothing.  Now the same bias sits in the policy's and
   the reference model's output head (``bias_output_head``), which TRL's fused log-prob head
   reads, and the same number goes to vLLM as ``logit_bias`` (see :func:`sampling_rules`).
3. **Precision.** vLLM with ``dtype="auto"`` runs a float32 checkpoint in bfloat16 on a CPU;
   the dtype is set here from the job's spec (:func:`rollout_dtype`), never left to vLLM.

What remains is numerics (bfloat16 kernels on a GPU), which the loss corrects per token
(``OffPolicyCorrection``).  :class:`OnPolicyGRPOTrainer` measures the gap every step.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from trl.trainer.grpo_trainer import GRPOTrainer

from shared.contracts.specs import GrpoOptions, OffPolicyCorrection, RolloutVllmOptions
from shared.engines.loading import bias_output_head, suppression_bias
from shared.errors import VR1Error

log = logging.getLogger(__name__)
SEQUENCE_MODES = ("sequence_truncate", "sequence_mask")


class RolloutPromptMismatch(VR1Error):
    """vLLM would sample from another prompt than the one the loss scores."""

    code = "rollout_prompt_mismatch"


def collapse_image_runs(ids: Sequence[int], pad_id: int) -> list[int]:
    """The prompt as a tokenizer wrote it: each run of ``pad_id`` (one image's tokens, as the
    processor expanded them) back to the single pad vLLM expands itself."""
    return [t for i, t in enumerate(ids) if t != pad_id or i == 0 or ids[i - 1] != pad_id]


def hand_over_unexpanded(generation: Any, pad_id: int) -> None:
    """Make TRL's colocated generation hand vLLM unexpanded image prompts, and refuse a
    rollout whose prompt, as vLLM expanded it, is not the policy's to the token."""
    generate = generation.generate

    def unexpanded(  # TRL calls it with these keywords
        prompts: list[list[int]],
        images: list[Any] | None,
        num_generations: int,
        profiler: Any = None,
    ) -> tuple[Any, ...]:
        if images is None:
            return tuple(generate(prompts, images, num_generations, profiler))
        given = [
            collapse_image_runs(ids, pad_id) if pictures else list(ids)
            for ids, pictures in zip(prompts, images, strict=True)
        ]
        seen, *rest = generate(given, images, num_generations, profiler)
        check_same_prompts(prompts, seen)
        return (prompts, *rest)

    generation.generate = unexpanded


def check_same_prompts(policy: Sequence[Sequence[int]], sampler: Sequence[Sequence[int]]) -> None:
    """Raise unless the sampler's prompt ids are the policy's, prompt for prompt."""
    for i, (ours, theirs) in enumerate(zip(policy, sampler, strict=True)):
        if list(ours) != list(theirs):
            raise RolloutPromptMismatch(
                f"vLLM sampled prompt {i} from {len(theirs)} tokens where the policy scores "
                f"{len(ours)}: its rollouts would be off-policy",
                policy_tokens=len(ours),
                sampler_tokens=len(theirs),
            )


def sync_trained_weights_only(generation: Any) -> None:
    """Before each rollout TRL copies the policy's weights into vLLM; frozen ones (the vision
    tower and projector by default) cannot have changed since vLLM loaded the checkpoint,
    so they are left out.  That spares time, and on CPU vLLM repacks some frozen vision
    layers so that they cannot be loaded again at all."""
    frozen = {
        generation._fix_param_name_to_vllm(name)
        for name, param in generation.model.named_parameters()
        if not param.requires_grad
    }
    every_param = generation._iter_named_params

    def trained_params() -> Iterator[tuple[str, Any]]:
        for name, param in every_param():
            if name not in frozen:
                yield name, param

    generation._iter_named_params = trained_params


def sampling_rules(suppress: Sequence[int], *, vllm: bool) -> dict[str, Any]:
    """TRL's ``generation_kwargs``: what each sampler adds to the policy's own logits.

    The suppression itself lives in the policy's output head (``bias_output_head``), where
    ``generate`` and the loss both see it; vLLM computes its own logits, so it gets the same
    numbers as ``logit_bias``.  TRL's own ``suppress_tokens`` (the image token at -inf, on
    the transformers side only) is switched off: nothing reaches one side only.
    """
    if vllm:
        return {"logit_bias": suppression_bias(suppress)} if suppress else {}
    return {"suppress_tokens": None}


def rollout_dtype(options: RolloutVllmOptions, args: Any, policy_dtype: torch.dtype) -> str:
    """vLLM's dtype: the spec's, or (``auto``) what the policy computes in — the trainer's
    mixed precision (``args.bf16`` / ``args.fp16``: bfloat16 on a GPU that has it), else
    the policy's own (float32 on a CPU)."""
    if options.dtype != "auto":
        return options.dtype
    if args.bf16:
        return "bfloat16"
    if args.fp16:
        return "float16"
    return str(policy_dtype).removeprefix("torch.")


@contextmanager
def colocated_vllm(options: RolloutVllmOptions, dtype: str) -> Iterator[None]:
    """While TRL builds its colocated vLLM, build it with the job's dtype and eager mode
    (TRL passes neither; memory share, length and parallelism it takes from its config)."""
    from trl.generation import vllm_generation

    original = vllm_generation.LLM  # type: ignore[attr-defined]
    built = functools.partial(original, dtype=dtype, enforce_eager=options.enforce_eager)
    setattr(vllm_generation, "LLM", built)  # noqa: B010
    try:
        yield
    finally:
        setattr(vllm_generation, "LLM", original)  # noqa: B010


def correction_arguments(correction: OffPolicyCorrection) -> dict[str, Any]:
    """TRL's importance-sampling settings for the job's correction."""
    if correction.mode == "off":
        return {"vllm_importance_sampling_correction": False}
    return {
        "vllm_importance_sampling_correction": True,
        "vllm_importance_sampling_mode": correction.mode,
        "vllm_importance_sampling_clip_max": correction.cap,
        "vllm_importance_sampling_clip_min": None,
    }


def gap_totals(
    policy: torch.Tensor, sampler: torch.Tensor, mask: torch.Tensor, correction: OffPolicyCorrection
) -> torch.Tensor:
    """One process's sums of the per-token gap policy − sampler and of its ratios:
    [tokens, Σgap, Σ|gap|, max|gap|, units, Σratio, min ratio, max ratio, units clipped],
    where a unit is a token or (sequence modes) a completion."""
    valid = mask.bool() & ~torch.isnan(sampler)
    gap = torch.where(valid, policy - sampler, torch.zeros_like(policy))
    if correction.mode in SEQUENCE_MODES:
        ratio = torch.exp(gap.sum(dim=-1))[valid.any(dim=-1)]
    else:
        ratio = torch.exp(gap[valid])
    absolute = gap[valid].abs()
    empty = ratio.numel() == 0
    return torch.stack(
        [
            valid.sum().float(),
            gap[valid].sum(),
            absolute.sum(),
            absolute.max() if absolute.numel() else gap.new_zeros(()),
            torch.tensor(float(ratio.numel()), device=gap.device),
            ratio.sum(),
            gap.new_tensor(float("inf")) if empty else ratio.min(),
            gap.new_zeros(()) if empty else ratio.max(),
            (ratio > correction.cap).sum().float(),
        ]
    ).float()


def gap_figures(totals: torch.Tensor) -> dict[str, float]:
    """Step metrics from the gathered ``gap_totals`` of every process (one row each)."""
    rows = totals.reshape(-1, 9)
    tokens, signed, absolute = rows[:, 0].sum(), rows[:, 1].sum(), rows[:, 2].sum()
    units = rows[:, 4].sum()
    if tokens == 0 or units == 0:
        return {}
    return {
        "rollout_logp_gap": float(absolute / tokens),
        "rollout_logp_gap_signed": float(signed / tokens),
        "rollout_logp_gap_max": float(rows[:, 3].max()),
        "is_ratio_min": float(rows[:, 6].min()),
        "is_ratio_mean": float(rows[:, 5].sum() / units),
        "is_ratio_max": float(rows[:, 7].max()),
        "is_clipped_frac": float(rows[:, 8].sum() / units),
    }


class OnPolicyGRPOTrainer(GRPOTrainer):  # type: ignore[misc]
    """TRL's GRPOTrainer with rollouts sampled from the distribution its loss scores.

    Built with the job's options; vLLM rollouts get unexpanded prompts (checked every
    rollout) and the job's dtype; the policy and reference model carry the samplers'
    suppression in their heads; every step logs how far vLLM's log-probs were from the
    policy's on the sampled tokens, and what the correction did with the ratios.
    """

    def __init__(
        self, *args: Any, options: GrpoOptions, suppress: Sequence[int], dtype: str, **kwargs: Any
    ) -> None:
        self.correction = options.off_policy
        vllm = options.rollout_engine == "vllm"
        with colocated_vllm(options.vllm, dtype) if vllm else contextlib.nullcontext():
            super().__init__(*args, **kwargs)
        for model in (self.model, self.ref_model):
            if model is not None and suppress:
                bias_output_head(self.accelerator.unwrap_model(model), suppress)
        if self.use_vllm:
            log.info("rollouts from vLLM in %s (%s)", dtype, options.off_policy.mode)
            if self.vllm_generation.mode == "colocate" and self._image_pad_token_id is not None:
                hand_over_unexpanded(self.vllm_generation, self._image_pad_token_id)
            sync_trained_weights_only(self.vllm_generation)

    def _generate_and_score_completions(self, inputs: list[dict[str, Any]]) -> dict[str, Any]:
        output: dict[str, Any] = super()._generate_and_score_completions(inputs)
        policy, sampler = output.get("old_per_token_logps"), output.get("sampling_per_token_logps")
        if policy is not None and sampler is not None:
            totals = gap_totals(policy, sampler, output["completion_mask"], self.correction)
            mode = "train" if getattr(self.model, "training", True) else "eval"
            for name, value in gap_figures(self.accelerator.gather(totals)).items():
                self._metrics[mode][name].append(value)
        return output
