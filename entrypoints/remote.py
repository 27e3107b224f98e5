"""``vr1 datasets|jobs|artifacts``: the platform's API from a terminal, on any machine.

Every command talks to a gateway through ``shared.client`` (``VR1_API_URL``, default
http://127.0.0.1:8000, and ``VR1_API_KEY``, or ``--api-url``/``--api-key``).  Exit codes:
0 done (a watched job succeeded), 1 a watched job failed or was cancelled, 2 a usage or
API error, said in one line (never a traceback).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import Field
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from entrypoints.watch import format_event, progress_line, watch
from shared.client import (
    ApiError,
    ApiInvalidInput,
    ApiUnauthorized,
    Client,
    ProgressCallback,
    Unreachable,
)
from shared.contracts.api import JobOut
from shared.contracts.status import JOB_TERMINAL, JobStatus
from shared.errors import VR1Error
from shared.progress import counted, planned_steps
from shared.settings import BaseVR1Settings

datasets_app = typer.Typer(help="Datasets on a gateway: upload, list.", no_args_is_help=True)
jobs_app = typer.Typer(help="Jobs on a gateway: submit, follow, cancel.", no_args_is_help=True)
artifacts_app = typer.Typer(help="Artifacts on a gateway: download.", no_args_is_help=True)

ApiUrl = Annotated[str | None, typer.Option(help="Gateway URL (env VR1_API_URL).")]
ApiKey = Annotated[str | None, typer.Option(help="API key (env VR1_API_KEY).")]
JobId = Annotated[str, typer.Argument(help="A job ID.")]
SHOWN_ROW_ERRORS = 20
UPLOADABLE = "JSONL, Parquet, or a .tar/.tar.gz/.tgz/.zip of one with its images."


class ApiSettings(BaseVR1Settings):
    """Where the gateway is and the key to it."""

    api_url: str = "http://127.0.0.1:8000"
    api_key: str | None = None
    queued_hint_s: float = Field(
        default=30.0,
        gt=0,
        description="--watch: say what may be missing once a job waits this long",
    )


def _console(*, err: bool = False) -> Console:
    """A console; wide when it is not a terminal, so that IDs are never cut in logs."""
    console = Console(stderr=err)
    return console if console.is_terminal else Console(stderr=err, width=200)


def _fail(message: str) -> typer.Exit:
    typer.echo(f"error: {message}", err=True)
    return typer.Exit(2)


@contextmanager
def _api(api_url: str | None, api_key: str | None) -> Iterator[Client]:
    """A client on the configured gateway; API errors end the command with a message."""
    settings = ApiSettings()
    url, key = api_url or settings.api_url, api_key or settings.api_key
    if not key:
        raise _fail("no API key: set VR1_API_KEY or pass --api-key")
    try:
        with Client(url, key) as client:
            yield client
    except Unreachable as exc:
        raise _fail(f"{exc.message} (is the gateway running? VR1_API_URL / --api-url)") from exc
    except ApiUnauthorized as exc:
        raise _fail(f"the gateway refused the API key: {exc.message}") from exc
    except ApiInvalidInput as exc:
        for row in exc.details.get("errors", [])[:SHOWN_ROW_ERRORS]:
            typer.echo(f"  row {row.get('row')}: {row.get('reason')}", err=True)
        raise _fail(exc.message) from exc
    except ApiError as exc:
        raise _fail(f"{exc.message} ({exc.status_code})") from exc
    except VR1Error as exc:
        raise _fail(exc.message) from exc
    except KeyboardInterrupt as exc:
        raise _fail("interrupted (a submitted job goes on)") from exc


@contextmanager
def _transfer(what: str) -> Iterator[ProgressCallback]:
    """A byte progress bar (on a terminal) and the callback that moves it."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    console = _console(err=True)
    with Progress(*columns, console=console, disable=not console.is_terminal) as bar:
        task = bar.add_task(what, total=None)
        yield lambda done, total: bar.update(task, completed=done, total=total)


# --- datasets -----------------------------------------------------------------------------


@datasets_app.command("upload")
def datasets_upload(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help=UPLOADABLE)],
    name: Annotated[str, typer.Option(help="Dataset name (unique in the team).")],
    kind: Annotated[str, typer.Option(help="source, rl or eval.")] = "source",
    format: Annotated[str, typer.Option(help="auto, jsonl or parquet.")] = "auto",
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    on_error: Annotated[str, typer.Option(help="reject (any bad row) or skip.")] = "reject",
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Upload a dataset file to the gateway; prints its ID (skipped rows on stderr)."""
    columns = {"image": image_column, "question": question_column, "answer": answer_column}
    with _api(api_url, api_key) as client, _transfer(f"uploading {file.name}") as progress:
        dataset = client.datasets.upload(
            file,
            name,
            kind=kind,
            format=format,
            columns=columns,
            on_error=on_error,
            progress=progress,
        )
    for row in dataset.skipped:
        typer.echo(f"skipped row {row.row} ({row.field or 'row'}): {row.reason}", err=True)
    typer.echo(
        f"{dataset.name}: {dataset.size} items, {len(dataset.skipped)} rows skipped", err=True
    )
    typer.echo(str(dataset.id))


@datasets_app.command("list")
def datasets_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """The team's datasets, newest first."""
    with _api(api_url, api_key) as client:
        page = client.datasets.list(kind=kind, limit=limit)
    table = Table("ID", "name", "kind", "format", "items", "created")
    for d in page.items:
        table.add_row(str(d.id), d.name, d.kind, d.format, str(d.size), f"{d.created_at:%F %T}")
    _console().print(table)


# --- jobs ---------------------------------------------------------------------------------


