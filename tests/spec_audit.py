"""What each job kind builds from its spec, recorded without a broker, a server or training.

A ``Bench`` method takes a spec's overrides (merged into a small base spec of its kind),
runs the job's own code on that spec (``run_grpo_job``, ``run_sft_job``, ``run_eval_job``,
``make_engine`` and a generate call, the watcher's ``launch``, a whole coldstart job in
embedded mode, the pipeline's ``child_spec``) and returns what arrived where the values
leave the platform: TRL's config and trainer arguments, vLLM's and the OpenAI client's
constructor and call arguments, the launch request, the child specs, the coldstart job's
records and exports.  Stand-ins replace only what cannot run here or is not the spec's
business: TRL's trainer constructor and training loop, vLLM (not installed), the OpenAI
server, model loading and saving (a tiny model is used where one is read), the dataset
reads of training jobs, and the run's bookkeeping (``FakeTracker``).  The table that reads
these observations is ``tests/unit/test_spec_fields.py``.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import shutil
import sys
import types
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import openai
import pytest
from sqlalchemy import select
from trl.generation import vllm_generation
from trl.trainer.grpo_config import GRPOConfig
from trl.trainer.grpo_trainer import GRPOTrainer
from trl.trainer.sft_config import SFTConfig

from entrypoints.bootstrap import Embedded, embedded
from services.captioner import captioning
from services.reasoner import reasoning
from services.trainer import eval_job, ptst, watcher
from services.trainer import grpo as grpo_module
from services.trainer import run as run_module
from services.trainer import sft as sft_module
from services.trainer.data import PromptRow
from services.trainer.launcher import LaunchRequest, RunState
from services.trainer.models import Policy, load_policy
from services.trainer.settings import TrainerSettings
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import (
    ColdstartSpec,
    EngineSpec,
    EvalSpec,
    GrpoSpec,
    PipelineSpec,
    SftSpec,
)
from shared.datasets import register_dataset
from shared.db.models import Dataset, GenerationRecord, Item
from shared.engines import make_engine
from shared.engines import transformers_engine as tf_engine
from shared.engines.base import GenerationRequest, GenerationResult
from shared.fixtures.tiny import build_tiny_vlm
from shared.pipeline import child_spec, planned_kinds
from shared.settings import BaseVR1Settings
from tests.helpers import discard_messages, write_image

Overrides = dict[str, Any]
DATASET = "00000000-0000-4000-8000-00000000d5e7"  # what jobs read their prompts from
API_KEY_ENV = "VR1_SPEC_AUDIT_KEY"
# Values the bench puts in place of these names (things made at run time):
ANOTHER_MODEL = "<tiny-b>"  # a second tiny model folder, named tiny-b
DEEPSPEED_CONFIG = "<zero2.json>"  # a DeepSpeed config file: {"zero_optimization": {"stage": 2}}
ANOTHER_SOURCE = "<other source>"  # a coldstart source dataset holding only Q_OTHER


def merged(base: Overrides, overrides: Overrides) -> Overrides:
    """``base`` with ``overrides`` laid over it; nested dicts merge, anything else replaces."""
    out = dict(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


# --- what stands in past the platform's edge -------------------------------------------


class _Session:
    """A database session that holds nothing (for the reads a run makes on the side)."""

    def get(self, *args: Any, **kwargs: Any) -> None:
        return None

    def scalar(self, *args: Any, **kwargs: Any) -> None:
        return None

    def scalars(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return iter(())


class _Db:
    @contextmanager
    def session(self) -> Iterator[_Session]:
        yield _Session()


class FakeTracker:
    """The run's bookkeeping (``services.trainer.tracking.Tracker``), kept in lists."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.job_id = uuid.uuid4()
        self.db, self.store = _Db(), None
        self.stages: list[tuple[str, dict[str, Any]]] = []
        self.checkpoints: list[str] = []
        self.stored: list[Any] = []

    def ensure_stages(self, configs: list[tuple[str, dict[str, Any]]]) -> list[Any]:
        self.stages = list(configs)
        return [types.SimpleNamespace(status="pending", checkpoint_uri=None) for _ in configs]

    def save_checkpoint(self, source: Path, key: str, *, name: str, stage_idx: int) -> str:
        self.checkpoints.append(name)
        return str(source)

    def in_session(self, work: Callable[..., Any], what: str) -> None:
        self.stored.append(work)

    def should_stop(self) -> bool:
        return False

    def start_stage(self, *args: Any, **kwargs: Any) -> None: ...
    def update_stage(self, *args: Any, **kwargs: Any) -> None: ...
    def finish_stage(self, *args: Any, **kwargs: Any) -> None: ...
    def log(self, *args: Any, **kwargs: Any) -> None: ...
    def warn(self, *args: Any, **kwargs: Any) -> None: ...
    def keep_samples(self, *args: Any, **kwargs: Any) -> None: ...


