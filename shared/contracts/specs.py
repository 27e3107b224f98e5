"""Job specs: what a user may ask for, validated at the API edge and stored with the job.

Every job kind has one spec model; ``JobSpec`` is their union, told apart by ``kind``.
Defaults are the Vision-R1 paper's; every one can be overridden.  Specs that are
part of a ``pipeline`` leave out the inputs that the previous step produces.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, model_validator

JobKind = Literal["coldstart", "sft", "grpo", "eval", "pipeline"]
JOB_KINDS: tuple[JobKind, ...] = ("coldstart", "sft", "grpo", "eval", "pipeline")

ModelRef = Annotated[
    str,
    Field(
        min_length=1,
        max_length=1024,
        description="A local model folder, an artifact URI, or a model name the engine knows.",
    ),
]
DatasetRef = Annotated[str, Field(min_length=1, max_length=64, description="A dataset ID.")]


class Strict(BaseModel):
    """Base of every spec model: unknown fields are an error, not silently dropped."""

    model_config = ConfigDict(extra="forbid")


# --- engines ---------------------------------------------------------------------------


class GenerationParams(Strict):
    """Sampling settings for one engine call."""

    max_new_tokens: int = Field(default=1024, ge=1, le=131072)
    temperature: float = Field(default=0.7, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=1)
    seed: int | None = None


class VllmOptions(Strict):
    """How vLLM's offline engine (engine ``vllm``) is built."""

    tensor_parallel_size: int = Field(default=1, ge=1, le=64)
    gpu_memory_utilization: float = Field(
        default=0.9,
        gt=0.0,
        le=1.0,
        description="GPU memory share; on a CPU the KV cache "
        "size comes from the VLLM_CPU_KVCACHE_SPACE environment variable instead.",
    )
    max_model_len: int | None = Field(default=None, ge=16, description="None = the model's.")
    enforce_eager: bool = Field(default=False, description="No graph capture: faster start.")


