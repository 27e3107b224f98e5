"""Loading a policy (vision-language or text-only) with what training needs around it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, PreTrainedModel

from shared.engines.loading import is_vision_config, load_pretrained
from shared.engines.loading import vision_token_ids as placeholder_ids

# Vision tower and projector: Qwen2.5-VL keeps both under `visual` (the projector is
# `visual.merger`); other families name them as below.
VISION_MODULE_MARKERS = ("visual.", "vision_tower.", "vision_model.", "multi_modal_projector.")


@dataclass
class Policy:
    """A loaded model, its processor (or tokenizer), and whether it reads images."""

    model: PreTrainedModel
    processing_class: Any
    vision: bool
    config: Any

    @property
    def tokenizer(self) -> Any:
        """The text tokenizer, whether the processing class is a processor or a tokenizer."""
        return getattr(self.processing_class, "tokenizer", self.processing_class)


def is_vision_model(model_dir: Path) -> bool:
    """True when the saved config has a vision part."""
    return is_vision_config(AutoConfig.from_pretrained(model_dir))


def load_policy(model_dir: Path, *, dtype: torch.dtype = torch.float32) -> Policy:
    """Load a model and its processing class from a saved folder, through the Auto classes."""
    loaded = load_pretrained(model_dir, dtype=dtype)
    return Policy(loaded.model, loaded.processing_class, loaded.vision, loaded.config)


def is_vision_parameter(name: str) -> bool:
    """Whether a parameter belongs to the vision tower or the projector."""
    return any(marker in name for marker in VISION_MODULE_MARKERS)


def freeze_vision(model: torch.nn.Module) -> list[str]:
    """Stop gradients into the vision tower and projector; return the frozen names."""
    frozen = []
    for name, param in model.named_parameters():
        if is_vision_parameter(name):
            param.requires_grad_(False)
            frozen.append(name)
    return frozen


def vision_token_ids(policy: Policy) -> list[int]:
    """Ids of the policy's image/video placeholder tokens, which must never be sampled."""
    return placeholder_ids(policy.config, policy.tokenizer)


def save_policy(policy: Policy, out_dir: Path, *, trainer: Any = None) -> Path:
    """Save weights and the processing class with ``save_pretrained``; return the folder.

    With several training processes only the main one writes (after ``trainer`` gathered
    sharded weights) and the others wait until it has.
    """
    accelerator = getattr(trainer, "accelerator", None)
    main = accelerator is None or accelerator.is_main_process
    if getattr(trainer, "is_deepspeed_enabled", False):
        trainer.save_model(str(out_dir))  # every process: ZeRO-3 shards are gathered first
    elif main:
        out_dir.mkdir(parents=True, exist_ok=True)
        policy.model.save_pretrained(out_dir)
    if main:
        policy.processing_class.save_pretrained(out_dir)
    if accelerator is not None:
        accelerator.wait_for_everyone()
    return out_dir


def restore_checkpoint_weights(trainer: Any, model: torch.nn.Module, checkpoint: Path) -> None:
    """Load a full-model checkpoint's weights into ``model`` before ``trainer`` resumes.

    transformers' Trainer reloads checkpoint weights with ``load_state_dict(strict=False)``
    on the key names as saved. Models whose in-memory names differ from the saved ones
    (Qwen2.5-VL: ``model.layers.*`` on disk, ``model.language_model.layers.*`` in memory)
    then load nothing and train on silently. ``from_pretrained`` maps the names, so the
    weights come from there and the Trainer's own reload is switched off; optimizer,
    scheduler, RNG and step still come from the checkpoint. The model itself was loaded
    from the stage's starting folder, so a reference model (beta > 0) is built from that
    folder, not from the checkpoint. DeepSpeed and FSDP restore their own shards.
    """
    if trainer.is_deepspeed_enabled or trainer.is_fsdp_enabled:
        return
    saved = load_policy(checkpoint).model.state_dict()
    model.load_state_dict(saved, strict=True)
    setattr(trainer, "_load_from_checkpoint", lambda *args, **kwargs: None)  # noqa: B010