def recording(config: type[Any], sink: list[dict[str, Any]]) -> Callable[..., Any]:
    """``config`` (a TRL config class) that keeps the arguments it was built with.  DeepSpeed
    is not installed here and TrainingArguments refuses a DeepSpeed config without it, so
    that one argument is kept but not passed on."""

    def build(**kwargs: Any) -> Any:
        sink.append(kwargs)
        if "deepspeed" in kwargs and importlib.util.find_spec("deepspeed") is None:
            kwargs = {k: v for k, v in kwargs.items() if k != "deepspeed"}
        return config(**kwargs)

    return build


class _Recorded:
    """A class whose instances keep the keyword arguments they were built with."""

    def __init__(self, sink: list[dict[str, Any]], **kwargs: Any) -> None:
        sink.append(kwargs)


def _vllm_output(text: str) -> Any:
    completion = types.SimpleNamespace(text=text, finish_reason="stop", token_ids=[1])
    return types.SimpleNamespace(outputs=[completion], prompt_token_ids=[1])


@dataclass
class FakeLauncher:
    """Keeps the launch requests (``services.trainer.launcher.Launcher``)."""

    name: str = "fake"
    requests: list[LaunchRequest] = field(default_factory=list)

    def launch(self, request: LaunchRequest) -> str:
        self.requests.append(request)
        return f"fake-{len(self.requests)}"

    def status(self, handle: str) -> RunState:
        return RunState("running")

    def stop(self, handle: str) -> None: ...


# --- observations --------------------------------------------------------------------


@dataclass
class TrainingSeen:
    """What an sft or grpo run built, per stage."""

    configs: list[Any] = field(default_factory=list)  # TRL's GRPOConfig / SFTConfig
    config_kwargs: list[dict[str, Any]] = field(default_factory=list)
    trainers: list[dict[str, Any]] = field(default_factory=list)  # trainer constructor kwargs
    llm: list[dict[str, Any]] = field(default_factory=list)  # colocated vLLM constructor kwargs
    callbacks: list[Any] = field(default_factory=list)
    loaded: list[Path] = field(default_factory=list)  # model folders the policy came from
    data_from: list[str] = field(default_factory=list)  # dataset IDs read
    frozen: int = 0  # freeze_vision calls
    tracker: FakeTracker | None = None


@dataclass
class EngineSeen:
    """What one engine was built and called with (one generate call of three requests)."""

    name: str = ""
    load: dict[str, Any] = field(default_factory=dict)  # transformers: load_model(...)
    batches: list[tuple[int, Any, int | None]] = field(default_factory=list)  # size, params, seed
    llm: dict[str, Any] = field(default_factory=dict)  # vllm: LLM(...)
    sampling: list[dict[str, Any]] = field(default_factory=list)  # vllm: SamplingParams(...)
    client: dict[str, Any] = field(default_factory=dict)  # openai: AsyncOpenAI(...)
    bodies: list[dict[str, Any]] = field(default_factory=list)  # openai: create(...)
    limits: dict[str, Any] = field(default_factory=dict)  # openai: slots and buckets

    @property
    def sampled(self) -> dict[str, Any]:
        """The first request's sampling, in the backend's own words."""
        if self.name == "transformers":
            _, params, seed = self.batches[0]
            return {**tf_engine.sampling_kwargs(params), "seed": seed}
        if self.name == "vllm":
            return self.sampling[0]
        return self.bodies[0]


