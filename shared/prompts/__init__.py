"""Versioned prompt templates for the three cold-start calls, overridable per job.

Shipped templates are files named ``<step>.v<N>.txt``; the newest version is the default.
A job may replace any of them with its own text, which is versioned by its content hash.
Every record stores the version of the prompt that produced it.
"""

from __future__ import annotations

import hashlib
import re
import string
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Final

from shared.errors import InvalidInput

STEPS: Final = ("pseudo_cot", "description", "reasoning")
FIELDS: Final[dict[str, frozenset[str]]] = {
    "pseudo_cot": frozenset({"question", "answer"}),
    "description": frozenset({"question", "pseudo_cot"}),
    "reasoning": frozenset({"question", "answer", "description"}),
}
_NAME = re.compile(r"^(?P<step>[a-z_]+)\.v(?P<version>\d+)\.txt$")


@dataclass(frozen=True)
class Template:
    step: str
    version: str
    text: str

    def render(self, **values: str) -> str:
        """The prompt with every field filled in."""
        return self.text.format(**{name: values[name] for name in fields_of(self.text)})


def fields_of(text: str) -> set[str]:
    """The ``{field}`` names a template uses."""
    return {name for _, name, _, _ in string.Formatter().parse(text) if name}


@cache
def shipped() -> dict[str, dict[str, Template]]:
    """Every shipped template, by step and version ('v1', 'v2', …)."""
    found: dict[str, dict[str, Template]] = {}
    for entry in resources.files(__package__).iterdir():
        match = _NAME.match(entry.name)
        if match:
            step, version = match["step"], f"v{match['version']}"
            found.setdefault(step, {})[version] = Template(step, version, entry.read_text())
    return found


def default_template(step: str) -> Template:
    """The newest shipped template for a step."""
    versions = shipped()[step]
    return versions[max(versions, key=lambda v: int(v[1:]))]


def custom_template(step: str, text: str) -> Template:
    """A job's own template, checked for unknown fields and versioned by content."""
    try:
        used = fields_of(text)
    except ValueError as exc:
        raise InvalidInput(f"prompts.{step}: not a valid template: {exc}", field=step) from exc
    unknown = used - FIELDS[step]
    if unknown:
        allowed = sorted(FIELDS[step])
        raise InvalidInput(
            f"prompts.{step} uses unknown fields {sorted(unknown)}; allowed: {allowed}", field=step
        )
    digest = hashlib.sha256(text.encode()).hexdigest()[:12]
    return Template(step, f"custom-{digest}", text)


def template_for(step: str, override: str | None) -> Template:
    """The template a job uses for a step: its own text, or the shipped default."""
    if step not in FIELDS:
        raise InvalidInput(f"unknown prompt step {step!r}", field=step)
    return custom_template(step, override) if override else default_template(step)