@jobs_app.command("submit")
def jobs_submit(
    spec: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="A job spec (JSON).")],
    name: Annotated[str | None, typer.Option(help="A name for the job.")] = None,
    watch_job: Annotated[bool, typer.Option("--watch", help="Follow it to its end.")] = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Submit a job; prints its ID, or with --watch follows it (exit 1 if it fails)."""
    try:
        body = json.loads(spec.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _fail(f"cannot read {spec}: {exc}") from exc
    with _api(api_url, api_key) as client:
        job = client.jobs.submit(body, name=name)
        for warning in job.warnings:
            typer.echo(f"warning: {warning}", err=True)
        typer.echo(str(job.id))
        if watch_job:
            hint_s = ApiSettings().queued_hint_s
            _finish(watch(client, str(job.id), console=_console(), queued_hint_s=hint_s))


def _finish(job: JobOut) -> None:
    """Say how a job ended; exit 1 unless it succeeded."""
    ended = f"job {job.id} {job.status}" + (f": {job.error}" if job.error else "")
    typer.echo(ended, err=job.status != JobStatus.SUCCEEDED)
    if job.status != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


@jobs_app.command("list")
def jobs_list(
    kind: Annotated[str | None, typer.Option(help="Only this kind.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    limit: Annotated[int, typer.Option(min=1, max=500)] = 50,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """The team's jobs, newest first."""
    with _api(api_url, api_key) as client:
        page = client.jobs.list(kind=kind, status=status, limit=limit)
    table = Table("ID", "name", "kind", "status", "progress", "created")
    for j in page.items:
        table.add_row(
            str(j.id), j.name, j.kind, j.status, counted(j.progress), f"{j.created_at:%F %T}"
        )
    _console().print(table)


@jobs_app.command("show")
def jobs_show(job_id: JobId, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """A job: status, progress, stages and artifacts."""
    console = _console()
    with _api(api_url, api_key) as client:
        job = client.jobs.get(job_id)
        stages = client.jobs.stages(job_id)
        artifacts = client.jobs.artifacts(job_id)
    console.print(f"job {job.id} ({job.name}): {job.kind}, {job.status}", highlight=False)
    console.print(f"progress: {progress_line(job)}", markup=False, highlight=False)
    for line in ([f"error: {job.error}"] if job.error else []) + job.warnings:
        console.print(line, markup=False, highlight=False)
    if stages:
        table = Table("stage", "name", "status", "steps", "started", "finished")
        for s in stages:
            steps = planned_steps(s.config, s.summary)
            times = (_when(s.started_at), _when(s.finished_at))
            table.add_row(str(s.idx + 1), s.name, s.status, str(steps or ""), *times)
        console.print(table)
    if artifacts:
        table = Table("artifact", "kind", "name", "bytes")
        for a in artifacts:
            table.add_row(str(a.id), a.kind, a.name, str(a.size_bytes))
        console.print(table)


def _when(moment: Any) -> str:
    return f"{moment:%F %T}" if moment is not None else ""


@jobs_app.command("cancel")
def jobs_cancel(job_id: JobId, api_url: ApiUrl = None, api_key: ApiKey = None) -> None:
    """Cancel a job and its child jobs."""
    with _api(api_url, api_key) as client:
        job = client.jobs.cancel(job_id)
    typer.echo(f"job {job.id} {job.status}")


@jobs_app.command("events")
def jobs_events(
    job_id: JobId,
    follow: Annotated[bool, typer.Option(help="Keep printing until the job ends.")] = False,
    poll_s: Annotated[float, typer.Option(min=0.1)] = 2.0,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """A job's event log, oldest first."""
    with _api(api_url, api_key) as client:
        after = None
        while True:
            ended = client.jobs.get(job_id).status in JOB_TERMINAL  # read before the events
            for event in client.jobs.iter_events(job_id, after=after):
                typer.echo(format_event(event))
                after = event.id
            if ended or not follow:
                return
            time.sleep(poll_s)


@jobs_app.command("metrics")
def jobs_metrics(
    job_id: JobId,
    name: Annotated[list[str] | None, typer.Option(help="Only these metrics.")] = None,
    stage: Annotated[int | None, typer.Option(min=1, help="Only this stage (from 1).")] = None,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """A job's metrics, one row per stage and step."""
    with _api(api_url, api_key) as client:
        points = client.jobs.metrics(job_id, names=name, stage=None if stage is None else stage - 1)
    names = sorted({p.name for p in points})
    rows: dict[tuple[int, int], dict[str, float]] = {}
    for p in points:
        stage_idx = p.stage_idx if p.stage_idx is not None else -1
        rows.setdefault((stage_idx, p.step), {})[p.name] = p.value
    table = Table("stage", "step", *names)
    for (idx, step), values in sorted(rows.items()):
        cells = [f"{values[n]:.4g}" if n in values else "" for n in names]
        table.add_row(str(idx + 1) if idx >= 0 else "", str(step), *cells)
    _console().print(table)


# --- artifacts ----------------------------------------------------------------------------


@artifacts_app.command("download")
def artifacts_download(
    artifact_id: Annotated[str, typer.Argument(help="An artifact ID (vr1 jobs show lists them).")],
    out: Annotated[Path, typer.Option(help="A file, or a folder to put it in.")] = Path("."),
    extract: Annotated[bool, typer.Option(help="Unpack a folder artifact's tar.")] = False,
    api_url: ApiUrl = None,
    api_key: ApiKey = None,
) -> None:
    """Download an artifact (a folder arrives as a tar); prints where it went."""
    with _api(api_url, api_key) as client, _transfer("downloading") as progress:
        path = client.artifacts.download(artifact_id, out, extract=extract, progress=progress)
    typer.echo(str(path))
