"""vLLM samples from the distribution the GRPO loss scores, images included.

On the cold-started checkpoint the learning tests train: vLLM (float32, processed
log-probs, the platform's suppression as ``logit_bias``) samples completions for the
held-out images from the prompt as the trainer hands it over; the policy, loaded as the
trainer loads it (its head carrying the same suppression), scores the same tokens with the
processor's whole output.  The two log-probs agree.  The same forward without
``mm_token_type_ids``, or with the suppression on vLLM's side only, does not — which shows
the checks can fail.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText

from services.trainer.models import load_policy, vision_token_ids
from services.trainer.onpolicy import check_same_prompts, collapse_image_runs
from shared.engines.loading import bias_output_head, suppression_bias
from shared.errors import EngineError
from shared.fixtures.toy import read_rows
from shared.storage import path_from_uri
from tests.learning.test_learning import ColdStarted

TOKENS = 32  # sampled per completion, at the rollouts' temperature 1
SAMPLES = 4  # per image
IMAGES = 8


@dataclass
class Rollout:
    """One sampled completion with vLLM's log-probs of its tokens."""

    prompt: int  # index into the prompts
    tokens: list[int]
    logprobs: list[float]


@dataclass
class Prompt:
    """One held-out image question as the processor encodes it for the policy."""

    image: Image.Image
    encoded: dict[str, torch.Tensor]

    @property
    def ids(self) -> list[int]:
        return list(self.encoded["input_ids"][0].tolist())


def _prompts(cold: ColdStarted, processor: Any) -> list[Prompt]:
    prompts = []
    for row in read_rows(cold.toy.test_path)[:IMAGES]:
        image = Image.open(cold.toy.root / row["image"]).convert("RGB")
        content = [{"type": "image", "image": image}, {"type": "text", "text": row["question"]}]
        encoded = processor.apply_chat_template(
            [[{"role": "user", "content": content}]],
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            return_tensors="pt",
        )
        prompts.append(Prompt(image, dict(encoded)))
    return prompts


def _sample(
    model: Path, prompts: list[Prompt], dtype: str, bias: dict[int, float]
) -> list[Rollout]:
    """vLLM's completions, from the prompts as the trainer hands them over (one image pad
    per image), after checking vLLM's own expansion is the policy's prompt."""
    from vllm import LLM, SamplingParams

    llm = LLM(
        model=str(model),
        dtype=dtype,
        enforce_eager=True,
        seed=0,
        max_model_len=256,
        gpu_memory_utilization=0.3,
        logprobs_mode="processed_logprobs",  # as TRL builds its colocated vLLM
        limit_mm_per_prompt={"image": 1, "video": 0},
    )
    pad = llm.get_tokenizer().convert_tokens_to_ids("<|image_pad|>")
    requests = [
        {
            "prompt_token_ids": collapse_image_runs(p.ids, pad),
            "multi_modal_data": {"image": p.image},
        }
        for p in prompts
    ]
    sampling = SamplingParams(
        n=SAMPLES, temperature=1.0, max_tokens=TOKENS, logprobs=0, seed=0, logit_bias=bias
    )
    outputs = llm.generate(requests, sampling_params=sampling, use_tqdm=False)
    check_same_prompts([p.ids for p in prompts], [o.prompt_token_ids for o in outputs])
    return [
        Rollout(
            i,
            list(c.token_ids),
            [lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs, strict=True)],
        )
        for i, output in enumerate(outputs)
        for c in output.outputs
    ]


def _gaps(
    model: torch.nn.Module,
    prompts: list[Prompt],
    rollouts: list[Rollout],
    drop: tuple[str, ...] = (),
) -> list[float]:
    """Policy minus vLLM log-prob of every sampled token, the policy given the processor's
    output (less the keys in ``drop``) for prompt and completion."""
    gaps: list[float] = []
    with torch.no_grad():
        for rollout in rollouts:
            encoded = prompts[rollout.prompt].encoded
            length = encoded["input_ids"].shape[1]
            completion = torch.tensor([rollout.tokens])
            inputs = {k: v for k, v in encoded.items() if k not in drop}
            inputs["input_ids"] = torch.cat([encoded["input_ids"], completion], dim=1)
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            if "mm_token_type_ids" in inputs:
                zeros = torch.zeros_like(completion)
                inputs["mm_token_type_ids"] = torch.cat([inputs["mm_token_type_ids"], zeros], 1)
            logits = model(**inputs).logits[0, length - 1 : -1].float()
            logps = torch.log_softmax(logits, dim=-1).gather(1, completion.T).squeeze(1)
            gaps += [float(p) - q for p, q in zip(logps, rollout.logprobs, strict=True)]
    return gaps


