"""Following a job from a terminal: how far it is, what happened, how it ended.

How far a job is comes with the job itself (``JobOut.progress``, the server's one
definition), so each poll is one request; events are printed as they arrive, above the
live bar.  When the output is not a terminal, plain lines are printed instead, one each
time something changes.
"""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from entrypoints.console import duration
from shared.client import ApiError, ApiNotFound, Client, Unreachable
from shared.contracts.api import EventOut, Health, JobOut
from shared.contracts.status import JobStatus
from shared.progress import counted


def format_event(event: EventOut) -> str:
    """One event as a log line."""
    stage = f" [stage {event.stage_idx + 1}]" if event.stage_idx is not None else ""
    when = event.created_at.astimezone()  # the local time of the one reading it
    return f"{when:%H:%M:%S} {event.level:<7} {event.type}{stage}: {event.message}"


class JobWatch:
    """Reads a job's new events through the client, remembering the last one it saw."""

    def __init__(self, client: Client, job_id: str) -> None:
        self.client, self.job_id = client, job_id
        self.last_event: int | None = None
        self.has_events = True

    def new_events(self) -> list[EventOut]:
        """Events since the last call (none from a gateway without an event log)."""
        if not self.has_events:
            return []
        try:
            page = self.client.jobs.events(self.job_id, after=self.last_event, limit=500)
        except ApiNotFound:  # the job exists (it was just read): this gateway keeps no log
            self.has_events = False
            return []
        if page.items:
            self.last_event = page.items[-1].id
        return page.items


def queued_hint(client: Client, waited_s: float) -> str:
    """Why a job may still be queued, from what the gateway says of its broker."""
    still = f"still queued after {duration(waited_s)}: "
    try:
        health = client.get("/healthz", Health)
    except (ApiError, Unreachable):
        return still + "no worker has taken it yet"
    if health.broker is None:
        return still + (
            "this gateway has no broker; its jobs run when `vr1 worker embedded` runs on "
            "its database (VR1_HOME or VR1_DATABASE_URL)"
        )
    return still + "no worker has taken it yet (are the trainer and coldstart workers up?)"


def watch(
    client: Client,
    job_id: str,
    *,
    console: Console,
    poll_s: float = 1.0,
    queued_hint_s: float = 30.0,
) -> JobOut:
    """Follow a job until it ends (a live bar on a terminal, plain lines otherwise); a job
    still queued after ``queued_hint_s`` gets one line on what may be missing."""
    follow = JobWatch(client, job_id)
    live = console.is_terminal
    started = time.monotonic()
    shown: tuple[Any, ...] = ()
    hinted = False
    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=console, disable=not live) as bar:
        task = bar.add_task("queued", total=None, detail="")

        def update(job: JobOut) -> None:
            nonlocal shown, hinted
            for event in follow.new_events():
                bar.console.print(format_event(event), markup=False, highlight=False)
            waited = time.monotonic() - started
            if job.status == JobStatus.QUEUED and not hinted and waited >= queued_hint_s:
                hinted = True
                hint = queued_hint(client, waited)
                bar.console.print(hint, style="yellow", markup=False, highlight=False)
            at = job.progress
            description = f"{job.status} · {at.stage or job.kind}"
            bar.update(
                task, description=description, completed=at.done, total=at.total, detail=at.detail
            )
            if not live and (job.status, at) != shown:
                shown = (job.status, at)
                console.print(
                    _plain_line(job, time.monotonic() - started), markup=False, highlight=False
                )

        return client.jobs.wait(job_id, poll_s=poll_s, on_update=update)


def progress_line(job: JobOut) -> str:
    """``stage 2/2 · 48×4: 48/150 steps · reward 0.42``: where a job is, and how far."""
    at = job.progress
    return f"{at.stage or job.kind}: " + " · ".join(p for p in (counted(at), at.detail) if p)


def _plain_line(job: JobOut, elapsed: float) -> str:
    """A progress line for logs: counts, elapsed time, and the ETA at the rate so far."""
    at = job.progress
    line = f"[{duration(elapsed)}] {job.status} · {progress_line(job)}"
    if at.total and 0 < at.done < at.total:
        line += f", ETA {duration(elapsed / at.done * (at.total - at.done))}"
    return line
