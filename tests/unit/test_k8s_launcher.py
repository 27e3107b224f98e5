"""The Kubernetes Job launcher against the real ``kubernetes`` client.

Only the HTTP layer is replaced: a recorder stands in for the client's REST object, so the
client's own serialization, URL building, deserialization into ``V1Job`` and error mapping
(404 -> ``NotFoundException``) all run for real.
"""

from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Any

import pytest

from services.trainer.k8s_launcher import KubernetesLauncher, LauncherError, job_name, state_of
from services.trainer.launcher import (
    LaunchRefused,
    LaunchRequest,
    LocalLauncher,
    RunState,
    run_command,
)

kubernetes = pytest.importorskip("kubernetes", reason="the 'kubernetes' client is not installed")
from kubernetes.client.rest import RESTResponse  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
HOST = "https://k8s.test"
JOB_ID = "0f3c2a9e-5b1d-4c8e-9a7f-2d6b8e1c4a10"

TEMPLATE: dict[str, Any] = {
    "job": {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"labels": {"app.kubernetes.io/name": "vr1-train"}},
        "spec": {
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "vr1-train"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "train",
                            "image": "vr1/worker:0.1.0",
                            "env": [{"name": "VR1_LOG_LEVEL", "value": "INFO"}],
                            "resources": {"limits": {"cpu": "8", "memory": "32Gi"}},
                            "volumeMounts": [{"name": "data", "mountPath": "/var/lib/vr1"}],
                        }
                    ],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": "vr1-artifacts"}}
                    ],
                },
            }
        },
    },
    "gpu": {
        "nodeSelector": {"nvidia.com/gpu.present": "true"},
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
    },
}


class _Raw:
    """What the client's REST layer wraps: a urllib3-like response."""

    def __init__(self, status: int, body: dict[str, Any]) -> None:
        self.status = status
        self.reason = "OK" if status < 400 else "Error"
        self.data = json.dumps(body).encode()
        self.headers = {"content-type": "application/json"}


