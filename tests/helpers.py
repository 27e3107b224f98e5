"""Small helpers the test tiers share."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

if TYPE_CHECKING:
    from entrypoints.bootstrap import Embedded
    from shared.cold_data import ColdSample
    from shared.contracts.specs import GrpoSpec

REPO = Path(__file__).resolve().parents[1]
# SFT options that teach a tiny model in a few steps on a CPU.
FAST_SFT = {
    "learning_rate": 1e-3,
    "lr_scheduler": "constant",
    "warmup_ratio": 0.0,
    "max_length": 256,
    "global_batch_size": 4,
    "per_device_batch_size": 4,
}


@dataclass
class RecordingDispatcher:
    """Keeps what would have been sent to the broker, for tests of what a request queues."""

    sent: list[tuple[str, list[Any]]] = field(default_factory=list)

    def send(self, task_name: str, args: list[Any]) -> None:
        self.sent.append((task_name, args))


def write_image(path: Path, colour: str = "red", size: int = 32) -> Path:
    """A small PNG on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (size, size), colour).save(path)
    return path


# (model size, SFT steps) per stand-in teacher, as the demo trains them: the describer's
# text does not decide what is kept (the reasoner sees the gold answer), the reasoner must
# learn to copy details from a long prompt, which the "teacher" size does in ~400 steps.
TEACHERS = {"describer": ("tiny", 100), "reasoner": ("teacher", 400)}


def stand_in_teachers(
    cache_root: Path, *, seed: int = 0, describer_size: str | None = None
) -> dict[str, Path]:
    """Train (once, then reuse from ``cache_root``) the demo's stand-in teachers.

    A tiny VLM describer and a tiny text reasoner taught the toy world's reference texts
    through the platform's own SFT code; coldstart tests need teachers whose answers can
    pass verification.  ``describer_size`` replaces the describer's ("tiny-h32" for vLLM,
    whose CPU attention takes no 16-wide heads).  The cache key covers everything that
    shapes them.
    """
    import hashlib
    import inspect
    import json

    from entrypoints.demo import teachers
    from shared.contracts.sharegpt import sharegpt_row
    from shared.contracts.specs import SftOptions
    from shared.fixtures import tiny, toy
    from shared.prompts import shipped

    sizes = dict(TEACHERS)
    if describer_size is not None:
        sizes["describer"] = (describer_size, TEACHERS["describer"][1])
    material = json.dumps(
        [
            toy.GENERATOR_VERSION,
            {name: tiny.SIZES[size] for name, (size, _) in sizes.items()},
            {s: {v: t.text for v, t in vs.items()} for s, vs in shipped().items()},
            inspect.getsource(teachers),
            seed,
            sizes,
        ],
        sort_keys=True,
    )
    root = cache_root / f"teachers-{hashlib.sha256(material.encode()).hexdigest()[:12]}"
    paths = {
        "toy": root / "toy",
        "describer": root / "describer" / "final",
        "reasoner": root / "reasoner" / "final",
    }
    if (root / "done").exists():
        return paths
    from services.trainer.sft import run_sft

    info = toy.generate_toy_dataset(
        paths["toy"], seed=seed, n_train=96, n_test=32, tasks=["shape_colour"]
    )
    rows = toy.read_rows(info.train_path)
    for name, samples, build in (
        ("describer", teachers.describer_rows(rows, info.root), tiny.build_tiny_vlm),
        ("reasoner", teachers.reasoner_rows(rows), tiny.build_tiny_text_lm),
    ):
        size, steps = sizes[name]
        options = SftOptions(
            learning_rate=1e-3,
            lr_scheduler="constant",
            warmup_ratio=0.0,
            max_steps=steps,
            max_length=512,
            global_batch_size=8,
            per_device_batch_size=8,
            freeze_vision=False,
        )
        data = paths["toy"] / f"{name}.json"  # image paths are relative to this file
        examples = [
            sharegpt_row(s.question, s.assistant, [str(p.relative_to(info.root)) for p in s.images])
            for s in samples
        ]
        data.write_text(json.dumps([example.model_dump() for example in examples]))
        base = build(root / "base" / name, seed=seed + 1, size=size)
        run_sft(base, data, root / name, options)
    (root / "done").write_text("ok\n")
    return paths