@dataclass
class EvalSeen:
    engines: list[EngineSpec] = field(default_factory=list)  # make_engine(...) arguments
    calls: list[list[GenerationRequest]] = field(default_factory=list)  # engine.generate(...)
    data_from: list[str] = field(default_factory=list)
    table: dict[str, Any] = field(default_factory=dict)


@dataclass
class ColdstartSeen:
    engines: dict[str, list[EngineSpec]] = field(default_factory=dict)  # engine_for(...) by role
    prompts: dict[str, list[str]] = field(default_factory=dict)  # prompts sent, by role
    max_attempts: list[int] = field(default_factory=list)  # run_step(max_attempts=...)
    items_total: int = 0
    chunks_total: int = 0
    records: dict[str, tuple[str, str | None, str]] = field(default_factory=dict)
    exported: list[str] = field(default_factory=list)
    dataset_name: str | None = None


# --- the stand-in engines of a coldstart job ---------------------------------------------

MARKERS = ("Q_MISMATCH", "Q_LEAK", "Q_OTHER", "Q_OK")
COTS = {
    "Q_OK": "The description says the value is 7. So the answer is 7.",
    "Q_OTHER": "The description says the value is 7. So the answer is 7.",
    "Q_LEAK": "The answer is given as 7, so it is 7.",
    "Q_MISMATCH": "Counting carefully, the value is 9.",
}


@dataclass
class StandIn:
    """A captioner or reasoner that answers by the item's marker and keeps the prompts."""

    role: str
    prompts: list[str]
    name: str = "transformers"
    model_id: str = "stand-in"

    def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
        self.prompts += [r.prompt for r in requests]
        return [self._one(r.prompt) for r in requests]

    def _one(self, prompt: str) -> GenerationResult:
        if self.role == "captioner":
            return GenerationResult(text="Caption: a shape.\nThe value is 7.", completion_tokens=5)
        marker = next(m for m in MARKERS if m in prompt)
        return GenerationResult(
            text="Final Answer: 7", reasoning=COTS[marker], finish_reason="stop", prompt_tokens=5
        )

    def close(self) -> None: ...


# --- the bench ---------------------------------------------------------------------------


