"""How the platform's models compute, whichever code calls them: a multimodal forward gets
the processor's whole output, and the token suppression lives in the model's own logits
(the same numbers every sampler adds), where TRL's fused log-prob head sees it too."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from trl.trainer.utils import add_fused_lm_head

from shared.engines.loading import (
    SUPPRESSED_LOGIT_BIAS,
    bias_output_head,
    load_pretrained,
    suppression_bias,
    vision_token_ids,
)
from shared.errors import EngineError
from shared.fixtures.tiny import build_tiny_vlm
from tests.helpers import write_image


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_tiny_vlm(tmp_path_factory.mktemp("vlm") / "vlm", seed=0, size="tiny-h32")


def _inputs(processor: Any, image: Path) -> dict[str, torch.Tensor]:
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "?"}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return dict(processor(text=[text], images=[Image.open(image)], return_tensors="pt"))


def test_a_forward_with_images_but_without_mm_token_type_ids_is_refused(
    vlm: Path, tmp_path: Path
) -> None:
    loaded = load_pretrained(vlm)
    inputs = _inputs(loaded.processing_class, write_image(tmp_path / "red.png", "red", 56))
    assert "mm_token_type_ids" in inputs  # the processor gives them
    loaded.model(**inputs)  # the whole output: fine
    without = {k: v for k, v in inputs.items() if k != "mm_token_type_ids"}
    with pytest.raises(EngineError, match="mm_token_type_ids"):
        loaded.model(**without)
    with pytest.raises(EngineError, match="mm_token_type_ids"):
        loaded.model.generate(**without, max_new_tokens=2)
    text_only = {k: inputs[k] for k in ("input_ids", "attention_mask")}
    loaded.model(**{**text_only, "input_ids": torch.tensor([[1, 2, 3]]), "attention_mask": None})


def test_the_suppression_is_in_the_logits_every_path_computes(vlm: Path, tmp_path: Path) -> None:
    loaded = load_pretrained(vlm)
    suppress = vision_token_ids(loaded.config, loaded.tokenizer)
    inputs = _inputs(loaded.processing_class, write_image(tmp_path / "red.png", "red", 56))
    plain = loaded.model(**inputs).logits
    bias_output_head(loaded.model, suppress)
    biased = loaded.model(**inputs).logits
    assert torch.equal(biased[..., suppress], plain[..., suppress] + SUPPRESSED_LOGIT_BIAS)
    kept = [i for i in range(plain.shape[-1]) if i not in suppress]
    assert torch.equal(biased[..., kept], plain[..., kept])
    assert suppression_bias(suppress) == dict.fromkeys(suppress, SUPPRESSED_LOGIT_BIAS)

    # TRL's fused head (the GRPO loss) reads the head's bias: the same log-probs, at T.
    temperature = 0.7
    add_fused_lm_head(loaded.model, temperature=temperature)
    labels = inputs["input_ids"].clone()
    fused = loaded.model(**inputs, labels=labels, fused_lm_head=True).log_probs
    direct = torch.log_softmax(biased[:, :-1] / temperature, dim=-1)
    expected = direct.gather(-1, labels[:, 1:, None]).squeeze(-1)
    assert torch.allclose(fused, expected, atol=1e-5)

    # Generation never samples a suppressed token, and the bias is never saved.
    torch.manual_seed(0)
    out = loaded.model.generate(**inputs, do_sample=True, max_new_tokens=24, min_new_tokens=24)
    assert not set(out[0, inputs["input_ids"].shape[1] :].tolist()) & set(suppress)
    loaded.model.save_pretrained(tmp_path / "saved")
    with safe_open(str(tmp_path / "saved" / "model.safetensors"), "pt") as saved:
        assert not [k for k in saved.keys() if k.endswith("lm_head.bias")]  # noqa: SIM118
    assert "lm_head.bias" not in dict(loaded.model.named_parameters())
