"""Cold-start orchestration overhead: the engines called directly vs. a coldstart job.

    python bench/coldstart.py [--items 96] [--chunk-size 16] [--json out.json]

Both paths use the same stand-in teachers (a tiny describer VLM and a tiny text reasoner,
trained once and cached by ``tests.helpers.stand_in_teachers``), the same greedy
generation params, the same batching and the same items, in the same run:

(a) direct — the three calls per item (Pseudo-CoT, description, reasoning) with the
    ``transformers`` engine in a plain loop, a chunk of items per ``generate`` call, as
    the job batches them;
(b) job — a coldstart job in embedded mode: records, cache lookups, retries bookkeeping,
    verification, post-processing, export and the funnel report included.

Models are loaded, the verifier pool started and a small warm-up job (own home) run
before either clock starts: a worker process pays those once, not per job.  Each job
measurement gets a fresh home (database, cache, store), so the job never reads outputs
the direct path or an earlier repeat produced; the toy questions are numbered so that no
two items share a prompt (the job would serve a repeat from its cache).  Figures are
medians over alternating repeats.  ``overhead_ratio`` = direct items/s ÷ job items/s
(1.0 = no overhead); ``job_outside_engine_ms_per_item`` is the job's time spent outside
``generate``, per item, and ``job_outside_engine_fraction`` that time over the job's own
engine time (the same overhead, robust to a noisy machine).

The ``openai`` engine's throughput is measured at 1, 4 and 16 requests in flight against
a real ``transformers serve`` process running the stand-in describer on this CPU (the
two captioner calls per item).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the stand-in teachers are built by the test helpers

from sqlalchemy import select  # noqa: E402

from entrypoints.bootstrap import embedded  # noqa: E402
from shared.contracts.api import DatasetCreate  # noqa: E402
from shared.contracts.specs import ColdstartSpec, EngineSpec  # noqa: E402
from shared.datasets import register_dataset  # noqa: E402
from shared.db.models import GenerationRecord, Item  # noqa: E402
from shared.engines import Engine, GenerationRequest, make_engine  # noqa: E402
from shared.engines.transformers_engine import TransformersEngine  # noqa: E402
from shared.fixtures.toy import read_rows  # noqa: E402
from shared.prompts import template_for  # noqa: E402
from shared.rewards import (  # noqa: E402
    ScoreItem,
    default_scorer,
    extract_final_answer,
    score,
)
from shared.settings import BaseVR1Settings  # noqa: E402

IN_FLIGHT = (1, 4, 16)


def engine_spec(model: Path, batch_size: int, max_new_tokens: int) -> EngineSpec:
    generation = {"max_new_tokens": max_new_tokens, "temperature": 0}
    return EngineSpec(model=str(model), device="cpu", batch_size=batch_size, generation=generation)


def chunks(rows: Sequence[dict[str, Any]], size: int) -> Iterator[Sequence[dict[str, Any]]]:
    for start in range(0, len(rows), size):
        yield rows[start : start + size]


def toy_rows(toy: Path, n: int) -> list[dict[str, Any]]:
    """The first ``n`` toy rows (train, then test), image paths made absolute.

    Each question gets the item's number: the toy world repeats descriptions, and a job
    serves a repeated reasoning prompt from its cache — work the direct loop would redo.
    """
    rows = read_rows(toy / "train.jsonl") + read_rows(toy / "test.jsonl")
    if n > len(rows):
        raise SystemExit(f"--items {n}: the toy world has {len(rows)} items")
    return [
        {**row, "image": str(toy / row["image"]), "question": f"{row['question']} (#{k})"}
        for k, row in enumerate(rows[:n])
    ]


def caption_calls(
    captioner: Engine, batch: Sequence[dict[str, Any]]
) -> tuple[list[str], list[str]]:
    """Pseudo-CoT then description for a chunk, rendered exactly as the job renders them."""
    pseudo, described = template_for("pseudo_cot", None), template_for("description", None)
    first = captioner.generate(
        [
            GenerationRequest(
                prompt=pseudo.render(question=r["question"], answer=r["answer"]),
                images=(r["image"],),
            )
            for r in batch
        ]
    )
    cots = [result.text.strip() for result in first]
    second = captioner.generate(
        [
            GenerationRequest(
                prompt=described.render(question=r["question"], pseudo_cot=cot),
                images=(r["image"],),
            )
            for r, cot in zip(batch, cots, strict=True)
        ]
    )
    return cots, [result.text.strip() for result in second]


def direct(
    captioner: Engine, reasoner: Engine, rows: list[dict[str, Any]], chunk_size: int
) -> tuple[float, list[str]]:
    """Seconds for the three calls per item in a plain loop, and the final contents."""
    template = template_for("reasoning", None)
    started = time.perf_counter()
    contents: list[str] = []
    for batch in chunks(rows, chunk_size):
        _cots, descriptions = caption_calls(captioner, batch)
        results = reasoner.generate(
            [
                GenerationRequest(
                    prompt=template.render(
                        description=d, question=r["question"], answer=r["answer"]
                    )
                )
                for r, d in zip(batch, descriptions, strict=True)
            ]
        )
        contents += [result.text for result in results]
    return time.perf_counter() - started, contents


def job(
    rows: list[dict[str, Any]],
    captioner: EngineSpec,
    reasoner: EngineSpec,
    chunk_size: int,
    home: Path,
) -> tuple[float, dict[str, Any], list[str]]:
    """Seconds for a coldstart job over the same items (registration not timed), its
    funnel, and the final answer it recorded for each item, in item order."""
    emb = embedded(BaseVR1Settings(home=home))
    folder = home / "source"
    lines = []
    for k, row in enumerate(rows):
        image = folder / "images" / f"{k:05d}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(row["image"], image)
        lines.append(json.dumps({**row, "image": str(image.relative_to(folder))}))
    data = folder / "source.jsonl"
    data.write_text("\n".join(lines) + "\n")
    with emb.db.session() as session:
        request = DatasetCreate(name="bench", path=str(data))
        dataset, _ = register_dataset(
            session, team=emb.team(), request=request, roots=[folder], store=emb.store
        )
    spec = ColdstartSpec(
        dataset_id=str(dataset.id), captioner=captioner, reasoner=reasoner, chunk_size=chunk_size
    )
    started = time.perf_counter()
    finished = emb.run(spec)
    elapsed = time.perf_counter() - started
    if finished.status != "succeeded":
        raise SystemExit(f"the job ended {finished.status}: {finished.error}")
    with emb.db.session() as session:
        answers = session.scalars(
            select(GenerationRecord.final_answer)
            .join(Item, Item.id == GenerationRecord.item_id)
            .where(GenerationRecord.job_id == finished.id)
            .order_by(Item.idx)
        )
        final_answers = [a or "" for a in answers]
    emb.db.dispose()
    return elapsed, finished.output["funnel"], final_answers


def openai_throughput(
    model: Path, rows: list[dict[str, Any]], max_new_tokens: int, logs: Path
) -> dict[str, float]:
    """Captioner items/s (two calls per item) through the ``openai`` engine, by cap."""
    figures: dict[str, float] = {}
    from tests.coldstart_support import transformers_serve

    with transformers_serve(model, logs, timeout_s=180) as base_url:
        for cap in IN_FLIGHT:
            spec = EngineSpec(
                engine="openai",
                model=str(model),
                base_url=base_url,
                max_in_flight=cap,
                timeout_s=300,
                generation={"max_new_tokens": max_new_tokens, "temperature": 0},
            )
            engine = make_engine(spec)
            try:
                caption_calls(engine, rows[:2])  # warm the server and the connection
                started = time.perf_counter()
                cots, _ = caption_calls(engine, rows)
                elapsed = time.perf_counter() - started
            finally:
                engine.close()
            if not all(cots):
                raise SystemExit("the served describer returned empty Pseudo-CoTs")
            figures[str(cap)] = round(len(rows) / elapsed, 3)
            print(f"  openai, {cap:>2} in flight: {figures[str(cap)]:.2f} items/s", flush=True)
    return figures


class EngineClock:
    """Seconds spent inside the ``transformers`` engine's ``generate``, whoever calls it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        original = TransformersEngine.generate

        def timed(engine: TransformersEngine, requests: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(engine, requests)
            finally:
                self.seconds += time.perf_counter() - started

        TransformersEngine.generate = timed  # type: ignore[method-assign,assignment]

    def lap(self) -> float:
        """Seconds since the previous lap."""
        seconds, self.seconds = self.seconds, 0.0
        return seconds


def measure(args: argparse.Namespace, teachers: dict[str, Path], tmp: Path) -> dict[str, Any]:
    """Alternate the two paths ``args.repeats`` times; the figures, medians over repeats."""
    rows = toy_rows(teachers["toy"], args.items)
    cap_spec = engine_spec(teachers["describer"], args.batch_size, args.max_new_tokens)
    rsn_spec = engine_spec(teachers["reasoner"], args.batch_size, args.max_new_tokens)
    captioner, reasoner = make_engine(cap_spec), make_engine(rsn_spec)
    # Warm-up, as in a long-running worker: models loaded, verifier pool started, the
    # job path's one-time imports done.
    direct(captioner, reasoner, rows[: args.chunk_size], args.chunk_size)
    score("hfrrf", [ScoreItem("<think>x</think><answer>1</answer>", "1")], scorer=default_scorer())
    job(rows[:4], cap_spec, rsn_spec, args.chunk_size, tmp / "warm-up")  # a home of its own
    clock = EngineClock()
    runs: dict[str, list[float]] = {"direct": [], "direct_engine": [], "job": [], "job_engine": []}
    funnel: dict[str, Any] = {}
    same = 0
    for repeat in range(args.repeats):
        contents: list[str] = []
        answers: list[str] = []
        # The paths take turns going first: neither always runs on a warmer machine.
        for path in ("direct", "job") if repeat % 2 == 0 else ("job", "direct"):
            clock.lap()
            if path == "direct":
                seconds, contents = direct(captioner, reasoner, rows, args.chunk_size)
            else:
                home = tmp / f"job-{repeat}"  # a fresh database: no cache from any earlier run
                seconds, funnel, answers = job(rows, cap_spec, rsn_spec, args.chunk_size, home)
            runs[path].append(seconds)
            runs[f"{path}_engine"].append(clock.lap())
        same = sum(extract_final_answer(c) == a for c, a in zip(contents, answers, strict=True))
        print(
            f"  repeat {repeat + 1}: direct {runs['direct'][-1]:.2f} s, job {runs['job'][-1]:.2f} s"
            f" (engine {runs['job_engine'][-1]:.2f} s), same answers on {same}/{args.items}"
        )
    direct_rate = args.items / statistics.median(runs["direct"])
    job_rate = args.items / statistics.median(runs["job"])
    outside = [j - e for j, e in zip(runs["job"], runs["job_engine"], strict=True)]
    return {
        "direct_seconds": [round(s, 3) for s in runs["direct"]],
        "job_seconds": [round(s, 3) for s in runs["job"]],
        "direct_engine_seconds": [round(s, 3) for s in runs["direct_engine"]],
        "job_engine_seconds": [round(s, 3) for s in runs["job_engine"]],
        "job_outside_engine_ms_per_item": round(1000 * statistics.median(outside) / args.items, 2),
        # The same overhead, robust to a noisy machine: both parts come from the same run.
        "job_outside_engine_fraction": round(
            statistics.median(o / e for o, e in zip(outside, runs["job_engine"], strict=True)), 4
        ),
        "direct_items_per_s": round(direct_rate, 3),
        "job_items_per_s": round(job_rate, 3),
        "overhead_ratio": round(direct_rate / job_rate, 4),
        "job_kept": funnel.get("kept"),
        "job_cached_calls": {step: t["cached_calls"] for step, t in funnel["tokens"].items()},
        "same_final_answer": same,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=96)
    parser.add_argument("--chunk-size", type=int, default=16, help="the job spec's default")
    parser.add_argument("--batch-size", type=int, default=8, help="the engine spec's default")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="alternating runs of each path")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--openai-items", type=int, default=16)
    parser.add_argument("--skip-openai", action="store_true")
    parser.add_argument("--cache", type=Path, default=REPO / ".vr1" / "test-cache")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import torch

    from tests.helpers import stand_in_teachers

    torch.set_num_threads(args.threads)
    teachers = stand_in_teachers(args.cache)
    print(
        f"{args.items} items, chunks of {args.chunk_size}, batches of {args.batch_size}, "
        f"{args.threads} torch thread(s)"
    )
    with tempfile.TemporaryDirectory(prefix="vr1-bench-") as tmp:
        figures = measure(args, teachers, Path(tmp))
        openai: dict[str, float] = {}
        if not args.skip_openai:
            rows = toy_rows(teachers["toy"], args.openai_items)
            openai = openai_throughput(teachers["describer"], rows, args.max_new_tokens, Path(tmp))
    report = {
        **{k: getattr(args, k) for k in ("items", "chunk_size", "batch_size", "max_new_tokens")},
        "repeats": args.repeats,
        "torch_threads": args.threads,
        **figures,
        "openai_items_per_s_by_in_flight": openai,
        "openai_server": "transformers serve (stand-in describer, CPU); captioner calls only",
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.python_version()}",
    }
    print()
    print(f"{'path':<10}{'items/s':>10}")
    print(f"{'direct':<10}{figures['direct_items_per_s']:>10.2f}")
    print(f"{'job':<10}{figures['job_items_per_s']:>10.2f}")
    print(f"overhead_ratio (direct / job): {figures['overhead_ratio']:.3f}")
    print(
        f"job time outside the engine: {figures['job_outside_engine_ms_per_item']} ms/item, "
        f"{100 * figures['job_outside_engine_fraction']:.1f}% of its engine time"
    )
    for cap, rate in openai.items():
        print(f"openai engine, {cap:>2} in flight: {rate:.2f} items/s")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
