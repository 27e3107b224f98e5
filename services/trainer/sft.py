"""Cold-start SFT: TRL's SFTTrainer on a sharegpt set, loss on the assistant turn only.

The same function trains the student VLM on the cold-start set and, in the demo, the
stand-in teachers (a VLM describer, a text-only reasoner).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from datasets import Dataset
from peft import LoraConfig
from transformers import PrinterCallback, set_seed
from trl.trainer.sft_config import SFTConfig
from trl.trainer.sft_trainer import SFTTrainer

from services.trainer.callbacks import (
    ForwardLogs,
    LogFn,
    ReportPlan,
    StopFn,
    StopWhenAsked,
    TrainingStopped,
    run_arguments,
)
from services.trainer.data import load_sft_records
from services.trainer.models import (
    Policy,
    freeze_vision,
    load_policy,
    restore_checkpoint_weights,
    save_policy,
)
from shared.contracts.specs import SftOptions
from shared.errors import InvalidInput

SFT_LOG_KEYS = ("loss", "learning_rate", "grad_norm")
# LoRA must not wrap the frozen vision tower and projector.
VISION_EXCLUDE = r".*(visual|vision_tower|vision_model|multi_modal_projector).*"


def bf16_enabled(requested: bool | None) -> bool:
    """bf16 when asked, or by default when a CUDA device supports it (never on CPU)."""
    if requested is not None:
        return requested
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def accumulation_steps(options: SftOptions, processes: int) -> int:
    """Gradient accumulation so that per-device x accumulation x processes = global batch."""
    per_step = options.per_device_batch_size * processes
    if options.global_batch_size % per_step:
        raise InvalidInput(
            f"global batch {options.global_batch_size} is not a multiple of "
            f"per-device batch {options.per_device_batch_size} x {processes} processes"
        )
    return options.global_batch_size // per_step


def lora_config(options: SftOptions, *, vision: bool) -> LoraConfig | None:
    """The peft adapter config, or None for a full fine-tune."""
    if options.lora is None:
        return None
    return LoraConfig(
        r=options.lora.r,
        lora_alpha=options.lora.alpha,
        lora_dropout=options.lora.dropout,
        target_modules=options.lora.target_modules,
        exclude_modules=VISION_EXCLUDE if vision and options.freeze_vision else None,
        task_type="CAUSAL_LM",
    )


def sft_config(
    out_dir: Path, options: SftOptions, *, checkpoint_every: int | None, run_name: str = ""
) -> SFTConfig:
    """TRL settings from the job options."""
    return SFTConfig(
        output_dir=str(out_dir),
        learning_rate=options.learning_rate,
        lr_scheduler_type=options.lr_scheduler,
        warmup_steps=options.warmup_ratio,  # a float below 1 is a ratio of the total steps
        num_train_epochs=options.epochs,
        max_steps=options.max_steps or -1,
        max_length=options.max_length,
        per_device_train_batch_size=options.per_device_batch_size,
        gradient_accumulation_steps=accumulation_steps(options, PartialState().num_processes),
        assistant_only_loss=True,  # the prompt (and the image tokens) carry no loss
        bf16=bf16_enabled(options.bf16),
        use_cpu=not torch.cuda.is_available(),
        **run_arguments(
            options.seed,
            checkpoint_every,
            options.distributed.deepspeed_config,
            report_to=options.report_to,
            run_name=run_name,
        ),
    )


def build_sft_trainer(
    model_dir: Path,
    train_file: Path,
    out_dir: Path,
    options: SftOptions,
    *,
    checkpoint_every: int | None = None,
    run_name: str = "",
) -> tuple[SFTTrainer, Policy]:
    """An SFTTrainer ready to train, and the policy it trains."""
    set_seed(options.seed)
    policy = load_policy(model_dir)
    if policy.vision and options.freeze_vision:
        freeze_vision(policy.model)
    records = load_sft_records(train_file, vision=policy.vision)
    trainer = SFTTrainer(
        model=policy.model,
        args=sft_config(out_dir, options, checkpoint_every=checkpoint_every, run_name=run_name),
        train_dataset=Dataset.from_list(records),
        processing_class=policy.processing_class,
        peft_config=lora_config(options, vision=policy.vision),
    )
    trainer.remove_callback(PrinterCallback)  # progress goes to on_log, not to stdout
    return trainer, policy


def run_sft(
    model_dir: Path,
    train_file: Path,
    out_dir: Path,
    options: SftOptions,
    *,
    on_log: LogFn | None = None,
    on_plan: Callable[[int], None] | None = None,
    should_stop: StopFn | None = None,
    resume_from: Path | None = None,
    checkpoint_every: int | None = None,
    run_name: str = "",
) -> Path:
    """Fine-tune ``model_dir`` on a sharegpt file; save to ``out_dir/final`` and return it.
    ``on_plan`` hears how many steps the run will take once the trainer knows."""
    trainer, policy = build_sft_trainer(
        model_dir,
        train_file,
        out_dir,
        options,
        checkpoint_every=checkpoint_every,
        run_name=run_name,
    )
    if resume_from is not None and options.lora is None:  # the Trainer restores adapters itself
        restore_checkpoint_weights(trainer, policy.model, resume_from)
    if on_log is not None:
        trainer.add_callback(ForwardLogs(on_log, SFT_LOG_KEYS))
    if on_plan is not None:
        trainer.add_callback(ReportPlan(on_plan))
    stopper = StopWhenAsked(should_stop) if should_stop is not None else None
    if stopper is not None:
        trainer.add_callback(stopper)
    trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    if stopper is not None and stopper.stopped_at is not None:
        checkpoint = out_dir / f"checkpoint-{stopper.stopped_at}"
        raise TrainingStopped(stopper.stopped_at, str(checkpoint))
    model: Any = trainer.model
    if options.lora is not None:
        model = model.merge_and_unload()  # the next job loads a plain model, not an adapter
    policy.model = model
    return save_policy(policy, out_dir / "final", trainer=trainer)