def register_cold(platform: Embedded, name: str, samples: list[ColdSample]) -> str:
    """A ``cold`` dataset made the platform's one way; returns its ID."""
    from shared.cold_data import create_cold_dataset

    team = platform.team()
    with platform.db.session() as session:
        dataset = create_cold_dataset(
            session,
            platform.store,
            team_id=team.id,
            name=name,
            prefix=f"test/{name}",
            samples=samples,
            parquet=False,
        )
        return str(dataset.id)


def discard_messages(platform: Embedded) -> list[tuple[str, list[object]]]:
    """Take every message waiting in the outbox, so that nothing handles them."""
    from shared.db.session import take_outbox

    with platform.db.session() as session:
        return take_outbox(session, limit=10_000)


def free_port() -> int:
    """A TCP port on loopback that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextmanager
def served_model(
    model: Path, log: Path, *, env: Mapping[str, str] | None = None, timeout_s: float = 120.0
) -> Iterator[str]:
    """Base URL of a real ``transformers serve`` on ``model``, started through the entry that
    registers the image processor first (so images reach the model); stopped afterwards."""
    port = free_port()
    command = [sys.executable, "-m", "shared.fixtures.serve_entry", str(model)]
    command += ["--device", "cpu", "--host", "127.0.0.1", "--port", str(port)]
    log.parent.mkdir(parents=True, exist_ok=True)
    environment = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, server, timeout_s)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=15)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait(timeout=15)


def _wait_healthy(
    base: str, server: subprocess.Popen[bytes], timeout_s: float, path: str = "/health"
) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"{server.args!r} exited early with code {server.returncode}")
        try:
            if httpx.get(f"{base}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{server.args!r} did not become healthy within {timeout_s:.0f} s")


@contextmanager
def served_gateway(
    env: Mapping[str, str], log: Path, *, timeout_s: float = 60.0
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``vr1 serve gateway`` in its own process with ``env`` (settings and ``VR1_PORT``) on
    top of this one's, once healthy: its base URL and process; stopped afterwards."""
    environment = {**os.environ, "PYTHONPATH": str(REPO), **env}
    command = [sys.executable, "-m", "entrypoints.cli", "serve", "gateway"]
    with log.open("wb") as out:
        server = subprocess.Popen(command, env=environment, stdout=out, stderr=subprocess.STDOUT)
        try:
            base = f"http://127.0.0.1:{environment['VR1_PORT']}"
            _wait_healthy(base, server, timeout_s, "/healthz")
            yield base, server
        finally:
            server.terminate()
            server.wait(timeout=15)


@contextmanager
def serve_app(app: Any, *, startup_s: float = 30.0) -> Iterator[str]:
    """Base URL of ``app`` (an ASGI app) served by uvicorn in a thread; stopped afterwards."""
    import threading

    import uvicorn

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + startup_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(15)


def platform_on(database_url: str, root: Path) -> Embedded:
    """The embedded platform on ``database_url``, its home and artifacts under ``root``."""
    from entrypoints.bootstrap import embedded
    from shared.settings import BaseVR1Settings

    settings = BaseVR1Settings(
        home=root / "home", database_url=database_url, artifact_uri=(root / "artifacts").as_uri()
    )
    return embedded(settings)


