"""Read compose.yaml the way Compose does, so tests can run its services as local processes.

``load_stack(path, variables)`` interpolates ``$VAR``, ``${VAR}``, ``${VAR:-default}``,
``${VAR-default}``, ``${VAR:?message}``, ``${VAR?message}``, ``${VAR:+alt}``, ``${VAR+alt}``
and ``$$`` over the whole file (YAML anchors and ``<<`` merges are resolved by the YAML
loader), then returns per service its command, environment, healthcheck command, and
``depends_on`` conditions.  ``rewrite_hosts`` points service host names at loopback and
``rewrite_paths`` maps container paths (volumes) to local folders.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose.yaml"
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class InterpolationError(ValueError):
    """A required variable is missing (``${VAR:?message}``) or the syntax is broken."""


@dataclass(frozen=True)
class Service:
    name: str
    image: str | None
    command: list[str] | None
    environment: dict[str, str]
    healthcheck: list[str] | None  # an argv; CMD-SHELL becomes ["sh", "-c", ...]
    depends_on: dict[str, str]  # service -> condition
    profiles: list[str] = field(default_factory=list)
    built_here: bool = False  # built from this repository's Dockerfile

    @property
    def is_application(self) -> bool:
        """One of the platform's own processes (not postgres, redis, flower)."""
        return self.built_here


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """Resolve Compose variable syntax in one string."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$":
            out.append(char)
            i += 1
            continue
        nxt = text[i + 1 : i + 2]
        if nxt == "$":
            out.append("$")
            i += 2
        elif nxt == "{":
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], variables))
            i = end + 1
        else:
            match = _NAME.match(text, i + 1)
            if match is None:
                out.append("$")
                i += 1
            else:
                out.append(variables.get(match.group(), ""))
                i = match.end()
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for index in range(start, len(text)):
        if text.startswith("${", index):
            depth += 1
        elif text[index] == "}":
            depth -= 1
            if depth == 0:
                return index
    raise InterpolationError(f"unclosed '${{' in {text!r}")


def _expand(body: str, variables: Mapping[str, str]) -> str:
    match = _NAME.match(body)
    if match is None:
        raise InterpolationError(f"bad variable reference ${{{body}}}")
    name, rest = match.group(), body[match.end() :]
    value = variables.get(name)
    if not rest:
        return value or ""
    for operator in (":-", ":?", ":+", "-", "?", "+"):
        if rest.startswith(operator):
            argument = interpolate(rest[len(operator) :], variables)
            unset = value is None or (operator.startswith(":") and value == "")
            if operator.endswith("-"):
                return argument if unset else str(value)
            if operator.endswith("?"):
                if unset:
                    raise InterpolationError(f"required variable {name}: {argument}")
                return str(value)
            return "" if unset else argument
    raise InterpolationError(f"bad variable reference ${{{body}}}")


def _interpolate_tree(node: Any, variables: Mapping[str, str]) -> Any:
    if isinstance(node, str):
        return interpolate(node, variables)
    if isinstance(node, list):
        return [_interpolate_tree(item, variables) for item in node]
    if isinstance(node, dict):
        return {key: _interpolate_tree(value, variables) for key, value in node.items()}
    return node


def load_document(path: Path = COMPOSE_FILE, variables: Mapping[str, str] | None = None) -> Any:
    """The compose file as data, anchors merged and variables interpolated."""
    document = yaml.safe_load(path.read_text())
    return _interpolate_tree(document, variables or {})


def load_stack(
    path: Path = COMPOSE_FILE, variables: Mapping[str, str] | None = None
) -> dict[str, Service]:
    """Every service of the compose file, in file order."""
    variables = dict(variables or {})
    document = load_document(path, variables)
    return {name: _service(name, spec, variables) for name, spec in document["services"].items()}


def application_services(
    stack: Mapping[str, Service], profiles: tuple[str, ...] = ()
) -> dict[str, Service]:
    """The platform's own services that ``docker compose up`` starts with ``profiles`` on."""
    return {
        name: service
        for name, service in stack.items()
        if service.is_application
        and (not service.profiles or set(service.profiles) & set(profiles))
    }


