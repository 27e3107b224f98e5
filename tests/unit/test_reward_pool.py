"""The verifier pool: pathological inputs cost their time limit, nothing else; it recovers."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest

from shared.rewards import MathJob, ScoreItem, Scorer, VerifierPool, score

LIMIT_S = 1.0
TOWER = MathJob("1", "10^{10^{10^{10}}}")
FACTORIAL = MathJob("2", "(10^{10})!")


@pytest.fixture(scope="module")
def pool() -> Iterator[VerifierPool]:
    with VerifierPool(2, timeout_s=LIMIT_S) as p:
        yield p


def normal_jobs(tag: int, n: int = 8) -> list[MathJob]:
    """Distinct symbolic jobs (so the cache cannot answer them) that verify as equal."""
    return [MathJob(f"{k + tag}\\sqrt{{2}}", f"\\sqrt{{{2 * (k + tag) ** 2}}}") for k in range(n)]


def test_pathological_items_time_out_while_others_score(pool: VerifierPool) -> None:
    start = time.monotonic()
    verdicts = pool.check_many([TOWER, *normal_jobs(100), FACTORIAL])
    elapsed = time.monotonic() - start
    assert (verdicts[0].ok, verdicts[0].reason) == (False, "timeout")
    assert (verdicts[-1].ok, verdicts[-1].reason) == (False, "timeout")
    assert all(v.ok for v in verdicts[1:-1]), verdicts
    # Each stuck item costs its limit plus a worker restart, never a hang; the slack
    # covers a loaded machine (the unbounded case would not return at all).
    assert elapsed < 2 * LIMIT_S + 6.0


def test_pool_recovers_after_timeouts(pool: VerifierPool) -> None:
    before = pool.restarts()
    assert pool.check_many([MathJob("3", "9^{9^{9^{9}}}")])[0].reason == "timeout"
    assert pool.restarts() == before + 1
    assert all(v.ok for v in pool.check_many(normal_jobs(200)))
    assert pool.alive_workers() == 2


def test_normal_batch_not_blocked_by_a_stuck_item(pool: VerifierPool) -> None:
    stuck = threading.Thread(target=pool.check_many, args=([MathJob("7", "7^{7^{7^{7^{7}}}}")],))
    stuck.start()
    time.sleep(0.1)
    start = time.monotonic()
    verdicts = pool.check_many(normal_jobs(300))
    elapsed = time.monotonic() - start
    stuck.join()
    assert all(v.ok for v in verdicts)
    assert elapsed < LIMIT_S / 2


def test_cache_answers_repeats_without_a_worker(pool: VerifierPool) -> None:
    job = MathJob("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}")
    first = pool.check_many([job])[0]
    hits = pool.cache.hits
    assert pool.check_many([job, job]) == [first, first]
    assert pool.cache.hits == hits + 2


def test_repeated_pathological_input_is_cached(pool: VerifierPool) -> None:
    job = MathJob("4", "4^{4^{4^{4^{4}}}}")
    assert pool.check_many([job])[0].reason == "timeout"
    start = time.monotonic()
    assert pool.check_many([job])[0].reason == "timeout"
    assert time.monotonic() - start < 0.1


def test_dead_worker_is_replaced(pool: VerifierPool) -> None:
    proc = pool._slots[0]._proc
    assert proc is not None
    proc.kill()
    proc.wait()
    verdicts = pool.check_many(normal_jobs(400, n=6))
    assert all(v.ok for v in verdicts)
    assert pool.alive_workers() == 2


def test_huge_and_deeply_nested_completions(pool: VerifierPool) -> None:
    scorer = Scorer(pool)
    megabyte = "<think>" + "step " * 200_000 + "</think><answer>" + "1+" * 1000 + "1</answer>"
    nested = "<think>x</think><answer>" + "{" * 900 + "1" + "}" * 900 + "</answer>"
    start = time.monotonic()
    results = score("hfrrf", [ScoreItem(megabyte, "1001"), ScoreItem(nested, "1")], scorer=scorer)
    assert time.monotonic() - start < LIMIT_S + 2.0
    assert [(r.reward, r.reason) for r in results] == [(0.0, "answer_too_long"), (0.0, "timeout")]


def test_closed_pool_refuses_work() -> None:
    p = VerifierPool(1, timeout_s=LIMIT_S)
    p.close()
    with pytest.raises(RuntimeError):
        p.submit(MathJob("1", "\\sqrt{1}"))