def training_toy(platform: Embedded, folder: Path) -> dict[str, Any]:
    """A student model, a cold set of 8 clean samples and an RL set of 16 prompts from the
    toy world, registered on ``platform``: ``{"student": path, "cold": id, "rl": id}``."""
    import json

    from shared.cold_data import ColdSample
    from shared.contracts.api import DatasetCreate
    from shared.datasets import register_dataset
    from shared.fixtures.tiny import build_tiny_vlm
    from shared.fixtures.toy import generate_toy_dataset, read_rows

    info = generate_toy_dataset(
        folder / "toy", seed=0, n_train=16, n_test=0, tasks=["shape_colour"]
    )
    root = info.root
    rows = read_rows(info.train_path)
    cold = [
        ColdSample(
            r["question"],
            f"<think>The shape is {r['answer']}.</think><answer>{r['answer']}</answer>",
            [root / r["image"]],
        )
        for r in rows[:8]
    ]
    cold_id = register_cold(platform, "cold-clean", cold)
    (root / "rl.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:16]))
    team = platform.team()
    with platform.db.session() as session:
        request = DatasetCreate(name="rl", kind="rl", path=str(root / "rl.jsonl"))
        rl, _ = register_dataset(
            session, team=team, request=request, roots=[root], store=platform.store
        )
        rl_id = str(rl.id)
    return {"student": build_tiny_vlm(folder / "student", seed=0), "cold": cold_id, "rl": rl_id}


def two_stage_grpo_spec(
    toy: dict[str, Any], model: str, steps: int = 4, processes: int = 1
) -> GrpoSpec:
    """A two-stage PTST spec on ``training_toy``'s RL set: 16 tokens x 4, then 32 x 2."""
    from shared.contracts.specs import GrpoSpec, StageSpec

    return GrpoSpec(
        distributed={"num_processes": processes},
        model=model,
        dataset_id=toy["rl"],
        stages=[
            StageSpec(max_completion_tokens=16, group_size=4, steps=steps, prompts_per_step=2),
            StageSpec(max_completion_tokens=32, group_size=2, steps=steps, prompts_per_step=4),
        ],
        learning_rate=1e-4,
        beta=0.0,
    )


def pipeline_toy_files(data: Path, teachers: dict[str, Path]) -> None:
    """The small pipeline's files in ``data``: 4 source rows, 32 RL prompts, 8 eval rows
    of the stand-in teachers' toy world with their images, and a fresh student."""
    import json
    import shutil

    from shared.fixtures.tiny import build_tiny_vlm
    from shared.fixtures.toy import read_rows

    toy = teachers["toy"]
    train, test = read_rows(toy / "train.jsonl"), read_rows(toy / "test.jsonl")
    shutil.copytree(toy / "images", data / "images")  # a symlink would leave the root
    for name, rows in (("source", train[:4]), ("rl", train[:32]), ("test", test[:8])):
        (data / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    build_tiny_vlm(data / "student", seed=0)


def small_pipeline_spec(
    data: Path, ids: dict[str, str], teachers: dict[str, Path], **grpo: Any
) -> dict[str, Any]:
    """A whole pipeline in a minute on a CPU over ``pipeline_toy_files``: coldstart with the
    stand-in teachers, 20 SFT steps, GRPO in two PTST stages of 3 steps, eval of 8 items."""
    engine = {
        "engine": "transformers",
        "device": "cpu",
        "generation": {"max_new_tokens": 128, "temperature": 0},
    }
    return {
        "kind": "pipeline",
        "base_model": str(data / "student"),
        "source_dataset_id": ids["source"],
        "rl_dataset_id": ids["rl"],
        "eval_dataset_ids": [ids["test"]],
        "coldstart": {
            "captioner": {**engine, "model": str(teachers["describer"])},
            "reasoner": {**engine, "model": str(teachers["reasoner"])},
            "chunk_size": 2,
        },
        "sft": {
            "learning_rate": 1e-3,
            "lr_scheduler": "constant",
            "warmup_ratio": 0,
            "max_steps": 20,
            "max_length": 512,
            "global_batch_size": 4,
            "per_device_batch_size": 4,
        },
        "grpo": {
            "stages": [
                {"max_completion_tokens": 32, "group_size": 4, "steps": 3, "prompts_per_step": 2},
                {"max_completion_tokens": 64, "group_size": 2, "steps": 3, "prompts_per_step": 4},
            ],
            "learning_rate": 1e-4,
            "beta": 0.0,
            **grpo,
        },
        "eval": {"max_new_tokens": 48, "max_tries": 2, "limit": 8},
    }
