"""Training runs as Kubernetes Jobs: one batch/v1 Job per attempt, rendered from a template.

The template (a ConfigMap in ``k8s/``) holds a ``job`` (a Job manifest with the pod
shape: security context, env from the platform's ConfigMap and Secret, the artifact
volume, resource requests) and a ``gpu`` block (node selector and tolerations) that is
added only to runs asking for GPUs.  The launcher fills in what varies per run: name,
labels, image, command, env, the GPU count.  ``backoffLimit`` is always 0: a failed pod is
not retried by Kubernetes, because the platform's watcher decides about relaunches and the
run resumes from its last checkpoint.

A run on several machines (``num_machines > 1``) is one Indexed Job with a pod per machine
and a headless Service of the same name: each pod's hostname is ``<job>-<index>``, so the
first machine is reachable at ``<job>-0.<job>``; every pod runs ``accelerate launch`` with
its completion index as ``--machine_rank``.  The Service is owned by the Job and goes
with it.  Any pod failing fails the Job (``backoffLimit`` 0): the other pods are stopped
and the watcher relaunches the whole group as the next attempt.  Plain Kubernetes does
this; no operator (Kubeflow's ``PyTorchJob``/``TrainJob``) has to be installed first, and
one attempt stays one Job, watched and stopped like a single-machine run.

The ``kubernetes`` package is imported only when no API object is handed in.
"""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml

from services.trainer.launcher import RENDEZVOUS_PORT, LaunchRequest, RunState, joining
from shared.errors import InvalidInput, VR1Error

if TYPE_CHECKING:
    from services.trainer.settings import TrainerSettings

GPU_RESOURCE = "nvidia.com/gpu"
LABEL_JOB = "vr1.io/job-id"
LABEL_ATTEMPT = "vr1.io/attempt"
LABEL_COMPONENT = "app.kubernetes.io/component"
MAX_NAME = 63  # pods inherit the Job name in a label, so it must be a DNS-1123 label
Propagation = Literal["Foreground", "Background"]
# The template's pod takes these from the platform's Secret (envFrom); the launcher never
# writes their values into a Job, where anyone allowed to read Jobs would see them.
SECRET_ENV = ("VR1_DATABASE_URL", "VR1_REDIS_URL")
# A pod of an Indexed Job finds its index in this annotation; the command reads it through
# the container variable below (Kubernetes expands ``$(NAME)`` in a container's command).
INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"
MACHINE_RANK_ENV = "VR1_MACHINE_RANK"


class LauncherError(VR1Error):
    """The Kubernetes API refused a launcher call; ``handle`` names the Job."""

    status_code = 502
    code = "launcher_error"

    def __init__(self, message: str, *, handle: str, status: int | None) -> None:
        super().__init__(message, handle=handle, status=status)
        self.status = status


def load_template(source: Mapping[str, Any] | Path | str) -> dict[str, Any]:
    """The template as ``{"job": <Job>, "gpu": {...}}``; a bare Job manifest is accepted too."""
    raw: Any = source
    if isinstance(source, Path | str):
        raw = yaml.safe_load(Path(source).read_text())
    if not isinstance(raw, Mapping):
        raise InvalidInput("a training Job template must be a mapping")
    template = {"job": raw, "gpu": {}} if "kind" in raw else dict(raw)
    job = template.get("job")
    if not isinstance(job, Mapping) or job.get("kind") != "Job":
        raise InvalidInput("the training Job template needs a 'job' of kind Job")
    containers = job.get("spec", {}).get("template", {}).get("spec", {}).get("containers")
    if not containers:
        raise InvalidInput("the training Job template has no container")
    return {"job": copy.deepcopy(dict(job)), "gpu": copy.deepcopy(dict(template.get("gpu") or {}))}


def job_name(job_id: str, attempt: int) -> str:
    """A DNS-1123 name unique per job and attempt, e.g. ``vr1-train-<job id>-2``."""
    slug = re.sub(r"[^a-z0-9-]+", "-", job_id.lower()).strip("-") or "run"
    suffix = f"-{attempt}"
    name = f"vr1-train-{slug}"
    if len(name) + len(suffix) > MAX_NAME:
        digest = hashlib.sha256(job_id.encode()).hexdigest()[:8]
        name = f"{name[: MAX_NAME - len(suffix) - 9].rstrip('-')}-{digest}"
    return name + suffix


