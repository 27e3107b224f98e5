"""What SFT and GRPO runs share: their common TRL settings, cancellation, metric hand-off."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from services.trainer.reporting import tracker_arguments
from shared.errors import InvalidInput, VR1Error

LogFn = Callable[[int, dict[str, float]], None]
# transformers 5.18 renamed gradient checkpointing; the GPU image's 5.17 knows the old name.
CHECKPOINTING = (
    "activation_checkpointing"
    if "activation_checkpointing" in TrainingArguments.__dataclass_fields__
    else "gradient_checkpointing"
)
StopFn = Callable[[], bool]


def run_arguments(
    seed: int,
    checkpoint_every: int | None,
    deepspeed_config: str | None = None,
    *,
    report_to: Sequence[str] = (),
    run_name: str = "",
) -> dict[str, Any]:
    """TRL arguments every platform run sets alike: seeds, a log per step for the metrics,
    checkpoints every N steps (to resume), the job's experiment trackers (none unless it
    names some), no progress bars, activation checkpointing and pinned memory only on a GPU
    (on a CPU they only cost time), and the job's DeepSpeed config (ZeRO stage, offload)
    when it names one."""
    on_gpu = torch.cuda.is_available()
    extra = {"deepspeed": deepspeed_settings(deepspeed_config)} if deepspeed_config else {}
    return {
        **extra,
        **tracker_arguments(report_to, run_name),
        "seed": seed,
        "data_seed": seed,
        "logging_steps": 1,
        "save_strategy": "steps" if checkpoint_every else "no",
        "save_steps": checkpoint_every or 500,
        "disable_tqdm": True,
        CHECKPOINTING: on_gpu,
        "dataloader_pin_memory": on_gpu,
    }


def deepspeed_settings(path: str) -> dict[str, Any]:
    """A job's DeepSpeed config, with ZeRO-3 weights gathered when a model is saved: each
    stage ends in a plain checkpoint the next job loads (unless the file says otherwise)."""
    try:
        config: dict[str, Any] = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise InvalidInput(f"cannot read the DeepSpeed config {path}: {exc}") from exc
    zero = config.setdefault("zero_optimization", {})
    if zero.get("stage") == 3:
        zero.setdefault("stage3_gather_16bit_weights_on_model_save", True)
    return config


class TrainingStopped(VR1Error):
    """A run stopped on request before its last step; ``step`` is where it stopped."""

    status_code = 409
    code = "training_stopped"

    def __init__(self, step: int, checkpoint: str | None = None) -> None:
        super().__init__(f"training stopped at step {step}", step=step, checkpoint=checkpoint)
        self.step = step
        self.checkpoint = checkpoint


class StopWhenAsked(TrainerCallback):  # type: ignore[misc]
    """Poll ``should_stop`` after every step; on True, save a checkpoint and end training."""

    def __init__(self, should_stop: StopFn) -> None:
        self.should_stop = should_stop
        self.stopped_at: int | None = None

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> TrainerControl:
        if self.should_stop():
            self.stopped_at = state.global_step
            control.should_save = True  # so a later run can resume from exactly here
            control.should_training_stop = True
        return control


def finite_floats(logs: dict[str, Any]) -> dict[str, float]:
    """The numeric entries of a trainer log, NaN and None dropped."""
    out = {}
    for key, value in logs.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
            if not math.isnan(number):
                out[key] = number
    return out


class StepTimer(TrainerCallback):  # type: ignore[misc]
    """Wall time of the last optimizer step (generation, scoring and update included)."""

    def __init__(self) -> None:
        self._start = time.perf_counter()
        self.last_step_s = 0.0

    def on_step_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self._start = time.perf_counter()

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last_step_s = time.perf_counter() - self._start


class ReportPlan(TrainerCallback):  # type: ignore[misc]
    """Hand the run's planned step count to ``sink`` when training begins: the trainer works
    it out from the epochs, the data and the batch when no ``max_steps`` is set."""

    def __init__(self, sink: Callable[[int], None]) -> None:
        self.sink = sink

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.sink(state.max_steps)


class ForwardLogs(TrainerCallback):  # type: ignore[misc]
    """Hand each per-step training log to ``sink`` as (step, metrics); subclasses choose
    the metrics by overriding :meth:`metrics`."""

    def __init__(self, sink: LogFn, keys: tuple[str, ...] = ()) -> None:
        self.sink = sink  # not `self.on_log`: that would shadow the callback method
        self.keys = keys

    def metrics(self, values: dict[str, float]) -> dict[str, float]:
        """The step's metrics from the trainer's log values: the chosen keys."""
        return {k: values[k] for k in self.keys if k in values}

    def on_log(
        self,
        args: TrainingArguments,
        state: TrainerState,
        control: TrainerControl,
        logs: dict[str, Any] | None = None,
        **kw: Any,
    ) -> None:
        values = finite_floats(logs or {})
        if "loss" not in values:  # the end-of-training summary log, not a step
            return
        self.sink(state.global_step, self.metrics(values))
