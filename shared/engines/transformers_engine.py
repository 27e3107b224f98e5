"""The ``transformers`` engine: a local Hugging Face model, batched ``generate``, CPU or GPU.

Models load through the Auto classes (``shared.engines.loading``) and are cached per
process, so the jobs a worker runs one after another share one copy.  Requests are
grouped by generation params (one ``generate`` call samples with one setting) and run in
left-padded batches of ``spec.batch_size``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from shared.contracts.specs import EngineSpec, GenerationParams
from shared.engines.base import GenerationRequest, GenerationResult, failed, params_for
from shared.engines.images import load_image
from shared.engines.loading import bias_output_head, load_pretrained, vision_token_ids
from shared.engines.reasoning import split_reasoning
from shared.errors import EngineError, ImageRejected

log = logging.getLogger(__name__)


@dataclass
class LoadedModel:
    """A model with its processor or tokenizer, ready for batched generation."""

    model: Any
    processor: Any  # the multimodal processor, or the tokenizer for text models
    tokenizer: Any
    multimodal: bool
    device: str
    suppress_ids: list[int]
    eos_ids: set[int]
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass
class _Pending:
    index: int
    request: GenerationRequest
    images: list[Image.Image] = field(default_factory=list)


_CACHE: dict[tuple[str, str, str], LoadedModel] = {}
_CACHE_LOCK = threading.Lock()


def resolve_device(device: str) -> str:
    """``auto`` means CUDA when available, else CPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` means float32 on CPU and bfloat16 (else float16) on CUDA."""
    if dtype != "auto":
        value: torch.dtype = getattr(torch, dtype)
        return value
    if device == "cpu":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def load_model(path: str, *, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """The model at ``path`` on ``device``, loaded once per process and then reused."""
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    key = (str(Path(path).expanduser()), device, str(torch_dtype))
    with _CACHE_LOCK:
        if key not in _CACHE:
            started = time.perf_counter()
            _CACHE[key] = _load(key[0], device, torch_dtype)
            log.info("loaded %s on %s in %.1f s", path, device, time.perf_counter() - started)
        return _CACHE[key]


def clear_model_cache() -> None:
    """Forget every cached model (their memory is freed once no engine holds them)."""
    with _CACHE_LOCK:
        _CACHE.clear()


def _load(path: str, device: str, torch_dtype: torch.dtype) -> LoadedModel:
    loaded = load_pretrained(path, dtype=torch_dtype)
    model = loaded.model.to(device).eval()  # type: ignore[arg-type]
    tokenizer = loaded.tokenizer
    suppress_ids = vision_token_ids(loaded.config, tokenizer)
    if suppress_ids:  # the vllm engine's logit_bias, with the same number
        bias_output_head(model, suppress_ids)
    tokenizer.padding_side = "left"  # decoder-only batches must end where generation starts
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(
        model=model,
        processor=loaded.processing_class,
        tokenizer=tokenizer,
        multimodal=loaded.vision,
        device=device,
        suppress_ids=suppress_ids,
        eos_ids=_eos_ids(model, tokenizer),
    )


def _eos_ids(model: Any, tokenizer: Any) -> set[int]:
    configured = model.generation_config.eos_token_id
    ids = set(configured if isinstance(configured, list) else [configured])
    ids.add(tokenizer.eos_token_id)
    return {i for i in ids if isinstance(i, int)}


def sampling_kwargs(params: GenerationParams) -> dict[str, Any]:
    """``generate`` keyword arguments for ``params``; temperature 0 means greedy."""
    if params.temperature == 0:
        return {"max_new_tokens": params.max_new_tokens, "do_sample": False}
    return {
        "max_new_tokens": params.max_new_tokens,
        "do_sample": True,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "top_k": params.top_k or 0,  # 0 turns top-k off, as None does for the HTTP engines
    }


def _chunks(items: list[_Pending], size: int) -> Iterator[list[_Pending]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class TransformersEngine:
    """Batched chat generation with a local Hugging Face model."""

    name = "transformers"

    def __init__(self, spec: EngineSpec) -> None:
        self.spec = spec
        self.model_id = spec.model
        self._loaded: LoadedModel | None = load_model(
            spec.model, device=spec.device, dtype=spec.dtype
        )

    @property
    def loaded(self) -> LoadedModel:
        """The model this engine uses; an error once the engine is closed."""
        if self._loaded is None:
            raise EngineError("the engine is closed", model=self.model_id)
        return self._loaded

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        """One result per request, same order; bad images fail alone."""
        results: list[GenerationResult | None] = [None] * len(requests)
        groups: dict[str, list[_Pending]] = {}
        for index, request in enumerate(requests):
            key = params_for(self.spec, request).model_dump_json()
            groups.setdefault(key, []).append(_Pending(index, request))
        for group in groups.values():
            params = params_for(self.spec, group[0].request)
            seed = params.seed  # seeded once per group: same requests, same seed → same samples
            for chunk in _chunks(group, self.spec.batch_size):
                runnable = [p for p in chunk if self._prepare(p, results)]
                if runnable:
                    outputs = self._run(runnable, params, seed)
                    seed = None
                    for pending, result in zip(runnable, outputs, strict=True):
                        results[pending.index] = result
        return [r if r is not None else failed("internal_error", "no result") for r in results]

    def close(self) -> None:
        """Drop this engine's hold on the model; the process cache keeps it for reuse."""
        self._loaded = None

    def _prepare(self, pending: _Pending, results: list[GenerationResult | None]) -> bool:
        """Load the request's images; on failure record an error result and return False."""
        if pending.request.images and not self.loaded.multimodal:
            message = f"{self.model_id} is a text-only model; the request has images"
            results[pending.index] = failed("images_unsupported", message)
            return False
        try:
            pending.images = [load_image(ref) for ref in pending.request.images]
        except ImageRejected as exc:
            results[pending.index] = failed(exc.kind, exc.message)
            return False
        return True

    def _run(
        self, batch: list[_Pending], params: GenerationParams, seed: int | None
    ) -> list[GenerationResult]:
        """Generate for a batch; if the batch fails, retry its requests one by one."""
        try:
            return self._generate_batch(batch, params, seed)
        except Exception as exc:  # one bad request must not fail its neighbours
            if len(batch) == 1:
                log.warning("%s: generation failed: %r", self.model_id, exc)
                return [failed("generation_error", repr(exc), attempts=1)]
            log.warning("%s: batch failed (%r); retrying one by one", self.model_id, exc)
            return [self._run([pending], params, seed)[0] for pending in batch]

    def _generate_batch(
        self, batch: list[_Pending], params: GenerationParams, seed: int | None
    ) -> list[GenerationResult]:
        loaded = self.loaded
        texts = [self._render(p.request, len(p.images)) for p in batch]
        if loaded.multimodal:
            images = [image for p in batch for image in p.images] or None
            inputs = loaded.processor(text=texts, images=images, return_tensors="pt", padding=True)
        else:
            inputs = loaded.tokenizer(
                texts, return_tensors="pt", padding=True, add_special_tokens=False
            )
        inputs = inputs.to(loaded.device)
        if "pixel_values" in inputs:
            inputs["pixel_values"] = inputs["pixel_values"].to(loaded.model.dtype)
        started = time.perf_counter()
        with loaded.lock, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(seed)
            output = loaded.model.generate(
                **inputs,
                **sampling_kwargs(params),
                pad_token_id=loaded.tokenizer.pad_token_id,
            )
        latency = time.perf_counter() - started
        new_tokens = output[:, inputs["input_ids"].shape[1] :].tolist()
        prompt_lengths = inputs["attention_mask"].sum(dim=1).tolist()
        return [
            self._result(ids, int(prompt_len), latency)
            for ids, prompt_len in zip(new_tokens, prompt_lengths, strict=True)
        ]

    def _result(self, ids: list[int], prompt_tokens: int, latency: float) -> GenerationResult:
        """Decode one row: cut at the first end-of-sequence token, split off reasoning."""
        eos = self.loaded.eos_ids
        end = next((i for i, token in enumerate(ids) if token in eos), None)
        kept = ids if end is None else ids[: end + 1]
        decoded = self.loaded.tokenizer.decode(kept, skip_special_tokens=True)
        text, reasoning = split_reasoning(decoded, {})
        return GenerationResult(
            text=text,
            reasoning=reasoning,
            completion=decoded,
            finish_reason="length" if end is None else "stop",
            prompt_tokens=prompt_tokens,
            completion_tokens=len(kept),
            latency_s=latency,
        )

    def _render(self, request: GenerationRequest, n_images: int) -> str:
        """The prompt text with the chat template applied; images as image content parts."""
        loaded = self.loaded
        messages: list[dict[str, Any]] = []
        if loaded.multimodal:
            if request.system is not None:
                messages.append({"role": "system", "content": [_text(request.system)]})
            parts: list[dict[str, Any]] = [{"type": "image"}] * n_images
            messages.append({"role": "user", "content": [*parts, _text(request.prompt)]})
            rendered: str = loaded.processor.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False
            )
            return rendered
        if request.system is not None:
            messages.append({"role": "system", "content": request.system})
        messages.append({"role": "user", "content": request.prompt})
        if loaded.tokenizer.chat_template is None:  # a base model: plain text in, text out
            return "\n\n".join(str(m["content"]) for m in messages)
        rendered = loaded.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False
        )
        return rendered


def _text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}