def state_of(job: Any) -> RunState:
    """Map a ``V1Job`` (as the client returns it) to the launcher's ``RunState``."""
    status = job.status
    for condition in (status.conditions if status else None) or []:
        if condition.status != "True":
            continue
        detail = ": ".join(part for part in (condition.reason, condition.message) if part)
        if condition.type in ("Complete", "SuccessCriteriaMet"):
            return RunState("succeeded", exit_code=0, message=detail)
        if condition.type in ("Failed", "FailureTarget"):
            return RunState("failed", message=detail or "job failed")
        if condition.type == "Suspended":
            return RunState("pending", message=detail or "job suspended")
    if status is None:
        return RunState("pending", message="no pod yet")
    completions = getattr(getattr(job, "spec", None), "completions", None) or 1
    if status.succeeded and status.succeeded >= completions:
        return RunState("succeeded", exit_code=0)
    if status.failed:
        return RunState("failed", message=f"{status.failed} pod(s) failed")
    if status.active:
        # ``ready`` counts pods whose containers run; older API servers leave it unset.
        if status.ready is None or status.ready > 0:
            return RunState("running")
        return RunState("pending", message="pod not started yet")
    return RunState("pending", message="no pod yet")


class KubernetesLauncher:
    """Starts each training attempt as a Job in ``namespace`` through the Kubernetes API."""

    name = "kubernetes"

    def __init__(
        self,
        namespace: str,
        template: Mapping[str, Any] | Path | str,
        image: str | None = None,
        service_account: str | None = None,
        *,
        container: str = "train",
        ttl_seconds_after_finished: int = 86_400,
        artifact_claim: str | None = None,
        artifact_path: str = "/var/lib/vr1",
        propagation: Propagation = "Foreground",
        secret_env: Collection[str] = SECRET_ENV,
        rendezvous_port: int = RENDEZVOUS_PORT,
        api: Any = None,
        core_api: Any = None,
    ) -> None:
        self.namespace = namespace
        self.template = load_template(template)
        self.image = image
        self.service_account = service_account
        self.container = container
        self.ttl = ttl_seconds_after_finished
        self.artifact_claim = artifact_claim
        self.artifact_path = artifact_path
        self.propagation: Propagation = propagation
        self.secret_env = frozenset(secret_env)
        self.rendezvous_port = rendezvous_port
        self._api = api
        self._core_api = core_api

    @classmethod
    def from_settings(cls, settings: TrainerSettings) -> KubernetesLauncher:
        """The launcher a trainer worker's settings describe (``VR1_K8S_*``)."""
        return cls(
            settings.k8s_namespace,
            Path(settings.k8s_job_template),
            settings.k8s_image or None,
        )

    @property
    def api(self) -> Any:
        """The ``BatchV1Api``; built from in-cluster config (or kubeconfig) on first use."""
        if self._api is None:
            from kubernetes import client, config

            try:
                config.load_incluster_config()  # type: ignore[no-untyped-call]
            except config.ConfigException:
                config.load_kube_config()  # type: ignore[no-untyped-call]
            self._api = client.BatchV1Api()
        return self._api

    @property
    def core_api(self) -> Any:
        """The ``CoreV1Api`` (for a multi-machine run's Service), on the batch API's client."""
        if self._core_api is None:
            from kubernetes import client

            self._core_api = client.CoreV1Api(self.api.api_client)
        return self._core_api

    def render(self, request: LaunchRequest) -> dict[str, Any]:
        """The Job manifest for one attempt: the template with this run's values filled in."""
        job: dict[str, Any] = copy.deepcopy(self.template["job"])
        labels = _labels(request)
        metadata = job.setdefault("metadata", {})
        metadata["name"] = job_name(request.job_id, request.attempt)
        metadata["namespace"] = self.namespace
        metadata["labels"] = {**metadata.get("labels", {}), **labels}
        spec = job.setdefault("spec", {})
        spec["backoffLimit"] = 0
        spec["ttlSecondsAfterFinished"] = self.ttl
        pod_template = spec.setdefault("template", {})
        pod_meta = pod_template.setdefault("metadata", {})
        pod_meta["labels"] = {**pod_meta.get("labels", {}), **labels}
        pod = pod_template.setdefault("spec", {})
        pod["restartPolicy"] = "Never"
        if self.service_account:
            pod["serviceAccountName"] = self.service_account
        container = _pick(pod["containers"], self.container)
        self._fill_container(container, request)
        if request.machines > 1:
            self._place_machines(spec, pod, container, request, metadata["name"])
        if request.gpus > 0:
            _schedule_on_gpus(pod, self.template["gpu"])
        if self.artifact_claim:
            self._mount_artifacts(pod, _pick(pod["containers"], self.container))
        return job

    def render_service(self, request: LaunchRequest, job_uid: str) -> dict[str, Any]:
        """The headless Service that names the pods of a multi-machine run, owned by its Job
        (deleting the Job, or its TTL expiring, deletes the Service too)."""
        name = job_name(request.job_id, request.attempt)
        labels = _labels(request)
        return {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": labels,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": job_uid,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {
                "clusterIP": "None",
                # Pods must find each other before any is ready: rendezvous comes first.
                "publishNotReadyAddresses": True,
                "selector": {LABEL_JOB: labels[LABEL_JOB], LABEL_ATTEMPT: labels[LABEL_ATTEMPT]},
                "ports": [{"name": "rendezvous", "port": self.rendezvous_port, "protocol": "TCP"}],
            },
        }

    def launch(self, request: LaunchRequest) -> str:
        """Create the Job (and a multi-machine run's Service); what already exists for this
        attempt counts as launched."""
        body = self.render(request)
        name = body["metadata"]["name"]
        handle = f"{self.namespace}/{name}"
        try:
            created = self.api.create_namespaced_job(namespace=self.namespace, body=body)
        except Exception as exc:
            if _status(exc) != 409:  # 409: a redelivered launch of the same attempt
                raise _wrap(exc, handle) from exc
            created = None
        if request.machines > 1:
            self._create_service(request, created, handle)
        return handle

    def _create_service(self, request: LaunchRequest, created: Any, handle: str) -> None:
        name = handle.partition("/")[2]
        try:
            if created is None:  # launched before: the Service hangs off the existing Job
                created = self.api.read_namespaced_job(name=name, namespace=self.namespace)
            service = self.render_service(request, created.metadata.uid)
            self.core_api.create_namespaced_service(namespace=self.namespace, body=service)
        except Exception as exc:
            if _status(exc) != 409:
                raise _wrap(exc, handle) from exc

    def status(self, handle: str) -> RunState:
        """Where the Job is; ``unknown`` once it is gone (deleted or expired by its TTL)."""
        namespace, name = _split(handle)
        try:
            job = self.api.read_namespaced_job(name=name, namespace=namespace)
        except Exception as exc:
            if _status(exc) == 404:
                return RunState("unknown", message=f"job {handle} is gone")
            raise _wrap(exc, handle) from exc
        return state_of(job)

    def stop(self, handle: str) -> None:
        """Delete the Job and its pods; nothing to do if it is already gone."""
        from kubernetes.client import V1DeleteOptions

        namespace, name = _split(handle)
        options = V1DeleteOptions(propagation_policy=self.propagation)
        try:
            self.api.delete_namespaced_job(name=name, namespace=namespace, body=options)
        except Exception as exc:
            if _status(exc) != 404:
                raise _wrap(exc, handle) from exc

    def _fill_container(self, container: dict[str, Any], request: LaunchRequest) -> None:
        if self.image:
            container["image"] = self.image
        container["command"] = list(request.command)
        container.pop("args", None)
        extra = {k: v for k, v in request.env.items() if k not in self.secret_env}
        container["env"] = _merge_env(container.get("env", []), extra)
        resources = container.setdefault("resources", {})
        for kind in ("limits", "requests"):
            resources.setdefault(kind, {}).pop(GPU_RESOURCE, None)
        if request.gpus > 0:
            # Extended resources are not overcommitted: the request equals the limit.
            resources["limits"][GPU_RESOURCE] = str(request.gpus)
            resources["requests"][GPU_RESOURCE] = str(request.gpus)
        for kind in ("limits", "requests"):
            if not resources[kind]:
                del resources[kind]

    def _place_machines(
        self,
        spec: dict[str, Any],
        pod: dict[str, Any],
        container: dict[str, Any],
        request: LaunchRequest,
        name: str,
    ) -> None:
        """One pod per machine, each knowing its rank and the first machine's address."""
        spec["completionMode"] = "Indexed"
        spec["completions"] = request.machines
        spec["parallelism"] = request.machines  # all at once: the rendezvous waits for all
        pod["subdomain"] = name  # with the Service of that name, pods get DNS names
        rank = {
            "name": MACHINE_RANK_ENV,
            "valueFrom": {"fieldRef": {"fieldPath": f"metadata.annotations['{INDEX_ANNOTATION}']"}},
        }
        container["env"] = [e for e in container["env"] if e["name"] != MACHINE_RANK_ENV]
        container["env"].insert(0, rank)  # defined before the command refers to it
        container["command"] = joining(
            container["command"],
            request.job_id,
            machine_rank=f"$({MACHINE_RANK_ENV})",
            main_address=f"{name}-0.{name}.{self.namespace}.svc",
            port=self.rendezvous_port,
        )

    def _mount_artifacts(self, pod: dict[str, Any], container: dict[str, Any]) -> None:
        volume = {"name": "artifacts", "persistentVolumeClaim": {"claimName": self.artifact_claim}}
        pod["volumes"] = [v for v in pod.get("volumes", []) if v.get("name") != "artifacts"]
        pod["volumes"].append(volume)
        mounts = [m for m in container.get("volumeMounts", []) if m.get("name") != "artifacts"]
        container["volumeMounts"] = [
            *mounts,
            {"name": "artifacts", "mountPath": self.artifact_path},
        ]


