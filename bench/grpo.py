"""GRPO step time: a PTST stage run through the platform vs a bare TRL GRPOTrainer script.

Platform: a ``grpo`` job in embedded mode — its own training process, the reward from the
reward service over HTTP, every step's metrics and a heartbeat written to the database.
Baseline: ``bench/grpo_bare_trl.py``, a plain TRL script with the same tiny model, prompts,
reward rule (HFRRF, in-process) and settings.  Both run here, one after the other, in
separate processes with the same thread count.  Step time is the wall time between the
end of the first and the last step divided by the steps in between, so model loading and
process start are left out of both.

    python bench/grpo.py [--steps 20] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CAP, GROUP, PROMPTS = 32, 4, 4


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start_reward_service(env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    import httpx

    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "entrypoints.cli", "serve", "reward"],
        env={**env, "VR1_PORT": str(port), "VR1_WORKERS": "1"},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return process, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    process.kill()
    raise RuntimeError("the reward service did not start")


def prepare(work: Path, seed: int) -> tuple[Path, Path]:
    """Toy prompts (source JSONL) and a tiny student model."""
    from shared.fixtures.tiny import build_tiny_vlm
    from shared.fixtures.toy import generate_toy_dataset

    toy = generate_toy_dataset(
        work / "toy", seed=seed, n_train=64, n_test=0, tasks=["shape_colour"]
    )
    return toy.train_path, build_tiny_vlm(work / "student", seed=seed)


def platform_step_time(
    work: Path, prompts: Path, model: Path, steps: int, env: dict[str, str]
) -> float:
    """Seconds per step of a one-stage grpo job with the reward over HTTP."""
    from sqlalchemy import select

    from entrypoints.bootstrap import embedded
    from shared.contracts.api import DatasetCreate
    from shared.contracts.specs import GrpoSpec, StageSpec
    from shared.datasets import register_dataset
    from shared.db.models import Metric
    from shared.settings import BaseVR1Settings

    service, url = _start_reward_service(env)
    try:
        platform = embedded(BaseVR1Settings(home=work / "platform"))
        team = platform.team()
        with platform.db.session() as session:
            request = DatasetCreate(name="rl", kind="rl", path=str(prompts))
            dataset, _ = register_dataset(
                session, team=team, request=request, roots=[prompts.parent], store=platform.store
            )
        spec = GrpoSpec(
            model=str(model),
            dataset_id=str(dataset.id),
            stages=[
                StageSpec(
                    max_completion_tokens=CAP,
                    group_size=GROUP,
                    steps=steps,
                    prompts_per_step=PROMPTS,
                )
            ],
            reward_url=url,
            learning_rate=1e-4,
            beta=0.0,
        )
        job = platform.run(spec, name="bench grpo")
        if job.status != "succeeded":
            raise RuntimeError(f"grpo job {job.status}: {job.error}")
        with platform.db.session() as session:
            rows = session.scalars(
                select(Metric)
                .where(Metric.job_id == job.id, Metric.name == "loss")
                .order_by(Metric.step)
            )
            stamps = [row.created_at for row in rows]
    finally:
        service.terminate()
        service.wait(timeout=30)
    return (stamps[-1] - stamps[0]).total_seconds() / (len(stamps) - 1)


def bare_step_time(
    work: Path, prompts: Path, model: Path, steps: int, env: dict[str, str]
) -> float:
    """Seconds per step of the bare TRL script."""
    out = work / "bare.json"
    subprocess.run(
        [
            sys.executable,
            str(ROOT / "bench" / "grpo_bare_trl.py"),
            "--model",
            str(model),
            "--prompts",
            str(prompts),
            "--steps",
            str(steps),
            "--cap",
            str(CAP),
            "--group",
            str(GROUP),
            "--prompts-per-step",
            str(PROMPTS),
            "--out",
            str(out),
        ],
        env=env,
        check=True,
    )
    return float(json.loads(out.read_text())["step_time_s"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(args.threads),
        "VR1_TORCH_THREADS": str(args.threads),
        "PYTHONPATH": str(ROOT),
    }
    with tempfile.TemporaryDirectory(prefix="vr1-bench-grpo-") as tmp:
        work = Path(tmp)
        prompts, model = prepare(work, args.seed)
        bare = bare_step_time(work, prompts, model, args.steps, env)
        ours = platform_step_time(work, prompts, model, args.steps, env)
    ratio = ours / bare
    print(
        f"GRPO stage, cap {CAP} x group {GROUP}, {PROMPTS} prompts/step, {args.steps} steps, "
        f"{args.threads} thread(s)"
    )
    print(f"{'path':<44}{'s/step':>10}")
    print(f"{'bare TRL GRPOTrainer script (baseline)':<44}{bare:>10.3f}")
    print(f"{'platform job (HTTP reward, DB metrics)':<44}{ours:>10.3f}")
    print(f"{'ratio platform / baseline':<44}{ratio:>10.3f}")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "platform_step_s": ours,
                    "bare_trl_step_s": bare,
                    "ratio": ratio,
                    "steps": args.steps,
                    "cap": CAP,
                    "group_size": GROUP,
                    "prompts_per_step": PROMPTS,
                },
                indent=2,
            )
        )


if __name__ == "__main__":
    main()
