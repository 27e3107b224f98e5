"""Tiny models: built here, then loaded and used in separate processes, as workers do."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import httpx
import pytest

from shared.fixtures.toy import generate_toy_dataset, read_rows
from tests.helpers import served_model

REPO = Path(__file__).resolve().parents[2]
OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_UPDATE_CHECK": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "OMP_NUM_THREADS": "1",
}

LOAD_AND_GENERATE = textwrap.dedent(
    """
    import json, sys
    import torch
    from PIL import Image
    from transformers import (
        AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer,
    )
    from shared.engines.loading import register_image_only_processor
    from shared.fixtures.tiny import vision_special_token_ids

    vlm_dir, text_dir, image_path = sys.argv[1:4]
    torch.manual_seed(0)
    register_image_only_processor()
    processor = AutoProcessor.from_pretrained(vlm_dir)
    model = AutoModelForImageTextToText.from_pretrained(vlm_dir)
    messages = [{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What colour is the shape?"}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
    inputs = processor(text=[prompt], images=[Image.open(image_path)], return_tensors="pt")
    suppress = vision_special_token_ids(processor)
    out = model.generate(
        **inputs, do_sample=True, max_new_tokens=32, min_new_tokens=32,
        num_return_sequences=8, suppress_tokens=suppress,
    )
    new = out[:, inputs["input_ids"].shape[1]:]
    tokenizer = AutoTokenizer.from_pretrained(text_dir)
    lm = AutoModelForCausalLM.from_pretrained(text_dir)
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
        return_tensors="pt", return_dict=True,
    )
    text_out = lm.generate(**chat, do_sample=True, max_new_tokens=16, min_new_tokens=16)
    print(json.dumps({
        "processor": type(processor).__name__,
        "image_processor": type(processor.image_processor).__name__,
        "vlm": type(model).__name__,
        "pixel_values": list(inputs["pixel_values"].shape),
        "image_tokens": int((inputs["input_ids"] == processor.image_token_id).sum()),
        "generated_shape": list(new.shape),
        "generated_ids": sorted(set(new.flatten().tolist())),
        "suppress": suppress,
        "decoded": processor.batch_decode(new)[0],
        "text_lm": type(lm).__name__,
        "text_new_tokens": text_out.shape[1] - chat["input_ids"].shape[1],
    }))
    """
)


def _env() -> dict[str, str]:
    return {**os.environ, **OFFLINE_ENV, "PYTHONPATH": str(REPO)}


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from shared.fixtures.tiny import build_tiny_models

    root = tmp_path_factory.mktemp("fixtures")
    toy = generate_toy_dataset(root / "toy", seed=0, n_train=4, n_test=0)
    paths = build_tiny_models(root / "models", seed=0)
    return {**paths, "image": toy.root / read_rows(toy.train_path)[0]["image"]}


def test_build_is_deterministic(built: dict[str, Path], tmp_path: Path) -> None:
    from shared.fixtures.tiny import build_tiny_vlm, fixture_info

    again = build_tiny_vlm(tmp_path / "vlm", seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json", "processor_config.json"):
        assert (again / name).read_bytes() == (built["vlm"] / name).read_bytes(), name
    info = fixture_info(again)
    assert info["random_init"] is True
    assert 150_000 < info["parameters"] < 250_000  # ~187 k: the learnable size


def test_tiny_models_command_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from shared.fixtures.commands import tiny_models_command

    tiny_models_command(tmp_path, seed=1)
    out = capsys.readouterr().out
    assert str(tmp_path / "tiny-vlm") in out
    assert str(tmp_path / "tiny-text-lm") in out
    assert "parameters" in out


def test_load_and_generate_in_a_fresh_process(built: dict[str, Path]) -> None:
    args = [str(built["vlm"]), str(built["text_lm"]), str(built["image"])]
    done = subprocess.run(
        [sys.executable, "-c", LOAD_AND_GENERATE, *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["processor"] == "QwenImageOnlyProcessor"  # not a bare tokenizer
    assert result["image_processor"] == "Qwen2VLImageProcessorPil"
    assert result["vlm"] == "Qwen2_5_VLForConditionalGeneration"
    assert result["image_tokens"] == 4  # 56×56 → 4×4 patches → 2×2 merged tokens
    assert result["generated_shape"] == [8, 32]
    assert not set(result["generated_ids"]) & set(result["suppress"])
    assert len(result["suppress"]) == 5
    assert result["text_lm"] == "Qwen2ForCausalLM"
    assert result["text_new_tokens"] == 16


def _prompt_tokens(base: str, model: str, content: list[dict[str, Any]]) -> int:
    body = {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": content}]}
    response = httpx.post(f"{base}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text
    tokens: int = response.json()["usage"]["prompt_tokens"]
    return tokens


@pytest.mark.slow
def test_transformers_serve_keeps_the_image(built: dict[str, Path], tmp_path: Path) -> None:
    model = str(built["vlm"])
    with served_model(built["vlm"], tmp_path / "serve.log", env=OFFLINE_ENV) as base:
        image = base64.b64encode(built["image"].read_bytes()).decode()
        question = {"type": "text", "text": "What colour is the shape?"}
        picture = {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{image}"}}
        text_only = _prompt_tokens(base, model, [question])
        with_image = _prompt_tokens(base, model, [picture, question])
    # vision start + 4 image tokens + vision end: the image reached the model
    assert with_image == text_only + 6
