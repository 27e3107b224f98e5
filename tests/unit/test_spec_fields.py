"""No silent spec fields: every field a job spec accepts changes what the job builds.

One table, one case per field of every spec model (``Model.field``): the case sets the field
to a valid value other than the base spec's, runs the job's own code on the spec
(``tests/spec_audit.py``: TRL configs and trainer arguments, engine constructors and calls,
launch requests, child specs, a coldstart job's records and exports) and finds the value
there, where the base spec puts something else.  A field that truly cannot be observed that
way is on the short allowlist, with the reason.  A spec field with neither fails the
completeness check, so a new field must come with its reader.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError, create_model

from shared.contracts import specs
from tests.spec_audit import (
    ANOTHER_MODEL,
    ANOTHER_SOURCE,
    API_KEY_ENV,
    DEEPSPEED_CONFIG,
    Bench,
    Overrides,
    merged,
)

# Fields no builder can be shown a second valid value of.
ALLOWLIST = {
    **{
        f"{model}.kind": "the discriminator: it picks the spec model (parse_spec) and with it "
        "the code that runs the job; it has no other valid value"
        for model in ("ColdstartSpec", "SftSpec", "GrpoSpec", "EvalSpec", "PipelineSpec")
    },
    "GrpoOptions.top_p": "the validator allows only 1.0 (the default), so no other value can "
    "be set; grpo_config passes it to GRPOConfig.top_p",
}
# A job spec is its options plus its inputs: the job runs the inherited fields through the
# same code, so the options' cases (which build the job spec) cover them.
SAME_READER: dict[type[BaseModel], type[BaseModel]] = {
    specs.ColdstartSpec: specs.ColdstartOptions,
    specs.SftSpec: specs.SftOptions,
    specs.GrpoSpec: specs.GrpoOptions,
    specs.EvalSpec: specs.EvalOptions,
}


@dataclasses.dataclass(frozen=True)
class Case:
    """``set`` gives ``field`` a valid non-default value; ``read`` takes from what the
    ``kind`` job built (a ``Bench`` method) what must then be ``expect``.  ``given`` holds
    other fields that value needs; the base run has them too."""

    field: str
    kind: str
    set: Overrides
    read: Callable[[Any], Any]
    expect: Any
    given: Overrides = dataclasses.field(default_factory=dict)


# --- reading what the jobs built -----------------------------------------------------------


def cfg(attr: str) -> Callable[[Any], Any]:
    """An attribute of the first stage's TRL config (GRPOConfig / SFTConfig)."""
    return lambda seen: getattr(seen.configs[0], attr)