class RecordingREST:
    """Stands in for ``RESTClientObject``: records each request, answers from a script."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.answers: list[tuple[int, dict[str, Any]]] = []

    def request(
        self,
        method: str,
        url: str,
        headers: Any = None,
        body: Any = None,
        post_params: Any = None,
        _request_timeout: Any = None,
    ) -> RESTResponse:
        self.calls.append((method, url, body))
        status, answer = self.answers.pop(0)
        return RESTResponse(_Raw(status, answer))


@pytest.fixture
def rest() -> RecordingREST:
    return RecordingREST()


@pytest.fixture
def api(rest: RecordingREST) -> Any:
    client = kubernetes.client
    batch = client.BatchV1Api(client.ApiClient(client.Configuration(host=HOST)))
    batch.api_client.rest_client = rest
    return batch


def _launcher(api: Any, **options: Any) -> KubernetesLauncher:
    return KubernetesLauncher(
        "vr1",
        TEMPLATE,
        "vr1/worker-gpu:0.1.0",
        "vr1",
        api=api,
        ttl_seconds_after_finished=3600,
        **options,
    )


def _request(gpus: int = 0, attempt: int = 2) -> LaunchRequest:
    return LaunchRequest(
        job_id=JOB_ID,
        attempt=attempt,
        gpus=gpus,
        command=["/opt/venv/bin/python", "-m", "services.trainer.run", JOB_ID],
        env={
            "VR1_LOG_LEVEL": "DEBUG",
            "VR1_RUN_ATTEMPT": str(attempt),
            # Comes from the Secret in the pod; its value must never be written into a Job.
            "VR1_DATABASE_URL": "postgresql+psycopg://vr1:pw@db:5432/vr1",
        },
    )


def _expected_job(gpus: int) -> dict[str, Any]:
    name = f"vr1-train-{JOB_ID}-2"
    labels = {
        "app.kubernetes.io/name": "vr1-train",
        "app.kubernetes.io/component": "training-run",
        "vr1.io/job-id": JOB_ID,
        "vr1.io/attempt": "2",
    }
    resources: dict[str, Any] = {"limits": {"cpu": "8", "memory": "32Gi"}}
    if gpus:
        resources["limits"]["nvidia.com/gpu"] = str(gpus)
        resources["requests"] = {"nvidia.com/gpu": str(gpus)}
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": "vr1",
        "containers": [
            {
                "name": "train",
                "image": "vr1/worker-gpu:0.1.0",
                "command": ["/opt/venv/bin/python", "-m", "services.trainer.run", JOB_ID],
                "env": [
                    {"name": "VR1_LOG_LEVEL", "value": "DEBUG"},
                    {"name": "VR1_RUN_ATTEMPT", "value": "2"},
                ],
                "resources": resources,
                "volumeMounts": [{"name": "data", "mountPath": "/var/lib/vr1"}],
            }
        ],
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "vr1-artifacts"}}],
    }
    if gpus:
        pod["nodeSelector"] = {"nvidia.com/gpu.present": "true"}
        pod["tolerations"] = TEMPLATE["gpu"]["tolerations"]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": "vr1", "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 3600,
            "template": {"metadata": {"labels": labels}, "spec": pod},
        },
    }


def _job(status: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "x"}, "status": status}


@pytest.mark.parametrize("gpus", [0, 4])
def test_launch_posts_exactly_the_rendered_job(api: Any, rest: RecordingREST, gpus: int) -> None:
    expected = _expected_job(gpus)
    rest.answers.append((201, expected))
    handle = _launcher(api).launch(_request(gpus))
    assert handle == f"vr1/vr1-train-{JOB_ID}-2"
    method, url, body = rest.calls[0]
    assert (method, url) == ("POST", f"{HOST}/apis/batch/v1/namespaces/vr1/jobs")
    assert body == expected
    # Every field is one the API knows: a round trip through V1Job loses nothing.
    job = api.api_client.deserialize(json.dumps(body), "V1Job", "application/json")
    assert api.api_client.sanitize_for_serialization(job) == expected


def test_render_leaves_the_template_alone(api: Any) -> None:
    before = copy.deepcopy(TEMPLATE)
    launcher = _launcher(api)
    launcher.render(_request(gpus=2))
    assert launcher.template == before


def test_artifact_claim_replaces_the_template_volume(api: Any) -> None:
    job = _launcher(api, artifact_claim="team-a-artifacts").render(_request())
    pod = job["spec"]["template"]["spec"]
    assert pod["volumes"] == [
        {"name": "data", "persistentVolumeClaim": {"claimName": "vr1-artifacts"}},
        {"name": "artifacts", "persistentVolumeClaim": {"claimName": "team-a-artifacts"}},
    ]
    assert pod["containers"][0]["volumeMounts"][-1] == {
        "name": "artifacts",
        "mountPath": "/var/lib/vr1",
    }


def test_relaunch_of_an_existing_attempt_is_not_an_error(api: Any, rest: RecordingREST) -> None:
    rest.answers.append((409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}))
    assert _launcher(api).launch(_request()) == f"vr1/vr1-train-{JOB_ID}-2"


def test_refused_launch_raises_a_typed_error(api: Any, rest: RecordingREST) -> None:
    rest.answers.append((403, {"kind": "Status", "reason": "Forbidden", "code": 403}))
    with pytest.raises(LauncherError) as error:
        _launcher(api).launch(_request())
    assert error.value.status == 403
    assert error.value.ids["handle"] == f"vr1/vr1-train-{JOB_ID}-2"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ({}, RunState("pending", message="no pod yet")),
        ({"active": 1, "ready": 0}, RunState("pending", message="pod not started yet")),
        ({"active": 1, "ready": 1}, RunState("running")),
        ({"active": 1}, RunState("running")),
        (
            {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
            RunState("succeeded", exit_code=0),
        ),
        (
            {
                "failed": 1,
                "conditions": [
                    {
                        "type": "Failed",
                        "status": "True",
                        "reason": "BackoffLimitExceeded",
                        "message": "Job has reached the specified backoff limit",
                    }
                ],
            },
            RunState(
                "failed",
                message="BackoffLimitExceeded: Job has reached the specified backoff limit",
            ),
        ),
        (
            {
                "active": 1,
                "ready": 1,
                "conditions": [
                    {"type": "FailureTarget", "status": "True", "reason": "DeadlineExceeded"}
                ],
            },
            RunState("failed", message="DeadlineExceeded"),
        ),
        (
            {"conditions": [{"type": "Suspended", "status": "True"}]},
            RunState("pending", message="job suspended"),
        ),
        (
            {"failed": 1, "conditions": [{"type": "Failed", "status": "False"}]},
            RunState("failed", message="1 pod(s) failed"),
        ),
    ],
)
def test_status_maps_recorded_jobs(
    api: Any, rest: RecordingREST, status: dict[str, Any], expected: RunState
) -> None:
    rest.answers.append((200, _job(status)))
    assert _launcher(api).status("vr1/x") == expected
    assert rest.calls[0][:2] == ("GET", f"{HOST}/apis/batch/v1/namespaces/vr1/jobs/x")


def test_a_run_goes_pending_running_succeeded(api: Any, rest: RecordingREST) -> None:
    launcher = _launcher(api)
    for status in (
        {},
        {"active": 1, "ready": 0},
        {"active": 1, "ready": 1},
        {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]},
    ):
        rest.answers.append((200, _job(status)))
    phases = [launcher.status("vr1/x").phase for _ in range(4)]
    assert phases == ["pending", "pending", "running", "succeeded"]


def test_a_job_that_is_gone_is_unknown(api: Any, rest: RecordingREST) -> None:
    rest.answers.append((404, {"kind": "Status", "reason": "NotFound", "code": 404}))
    assert _launcher(api).status("vr1/x") == RunState("unknown", message="job vr1/x is gone")


@pytest.mark.parametrize("propagation", ["Foreground", "Background"])
def test_stop_deletes_with_propagation(api: Any, rest: RecordingREST, propagation: str) -> None:
    rest.answers.append((200, {"kind": "Status", "status": "Success"}))
    _launcher(api, propagation=propagation).stop("vr1/x")
    assert rest.calls == [
        (
            "DELETE",
            f"{HOST}/apis/batch/v1/namespaces/vr1/jobs/x",
            {"propagationPolicy": propagation},
        ),
    ]


def test_stop_of_a_job_that_is_gone_is_quiet(api: Any, rest: RecordingREST) -> None:
    rest.answers.append((404, {"kind": "Status", "reason": "NotFound", "code": 404}))
    _launcher(api).stop("vr1/x")


def test_job_names_are_dns_labels() -> None:
    assert job_name(JOB_ID, 1) == f"vr1-train-{JOB_ID}-1"
    long = job_name("Job_" + "x" * 80, 12)
    assert len(long) <= 63
    assert long.endswith("-12")
    assert long == long.lower()


def test_state_of_accepts_client_objects() -> None:
    job = kubernetes.client.V1Job(status=kubernetes.client.V1JobStatus(active=1, ready=1))
    assert state_of(job) == RunState("running")


@pytest.mark.parametrize("overlay", ["k8s/base", "k8s/overlays/gpu"])
def test_shipped_templates_render(overlay: str) -> None:
    launcher = KubernetesLauncher("vr1", ROOT / overlay / "job-template.yaml", api=object())
    job = launcher.render(_request(gpus=1))
    pod = job["spec"]["template"]["spec"]
    assert pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert job["spec"]["backoffLimit"] == 0
    assert pod["restartPolicy"] == "Never"


def test_from_settings_reads_the_trainer_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.trainer.settings import TrainerSettings

    monkeypatch.setenv("VR1_K8S_NAMESPACE", "team-a")
    monkeypatch.setenv("VR1_K8S_JOB_TEMPLATE", str(ROOT / "k8s/base/job-template.yaml"))
    monkeypatch.setenv("VR1_K8S_IMAGE", "vr1/worker:0.1.0")
    launcher = KubernetesLauncher.from_settings(TrainerSettings())
    assert (launcher.namespace, launcher.image) == ("team-a", "vr1/worker:0.1.0")
    assert launcher.render(_request())["metadata"]["namespace"] == "team-a"


# --- several machines -------------------------------------------------------------------

TWO_MACHINES = run_command(JOB_ID, num_processes=8, num_machines=2)
NAME = f"vr1-train-{JOB_ID}-2"


def _two_machine_request() -> LaunchRequest:
    return LaunchRequest(job_id=JOB_ID, attempt=2, command=TWO_MACHINES, gpus=4, machines=2)


def _core(api: Any) -> Any:
    return kubernetes.client.CoreV1Api(api.api_client)


def test_two_machines_become_an_indexed_job_and_its_headless_service(
    api: Any, rest: RecordingREST
) -> None:
    launcher = _launcher(api, core_api=_core(api))
    job = launcher.render(_two_machine_request())
    created = {**job, "metadata": {**job["metadata"], "uid": "3b0c6f1e-uid"}}
    rest.answers += [(201, created), (201, {"kind": "Service", "apiVersion": "v1"})]
    assert launcher.launch(_two_machine_request()) == f"vr1/{NAME}"
    (post_job, job_url, job_body), (post_svc, svc_url, svc_body) = rest.calls
    assert (post_job, job_url) == ("POST", f"{HOST}/apis/batch/v1/namespaces/vr1/jobs")
    assert (post_svc, svc_url) == ("POST", f"{HOST}/api/v1/namespaces/vr1/services")
    spec = job_body["spec"]
    assert (spec["completionMode"], spec["completions"], spec["parallelism"]) == ("Indexed", 2, 2)
    assert spec["backoffLimit"] == 0  # one pod lost fails the attempt: the group is relaunched
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == NAME == svc_body["metadata"]["name"]
    container = pod["containers"][0]
    assert container["env"][0] == {
        "name": "VR1_MACHINE_RANK",
        "valueFrom": {
            "fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"
            }
        },
    }
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "4"  # per machine
    # The Service selects exactly this attempt's pods, answers before they are ready, and
    # is deleted with its Job.
    assert svc_body["spec"]["clusterIP"] == "None"
    assert svc_body["spec"]["publishNotReadyAddresses"] is True
    assert svc_body["spec"]["selector"].items() <= pod_labels(job_body).items()
    assert svc_body["metadata"]["ownerReferences"] == [
        {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "name": NAME,
            "uid": "3b0c6f1e-uid",
            "blockOwnerDeletion": True,
        }
    ]
    for body, model in ((job_body, "V1Job"), (svc_body, "V1Service")):
        parsed = api.api_client.deserialize(json.dumps(body), model, "application/json")
        assert api.api_client.sanitize_for_serialization(parsed) == body


def pod_labels(job: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = job["spec"]["template"]["metadata"]["labels"]
    return labels


def test_a_redelivered_multi_machine_launch_reuses_the_job(api: Any, rest: RecordingREST) -> None:
    launcher = _launcher(api, core_api=_core(api))
    existing = launcher.render(_two_machine_request())
    existing["metadata"]["uid"] = "first-uid"
    rest.answers += [
        (409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}),
        (200, existing),
        (409, {"kind": "Status", "reason": "AlreadyExists", "code": 409}),
    ]
    assert launcher.launch(_two_machine_request()) == f"vr1/{NAME}"
    assert [call[:2] for call in rest.calls] == [
        ("POST", f"{HOST}/apis/batch/v1/namespaces/vr1/jobs"),
        ("GET", f"{HOST}/apis/batch/v1/namespaces/vr1/jobs/{NAME}"),
        ("POST", f"{HOST}/api/v1/namespaces/vr1/services"),
    ]
    assert rest.calls[2][2]["metadata"]["ownerReferences"][0]["uid"] == "first-uid"


def _as_kubernetes_runs(command: list[str], env: dict[str, str]) -> list[str]:
    """``$(NAME)`` in a container command, expanded from the container's variables."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env[m.group(1)], part) for part in command]


