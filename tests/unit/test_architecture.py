"""Import boundaries, checked on the source: every import at any depth of a module
(function bodies included, relative imports resolved, ``importlib.import_module`` of a
literal name included), plus a runtime probe of what the API processes load.

- ``shared/`` is the library: it never imports ``services/`` or ``entrypoints/``;
- services never import each other;
- the gateway and the reward service never import torch or transformers, not even
  through the ``shared`` modules they use;
- production code never imports ``shared/fixtures`` (test and demo data).
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICES = sorted(p.name for p in (ROOT / "services").iterdir() if (p / "__init__.py").exists())
HEAVY = ("torch", "transformers", "trl", "peft", "accelerate", "vllm", "deepspeed")
API_SERVICES = ("gateway", "reward")


def module_name(path: Path) -> str:
    """``shared/engines/base.py`` → ``shared.engines.base`` (a package is its __init__)."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module an ``ImportFrom`` names, relative levels resolved."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports_in_source(source: str, module: str = "", *, is_package: bool = False) -> set[str]:
    """Every module a source imports, wherever the import statement stands."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)  # maybe submodules
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names.add(node.args[0].value)
    return names


@cache
def imports_of(path: Path) -> frozenset[str]:
    return frozenset(
        imports_in_source(
            path.read_text(), module_name(path), is_package=path.name == "__init__.py"
        )
    )


def _python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py"))


def offenders(paths: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    """``path imports name`` for every import of a forbidden package (or its modules)."""
    found = []
    for path in paths:
        for name in sorted(imports_of(path)):
            if any(name == f or name.startswith(f + ".") for f in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


def test_the_check_sees_imports_at_any_depth() -> None:
    """A deliberate violation inside a function body is caught (and relative imports are
    resolved), so nothing hides from the rules below."""
    source = (
        "def later():\n"
        "    from services.gateway import app\n"
        "    import importlib\n"
        "    importlib.import_module('entrypoints.cli')\n"
        "class Lazy:\n"
        "    def run(self):\n"
        "        from ..fixtures import toy\n"
    )
    found = imports_in_source(source, "shared.engines.thing")
    assert {"services.gateway", "entrypoints.cli", "shared.fixtures"} <= found


def test_shared_never_imports_services_or_entrypoints() -> None:
    assert offenders(_python_files("shared"), ("services", "entrypoints")) == []


@pytest.mark.parametrize("service", SERVICES)
def test_services_never_import_each_other_or_entrypoints(service: str) -> None:
    others = tuple(f"services.{s}" for s in SERVICES if s != service)
    paths = _python_files(f"services/{service}")
    assert offenders(paths, (*others, "entrypoints")) == []


def test_production_code_never_imports_fixtures() -> None:
    paths = [p for p in _python_files("shared", "services") if "fixtures" not in p.parts]
    assert offenders(paths, ("shared.fixtures",)) == []


def _reachable(start: list[Path]) -> set[Path]:
    """Every repo module the given ones import, transitively, at any depth."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imports_of(path):
            for candidate in (ROOT.joinpath(*name.split(".")), ROOT / name.replace(".", "/")):
                for found in (candidate.with_suffix(".py"), candidate / "__init__.py"):
                    if found.is_file() and found not in seen:
                        todo.append(found)
    return seen


@pytest.mark.parametrize("service", API_SERVICES)
def test_api_services_never_reach_heavy_ml_libraries(service: str) -> None:
    """Not in the service's own modules, nor in any repo module they import, at any depth."""
    reachable = _reachable(_python_files(f"services/{service}"))
    assert offenders(sorted(reachable), HEAVY) == []


@pytest.mark.parametrize(
    "module",
    [
        "services.gateway.app",
        "services.reward.app",
        "shared.contracts.specs",
        "entrypoints.cli",
        "entrypoints.bootstrap",
    ],
)
def test_api_processes_load_no_heavy_ml_library(module: str) -> None:
    """Import the module in a fresh interpreter and look at what got loaded."""
    probe = (
        f"import sys, importlib; importlib.import_module({module!r}); "
        f"print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == ""