class Bench:
    """Runs each job kind's own code on a spec and records what it built."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tiny = build_tiny_vlm(root / "tiny", size="tiny-h32")
        self.tiny_b = Path(shutil.copytree(self.tiny, root / "tiny-b"))  # another model folder
        self.policy: Policy = load_policy(self.tiny)
        image = write_image(root / "red.png")
        long_question = "What colour is the shape in this picture, please? " * 8
        self.prompt_rows = [  # 28 and 153 prompt tokens for the tiny model
            PromptRow("What colour?", "red", (image,), id=str(uuid.uuid4())),
            PromptRow(long_question, "red", (image,), id=str(uuid.uuid4())),
        ]
        self.eval_rows = [PromptRow(f"Q{i}?", "7", (), id=str(uuid.uuid4())) for i in range(5)]
        self.deepspeed = root / "zero2.json"
        self.deepspeed.write_text('{"zero_optimization": {"stage": 2}}')
        self._cache: dict[tuple[str, str], Any] = {}
        self._coldstart: tuple[Embedded, dict[str, str]] | None = None
        self._launching: tuple[Embedded, str] | None = None

    def run(self, kind: str, overrides: Overrides) -> Any:
        """What ``kind``'s job built from its base spec with ``overrides``, recorded once.
        Values naming something only the bench has (``PLACES``) are put in its place."""
        key = (kind, json.dumps(overrides, sort_keys=True))
        if key not in self._cache:
            self._cache[key] = getattr(self, kind)(self._placed(overrides))
        return self._cache[key]

    def _placed(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._placed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self._placed(v) for v in value]
        if value == ANOTHER_MODEL:
            return str(self.tiny_b)
        if value == DEEPSPEED_CONFIG:
            return str(self.deepspeed)
        if value == ANOTHER_SOURCE:
            return self._coldstart_platform()[1]["other"]
        return value

    # --- training: grpo and sft ---------------------------------------------------------

    def _workdir(self) -> Path:
        return self.root / "runs" / uuid.uuid4().hex[:8]

    def _policy_stand_ins(self, mp: pytest.MonkeyPatch, module: Any, seen: TrainingSeen) -> None:
        """The trainer module's model loading, freezing and saving, as recorders."""

        def load(model_dir: Path, **kwargs: Any) -> Policy:
            seen.loaded.append(Path(model_dir))
            return dataclasses.replace(self.policy)  # the run may swap its model: a copy

        def freeze(model: Any) -> list[str]:
            seen.frozen += 1
            return []

        mp.setattr(module, "load_policy", load)
        mp.setattr(module, "freeze_vision", freeze)
        mp.setattr(module, "save_policy", lambda policy, out_dir, trainer=None: out_dir)

    def grpo(self, overrides: Overrides) -> TrainingSeen:
        """``run_grpo_job`` (stages, reward, trainer, colocated vLLM) on a GrpoSpec."""
        spec = GrpoSpec(**merged({"model": str(self.tiny), "dataset_id": DATASET}, overrides))
        seen = TrainingSeen(tracker=FakeTracker(self._workdir()))

        def prompts(db: Any, store: Any, dataset_id: str) -> list[PromptRow]:
            seen.data_from.append(dataset_id)
            return self.prompt_rows

        def trainer_init(trainer: Any, **kwargs: Any) -> None:  # TRL's GRPOTrainer.__init__
            seen.trainers.append(kwargs)
            seen.configs.append(kwargs["args"])
            if kwargs["args"].use_vllm:  # TRL builds its colocated vLLM in here
                vllm_generation.LLM(model=kwargs["model"].name_or_path)
            trainer.model = trainer.ref_model = None
            trainer.use_vllm, trainer.eos_token_ids = False, [0]

        with pytest.MonkeyPatch.context() as mp:
            self._policy_stand_ins(mp, grpo_module, seen)
            mp.setattr(ptst, "prompt_rows", prompts)
            mp.setattr(grpo_module, "GRPOConfig", recording(GRPOConfig, seen.config_kwargs))
            mp.setattr(grpo_module, "keep_cpu_weights_updatable", lambda: None)  # imports vLLM
            mp.setattr(vllm_generation, "LLM", lambda **kw: seen.llm.append(kw), raising=False)
            mp.setattr(GRPOTrainer, "__init__", trainer_init)
            mp.setattr(GRPOTrainer, "add_callback", lambda trainer, cb: seen.callbacks.append(cb))
            mp.setattr(GRPOTrainer, "remove_callback", lambda trainer, cb: None)
            mp.setattr(GRPOTrainer, "train", lambda trainer, **kw: None)
            settings = types.SimpleNamespace(checkpoint_every=None)
            ptst.run_grpo_job(seen.tracker, settings, spec)  # type: ignore[arg-type]
        return seen

    def sft(self, overrides: Overrides) -> TrainingSeen:
        """``run_sft_job`` (SFTConfig, LoRA, trainer) on an SftSpec."""
        spec = SftSpec(**merged({"model": str(self.tiny), "dataset_id": DATASET}, overrides))
        seen = TrainingSeen(tracker=FakeTracker(self._workdir()))

        def train_file(db: Any, store: Any, dataset_id: str) -> Path:
            seen.data_from.append(dataset_id)
            return self.root / "cold.json"

        class Trainer:  # SFTTrainer
            def __init__(self, **kwargs: Any) -> None:
                seen.trainers.append(kwargs)
                seen.configs.append(kwargs["args"])
                self.model = types.SimpleNamespace(merge_and_unload=lambda: kwargs["model"])

            def add_callback(self, callback: Any) -> None:
                seen.callbacks.append(callback)

            def remove_callback(self, callback: Any) -> None: ...
            def train(self, **kwargs: Any) -> None: ...

        records = [{"messages": [{"role": "user", "content": "hi"}]}]
        with pytest.MonkeyPatch.context() as mp:
            self._policy_stand_ins(mp, sft_module, seen)
            mp.setattr(run_module, "sft_train_file", train_file)
            mp.setattr(sft_module, "load_sft_records", lambda path, vision: records)
            mp.setattr(sft_module, "SFTConfig", recording(SFTConfig, seen.config_kwargs))
            mp.setattr(sft_module, "SFTTrainer", Trainer)
            settings = types.SimpleNamespace(checkpoint_every=None)
            run_module.run_sft_job(seen.tracker, settings, spec)  # type: ignore[arg-type]
        return seen

    def trainers(self, overrides: Overrides) -> dict[str, TrainingSeen]:
        """The same overrides on an sft and a grpo job (what both kinds share)."""
        return {"sft": self.run("sft", overrides), "grpo": self.run("grpo", overrides)}

    def launch(self, overrides: Overrides) -> dict[str, LaunchRequest]:
        """The watcher's launch request for an sft and a grpo job with these overrides."""
        if self._launching is None:
            platform = embedded(BaseVR1Settings(home=self.root / "launching"))
            self._launching = platform, self._source(platform, "prompts", ("Q_OK",))
        platform, dataset_id = self._launching
        settings = TrainerSettings(
            home=platform.settings.home,
            database_url=platform.settings.resolved_database_url,
            artifact_uri=platform.settings.resolved_artifact_uri,
            redis_url="",
        )
        base = {"model": str(self.tiny), "dataset_id": dataset_id}
        requests = {}
        for kind, model in (("sft", SftSpec), ("grpo", GrpoSpec)):
            job_id = platform.submit(model(**merged(base, overrides)))
            discard_messages(platform)  # nothing here works the queues
            launcher = FakeLauncher()
            watcher.launch(platform.db, launcher, settings, str(job_id))
            (requests[kind],) = launcher.requests
        return requests

    # --- eval ----------------------------------------------------------------------------

    def eval(self, overrides: Overrides) -> EvalSeen:
        """``run_eval_job`` on an EvalSpec, with an engine that never closes its answer (so
        every round runs)."""
        base = {"model": str(self.tiny), "dataset_ids": [DATASET]}
        spec = EvalSpec(**merged(base, overrides))
        seen = EvalSeen()

        class Engine:
            name, model_id = "stand-in", "stand-in"

            def generate(self, requests: Sequence[GenerationRequest]) -> list[GenerationResult]:
                seen.calls.append(list(requests))
                return [GenerationResult(text="7", completion="7") for _ in requests]

            def close(self) -> None: ...

        def build(engine_spec: EngineSpec) -> Engine:
            seen.engines.append(engine_spec)
            return Engine()

        def prompts(db: Any, store: Any, dataset_id: str) -> list[PromptRow]:
            seen.data_from.append(dataset_id)
            return self.eval_rows

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(run_module, "make_engine", build)
            mp.setattr(eval_job, "prompt_rows", prompts)
            output = run_module.run_eval_job(FakeTracker(self._workdir()), spec)  # type: ignore[arg-type]
        seen.table = output["accuracy"]  # type: ignore[assignment]
        return seen

    # --- engines -------------------------------------------------------------------------

    def _engine_bases(self) -> dict[str, Overrides]:
        return {
            "transformers": {"model": str(self.tiny)},
            "vllm": {"engine": "vllm", "model": str(self.tiny)},
            "openai": {"engine": "openai", "model": str(self.tiny), "base_url": "http://llm.test"},
        }

    def engines(self, overrides: Overrides) -> dict[str, EngineSeen]:
        """Each engine that accepts ``overrides`` (it refuses what it cannot honour), built
        through ``make_engine`` and called once with three requests."""
        seen = {}
        for name, base in self._engine_bases().items():
            try:
                spec = EngineSpec(**merged(base, overrides))
            except ValueError:  # pydantic's ValidationError: not for this engine
                continue
            seen[name] = self._engine(spec)
        return seen

    def engine_built(self, overrides: Overrides) -> str:
        """Which backend ``make_engine`` builds for an EngineSpec."""
        return self._engine(EngineSpec(**merged({"model": str(self.tiny)}, overrides))).name

    def _engine(self, spec: EngineSpec) -> EngineSeen:
        seen = EngineSeen()
        tokenizer = self.policy.tokenizer

        def load_model(path: str, *, device: str = "auto", dtype: str = "auto") -> Any:
            seen.load = {"path": path, "device": device, "dtype": dtype}
            return types.SimpleNamespace(multimodal=True)

        def generate_batch(engine: Any, batch: list[Any], params: Any, seed: Any) -> list[Any]:
            seen.batches.append((len(batch), params, seed))
            return [GenerationResult(text="7", completion="7") for _ in batch]

        class LLM:  # vllm.LLM
            def __init__(self, **kwargs: Any) -> None:
                seen.llm = kwargs

            def get_tokenizer(self) -> Any:
                return tokenizer

            def chat(self, conversations: list[Any], **kwargs: Any) -> list[Any]:
                return [_vllm_output("7") for _ in conversations]

        class Client:  # openai.AsyncOpenAI
            def __init__(self, **kwargs: Any) -> None:
                seen.client = kwargs
                raw = types.SimpleNamespace(create=self.create)
                self.chat = types.SimpleNamespace(
                    completions=types.SimpleNamespace(with_raw_response=raw)
                )

            async def __aenter__(self) -> Client:
                return self

            async def __aexit__(self, *exc: object) -> None: ...

            async def create(self, **body: Any) -> Any:
                seen.bodies.append(body)
                data = {"choices": [{"message": {"content": "7"}, "finish_reason": "stop"}]}
                return types.SimpleNamespace(
                    http_response=types.SimpleNamespace(json=lambda: data), retries_taken=0
                )

        vllm = types.ModuleType("vllm")
        vllm.LLM = LLM  # type: ignore[attr-defined]
        vllm.SamplingParams = lambda **kw: seen.sampling.append(kw)  # type: ignore[attr-defined]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(tf_engine, "load_model", load_model)
            mp.setattr(tf_engine.TransformersEngine, "_generate_batch", generate_batch)
            mp.setitem(sys.modules, "vllm", vllm)
            mp.setattr(openai, "AsyncOpenAI", Client)
            mp.setenv(API_KEY_ENV, "key-from-the-environment")
            engine = make_engine(spec)
            seen.name = engine.name
            engine.generate([GenerationRequest(f"q{i}") for i in range(3)])
            engine.close()
        if seen.name == "openai":
            requests, tokens = engine._requests, engine._tokens  # type: ignore[attr-defined]
            seen.limits = {
                "in_flight": engine.slots.size,  # type: ignore[attr-defined]
                "requests_per_minute": requests and round(requests.rate * 60),
                "tokens_per_minute": tokens and round(tokens.rate * 60),
            }
        return seen

    # --- coldstart -----------------------------------------------------------------------

    def _source(self, platform: Embedded, name: str, markers: Sequence[str]) -> str:
        """A source dataset of one item per marker, registered on ``platform``; its ID."""
        folder = self.root / "sources" / name
        write_image(folder / "0.png")
        rows = [{"image": "0.png", "question": f"<image>{m}: value?", "answer": "7"}
                for m in sorted(markers)]  # fmt: skip
        (folder / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
        with platform.db.session() as session:
            request = DatasetCreate(name=name, path=str(folder / "rows.jsonl"))
            dataset, _ = register_dataset(
                session, team=platform.team(), request=request, roots=[folder], store=platform.store
            )
            return str(dataset.id)

    def _coldstart_platform(self) -> tuple[Embedded, dict[str, str]]:
        """An embedded platform with two source datasets: Q_OK, Q_LEAK, Q_MISMATCH; Q_OTHER."""
        if self._coldstart is None:
            platform = embedded(BaseVR1Settings(home=self.root / "coldstart"))
            datasets = {
                "main": self._source(platform, "main", ("Q_OK", "Q_LEAK", "Q_MISMATCH")),
                "other": self._source(platform, "other", ("Q_OTHER",)),
            }
            self._coldstart = platform, datasets
        return self._coldstart

    def coldstart(self, overrides: Overrides) -> ColdstartSeen:
        """A whole coldstart job in embedded mode, with stand-in captioner and reasoner."""
        platform, datasets = self._coldstart_platform()
        base = {
            "dataset_id": datasets["main"],
            "captioner": {"model": "describer"},
            "reasoner": {"model": "reasoner"},
        }
        spec = ColdstartSpec(**merged(base, overrides))
        seen = ColdstartSeen()

        def engine_for(role: str) -> Callable[[EngineSpec], StandIn]:
            def build(engine_spec: EngineSpec) -> StandIn:
                seen.engines.setdefault(role, []).append(engine_spec)
                return StandIn(role, seen.prompts.setdefault(role, []))

            return build

        def attempts(real: Callable[..., bool]) -> Callable[..., bool]:
            def run_step(*args: Any, max_attempts: int, **kwargs: Any) -> bool:
                seen.max_attempts.append(max_attempts)
                return real(*args, max_attempts=max_attempts, **kwargs)

            return run_step

        with pytest.MonkeyPatch.context() as mp:
            for role, module in (("captioner", captioning), ("reasoner", reasoning)):
                mp.setattr(module, "engine_for", engine_for(role))
                mp.setattr(module, "run_step", attempts(module.run_step))
            job = platform.run(spec)
        seen.items_total, seen.chunks_total = job.items_total, job.chunks_total
        with platform.db.session() as session:
            rows = session.execute(
                select(GenerationRecord, Item).join(Item).where(GenerationRecord.job_id == job.id)
            ).all()
            for record, item in rows:
                marker = next(m for m in MARKERS if m in item.question)
                status = (record.status, record.reject_reason, record.reasoning or "")
                seen.records[marker] = status
            if job.output.get("dataset_id"):
                cold = session.get(Dataset, uuid.UUID(job.output["dataset_id"]))
                seen.dataset_name = cold.name if cold else None
                export = platform.store.local_path(job.output["export_uri"])
                seen.exported = sorted(p.name for p in export.iterdir())
        return seen

    # --- pipeline ------------------------------------------------------------------------

    def pipeline(self, overrides: Overrides) -> dict[str, Any]:
        """The child specs a pipeline creates, each step's output standing in for its job."""
        base = {
            "base_model": "base-model",
            "source_dataset_id": "source",
            "coldstart": {"captioner": {"model": "describer"}, "reasoner": {"model": "reasoner"}},
        }
        spec = PipelineSpec(**merged(base, overrides))
        done = {
            "coldstart": types.SimpleNamespace(output={"dataset_id": "cold"}),
            "sft": types.SimpleNamespace(output={"checkpoint_uri": "file:///runs/sft"}),
            "grpo": types.SimpleNamespace(output={"checkpoint_uri": "file:///runs/grpo"}),
        }
        return {
            kind: child_spec(kind, spec, done)  # type: ignore[arg-type]
            for kind in planned_kinds(spec.eval_dataset_ids)
        }
