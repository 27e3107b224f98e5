"""A typed Python client for the gateway's REST API.

    with Client("http://127.0.0.1:8000", api_key) as client:
        dataset = client.datasets.upload("train.parquet", name="rl", kind="rl")
        job = client.jobs.submit({"kind": "grpo", "model": "...", "dataset_id": str(dataset.id)})
        job = client.jobs.wait(job.id, on_update=print)

Answers are the models of ``shared.contracts.api``.  An error answer is raised as an
:class:`ApiError` that is also the platform's own error class for it (a 404 is a
``shared.errors.NotFound``, a 422 an ``InvalidInput``), so callers can tell not-found from
invalid input from unavailable.  Reads, and job submissions (made safe to repeat by their
idempotency key), are retried on a 503 or a lost connection with growing delays; every
request is retried when the connection could not be opened (nothing was sent).  Uploads
and downloads stream: no file is ever held in memory whole.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import tarfile
import time
import uuid
from collections.abc import Callable, Iterator
from email.message import Message
from pathlib import Path, PurePosixPath
from types import TracebackType
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel

from shared.contracts.api import (
    ArtifactOut,
    ColumnMapping,
    DatasetCreated,
    DatasetOut,
    EventOut,
    ItemOut,
    JobOut,
    MetricOut,
    Page,
    SampleOut,
    StageOut,
)
from shared.contracts.status import JOB_TERMINAL
from shared.errors import (
    Conflict,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    VR1Error,
)

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
ProgressCallback = Callable[[int, int | None], None]  # bytes done, bytes in all (None: unknown)
CHUNK = 1 << 20
MAX_RETRY_DELAY_S = 30.0


class ApiError(VR1Error):
    """An error answer of the API: its HTTP status, error code, message and details (the
    IDs it is about; ``errors`` for a dataset's bad rows)."""

    def __init__(self, status_code: int, code: str, message: str, details: dict[str, Any]):
        super().__init__(message, **details)
        self.status_code = status_code
        self.code = code
        self.details = details


class ApiInvalidInput(ApiError, InvalidInput):
    """400, 415, 422: the request cannot be accepted as it is."""


class ApiUnauthorized(ApiError, Unauthorized):
    """401: the API key is missing, wrong or revoked."""


class ApiNotFound(ApiError, NotFound):
    """404: no such object of the caller's team."""


class ApiConflict(ApiError, Conflict):
    """409: the request conflicts with what exists."""


class ApiPayloadTooLarge(ApiError, PayloadTooLarge):
    """413: the upload is over the server's limit."""


class ApiUnavailable(ApiError):
    """503: a dependency of the API is away; retrying later may help."""


_BY_STATUS: dict[int, type[ApiError]] = {
    400: ApiInvalidInput,
    401: ApiUnauthorized,
    404: ApiNotFound,
    409: ApiConflict,
    413: ApiPayloadTooLarge,
    415: ApiInvalidInput,
    422: ApiInvalidInput,
    503: ApiUnavailable,
}


class Unreachable(VR1Error):
    """The API could not be reached (a wrong URL, a server that is down, a lost link)."""

    status_code = 503
    code = "unreachable"


class ChecksumMismatch(VR1Error):
    """A downloaded file whose checksum is not the one the API recorded."""

    code = "checksum_mismatch"


def error_from(response: httpx.Response) -> ApiError:
    """The typed error for an error answer (its body read)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"message": response.text[:500] or response.reason_phrase}
    details = {k: v for k, v in body.items() if k not in ("error", "message")}
    error = _BY_STATUS.get(response.status_code, ApiError)
    message = str(body.get("message") or response.reason_phrase)
    return error(response.status_code, str(body.get("error", "http_error")), message, details)


class _Reading(io.FileIO):
    """A file that reports how much of it was read (httpx streams it in chunks)."""

    def __init__(self, path: Path, progress: ProgressCallback | None) -> None:
        super().__init__(path, "rb")
        self.total = os.fstat(self.fileno()).st_size
        self.progress = progress

    def read(self, size: int | None = -1, /) -> bytes:
        chunk = super().read(size) or b""
        if self.progress is not None:
            self.progress(self.tell(), self.total)
        return chunk


class Client:
    """The platform's REST API over one HTTP connection pool; a context manager."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None,
        *,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        retries: int = 3,
        backoff_s: float = 0.5,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.retries, self.backoff_s = retries, backoff_s
        self.http = httpx.Client(
            base_url=self.base_url, headers=headers, timeout=timeout, transport=transport
        )
        self.datasets = Datasets(self)
        self.jobs = Jobs(self)
        self.artifacts = Artifacts(self)

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self.http.close()

    def send(
        self, method: str, path: str, *, idempotent: bool, stream: bool = False, **options: Any
    ) -> httpx.Response:
        """One request, retried as far as that is safe; an error answer is raised typed."""
        request = self.http.build_request(method, path, **options)
        attempt = -1
        while True:
            attempt += 1
            last = attempt >= self.retries
            try:
                response = self.http.send(request, stream=stream)
            except httpx.TransportError as exc:
                sent = not isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout)
                if last or (sent and not idempotent):
                    where = f"the API at {self.base_url}"
                    lost = f"the connection to {where} failed" if sent else f"cannot reach {where}"
                    raise Unreachable(f"{lost}: {exc}") from exc
                time.sleep(self._delay(attempt, None))
                continue
            if response.is_success:
                return response
            response.read()
            if response.status_code == 503 and idempotent and not last:
                response.close()
                time.sleep(self._delay(attempt, response.headers.get("Retry-After")))
                continue
            response.close()
            raise error_from(response)

    def _delay(self, attempt: int, retry_after: str | None) -> float:
        delay = self.backoff_s * 2.0**attempt
        if retry_after and retry_after.isdigit():
            delay = max(delay, float(retry_after))
        return min(delay, MAX_RETRY_DELAY_S)

    def get(self, path: str, model: type[M], **params: Any) -> M:
        """GET a JSON answer as a model."""
        response = self.send("GET", path, idempotent=True, params=_query(params))
        return model.model_validate(response.json())

    def get_list(self, path: str, model: type[M], **params: Any) -> list[M]:
        """GET a JSON list as models."""
        response = self.send("GET", path, idempotent=True, params=_query(params))
        return [model.model_validate(row) for row in response.json()]


