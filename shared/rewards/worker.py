"""A verifier worker process: JSON jobs on stdin, JSON verdicts on stdout, one per line.

Started by ``VerifierPool`` as ``python -m shared.rewards.worker``; a fresh interpreter
(not a fork) so nothing of the parent — threads, torch, its ``__main__`` — comes along.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from typing import TextIO

from shared.rewards.mathcheck import WORKER_READY, judge_math, warm_up
from shared.rewards.rules import EXTRACTED_CHARS, VERIFIER_ERROR, MathJob, Verdict

log = logging.getLogger("vr1.verifier")


def answer(line: str) -> Verdict:
    """The verdict for one JSON job line; a bad input is a verdict, never a crash."""
    try:
        job = MathJob(**json.loads(line))
    except (ValueError, TypeError):
        log.exception("unreadable verifier job %r", line[:200])
        return Verdict(False, VERIFIER_ERROR)
    try:
        return judge_math(job)
    except Exception:  # a verdict for this item, but never an unseen one (stderr → service log)
        log.exception("verifier error on gold %r, answer %r", job.gold[:200], job.pred[:200])
        return Verdict(False, VERIFIER_ERROR, job.pred[:EXTRACTED_CHARS])


def serve(stdin: TextIO, stdout: TextIO) -> None:
    """Warm up, say ready, then answer job lines until stdin closes."""
    sys.setrecursionlimit(10_000)
    logging.basicConfig(stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warm_up()
    stdout.write(WORKER_READY + "\n")
    stdout.flush()
    for line in stdin:
        stdout.write(json.dumps(asdict(answer(line))) + "\n")
        stdout.flush()


if __name__ == "__main__":
    serve(sys.stdin, sys.stdout)