class EngineSpec(Strict):
    """Which model backend runs a step, and how it is called."""

    engine: Literal["transformers", "openai", "vllm"] = "transformers"
    model: ModelRef
    base_url: str | None = Field(default=None, description="OpenAI-compatible server URL.")
    api_key_env: str | None = Field(
        default=None,
        pattern=r"^[A-Z_][A-Z0-9_]*$",
        description="Name of the environment variable holding the API key (never the key).",
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    batch_size: int = Field(default=8, ge=1, le=4096)
    max_in_flight: int = Field(default=8, ge=1, le=4096)
    max_retries: int = Field(default=5, ge=0, le=50)
    timeout_s: float = Field(default=600.0, gt=0)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    generation: GenerationParams = Field(default_factory=GenerationParams)
    vllm: VllmOptions = Field(default_factory=VllmOptions)

    @model_validator(mode="after")
    def _openai_needs_url(self) -> EngineSpec:
        if self.engine == "openai" and not self.base_url:
            raise ValueError("engine 'openai' needs base_url")
        if self.engine != "vllm" and self.vllm != VllmOptions():
            raise ValueError(f"'vllm' options apply to engine 'vllm', not {self.engine!r}")
        ignored = [name for name in UNHONOURED[self.engine] if _differs(self, name)]
        if ignored:
            raise ValueError(
                f"engine {self.engine!r} cannot honour {', '.join(ignored)}: leave "
                f"{'it' if len(ignored) == 1 else 'them'} at the default"
            )
        return self


# What each engine has no use for: a value other than the default would be silently
# ignored, so it is refused instead.  vLLM schedules its own batches and runs in this
# process (no device choice, no HTTP calls to limit or retry); the transformers engine
# makes no HTTP calls; an OpenAI-compatible server owns its device, precision and batching.
UNHONOURED: dict[str, tuple[str, ...]] = {
    "transformers": ("base_url", "api_key_env", "max_in_flight", "max_retries", "timeout_s",
                     "requests_per_minute", "tokens_per_minute"),
    "vllm": ("base_url", "api_key_env", "device", "batch_size", "max_in_flight", "max_retries",
             "timeout_s", "requests_per_minute", "tokens_per_minute"),
    "openai": ("device", "dtype", "batch_size"),
}  # fmt: skip


def _differs(model: BaseModel, name: str) -> bool:
    """Whether a field holds something other than its declared default."""
    default = (
        type(model).model_fields[name].get_default(call_default_factory=True, validated_data={})
    )
    return bool(getattr(model, name) != default)


# --- coldstart -------------------------------------------------------------------------


class PromptOverrides(Strict):
    """Replacement templates for the three calls; ``None`` keeps the shipped version."""

    pseudo_cot: str | None = None
    description: str | None = None
    reasoning: str | None = None


class ColdstartFilters(Strict):
    """Post-processing rules for reasoner outputs."""

    max_cot_chars: int = Field(default=32000, ge=1)
    reject_inconsistent: bool = True
    reject_answer_leaks: bool = True
    rewrite_description_wording: bool = True


ExportFormat = Literal["sharegpt", "parquet"]


def _all_export_formats() -> list[ExportFormat]:
    return ["sharegpt", "parquet"]


class ColdstartOptions(Strict):
    """Everything about a coldstart job except which dataset it reads."""

    captioner: EngineSpec
    reasoner: EngineSpec
    prompts: PromptOverrides = Field(default_factory=PromptOverrides)
    filters: ColdstartFilters = Field(default_factory=ColdstartFilters)
    chunk_size: int = Field(default=16, ge=1, le=1024)
    max_attempts: int = Field(default=3, ge=1, le=20)
    export_formats: list[ExportFormat] = Field(
        default_factory=_all_export_formats,
        min_length=1,
        description="sharegpt (always: the cold dataset is stored in it) and optionally parquet.",
    )
    output_name: str | None = Field(default=None, max_length=200)
    limit: int | None = Field(default=None, ge=1, description="Process only the first N items.")

    @model_validator(mode="after")
    def _sharegpt_is_kept(self) -> ColdstartOptions:
        if "sharegpt" not in self.export_formats:
            raise ValueError("export_formats must include 'sharegpt': the cold dataset is it")
        return self


class ColdstartSpec(ColdstartOptions):
    """Generate a cold-start CoT dataset from a source dataset by modality bridging."""

    kind: Literal["coldstart"] = "coldstart"
    dataset_id: DatasetRef


# --- sft -------------------------------------------------------------------------------


class LoraSpec(Strict):
    r: int = Field(default=16, ge=1)
    alpha: int = Field(default=32, ge=1)
    dropout: float = Field(default=0.05, ge=0.0, lt=1.0)
    target_modules: list[str] | str = "all-linear"


class DistributedSpec(Strict):
    """Passed through to ``accelerate launch``; the platform does not reimplement either.

    ``num_processes`` counts every process of the run, on all its machines (as
    ``accelerate launch`` does); each machine runs the same share of them.
    """

    num_processes: int = Field(default=1, ge=1, le=4096, description="On all machines together.")
    num_machines: int = Field(default=1, ge=1, le=512)
    accelerate_config: str | None = Field(default=None, description="Path of a config file.")
    deepspeed_config: str | None = Field(default=None, description="Path of a ZeRO config.")

    @model_validator(mode="after")
    def _same_share_per_machine(self) -> DistributedSpec:
        if self.num_processes % self.num_machines:
            raise ValueError(
                f"num_processes ({self.num_processes}) counts the processes of all machines and"
                f" must be a multiple of num_machines ({self.num_machines})"
            )
        return self

    @property
    def processes_per_machine(self) -> int:
        """How many processes each machine runs."""
        return self.num_processes // self.num_machines


Tracker = Literal["tensorboard", "wandb", "trackio", "mlflow"]


class SftOptions(Strict):
    """Cold-start SFT hyper-parameters (paper defaults)."""

    learning_rate: float = Field(default=5e-6, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    warmup_ratio: float = Field(default=0.05, ge=0.0, lt=1.0)
    epochs: float = Field(default=2.0, gt=0)
    max_steps: int | None = Field(default=None, ge=1, description="Overrides epochs when set.")
    max_length: int = Field(default=16384, ge=16, description="Cutoff length in tokens.")
    global_batch_size: int = Field(default=32, ge=1)
    per_device_batch_size: int = Field(default=1, ge=1)
    freeze_vision: bool = Field(default=True, description="Freeze vision tower and projector.")
    lora: LoraSpec | None = None
    bf16: bool | None = Field(default=None, description="None = when the device supports it.")
    seed: int = 0
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    report_to: list[Tracker] = Field(
        default_factory=list,
        description="Experiment trackers the run also reports to (TRL's report_to), "
        "beside the platform's own metrics; wandb runs offline unless WANDB_MODE says otherwise.",
    )


class SftSpec(SftOptions):
    """Fine-tune a model on a ``cold`` dataset, loss on the assistant turn only."""

    kind: Literal["sft"] = "sft"
    model: ModelRef
    dataset_id: DatasetRef


# --- grpo ------------------------------------------------------------------------------


class StageSpec(Strict):
    """One PTST stage: a completion-length cap and a group size, run for some steps."""

    max_completion_tokens: int = Field(ge=1, le=131072)
    group_size: int = Field(ge=2, le=1024)
    steps: int = Field(ge=1)
    name: str | None = Field(default=None, max_length=100)
    learning_rate: float | None = Field(default=None, gt=0)
    temperature: float | None = Field(default=None, gt=0, le=5.0)
    beta: float | None = Field(default=None, ge=0)
    prompts_per_step: int | None = Field(default=None, ge=1)


class RolloutVllmOptions(VllmOptions):
    """vLLM colocated with the trainer for rollouts (``rollout_engine: vllm``).

    It shares the device with the policy, its optimizer and the reference model, hence a
    smaller memory share than a serving engine.  On one H100 with a 7B policy the paper's
    stages fit with ``gpu_memory_utilization`` 0.3 (0.2 on an H200), ``dtype`` bfloat16 and
    ``max_model_len`` left to the platform (longest prompt + the stage's cap): the README's
    "GRPO rollouts from vLLM" works it out.
    """

    gpu_memory_utilization: float = Field(
        default=0.3,
        gt=0.0,
        le=1.0,
        description="Device memory share for vLLM's weights and KV cache; the rest holds "
        "the training state. On a CPU the KV cache size comes from VLLM_CPU_KVCACHE_SPACE.",
    )
    max_model_len: int | None = Field(
        default=None,
        ge=16,
        description="None: the longest prompt plus the stage's cap. A set value must hold "
        "both, or the run stops with the numbers.",
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto",
        description="auto: what the policy computes in (float32 on a CPU; bfloat16 on a GPU "
        "that has it). Never left to vLLM, which would run a float32 checkpoint in bfloat16.",
    )


class OffPolicyCorrection(Strict):
    """How the loss corrects for what remains between vLLM's sampling and the policy.

    Rollouts and loss use one sampling distribution by construction; what remains is
    numerics (bfloat16 kernels, a different attention implementation).  The ratio
    policy / sampler is applied per token and capped (``token_truncate``, as verl and
    EasyR1 do): per-sequence ratios multiply every token's gap, so at thousands of tokens
    even bfloat16's ~0.01 nats/token would mask or shrink most completions.
    """

    mode: Literal["token_truncate", "token_mask", "sequence_truncate", "sequence_mask", "off"] = (
        "token_truncate"
    )
    cap: float = Field(default=2.0, gt=1.0, le=100.0, description="Upper bound of the ratio.")
    warn_above: float = Field(
        default=0.05,
        gt=0.0,
        description="Mean |log p| gap per token (nats) above which a step raises a warning "
        "event: healthy is under 1e-3 in float32 and 0.005-0.05 in bfloat16.",
    )


def paper_stages() -> list[StageSpec]:
    """The paper's PTST schedule: 4K x 16 then 8K x 8, 100 steps each."""
    return [
        StageSpec(max_completion_tokens=4096, group_size=16, steps=100),
        StageSpec(max_completion_tokens=8192, group_size=8, steps=100),
    ]


class GrpoOptions(Strict):
    """GRPO with PTST: the stage list and what all stages share."""

    stages: list[StageSpec] = Field(default_factory=paper_stages, min_length=1, max_length=16)
    reward: str = Field(default="hfrrf", min_length=1, max_length=64)
    reward_url: str | None = Field(default=None, description="Reward service; None = in-process.")
    learning_rate: float = Field(default=1e-6, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "constant"
    epsilon: float = Field(default=0.2, gt=0)
    beta: float = Field(default=1e-2, ge=0)
    temperature: float = Field(
        default=1.0,
        gt=0,
        le=5.0,
        description="Sampling temperature of the rollouts, which the loss divides the "
        "policy's logits by too (one setting for both sides).",
    )
    top_p: float = Field(
        default=1.0,
        gt=0,
        le=1.0,
        description="Must stay 1.0: the loss scores the whole distribution, so rollouts cut "
        "to a nucleus would be off-policy by construction.",
    )
    prompts_per_step: int = Field(default=8, ge=1)
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = "dapo"
    max_prompt_length: int | None = Field(
        default=None,
        ge=1,
        description="Prompts longer than this (in tokens, images "
        "included) are left out of training; None keeps every prompt.",
    )
    rollout_engine: Literal["transformers", "vllm"] = "transformers"
    vllm: RolloutVllmOptions = Field(default_factory=RolloutVllmOptions)
    off_policy: OffPolicyCorrection = Field(default_factory=OffPolicyCorrection)
    freeze_vision: bool = True
    system_prompt: str | None = None
    seed: int = 0
    distributed: DistributedSpec = Field(default_factory=DistributedSpec)
    samples_per_step: int = Field(
        default=4,
        ge=0,
        le=64,
        description="Completions kept per step for people to read (GET .../samples); 0: none.",
    )
    report_to: list[Tracker] = Field(
        default_factory=list,
        description="Experiment trackers the run also reports to (TRL's report_to), "
        "beside the platform's own metrics; wandb runs offline unless WANDB_MODE says otherwise.",
    )

    @model_validator(mode="after")
    def _one_sampling_distribution(self) -> GrpoOptions:
        if self.top_p != 1.0:
            raise ValueError(
                "top_p must be 1.0 for GRPO: the loss scores each token under the policy's "
                "whole distribution, so rollouts sampled from a nucleus would be off-policy"
            )
        if self.rollout_engine != "vllm":
            for name in ("vllm", "off_policy"):
                if _differs(self, name):
                    raise ValueError(f"{name!r} options apply to rollout_engine 'vllm'")
        longest = max(s.max_completion_tokens for s in self.stages)
        if self.vllm.max_model_len is not None and self.vllm.max_model_len <= longest:
            raise ValueError(
                f"vllm.max_model_len ({self.vllm.max_model_len}) leaves no room for a prompt "
                f"beside the longest stage's {longest} completion tokens"
            )
        return self

    def compute_warnings(self) -> list[str]:
        """Say where stages are not compute-matched (tokens x group size constant)."""
        budgets = [s.max_completion_tokens * s.group_size for s in self.stages]
        if len(set(budgets)) <= 1:
            return []
        shown = ", ".join(
            f"stage {i + 1}: {s.max_completion_tokens}x{s.group_size}={b}"
            for i, (s, b) in enumerate(zip(self.stages, budgets, strict=True))
        )
        return [f"PTST stages are not compute-matched (tokens x group size differ): {shown}"]


class GrpoSpec(GrpoOptions):
    """Train a model with GRPO under a PTST schedule, rewarded by name."""

    kind: Literal["grpo"] = "grpo"
    model: ModelRef
    dataset_id: DatasetRef


# --- eval ------------------------------------------------------------------------------


class EvalOptions(Strict):
    """Sampling as in the paper's evaluation; all overridable."""

    temperature: float = Field(default=0.6, ge=0.0, le=5.0)
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    max_new_tokens: int = Field(default=16000, ge=1)
    max_tries: int = Field(default=5, ge=1, le=20)
    batch_size: int = Field(default=8, ge=1)
    limit: int | None = Field(default=None, ge=1, description="Evaluate the first N items.")
    write_every: int = Field(
        default=256,
        ge=1,
        description="Rows evaluated and stored at a time: the job's progress moves by this "
        "many, and a relaunched job keeps what was stored.",
    )
    engine: Literal["transformers", "vllm"] = "transformers"
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="auto: float32 on a CPU, bfloat16 on a GPU (as the paper)."
    )
    vllm: VllmOptions = Field(
        default_factory=VllmOptions,
        description="How engine 'vllm' is built (memory share, context length, parallelism, "
        "eager mode); the paper's 16K-token answers need max_model_len above 16000 + prompt.",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _batch_size_is_honoured(self) -> EvalOptions:
        if self.engine == "vllm" and _differs(self, "batch_size"):
            raise ValueError("engine 'vllm' cannot honour batch_size: it schedules its own batches")
        if self.engine != "vllm" and _differs(self, "vllm"):
            raise ValueError(f"'vllm' options apply to engine 'vllm', not {self.engine!r}")
        return self


class EvalSpec(EvalOptions):
    """Accuracy of a model on one or more eval datasets."""

    kind: Literal["eval"] = "eval"
    model: ModelRef
    dataset_ids: list[DatasetRef] = Field(min_length=1, max_length=64)


# --- pipeline --------------------------------------------------------------------------


class PipelineSpec(Strict):
    """coldstart -> sft -> grpo -> eval as one job; each step feeds the next."""

    kind: Literal["pipeline"] = "pipeline"
    base_model: ModelRef
    source_dataset_id: DatasetRef
    rl_dataset_id: DatasetRef | None = Field(
        default=None, description="RL prompts; defaults to the source dataset."
    )
    eval_dataset_ids: list[DatasetRef] = Field(default_factory=list, max_length=64)
    coldstart: ColdstartOptions
    sft: SftOptions = Field(default_factory=SftOptions)
    grpo: GrpoOptions = Field(default_factory=GrpoOptions)
    eval: EvalOptions = Field(default_factory=EvalOptions)


JobSpec = Annotated[
    ColdstartSpec | SftSpec | GrpoSpec | EvalSpec | PipelineSpec,
    Field(discriminator="kind"),
]
JOB_SPEC_ADAPTER: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def parse_spec(data: object) -> JobSpec:
    """Validate a spec from JSON-like data; raises pydantic's ValidationError."""
    return JOB_SPEC_ADAPTER.validate_python(data)


def spec_warnings(spec: JobSpec) -> list[str]:
    """Advice about a valid spec that the user should see with the job."""
    if isinstance(spec, GrpoSpec):
        return spec.compute_warnings()
    if isinstance(spec, PipelineSpec):
        return spec.grpo.compute_warnings()
    return []


def referenced_datasets(spec: JobSpec) -> list[str]:
    """Every dataset ID a spec names, to check they exist and belong to the team."""
    if isinstance(spec, ColdstartSpec | SftSpec | GrpoSpec):
        return [spec.dataset_id]
    if isinstance(spec, EvalSpec):
        return list(spec.dataset_ids)
    ids = [spec.source_dataset_id, *spec.eval_dataset_ids]
    if spec.rl_dataset_id:
        ids.append(spec.rl_dataset_id)
    return ids