def _query(params: dict[str, Any]) -> dict[str, Any]:
    """Query parameters without the unset ones (the API refuses unknown or empty ones)."""
    return {
        k: str(v) if isinstance(v, uuid.UUID) else v for k, v in params.items() if v is not None
    }


def pages(fetch: Callable[[int], Page[T]], offset: int = 0) -> Iterator[T]:
    """Every item of a paged list, page after page, following ``next_offset``."""
    while True:
        page = fetch(offset)
        yield from page.items
        if page.next_offset is None:
            return
        offset = page.next_offset


Id = uuid.UUID | str


class Datasets:
    """``/v1/datasets``: register, upload, list, read."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def register(
        self,
        name: str,
        path: str,
        *,
        kind: str = "source",
        format: str = "auto",
        columns: ColumnMapping | dict[str, Any] | None = None,
        on_error: str = "reject",
    ) -> DatasetCreated:
        """Register a file the server can read (a path inside its import roots)."""
        body: dict[str, Any] = {"name": name, "path": path, "kind": kind, "format": format}
        body["on_error"] = on_error
        if columns is not None:
            body["columns"] = ColumnMapping.model_validate(columns).model_dump()
        timeout = httpx.Timeout(self.client.http.timeout.connect, read=None)  # rows take time
        response = self.client.send(
            "POST", "/v1/datasets", idempotent=False, json=body, timeout=timeout
        )
        return DatasetCreated.model_validate(response.json())

    def upload(
        self,
        path: Path | str,
        name: str,
        *,
        kind: str = "source",
        format: str = "auto",
        columns: ColumnMapping | dict[str, Any] | None = None,
        on_error: str = "reject",
        progress: ProgressCallback | None = None,
    ) -> DatasetCreated:
        """Upload a JSONL or Parquet file, or an archive of one with its images; streamed
        from disk, ``progress(bytes_sent, bytes_total)`` called as it goes."""
        path = Path(path)
        fields = {"name": name, "kind": kind, "format": format, "on_error": on_error}
        if columns is not None:
            fields["columns"] = ColumnMapping.model_validate(columns).model_dump_json()
        timeout = httpx.Timeout(self.client.http.timeout.connect, read=None)
        with _Reading(path, progress) as reading:
            response = self.client.send(
                "POST",
                "/v1/datasets",
                idempotent=False,
                data=fields,  # the fields go first: a bad one is refused before the file
                files={"file": (path.name, reading, "application/octet-stream")},
                timeout=timeout,
            )
        return DatasetCreated.model_validate(response.json())

    def list(
        self, *, kind: str | None = None, limit: int = 50, offset: int = 0
    ) -> Page[DatasetOut]:
        """A page of the team's datasets, newest first."""
        return self.client.get(
            "/v1/datasets", Page[DatasetOut], kind=kind, limit=limit, offset=offset
        )

    def iter_all(self, *, kind: str | None = None, page_size: int = 100) -> Iterator[DatasetOut]:
        """Every dataset of the team, newest first."""
        return pages(lambda offset: self.list(kind=kind, limit=page_size, offset=offset))

    def get(self, dataset_id: Id) -> DatasetOut:
        """One dataset."""
        return self.client.get(f"/v1/datasets/{dataset_id}", DatasetOut)

    def items(self, dataset_id: Id, *, limit: int = 50, offset: int = 0) -> Page[ItemOut]:
        """A page of a dataset's items, in file order."""
        path = f"/v1/datasets/{dataset_id}/items"
        return self.client.get(path, Page[ItemOut], limit=limit, offset=offset)

    def iter_items(self, dataset_id: Id, *, page_size: int = 100) -> Iterator[ItemOut]:
        """Every item of a dataset, in file order."""
        return pages(lambda offset: self.items(dataset_id, limit=page_size, offset=offset))