def _figures(gaps: list[float]) -> dict[str, float]:
    return {
        "mean_abs": statistics.fmean(abs(g) for g in gaps),
        "max_abs": max(abs(g) for g in gaps),
        "signed": statistics.fmean(gaps),
    }


def _on_policy(figures: dict[str, float]) -> bool:
    """The bars: mean |gap| < 1e-3 and max < 0.05 nats per token; and no gap of one sign
    (one-sided suppression costs log(1 - suppressed mass) on every token, ~1e-4 here)."""
    return (
        figures["mean_abs"] < 1e-3 and figures["max_abs"] < 0.05 and abs(figures["signed"]) < 1e-5
    )


def _cpu_bf16() -> str:
    flags = (
        set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    )
    found = sorted(f for f in flags if "bf16" in f)
    return ", ".join(found) or "no bf16 instructions"


@pytest.mark.timeout(900)
def test_vllm_samples_from_the_distribution_the_loss_scores(
    cold_started: Callable[[int], ColdStarted], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VR1_TORCH_THREADS", "1")
    cold = cold_started(0)
    model = path_from_uri(cold.model)
    policy = load_policy(model)  # as the trainer loads it
    suppress = vision_token_ids(policy)
    bias_output_head(policy.model, suppress)
    prompts = _prompts(cold, policy.processing_class)
    rollouts = _sample(model, prompts, "float32", suppression_bias(suppress))
    assert len(rollouts) == IMAGES * SAMPLES
    assert sum(len(r.tokens) for r in rollouts) > IMAGES * SAMPLES  # more than one token each

    on_policy = _figures(_gaps(policy.model, prompts, rollouts))
    print(f"float32: {on_policy}")
    assert _on_policy(on_policy), on_policy

    # The platform refuses a forward without mm_token_type_ids ...
    with pytest.raises(EngineError, match="mm_token_type_ids"):
        _gaps(policy.model, prompts, rollouts[:1], drop=("mm_token_type_ids",))
    # ... which, unguarded, places the image tokens by 1-D positions: off-policy.
    bare = AutoModelForImageTextToText.from_pretrained(model, dtype=torch.float32)
    bias_output_head(bare, suppress)
    one_d = _figures(_gaps(bare, prompts, rollouts, drop=("mm_token_type_ids",)))
    print(f"without mm_token_type_ids: {one_d}")
    assert not _on_policy(one_d)
    # The suppression on vLLM's side only: a gap of one sign on every token.
    one_sided = _figures(_gaps(load_policy(model).model, prompts, rollouts))
    print(f"suppression on vLLM's side only: {one_sided}")
    assert not _on_policy(one_sided)
    assert one_sided["signed"] < 0


@pytest.mark.timeout(600)
def test_the_bfloat16_gap_is_small_and_of_no_sign(
    cold_started: Callable[[int], ColdStarted], monkeypatch: pytest.MonkeyPatch
) -> None:
    """vLLM in bfloat16 (what a GPU runs) against the float32 policy: the figure a GPU run
    should show, printed with what this CPU's bfloat16 kernels can use."""
    monkeypatch.setenv("VR1_TORCH_THREADS", "1")
    cold = cold_started(0)
    model = path_from_uri(cold.model)
    policy = load_policy(model)
    suppress = vision_token_ids(policy)
    bias_output_head(policy.model, suppress)
    prompts = _prompts(cold, policy.processing_class)
    rollouts = _sample(model, prompts, "bfloat16", suppression_bias(suppress))
    figures = _figures(_gaps(policy.model, prompts, rollouts))
    print(f"bfloat16 on a CPU with {_cpu_bf16()}: {figures}")
    assert figures["mean_abs"] < 0.05  # healthy bfloat16 is 0.005-0.05 nats/token on GPUs
    assert abs(figures["signed"]) < figures["mean_abs"]  # noise, not a one-sided rule