def prompts_per_step(seen: Any) -> int:
    config = seen.configs[0]
    return int(config.generation_batch_size // config.num_generations)


def reward(seen: Any) -> Any:
    """The job's reward function as the trainer got it (unwrapped from ``Paid``)."""
    fn = seen.trainers[0]["reward_funcs"][0]
    return getattr(fn, "fn", fn)


def system_prompt(seen: Any) -> str | None:
    first = seen.trainers[0]["train_dataset"][0]["prompt"][0]
    return first["content"][0]["text"] if first["role"] == "system" else None


def off_policy_watch(seen: Any) -> float:
    """The warning threshold of the step logger the grpo job hands its trainer."""
    metrics = next(c for c in seen.callbacks if type(c).__name__ == "StepMetrics")
    return float(metrics.step_sink.threshold)


def peft(attr: str) -> Callable[[Any], Any]:
    return lambda seen: getattr(seen.trainers[0]["peft_config"], attr, None)


def flag(name: str) -> Callable[[Any], tuple[str | None, ...]]:
    """A command-line flag's value in the sft and grpo launch commands."""

    def read(requests: Any) -> tuple[str | None, ...]:
        commands = [requests[kind].command for kind in ("sft", "grpo")]
        return tuple(c[c.index(name) + 1] if name in c else None for c in commands)

    return read


def sampled(key: str) -> Callable[[Any], tuple[Any, ...]]:
    """One sampling setting as the transformers, vllm and openai engines passed it on."""

    def read(seen: Any) -> tuple[Any, ...]:
        openai = seen["openai"].sampled
        return (
            seen["transformers"].sampled[key],
            seen["vllm"].sampled[key],
            openai.get(key, openai.get("extra_body", {}).get(key)),
        )

    return read


def max_tokens(seen: Any) -> tuple[int, int, int]:
    """The completion cap as the transformers, vllm and openai engines passed it on."""
    return (
        seen["transformers"].sampled["max_new_tokens"],
        seen["vllm"].sampled["max_tokens"],
        seen["openai"].sampled["max_tokens"],
    )


def eval_params(attr: str) -> Callable[[Any], tuple[Any, Any]]:
    """A sampling setting in the eval engine's spec and in the first request it got."""

    def read(seen: Any) -> tuple[Any, Any]:
        params = seen.calls[0][0].params
        return getattr(seen.engines[0].generation, attr), getattr(params, attr)

    return read


def record(marker: str) -> Callable[[Any], tuple[str, str | None]]:
    """A coldstart item's outcome: status and reject reason."""
    return lambda seen: seen.records[marker][:2]


def prompted(role: str, start: str) -> Callable[[Any], bool]:
    return lambda seen: any(p.startswith(start) for p in seen.prompts[role])


VLLM: Overrides = {"rollout_engine": "vllm"}
STAGE = specs.paper_stages()[0].model_dump()
LORA: Overrides = {"lora": {}}
EVAL_IDS = ["00000000-0000-4000-8000-0000000000e1", "00000000-0000-4000-8000-0000000000e2"]


def stage(**values: Any) -> Overrides:
    """A one-stage schedule: the paper's first stage with ``values``."""
    return {"stages": [{**STAGE, **values}]}


def dist(**values: Any) -> Overrides:
    return {"distributed": values}


CASES = [
    # --- grpo: GrpoOptions / GrpoSpec -> run_grpo_job -> GRPOConfig, trainer, vLLM --------
    Case("GrpoOptions.stages", "grpo", {"stages": [{**STAGE, "steps": s} for s in (1, 2, 3)]},
         lambda s: [c.max_steps for c in s.configs], [1, 2, 3]),
    Case("GrpoOptions.reward", "grpo", {"reward": "accuracy"},
         lambda s: reward(s).__name__, "accuracy_reward"),
    Case("GrpoOptions.reward_url", "grpo", {"reward_url": "http://reward.test:8000"},
         lambda s: getattr(reward(s), "base_url", None), "http://reward.test:8000"),
    Case("GrpoOptions.learning_rate", "grpo", {"learning_rate": 3e-6},
         cfg("learning_rate"), 3e-6),
    Case("GrpoOptions.lr_scheduler", "grpo", {"lr_scheduler": "cosine"},
         cfg("lr_scheduler_type"), "cosine"),
    Case("GrpoOptions.epsilon", "grpo", {"epsilon": 0.28}, cfg("epsilon"), 0.28),
    Case("GrpoOptions.beta", "grpo", {"beta": 0.04}, cfg("beta"), 0.04),
    Case("GrpoOptions.temperature", "grpo", {"temperature": 0.9}, cfg("temperature"), 0.9),
    Case("GrpoOptions.prompts_per_step", "grpo", {"prompts_per_step": 4}, prompts_per_step, 4),
    Case("GrpoOptions.loss_type", "grpo", {"loss_type": "grpo"}, cfg("loss_type"), "grpo"),
    Case("GrpoOptions.max_prompt_length", "grpo", {"max_prompt_length": 100},  # 28 and 153
         lambda s: len(s.trainers[0]["train_dataset"]), 1),
    Case("GrpoOptions.rollout_engine", "grpo", VLLM, cfg("use_vllm"), True),
    Case("GrpoOptions.vllm", "grpo", {"vllm": {"enforce_eager": True}},
         lambda s: s.llm[0]["enforce_eager"], True, given=VLLM),
    Case("GrpoOptions.off_policy", "grpo", {"off_policy": {"mode": "off"}},
         cfg("vllm_importance_sampling_correction"), False, given=VLLM),
    Case("GrpoOptions.freeze_vision", "grpo", {"freeze_vision": False},
         lambda s: s.frozen, 0),
    Case("GrpoOptions.system_prompt", "grpo", {"system_prompt": "Answer briefly."},
         system_prompt, "Answer briefly."),
    Case("GrpoOptions.seed", "grpo", {"seed": 11}, cfg("seed"), 11),
    Case("GrpoOptions.distributed", "launch", dist(num_processes=2),
         lambda r: flag("--num_processes")(r)[1], "2"),
    Case("GrpoOptions.samples_per_step", "grpo", {"samples_per_step": 2},
         lambda s: s.trainers[0]["reward_funcs"][-1].keep, 2),  # the rollout recorder
    Case("GrpoOptions.report_to", "grpo", {"report_to": ["tensorboard"]},
         cfg("report_to"), ["tensorboard"]),
    Case("GrpoSpec.model", "grpo", {"model": "/models/sft-final"},
         lambda s: s.loaded[0], Path("/models/sft-final")),
    Case("GrpoSpec.dataset_id", "grpo", {"dataset_id": "rl-prompts"},
         lambda s: s.data_from, ["rl-prompts"]),
    # StageSpec: each stage's own GRPOConfig (the paper's first stage is the base)
    Case("StageSpec.max_completion_tokens", "grpo", stage(max_completion_tokens=256),
         cfg("max_completion_length"), 256),
    Case("StageSpec.group_size", "grpo", stage(group_size=4), cfg("num_generations"), 4),
    Case("StageSpec.steps", "grpo", stage(steps=7), cfg("max_steps"), 7),
    Case("StageSpec.name", "grpo", stage(name="warm-up"),
         lambda s: (s.tracker.stages[0][0], s.tracker.checkpoints[0]), ("warm-up", "warm-up")),
    Case("StageSpec.learning_rate", "grpo", stage(learning_rate=2e-5),
         cfg("learning_rate"), 2e-5),
    Case("StageSpec.temperature", "grpo", stage(temperature=0.8), cfg("temperature"), 0.8),
    Case("StageSpec.beta", "grpo", stage(beta=0.05), cfg("beta"), 0.05),
    Case("StageSpec.prompts_per_step", "grpo", stage(prompts_per_step=2), prompts_per_step, 2),
    # RolloutVllmOptions: GRPOConfig's vllm_* and the colocated vLLM's constructor
    Case("RolloutVllmOptions.tensor_parallel_size", "grpo", {"vllm": {"tensor_parallel_size": 2}},
         cfg("vllm_tensor_parallel_size"), 2, given=VLLM),
    Case("RolloutVllmOptions.gpu_memory_utilization", "grpo",
         {"vllm": {"gpu_memory_utilization": 0.5}}, cfg("vllm_gpu_memory_utilization"), 0.5,
         given=VLLM),
    Case("RolloutVllmOptions.max_model_len", "grpo", {"vllm": {"max_model_len": 9000}},
         cfg("vllm_max_model_length"), 9000, given=VLLM),  # base: 153 + 4096, rollout_model_len
    Case("RolloutVllmOptions.enforce_eager", "grpo", {"vllm": {"enforce_eager": True}},
         lambda s: s.llm[0]["enforce_eager"], True, given=VLLM),
    Case("RolloutVllmOptions.dtype", "grpo", {"vllm": {"dtype": "float16"}},
         lambda s: s.llm[0]["dtype"], "float16", given=VLLM),  # base: auto -> float32 on CPU
    # OffPolicyCorrection: TRL's importance sampling, and the job's drift warning
    Case("OffPolicyCorrection.mode", "grpo", {"off_policy": {"mode": "token_mask"}},
         cfg("vllm_importance_sampling_mode"), "token_mask", given=VLLM),
    Case("OffPolicyCorrection.cap", "grpo", {"off_policy": {"cap": 3.0}},
         cfg("vllm_importance_sampling_clip_max"), 3.0, given=VLLM),
    Case("OffPolicyCorrection.warn_above", "grpo", {"off_policy": {"warn_above": 0.2}},
         off_policy_watch, 0.2, given=VLLM),
    # --- sft: SftOptions / SftSpec -> run_sft_job -> SFTConfig, LoraConfig, trainer -------
    Case("SftOptions.learning_rate", "sft", {"learning_rate": 1e-5}, cfg("learning_rate"), 1e-5),
    Case("SftOptions.lr_scheduler", "sft", {"lr_scheduler": "linear"},
         cfg("lr_scheduler_type"), "linear"),
    Case("SftOptions.warmup_ratio", "sft", {"warmup_ratio": 0.1}, cfg("warmup_steps"), 0.1),
    Case("SftOptions.epochs", "sft", {"epochs": 3.0}, cfg("num_train_epochs"), 3.0),
    Case("SftOptions.max_steps", "sft", {"max_steps": 50}, cfg("max_steps"), 50),
    Case("SftOptions.max_length", "sft", {"max_length": 2048}, cfg("max_length"), 2048),
    Case("SftOptions.global_batch_size", "sft", {"global_batch_size": 8},
         cfg("gradient_accumulation_steps"), 8),
    Case("SftOptions.per_device_batch_size", "sft", {"per_device_batch_size": 2},
         lambda s: (s.configs[0].per_device_train_batch_size,
                    s.configs[0].gradient_accumulation_steps), (2, 16)),
    Case("SftOptions.freeze_vision", "sft", {"freeze_vision": False}, lambda s: s.frozen, 0),
    Case("SftOptions.lora", "sft", LORA, peft("r"), 16),
    Case("SftOptions.bf16", "sft", {"bf16": True}, cfg("bf16"), True),  # base: CPU, no bf16
    Case("SftOptions.seed", "sft", {"seed": 11}, cfg("seed"), 11),
    Case("SftOptions.distributed", "launch", dist(num_processes=2),
         lambda r: flag("--num_processes")(r)[0], "2"),
    Case("SftOptions.report_to", "sft", {"report_to": ["tensorboard"]},
         cfg("report_to"), ["tensorboard"]),
    Case("SftSpec.model", "sft", {"model": "/models/base"},
         lambda s: s.loaded[0], Path("/models/base")),
    Case("SftSpec.dataset_id", "sft", {"dataset_id": "cold-set"},
         lambda s: s.data_from, ["cold-set"]),
    Case("LoraSpec.r", "sft", {"lora": {"r": 8}}, peft("r"), 8, given=LORA),
    Case("LoraSpec.alpha", "sft", {"lora": {"alpha": 64}}, peft("lora_alpha"), 64, given=LORA),
    Case("LoraSpec.dropout", "sft", {"lora": {"dropout": 0.1}},
         peft("lora_dropout"), 0.1, given=LORA),
    Case("LoraSpec.target_modules", "sft", {"lora": {"target_modules": ["q_proj"]}},
         peft("target_modules"), {"q_proj"}, given=LORA),
    # DistributedSpec: the watcher's launch request, and the trainers' DeepSpeed config
    Case("DistributedSpec.num_processes", "launch", dist(num_processes=4),
         flag("--num_processes"), ("4", "4")),
    Case("DistributedSpec.num_machines", "launch", dist(num_machines=2),
         lambda r: (r["sft"].machines, r["grpo"].machines), (2, 2),
         given=dist(num_processes=2)),
    Case("DistributedSpec.accelerate_config", "launch",
         dist(num_processes=2, accelerate_config="/cfg/fsdp.yaml"),
         flag("--config_file"), ("/cfg/fsdp.yaml", "/cfg/fsdp.yaml"),
         given=dist(num_processes=2)),
    Case("DistributedSpec.deepspeed_config", "trainers", dist(deepspeed_config=DEEPSPEED_CONFIG),
         lambda s: [s[k].config_kwargs[0].get("deepspeed") for k in ("sft", "grpo")],
         [{"zero_optimization": {"stage": 2}}] * 2),
    # --- eval: EvalOptions / EvalSpec -> run_eval_job -> engine spec, requests, table ------
    Case("EvalOptions.temperature", "eval", {"temperature": 0.3},
         eval_params("temperature"), (0.3, 0.3)),
    Case("EvalOptions.top_p", "eval", {"top_p": 0.8}, eval_params("top_p"), (0.8, 0.8)),
    Case("EvalOptions.max_new_tokens", "eval", {"max_new_tokens": 512},
         eval_params("max_new_tokens"), (512, 512)),
    Case("EvalOptions.seed", "eval", {"seed": 5}, eval_params("seed"), (5, 5)),
    Case("EvalOptions.max_tries", "eval", {"max_tries": 2}, lambda s: len(s.calls), 2),
    Case("EvalOptions.batch_size", "eval", {"batch_size": 4},
         lambda s: s.engines[0].batch_size, 4),
    Case("EvalOptions.limit", "eval", {"limit": 3},
         lambda s: next(iter(s.table.values()))["n"], 3),
    Case("EvalOptions.write_every", "eval", {"write_every": 2},
         lambda s: max(len(call) for call in s.calls), 2),
    Case("EvalOptions.engine", "eval", {"engine": "vllm"}, lambda s: s.engines[0].engine, "vllm"),
    Case("EvalOptions.vllm", "eval", {"vllm": {"max_model_len": 4096}},
         lambda s: s.engines[0].vllm.max_model_len, 4096, given={"engine": "vllm"}),
    Case("EvalOptions.dtype", "eval", {"dtype": "bfloat16"},
         lambda s: s.engines[0].dtype, "bfloat16"),
    Case("EvalSpec.model", "eval", {"model": "/models/grpo-final"},
         lambda s: s.engines[0].model, "/models/grpo-final"),
    Case("EvalSpec.dataset_ids", "eval", {"dataset_ids": EVAL_IDS},
         lambda s: s.data_from, EVAL_IDS),
    # --- engines: EngineSpec -> make_engine -> constructor and call arguments --------------
    Case("EngineSpec.engine", "engine_built", {"engine": "vllm"}, lambda name: name, "vllm"),
    Case("EngineSpec.model", "engines", {"model": ANOTHER_MODEL},
         lambda s: tuple(Path(m).name for m in (s["transformers"].load["path"],
                                                s["vllm"].llm["model"],
                                                s["openai"].bodies[0]["model"])),
         ("tiny-b",) * 3),
    Case("EngineSpec.base_url", "engines", {"base_url": "http://other.test:9"},
         lambda s: s["openai"].client["base_url"], "http://other.test:9/v1"),
    Case("EngineSpec.api_key_env", "engines", {"api_key_env": API_KEY_ENV},
         lambda s: s["openai"].client["api_key"], "key-from-the-environment"),
    Case("EngineSpec.device", "engines", {"device": "cpu"},
         lambda s: s["transformers"].load["device"], "cpu"),
    Case("EngineSpec.dtype", "engines", {"dtype": "float16"},
         lambda s: (s["transformers"].load["dtype"], s["vllm"].llm["dtype"]),
         ("float16", "float16")),
    Case("EngineSpec.batch_size", "engines", {"batch_size": 2},
         lambda s: [size for size, _, _ in s["transformers"].batches], [2, 1]),
    Case("EngineSpec.max_in_flight", "engines", {"max_in_flight": 3},
         lambda s: s["openai"].limits["in_flight"], 3),
    Case("EngineSpec.max_retries", "engines", {"max_retries": 1},
         lambda s: s["openai"].client["max_retries"], 1),
    Case("EngineSpec.timeout_s", "engines", {"timeout_s": 30.0},
         lambda s: s["openai"].client["timeout"], 30.0),
    Case("EngineSpec.requests_per_minute", "engines", {"requests_per_minute": 6000},
         lambda s: s["openai"].limits["requests_per_minute"], 6000),
    Case("EngineSpec.tokens_per_minute", "engines", {"tokens_per_minute": 600000},
         lambda s: s["openai"].limits["tokens_per_minute"], 600000),
    Case("EngineSpec.generation", "engines", {"generation": {"max_new_tokens": 77}},
         max_tokens, (77, 77, 77)),
    Case("EngineSpec.vllm", "engines", {"vllm": {"enforce_eager": True}},
         lambda s: s["vllm"].llm["enforce_eager"], True),
    # GenerationParams: as each engine samples (transformers' generate, vLLM, the server)
    Case("GenerationParams.max_new_tokens", "engines", {"generation": {"max_new_tokens": 64}},
         max_tokens, (64, 64, 64)),
    Case("GenerationParams.temperature", "engines", {"generation": {"temperature": 0.3}},
         sampled("temperature"), (0.3, 0.3, 0.3)),
    Case("GenerationParams.top_p", "engines", {"generation": {"top_p": 0.5}},
         sampled("top_p"), (0.5, 0.5, 0.5)),
    Case("GenerationParams.top_k", "engines", {"generation": {"top_k": 5}},
         sampled("top_k"), (5, 5, 5)),
    Case("GenerationParams.seed", "engines", {"generation": {"seed": 9}},
         lambda s: (*sampled("seed")(s), s["vllm"].llm["seed"]), (9, 9, 9, 9)),
    # VllmOptions: the vllm engine's LLM(...)
    *(
        Case(f"VllmOptions.{name}", "engines", {"vllm": {name: value}},
             lambda s, name=name: s["vllm"].llm[name], value)
        for name, value in (("tensor_parallel_size", 2), ("gpu_memory_utilization", 0.5),
                            ("max_model_len", 4096), ("enforce_eager", True))
    ),
    # --- coldstart: a whole job in embedded mode, stand-in captioner and reasoner --------
    Case("ColdstartOptions.captioner", "coldstart", {"captioner": {"model": "describer-2"}},
         lambda s: sorted({e.model for e in s.engines["captioner"]}), ["describer-2"]),
    Case("ColdstartOptions.reasoner", "coldstart", {"reasoner": {"model": "reasoner-2"}},
         lambda s: sorted({e.model for e in s.engines["reasoner"]}), ["reasoner-2"]),
    Case("ColdstartOptions.prompts", "coldstart",
         {"prompts": {"pseudo_cot": "Look: {question} ({answer})"}},
         prompted("captioner", "Look: "), True),
    Case("ColdstartOptions.filters", "coldstart", {"filters": {"max_cot_chars": 10}},
         record("Q_OK"), ("rejected", "too_long")),
    Case("ColdstartOptions.chunk_size", "coldstart", {"chunk_size": 1},
         lambda s: s.chunks_total, 3),
    Case("ColdstartOptions.max_attempts", "coldstart", {"max_attempts": 7},
         lambda s: sorted(set(s.max_attempts)), [7]),
    Case("ColdstartOptions.export_formats", "coldstart", {"export_formats": ["sharegpt"]},
         lambda s: "cold.parquet" in s.exported, False),
    Case("ColdstartOptions.output_name", "coldstart", {"output_name": "my-cold-set"},
         lambda s: s.dataset_name, "my-cold-set"),
    Case("ColdstartOptions.limit", "coldstart", {"limit": 2}, lambda s: s.items_total, 2),
    Case("ColdstartSpec.dataset_id", "coldstart", {"dataset_id": ANOTHER_SOURCE},
         lambda s: sorted(s.records), ["Q_OTHER"]),
    Case("PromptOverrides.pseudo_cot", "coldstart",
         {"prompts": {"pseudo_cot": "PSEUDO {question} / {answer}"}},
         prompted("captioner", "PSEUDO "), True),
    Case("PromptOverrides.description", "coldstart",
         {"prompts": {"description": "DESCRIBE {question} / {pseudo_cot}"}},
         prompted("captioner", "DESCRIBE "), True),
    Case("PromptOverrides.reasoning", "coldstart",
         {"prompts": {"reasoning": "REASON {question} / {description} / {answer}"}},
         prompted("reasoner", "REASON "), True),
    Case("ColdstartFilters.max_cot_chars", "coldstart", {"filters": {"max_cot_chars": 40}},
         record("Q_OK"), ("rejected", "too_long")),
    Case("ColdstartFilters.reject_inconsistent", "coldstart",
         {"filters": {"reject_inconsistent": False}}, record("Q_MISMATCH"), ("kept", None)),
    Case("ColdstartFilters.reject_answer_leaks", "coldstart",
         {"filters": {"reject_answer_leaks": False}}, record("Q_LEAK"), ("kept", None)),
    Case("ColdstartFilters.rewrite_description_wording", "coldstart",
         {"filters": {"rewrite_description_wording": False}},
         lambda s: s.records["Q_OK"][2].startswith("The description says"), True),
    # --- pipeline: PipelineSpec -> the child specs it creates ------------------------------
    Case("PipelineSpec.base_model", "pipeline", {"base_model": "other-base"},
         lambda c: c["sft"].model, "other-base"),
    Case("PipelineSpec.source_dataset_id", "pipeline", {"source_dataset_id": "source-2"},
         lambda c: (c["coldstart"].dataset_id, c["grpo"].dataset_id), ("source-2", "source-2")),
    Case("PipelineSpec.rl_dataset_id", "pipeline", {"rl_dataset_id": "rl-prompts"},
         lambda c: c["grpo"].dataset_id, "rl-prompts"),
    Case("PipelineSpec.eval_dataset_ids", "pipeline", {"eval_dataset_ids": ["eval-a"]},
         lambda c: c["eval"].dataset_ids if "eval" in c else None, ["eval-a"]),
    Case("PipelineSpec.coldstart", "pipeline", {"coldstart": {"chunk_size": 5}},
         lambda c: c["coldstart"].chunk_size, 5),
    Case("PipelineSpec.sft", "pipeline", {"sft": {"epochs": 1.0}}, lambda c: c["sft"].epochs, 1.0),
    Case("PipelineSpec.grpo", "pipeline", {"grpo": {"seed": 3}}, lambda c: c["grpo"].seed, 3),
    Case("PipelineSpec.eval", "pipeline", {"eval": {"seed": 3}}, lambda c: c["eval"].seed, 3,
         given={"eval_dataset_ids": ["eval-a"]}),
]  # fmt: skip


# --- completeness ------------------------------------------------------------------------


def spec_models() -> list[type[BaseModel]]:
    return [
        model
        for model in vars(specs).values()
        if inspect.isclass(model)
        and issubclass(model, BaseModel)
        and model.__module__ == specs.__name__
        and model is not specs.Strict
    ]


def field_keys(models: Iterable[type[BaseModel]]) -> set[str]:
    """``Model.field`` for every field, inherited ones of a job spec under its options."""
    keys = set()
    for model in models:
        for name in model.model_fields:
            base = SAME_READER.get(model)
            owner = base if base is not None and name in base.model_fields else model
            keys.add(f"{owner.__name__}.{name}")
    return keys


def audit_gaps(
    models: Iterable[type[BaseModel]], cases: Sequence[str], allowed: Iterable[str]
) -> list[str]:
    """What keeps the table from covering every field exactly once."""
    fields = field_keys(models)
    entries = [*cases, *allowed]
    problems = [f"{key}: no case and not allowlisted" for key in sorted(fields - set(entries))]
    problems += [f"{key}: not a spec field" for key in sorted(set(entries) - fields)]
    problems += [f"{key}: {entries.count(key)} entries" for key in sorted(set(entries))
                 if entries.count(key) > 1]  # fmt: skip
    return problems


def test_every_spec_field_has_one_case_or_a_reason() -> None:
    assert audit_gaps(spec_models(), [c.field for c in CASES], ALLOWLIST) == []


def test_a_field_without_a_case_fails_the_audit() -> None:
    """A StageSpec that grew a field nobody reads is caught, by name."""
    grown = create_model("StageSpec", __base__=specs.StageSpec, unused_knob=(int, 0))
    models = [grown if m is specs.StageSpec else m for m in spec_models()]
    gaps = audit_gaps(models, [c.field for c in CASES], ALLOWLIST)
    assert gaps == ["StageSpec.unused_knob: no case and not allowlisted"]


# --- the table ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> Bench:
    return Bench(tmp_path_factory.mktemp("spec-audit"))


@pytest.mark.parametrize("case", CASES, ids=[c.field for c in CASES])
def test_a_field_reaches_what_the_job_builds(bench: Bench, case: Case) -> None:
    assert case.read(bench.run(case.kind, merged(case.given, case.set))) == case.expect
    # The base spec's value gives something else there: this field made the difference.
    assert case.read(bench.run(case.kind, case.given)) != case.expect


# --- other spec rules ----------------------------------------------------------------------


def test_engine_options_for_another_engine_are_refused() -> None:
    with pytest.raises(ValidationError, match="apply to engine 'vllm'"):
        specs.EngineSpec(engine="transformers", model="m", vllm={"tensor_parallel_size": 2})


def test_coldstart_always_keeps_its_sharegpt_export() -> None:
    engine = {"engine": "transformers", "model": "m"}
    with pytest.raises(ValidationError, match="must include 'sharegpt'"):
        specs.ColdstartSpec(
            dataset_id="d", captioner=engine, reasoner=engine, export_formats=["parquet"]
        )
