"""Loading a Hugging Face model and its processor through the Auto classes, one way for all.

Vision-language models (a config with a ``vision_config``) load through ``AutoProcessor``
and ``AutoModelForImageTextToText``; text models through ``AutoTokenizer`` and
``AutoModelForCausalLM``.  The ``transformers`` engine and the trainer both load here.

transformers 5.x's Qwen2/2.5-VL processors insist on a video processor, and the video
processor needs torchvision, which CPU machines must not install.  Where torchvision is
absent, an image-only subclass is registered with ``AutoProcessor`` before loading;
without that registration transformers silently returns a bare tokenizer and images are
dropped, so a processor without an image processor is refused here.
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForImageTextToText,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    Qwen2_5_VLConfig,
    Qwen2_5_VLProcessor,
)
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

from shared.errors import EngineError

# Placeholders a chat model must never write: a random or lightly trained model that
# emits one makes the next forward pass fail ("image features and image tokens do not match").
VISION_TOKEN_ATTRS = ("image_token_id", "video_token_id", "vision_start_token_id",
                      "vision_end_token_id", "image_token_index", "video_token_index")  # fmt: skip
VISION_TOKEN_TEXTS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>",
                      "<|image_pad|>", "<|video_pad|>", "<image>", "<video>")  # fmt: skip
# How those tokens are kept out, the same number on every side: vLLM clamps ``logit_bias``
# to [-100, 100], so -100 is the one value its sampler, ``generate`` and the training loss
# (through the output head's bias) can all add alike.  A token so biased keeps about e^-100
# of its probability: it is never sampled, and both sides' distributions stay identical.
SUPPRESSED_LOGIT_BIAS = -100.0


class QwenImageOnlyProcessor(Qwen2_5_VLProcessor):  # type: ignore[misc]
    """Qwen2.5-VL processor without a video processor (images and text only)."""

    def __init__(
        self,
        image_processor: Any = None,
        tokenizer: Any = None,
        chat_template: str | None = None,
        **kwargs: Any,
    ) -> None:
        no_video = None  # the video processor would need torchvision
        super().__init__(  # type: ignore[no-untyped-call]
            image_processor, tokenizer, no_video, chat_template=chat_template, **kwargs
        )


def register_image_only_processor() -> None:
    """Make ``AutoProcessor`` build the image-only processor for Qwen2.5-VL configs (and
    resolve its name, saved with the tiny models, in other processes)."""
    AutoProcessor.register(  # type: ignore[no-untyped-call]
        Qwen2_5_VLConfig, QwenImageOnlyProcessor, exist_ok=True
    )
    # transformers before 5.18 silently skips registrations for its own config classes.
    PROCESSOR_MAPPING._extra_content.setdefault(Qwen2_5_VLConfig, QwenImageOnlyProcessor)


def needs_image_only_processor() -> bool:
    """True where torchvision is absent (the stock Qwen-VL processors cannot load)."""
    return importlib.util.find_spec("torchvision") is None


@dataclass
class Pretrained:
    """A loaded model, its processing class (processor or tokenizer) and its tokenizer."""

    model: PreTrainedModel
    processing_class: Any
    tokenizer: Any
    vision: bool
    config: Any


def is_vision_config(config: Any) -> bool:
    """Whether a model config has a vision part."""
    return getattr(config, "vision_config", None) is not None


def load_processor(path: str | Path, config: Any) -> Any:
    """The multimodal processor saved at ``path``, with its image processor guaranteed."""
    if needs_image_only_processor():
        register_image_only_processor()
        if getattr(config, "model_type", "") == "qwen2_5_vl":
            return QwenImageOnlyProcessor.from_pretrained(path)
    processor = AutoProcessor.from_pretrained(path)  # type: ignore[no-untyped-call]
    if getattr(processor, "image_processor", None) is None:
        message = "the multimodal model's processor loaded without an image processor"
        raise EngineError(message, model=str(path))
    return processor


def load_pretrained(path: str | Path, *, dtype: torch.dtype = torch.float32) -> Pretrained:
    """Model and processing class from a saved folder; ``EngineError`` if it cannot load."""
    try:
        config = AutoConfig.from_pretrained(path)
        if is_vision_config(config):
            processor = load_processor(path, config)
            model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype)
            require_mm_token_type_ids(model)
            return Pretrained(model, processor, processor.tokenizer, True, config)
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
        return Pretrained(model, tokenizer, tokenizer, False, config)
    except OSError as exc:
        raise EngineError(f"cannot load model from {path}: {exc}", model=str(path)) from exc


def vision_token_ids(config: Any, tokenizer: Any) -> list[int]:
    """Ids of image/video placeholder tokens, which must never be sampled."""
    ids = {getattr(config, attr, None) for attr in VISION_TOKEN_ATTRS}
    vocab = tokenizer.get_vocab()
    ids |= {vocab[text] for text in VISION_TOKEN_TEXTS if text in vocab}
    return sorted(i for i in ids if isinstance(i, int))


def suppression_bias(token_ids: Sequence[int]) -> dict[int, float]:
    """vLLM's ``logit_bias`` that keeps ``token_ids`` out of sampling."""
    return dict.fromkeys(token_ids, SUPPRESSED_LOGIT_BIAS)


