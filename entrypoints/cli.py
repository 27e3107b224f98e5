"""``vr1``: one command line that starts every role of the platform.

This is the composition root's front door: it sits above the services and ``shared``.
Service modules are imported inside the command that needs them, so ``vr1 serve
gateway`` never loads torch and a missing optional extra fails only the command using it.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from entrypoints import remote
from shared.contracts.status import JobStatus
from shared.settings import BaseVR1Settings

app = typer.Typer(help="The Vision-R1 platform.", no_args_is_help=True, add_completion=False)
db_app = typer.Typer(help="Database schema (Alembic).", no_args_is_help=True)
admin_app = typer.Typer(help="Teams and API keys.", no_args_is_help=True)
reward_app = typer.Typer(help="Reward scoring.", no_args_is_help=True)
dataset_app = typer.Typer(help="Datasets in the embedded database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(admin_app, name="admin")
app.add_typer(reward_app, name="reward")
app.add_typer(dataset_app, name="dataset")
app.add_typer(remote.datasets_app, name="datasets")
app.add_typer(remote.jobs_app, name="jobs")
app.add_typer(remote.artifacts_app, name="artifacts")


class HttpRole(StrEnum):
    gateway = "gateway"
    reward = "reward"


class WorkerRole(StrEnum):
    captioner = "captioner"
    reasoner = "reasoner"
    trainer = "trainer"
    reconciler = "reconciler"
    embedded = "embedded"


Verbose = Annotated[
    bool,
    typer.Option(
        "--verbose",
        envvar="VR1_VERBOSE",
        help="Libraries' raw output (warnings, progress bars, training logs) on the screen "
        "instead of a log file.",
    ),
]


def _fail(message: str, code: int = 2) -> None:
    typer.echo(message, err=True)
    raise typer.Exit(code)


@app.command()
def serve(role: HttpRole) -> None:
    """Start an HTTP service: the gateway or the reward service."""
    if role is HttpRole.gateway:
        from services.gateway.app import serve as serve_gateway

        serve_gateway()
    else:
        from services.reward.app import serve as serve_reward

        serve_reward()


@app.command()
def worker(role: WorkerRole) -> None:
    """Start a queue worker: captioner (queue caption), reasoner (reason), trainer (train),
    or the reconciler (relays the outbox, resends lost work); or, without a broker, the
    embedded worker (runs every job a gateway on the same database takes)."""
    import importlib

    if role is WorkerRole.reconciler:
        from entrypoints.reconciler import main

        main()
        return
    if role is WorkerRole.embedded:
        from entrypoints.embedded_worker import main as work

        work()
        return
    try:
        module = importlib.import_module(f"services.{role.value}.worker")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("services."):
            _fail(f"the {role.value} worker is not part of this release yet")
        _fail(f"the {role.value} worker needs the 'worker' extra: missing module {exc.name}")
    module.main()


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Migrate the database up (default: to the newest revision)."""
    from shared.db import migrate

    url = BaseVR1Settings().resolved_database_url
    migrate.upgrade(url, revision)
    typer.echo(f"database at revision {migrate.current(url)}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Migrate the database down to a revision ('base' empties it)."""
    from shared.db import migrate

    url = BaseVR1Settings().resolved_database_url
    migrate.downgrade(url, revision)
    typer.echo(f"database at revision {migrate.current(url)}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's revision."""
    from shared.db import migrate

    typer.echo(migrate.current(BaseVR1Settings().resolved_database_url) or "empty")


@admin_app.command("create-team")
def create_team(name: str) -> None:
    """Add a team."""
    from shared import teams
    from shared.db.session import Database

    with Database(BaseVR1Settings().resolved_database_url).session() as session:
        team = teams.create_team(session, name=name)
        typer.echo(f"team {team.name} {team.id}")


@admin_app.command("create-key")
def create_key(
    team: Annotated[str, typer.Option(help="Team name.")],
    name: Annotated[str, typer.Option(help="A label for the key.")] = "",
) -> None:
    """Issue an API key for a team; it is printed once and stored only as a hash."""
    from shared import teams
    from shared.db.session import Database

    with Database(BaseVR1Settings().resolved_database_url).session() as session:
        issued = teams.create_key(session, team=teams.get_team(session, name=team), name=name)
    typer.echo(issued.secret)


@admin_app.command("revoke-key")
def revoke_key(prefix: str) -> None:
    """Revoke an API key by its prefix (the part after 'vr1_')."""
    from shared import teams
    from shared.db.session import Database

    with Database(BaseVR1Settings().resolved_database_url).session() as session:
        teams.revoke_key(session, prefix=prefix)
    typer.echo(f"revoked {prefix}")


@app.command("toy-data")
def toy_data(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path(".vr1/data/toy"),
    seed: int = 0,
    n_train: int = 64,
    n_test: int = 32,
    tasks: Annotated[list[str] | None, typer.Option(help="Tasks to include.")] = None,
) -> None:
    """Write a seeded synthetic visual QA dataset (images, train/test JSONL, references)."""
    from shared.fixtures.commands import toy_data_command
    from shared.fixtures.toy import DEFAULT_TASKS

    toy_data_command(out, seed, n_train, n_test, list(tasks or DEFAULT_TASKS))


@app.command("tiny-models")
def tiny_models(
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path(".vr1/models"),
    seed: int = 0,
) -> None:
    """Build tiny random Qwen2.5-VL-style and text models offline (for tests and demos)."""
    from shared.fixtures.commands import tiny_models_command

    tiny_models_command(out, seed)


@reward_app.command("score")
def reward_score(reward: str = "hfrrf") -> None:
    """Score JSONL lines {completion, answer} from stdin; one JSON result per line out."""
    from services.reward.cli import score_stream
    from services.reward.settings import RewardSettings

    raise typer.Exit(score_stream(reward, sys.stdin, sys.stdout, RewardSettings()))


@app.command()
def run(
    spec: Annotated[Path, typer.Argument(help="A job spec as JSON (the 'spec' of POST /v1/jobs).")],
    name: str | None = None,
    verbose: Verbose = False,
) -> None:
    """Run a job in-process on embedded defaults (SQLite, local folder, no broker)."""
    from pydantic import ValidationError

    from entrypoints.bootstrap import embedded, run_shown
    from entrypoints.console import open_console
    from shared.contracts.specs import parse_spec

    try:
        parsed = parse_spec(json.loads(spec.read_text()))
    except (OSError, json.JSONDecodeError, ValidationError) as exc:
        _fail(f"cannot use {spec}: {exc}")
    settings = BaseVR1Settings()
    log = settings.home / "logs" / "run.log"
    with open_console(log, verbose=verbose, level=settings.log_level) as console:
        job = run_shown(embedded(settings, verbose=verbose), console, parsed, name=name)
    typer.echo(
        json.dumps(
            {"job_id": str(job.id), "status": job.status, "error": job.error, "output": job.output},
            indent=2,
        )
    )
    if job.status != JobStatus.SUCCEEDED:
        raise typer.Exit(1)


@dataset_app.command("register")
def dataset_register(
    path: Path,
    name: Annotated[str, typer.Option(help="Dataset name (unique in the team).")],
    kind: str = "source",
    image_column: str = "image",
    question_column: str = "question",
    answer_column: str = "answer",
    on_error: str = "reject",
) -> None:
    """Register a JSONL or Parquet file in the embedded database; prints its ID."""
    from entrypoints.bootstrap import embedded
    from shared.contracts.api import ColumnMapping, DatasetCreate
    from shared.datasets import register_dataset

    platform = embedded(BaseVR1Settings())
    request = DatasetCreate.model_validate(
        {
            "name": name,
            "kind": kind,
            "path": str(path.resolve()),
            "on_error": on_error,
            "columns": ColumnMapping(
                image=image_column, question=question_column, answer=answer_column
            ).model_dump(),
        }
    )
    team = platform.team()
    with platform.db.session() as session:
        dataset, skipped = register_dataset(
            session,
            team=team,
            request=request,
            roots=[path.resolve().parent],
            store=platform.store,
        )
    for row in skipped:
        typer.echo(f"skipped row {row.row}: {row.reason}", err=True)
    typer.echo(str(dataset.id))


@app.command("train-run", hidden=True)
def train_run(job_id: str) -> None:
    """Run one training job in this process (what launchers start, by its module)."""
    from services.trainer.run import main as run_training

    run_training([job_id])


@app.command()
def demo(
    out: Annotated[Path, typer.Option(help="Where the demo writes its report.")] = Path(
        ".vr1/demo"
    ),
    seed: int = 0,
    verbose: Verbose = False,
) -> None:
    """The main job on embedded defaults: what the platform can run end to end today."""
    from entrypoints.console import open_console
    from entrypoints.demo import run_demo
    from shared.errors import VR1Error

    level = BaseVR1Settings().log_level
    try:
        with open_console(out / "logs" / "demo.log", verbose=verbose, level=level) as console:
            run_demo(out, console, seed=seed)
    except VR1Error as exc:
        _fail(f"the demo stopped: {exc}", 1)


def main() -> None:
    """Console-script entry point."""
    app()


if __name__ == "__main__":
    main()
