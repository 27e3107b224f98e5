"""The platform's training run (``services.trainer.run``) for the GPU check's eval job, with
its engine's start-up, generation time and generated tokens written to a JSON file.

An eval job generates in the run process the platform launches and stores only the text
of each completion; the check's eval phase launches this script in its place (same job,
same code: ``services.trainer.run.main``) so that the token counts are vLLM's own and the
engine's start-up is apart from its generation::

    VR1_GPU_CHECK_EVAL_OUT=PATH python bench/gpu_eval_run.py <job id>
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
OUT_ENV = "VR1_GPU_CHECK_EVAL_OUT"


class Counted:
    """The run's engine, its calls timed and their completion tokens added up."""

    def __init__(self, build: Any, spec: Any, out: Path) -> None:
        started = time.perf_counter()
        self.engine = build(spec)
        self.out = out
        self.figures = {"engine_start_s": time.perf_counter() - started, "generate_s": 0.0,
                        "generate_calls": 0, "requests": 0, "tokens": 0}  # fmt: skip
        self.save()

    def generate(self, requests: Any) -> Any:
        started = time.perf_counter()
        results = self.engine.generate(requests)
        self.figures["generate_s"] += time.perf_counter() - started
        self.figures["generate_calls"] += 1
        self.figures["requests"] += len(results)
        self.figures["tokens"] += sum(r.completion_tokens for r in results)
        self.save()  # on disk before the run exits, however it exits
        return results

    def close(self) -> None:
        self.engine.close()

    def save(self) -> None:
        self.out.write_text(json.dumps(self.figures))


def main() -> None:
    """Run the job as ``python -m services.trainer.run <job id>`` would, engine counted."""
    from services.trainer import run

    out = Path(os.environ[OUT_ENV])
    build = run.make_engine
    run.make_engine = lambda spec: Counted(build, spec, out)  # type: ignore[assignment]
    run.main(sys.argv[1:])


if __name__ == "__main__":
    main()