def _labels(request: LaunchRequest) -> dict[str, str]:
    return {
        LABEL_COMPONENT: "training-run",
        LABEL_JOB: _label_value(request.job_id),
        LABEL_ATTEMPT: str(request.attempt),
    }


def _pick(containers: list[dict[str, Any]], name: str) -> dict[str, Any]:
    for container in containers:
        if container.get("name") == name:
            return container
    return containers[0]


def _merge_env(
    template_env: list[dict[str, Any]], extra: Mapping[str, str]
) -> list[dict[str, Any]]:
    merged = [e for e in template_env if e.get("name") not in extra]
    return merged + [{"name": key, "value": value} for key, value in extra.items()]


def _schedule_on_gpus(pod: dict[str, Any], gpu: Mapping[str, Any]) -> None:
    if gpu.get("nodeSelector"):
        pod["nodeSelector"] = {**pod.get("nodeSelector", {}), **gpu["nodeSelector"]}
    tolerations = [t for t in gpu.get("tolerations", []) if t not in pod.get("tolerations", [])]
    if tolerations:
        pod["tolerations"] = [*pod.get("tolerations", []), *tolerations]


def _label_value(value: str) -> str:
    cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", value)[:63]
    return cleaned.strip("-_.")


def _split(handle: str) -> tuple[str, str]:
    namespace, _, name = handle.partition("/")
    if not name:
        raise InvalidInput(f"not a Kubernetes job handle: {handle!r}", handle=handle)
    return namespace, name


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


def _wrap(exc: Exception, handle: str) -> Exception:
    if _status(exc) is None:
        return exc  # not an API answer (a bug or a broken connection): keep it as it is
    reason = getattr(exc, "reason", "") or type(exc).__name__
    return LauncherError(
        f"kubernetes API: {reason} for {handle}", handle=handle, status=_status(exc)
    )