class Jobs:
    """``/v1/jobs``: submit, follow, cancel, read results."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def submit(
        self,
        spec: dict[str, Any] | BaseModel,
        name: str | None = None,
        idempotency_key: str | None = None,
    ) -> JobOut:
        """Submit a job.  Its idempotency key (a fresh one unless given) makes the request
        safe to retry: a retry returns the job the first attempt created."""
        body: dict[str, Any] = {"spec": spec}
        if isinstance(spec, BaseModel):
            body["spec"] = spec.model_dump(mode="json")
        if name is not None:
            body["name"] = name
        key = idempotency_key or f"vr1-client-{uuid.uuid4()}"
        response = self.client.send(
            "POST", "/v1/jobs", idempotent=True, json=body, headers={"Idempotency-Key": key}
        )
        return JobOut.model_validate(response.json())

    def list(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        parent_id: Id | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[JobOut]:
        """A page of the team's jobs, newest first."""
        filters = {"kind": kind, "status": status, "parent_id": parent_id}
        return self.client.get("/v1/jobs", Page[JobOut], limit=limit, offset=offset, **filters)

    def iter_all(
        self,
        *,
        kind: str | None = None,
        status: str | None = None,
        parent_id: Id | None = None,
        page_size: int = 100,
    ) -> Iterator[JobOut]:
        """Every job of the team that matches, newest first."""
        return pages(
            lambda offset: self.list(
                kind=kind, status=status, parent_id=parent_id, limit=page_size, offset=offset
            )
        )

    def get(self, job_id: Id) -> JobOut:
        """One job with its progress counters."""
        return self.client.get(f"/v1/jobs/{job_id}", JobOut)

    def cancel(self, job_id: Id) -> JobOut:
        """Cancel a job and its child jobs."""
        response = self.client.send("POST", f"/v1/jobs/{job_id}/cancel", idempotent=False)
        return JobOut.model_validate(response.json())

    def stages(self, job_id: Id) -> builtins.list[StageOut]:
        """A training job's stages, in order."""
        return self.client.get_list(f"/v1/jobs/{job_id}/stages", StageOut)

    def metrics(
        self,
        job_id: Id,
        *,
        names: builtins.list[str] | None = None,
        stage: int | None = None,
        after_step: int | None = None,
        limit: int = 10_000,
    ) -> builtins.list[MetricOut]:
        """A job's metric points by stage and step, filtered."""
        return self.client.get_list(
            f"/v1/jobs/{job_id}/metrics",
            MetricOut,
            name=names or None,
            stage=stage,
            after_step=after_step,
            limit=limit,
        )

    def events(
        self,
        job_id: Id,
        *,
        after: int | None = None,
        type: str | None = None,
        level: str | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[EventOut]:
        """A page of a job's event log, oldest first; ``after`` an event ID already seen."""
        return self.client.get(
            f"/v1/jobs/{job_id}/events",
            Page[EventOut],
            after=after,
            type=type,
            level=level,
            limit=limit,
            offset=offset,
        )

    def iter_events(
        self, job_id: Id, *, after: int | None = None, page_size: int = 100
    ) -> Iterator[EventOut]:
        """Every event of a job (after ``after``), oldest first."""
        return pages(
            lambda offset: self.events(job_id, after=after, limit=page_size, offset=offset)
        )

    def samples(
        self,
        job_id: Id,
        *,
        stage: int | None = None,
        step: int | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> Page[SampleOut]:
        """A page of the GRPO completions a training job kept, by stage and step."""
        return self.client.get(
            f"/v1/jobs/{job_id}/samples",
            Page[SampleOut],
            stage=stage,
            step=step,
            limit=limit,
            offset=offset,
        )

    def iter_samples(
        self, job_id: Id, *, stage: int | None = None, step: int | None = None
    ) -> Iterator[SampleOut]:
        """Every kept completion of a training job (of one stage or step)."""
        return pages(lambda offset: self.samples(job_id, stage=stage, step=step, offset=offset))

    def artifacts(self, job_id: Id) -> builtins.list[ArtifactOut]:
        """What a job stored: checkpoints, exports, reports."""
        return self.client.get_list(f"/v1/jobs/{job_id}/artifacts", ArtifactOut)

    def wait(
        self,
        job_id: Id,
        *,
        poll_s: float = 2.0,
        timeout_s: float | None = None,
        on_update: Callable[[JobOut], None] | None = None,
    ) -> JobOut:
        """Poll a job until it succeeds, fails or is cancelled; ``on_update`` sees every
        poll.  Raises TimeoutError when ``timeout_s`` passes first."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        while True:
            job = self.get(job_id)
            if on_update is not None:
                on_update(job)
            if job.status in JOB_TERMINAL:
                return job
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job.status} after {timeout_s} s")
            time.sleep(poll_s)


class Artifacts:
    """``/v1/artifacts``: metadata and streamed downloads."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, artifact_id: Id) -> ArtifactOut:
        """One artifact's metadata."""
        return self.client.get(f"/v1/artifacts/{artifact_id}", ArtifactOut)

    def download(
        self,
        artifact_id: Id,
        dest: Path | str,
        *,
        extract: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Path:
        """Stream an artifact to ``dest`` (a file, or a folder to put it in) and return
        where it is.  A file is checked against its recorded checksum; a folder arrives as
        a tar archive, unpacked into ``dest`` (a folder) when ``extract`` is set."""
        artifact = self.get(artifact_id)
        url = f"/v1/artifacts/{artifact_id}/download"
        response = self.client.send("GET", url, idempotent=True, stream=True)
        try:
            target = _target(Path(dest), _file_name(response, artifact.name))
            digest = _save(response, target, progress)
        finally:
            response.close()
        folder = response.headers.get("content-type", "").startswith("application/x-tar")
        recorded = artifact.checksum.startswith("sha256:") and not folder
        if recorded and f"sha256:{digest}" != artifact.checksum:
            target.unlink()
            raise ChecksumMismatch(
                f"artifact {artifact_id}: the download's checksum is not the recorded one",
                artifact_id=str(artifact_id),
            )
        if folder and extract:
            return _untar(target, Path(dest) if Path(dest).is_dir() else target.parent)
        return target


def _file_name(response: httpx.Response, fallback: str) -> str:
    message = Message()
    message["content-disposition"] = response.headers.get("content-disposition", "")
    name = message.get_filename() or fallback
    return Path(name).name or "artifact"


def _target(dest: Path, name: str) -> Path:
    target = dest / name if dest.is_dir() else dest
    target.parent.mkdir(parents=True, exist_ok=True)
    return target


def _save(response: httpx.Response, target: Path, progress: ProgressCallback | None) -> str:
    """Write the body to ``target`` (through a partial file, renamed when whole); its
    sha256."""
    total = response.headers.get("content-length")
    size = int(total) if total and total.isdigit() else None
    partial = target.with_name(f".{target.name}.part")
    digest = hashlib.sha256()
    with partial.open("wb") as out:
        for chunk in response.iter_bytes(CHUNK):
            out.write(chunk)
            digest.update(chunk)
            if progress is not None:
                progress(response.num_bytes_downloaded, size)
    partial.replace(target)
    return digest.hexdigest()


def _untar(archive: Path, into: Path) -> Path:
    """Unpack a downloaded folder (its members under one top folder) and drop the archive;
    the folder's path."""
    tops = set()
    with tarfile.open(archive) as tar:
        for member in tar:
            tops.add(PurePosixPath(member.name).parts[0])
            tar.extract(member, into, filter="data")
    archive.unlink()
    return into / tops.pop() if len(tops) == 1 else into