def bias_output_head(model: torch.nn.Module, token_ids: Sequence[int]) -> None:
    """Put the suppression into the model's own logits, as a fixed bias of its output head.

    Every forward then computes the logits a sampler with ``suppression_bias`` sees:
    ``generate`` (no ``suppress_tokens`` needed) and TRL's fused log-prob head, which reads
    the head's ``weight`` and ``bias`` directly.  The bias is a non-persistent buffer: never
    saved with the weights, never trained, never copied into a colocated vLLM.
    """
    head = model.get_output_embeddings()  # type: ignore[operator]
    if not isinstance(head, torch.nn.Linear):
        raise EngineError(f"cannot bias an output head of type {type(head).__name__}")
    if isinstance(head.bias, torch.nn.Parameter):  # a buffer is an earlier suppression
        raise EngineError("the model's output head has a trained bias; suppression needs its own")
    # out_features, not weight.shape: under ZeRO-3 the weight is partitioned (shape [0]).
    bias = torch.zeros(head.out_features, dtype=head.weight.dtype, device=head.weight.device)
    bias[list(token_ids)] = SUPPRESSED_LOGIT_BIAS
    head._parameters.pop("bias", None)  # nn.Linear keeps a None slot for its missing bias
    head.register_buffer("bias", bias, persistent=False)
    _whole_under_zero3(bias)


def _whole_under_zero3(tensor: torch.Tensor) -> None:
    """TRL gathers the head's weight and bias under ZeRO-3 before its fused log-prob
    kernel reads them; a buffer is never partitioned, so it says it is available."""
    if importlib.util.find_spec("deepspeed") is None:
        return
    from transformers.integrations.deepspeed import is_deepspeed_zero3_enabled

    if is_deepspeed_zero3_enabled():  # type: ignore[no-untyped-call]
        from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

        tensor.ds_status = ZeroParamStatus.AVAILABLE  # type: ignore[attr-defined]


def require_mm_token_type_ids(model: torch.nn.Module) -> None:
    """Refuse a forward or ``generate`` given images but not the processor's
    ``mm_token_type_ids``.

    Qwen2.5-VL (transformers 5.x) builds its 3-D M-RoPE positions for image tokens from
    them; without them it silently uses 1-D positions, and the model that trains, scores or
    generates is not the one vLLM samples from (up to 2.6 nats per token apart on the
    tokens that depend on the image).  Models whose forward takes no such argument pass.
    ``generate`` is checked on its own: it works the positions out before any forward.
    """
    if "mm_token_type_ids" not in inspect.signature(type(model).forward).parameters:
        return

    def check(kwargs: dict[str, Any]) -> None:
        if kwargs.get("pixel_values") is not None and kwargs.get("mm_token_type_ids") is None:
            raise EngineError(
                "a forward with images but no mm_token_type_ids would place the image tokens "
                "with 1-D positions; pass the processor's whole output"
            )

    model.register_forward_pre_hook(lambda _m, _a, kwargs: check(kwargs), with_kwargs=True)
    generate: Callable[..., Any] = model.generate  # type: ignore[assignment]

    @functools.wraps(generate)
    def checked_generate(*args: Any, **kwargs: Any) -> Any:
        check(kwargs)
        return generate(*args, **kwargs)

    model.generate = checked_generate  # type: ignore[method-assign, assignment]