def start_order(stack: Mapping[str, Service]) -> list[str]:
    """Service names so that each comes after everything it depends on."""
    ordered: list[str] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in ordered:
            return
        if name in visiting:
            raise ValueError(f"depends_on cycle through {name}")
        visiting.add(name)
        for dependency in stack[name].depends_on:
            if dependency in stack:
                visit(dependency)
        visiting.discard(name)
        ordered.append(name)

    for name in stack:
        visit(name)
    return ordered


def rewrite_hosts(environment: Mapping[str, str], hosts: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with service host names in URLs replaced, e.g. postgres -> 127.0.0.1."""
    rewritten = {}
    for key, value in environment.items():
        for host, target in hosts.items():
            # Only the host part of a URL: scheme://[user[:password]@]HOST[:port]
            pattern = rf"(://(?:[^/@\s]*@)?){re.escape(host)}(?=[:/]|$)"
            value = re.sub(pattern, rf"\g<1>{target}", value)
        rewritten[key] = value
    return rewritten


def rewrite_paths(environment: Mapping[str, str], paths: Mapping[str, str]) -> dict[str, str]:
    """``environment`` with container paths replaced by local ones, e.g. /data -> /tmp/x."""
    rewritten = {}
    for key, value in environment.items():
        for container_path, local_path in paths.items():
            pattern = rf"(?<![\w.-]){re.escape(container_path)}(?=[/\"']|$)"
            value = re.sub(pattern, local_path.replace("\\", "\\\\"), value)
        rewritten[key] = value
    return rewritten


def _service(name: str, spec: Mapping[str, Any], variables: Mapping[str, str]) -> Service:
    return Service(
        name=name,
        image=spec.get("image"),
        command=_argv(spec.get("command")),
        environment=_environment(spec.get("environment"), variables),
        healthcheck=_healthcheck(spec.get("healthcheck")),
        depends_on=_depends_on(spec.get("depends_on")),
        profiles=list(spec.get("profiles", [])),
        built_here=_built_here(spec.get("build")),
    )


def _argv(command: Any) -> list[str] | None:
    if command is None:
        return None
    if isinstance(command, str):
        return shlex.split(command)
    return [str(part) for part in command]


def _environment(environment: Any, variables: Mapping[str, str]) -> dict[str, str]:
    if environment is None:
        return {}
    if isinstance(environment, list):
        pairs = [entry.split("=", 1) if "=" in entry else [entry, None] for entry in environment]
        environment = dict(pairs)
    resolved = {}
    for key, value in environment.items():
        if value is None:  # a bare name passes the caller's value through, if any
            if key in variables:
                resolved[key] = variables[key]
            continue
        resolved[key] = _scalar(value)
    return resolved


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _healthcheck(healthcheck: Any) -> list[str] | None:
    if not healthcheck or healthcheck.get("disable"):
        return None
    test = healthcheck.get("test")
    if isinstance(test, str):
        return ["sh", "-c", test]
    if not test or test[0] == "NONE":
        return None
    if test[0] == "CMD-SHELL":
        return ["sh", "-c", " ".join(test[1:])]
    if test[0] == "CMD":
        return [str(part) for part in test[1:]]
    return [str(part) for part in test]


def _depends_on(depends_on: Any) -> dict[str, str]:
    if not depends_on:
        return {}
    if isinstance(depends_on, list):
        return dict.fromkeys(depends_on, "service_started")
    return {name: spec.get("condition", "service_started") for name, spec in depends_on.items()}


def _built_here(build: Any) -> bool:
    if build is None:
        return False
    if isinstance(build, str):
        return (ROOT / build).resolve() == ROOT
    dockerfile = (
        ROOT / build.get("context", ".") / build.get("dockerfile", "Dockerfile")
    ).resolve()
    return bool(dockerfile == ROOT / "docker" / "Dockerfile")
