"""The baseline of bench/grpo.py: a bare TRL GRPOTrainer script, nothing of the platform
but the reward rule (HFRRF, in-process) and the registration the tiny processor needs.

    python bench/grpo_bare_trl.py --model DIR --prompts train.jsonl --steps 20 --out t.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser()
    for name in ("--model", "--prompts", "--out"):
        parser.add_argument(name, type=Path, required=True)
    for name in ("--steps", "--cap", "--group", "--prompts-per-step"):
        parser.add_argument(name, type=int, required=True)
    args = parser.parse_args()

    import torch
    from datasets import Dataset
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from shared.engines.loading import register_image_only_processor
    from shared.rewards import reward_fn

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    register_image_only_processor()
    processor = AutoProcessor.from_pretrained(args.model)
    model = AutoModelForImageTextToText.from_pretrained(args.model, dtype=torch.float32)
    for name, parameter in model.named_parameters():  # vision tower frozen, as the job does
        if "visual" in name:
            parameter.requires_grad_(False)
    rows = [json.loads(line) for line in args.prompts.read_text().splitlines() if line.strip()]
    records = [
        {
            "prompt": [
                {
                    "role": "user",
                    "content": [{"type": "image"}, {"type": "text", "text": r["question"]}],
                }
            ],
            "images": [Image.open(args.prompts.parent / r["image"]).convert("RGB")],
            "answer": r["answer"],
        }
        for r in rows
    ]
    suppress = processor.tokenizer.convert_tokens_to_ids(
        ["<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]
    )
    completions = args.prompts_per_step * args.group
    config = GRPOConfig(
        output_dir=str(args.out.parent / "bare-out"),
        max_steps=args.steps,
        per_device_train_batch_size=completions,
        generation_batch_size=completions,
        gradient_accumulation_steps=1,
        num_generations=args.group,
        max_completion_length=args.cap,
        generation_kwargs={"suppress_tokens": suppress},
        learning_rate=1e-4,
        lr_scheduler_type="constant",
        activation_checkpointing=False,  # as the job runs on CPU: there it only costs time
        bf16=False,  # the job trains in float32 on CPU
        data_seed=0,
        beta=0.0,
        epsilon=0.2,
        loss_type="dapo",
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=True,
        dataloader_pin_memory=False,
        disable_tqdm=True,
    )

    stamps: list[float] = []

    class Stamp(TrainerCallback):  # type: ignore[misc]
        def on_step_end(self, *_args: object, **_kw: object) -> None:
            stamps.append(time.perf_counter())

    trainer = GRPOTrainer(
        model=model,
        reward_funcs=[reward_fn("hfrrf")],
        args=config,
        train_dataset=Dataset.from_list(records),
        processing_class=processor,
        callbacks=[Stamp()],
    )
    trainer.train()
    step = (stamps[-1] - stamps[0]) / (len(stamps) - 1)
    args.out.write_text(json.dumps({"step_time_s": step, "steps": len(stamps)}))


if __name__ == "__main__":
    main()