@pytest.mark.parametrize("index", [0, 1])
def test_each_pod_runs_accelerate_launch_as_one_machine_of_the_run(index: int) -> None:
    from accelerate.commands.launch import launch_command_parser

    job = _launcher(object()).render(_two_machine_request())
    container = job["spec"]["template"]["spec"]["containers"][0]
    command = _as_kubernetes_runs(container["command"], {"VR1_MACHINE_RANK": str(index)})
    assert command[1:3] == ["-m", "accelerate.commands.launch"]
    args = launch_command_parser().parse_args(command[3:])
    assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 8, index)
    assert args.main_process_ip == f"{NAME}-0.{NAME}.vr1.svc"  # pod 0's hostname in the Service
    assert args.main_process_port == 29500
    assert (args.module, args.training_script, args.training_script_args) == (
        True,
        "services.trainer.run",
        [JOB_ID],
    )


def test_an_indexed_job_succeeds_when_every_machine_has() -> None:
    client = kubernetes.client
    spec = client.V1JobSpec(completions=2, template=client.V1PodTemplateSpec())
    half = client.V1Job(spec=spec, status=client.V1JobStatus(active=1, ready=1, succeeded=1))
    done = client.V1Job(spec=spec, status=client.V1JobStatus(succeeded=2))
    assert state_of(half) == RunState("running")
    assert state_of(done) == RunState("succeeded", exit_code=0)


def test_the_local_launcher_refuses_several_machines() -> None:
    with pytest.raises(LaunchRefused, match="needs the kubernetes launcher"):
        LocalLauncher().launch(_two_machine_request())
