"""The verifier pool: pathological inputs cost their time limit, nothing else; it recovers.

Checked with counters (restarts, cache hits, failures by reason, jobs still in flight),
not with elapsed time: a pool that hung would not return at all (pytest-timeout).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future

import pytest

from shared.rewards import (
    InlineVerifier,
    MathJob,
    ScoreItem,
    Scorer,
    VerifierPool,
    mathcheck,
    score,
    worker,
)

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
    restarts, timeouts = pool.restarts(), pool.failures["timeout"]
    verdicts = pool.check_many([TOWER, *normal_jobs(100), FACTORIAL])
    assert (verdicts[0].ok, verdicts[0].reason) == (False, "timeout")
    assert (verdicts[-1].ok, verdicts[-1].reason) == (False, "timeout")
    assert all(v.ok for v in verdicts[1:-1]), verdicts
    # Each stuck item cost one worker (killed and replaced), and is counted.
    assert pool.restarts() == restarts + 2
    assert pool.failures["timeout"] == timeouts + 2


def test_pool_recovers_after_timeouts(pool: VerifierPool) -> None:
    before = pool.restarts()
    assert pool.check_many([MathJob("3", "9^{9^{9^{9}}}")])[0].reason == "timeout"
    assert pool.restarts() == before + 1
    assert all(v.ok for v in pool.check_many(normal_jobs(200)))
    assert pool.alive_workers() == 2


def test_normal_batch_not_blocked_by_a_stuck_item() -> None:
    """With a long limit, a whole normal batch is judged while the stuck item still runs."""
    with VerifierPool(2, timeout_s=60.0) as slow_pool:
        stuck: Future[object] = slow_pool.submit(MathJob("7", "7^{7^{7^{7^{7}}}}"))
        while not stuck.running():
            time.sleep(0.01)
        verdicts = slow_pool.check_many(normal_jobs(300))
        assert not stuck.done()  # the batch did not wait for it
        assert all(v.ok for v in verdicts)
        for slot in slow_pool._slots:  # end the stuck check now instead of in a minute
            if slot._proc is not None:
                slot._proc.kill()
        stuck.result(timeout=30)


def test_cache_answers_repeats_without_a_worker(pool: VerifierPool) -> None:
    job = MathJob("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}")
    first = pool.check_many([job])[0]
    hits = pool.cache.hits
    assert pool.check_many([job, job]) == [first, first]
    assert pool.cache.hits == hits + 2


def test_repeated_pathological_input_is_cached(pool: VerifierPool) -> None:
    job = MathJob("4", "4^{4^{4^{4^{4}}}}")
    assert pool.check_many([job])[0].reason == "timeout"
    restarts, hits = pool.restarts(), pool.cache.hits
    assert pool.check_many([job])[0].reason == "timeout"
    assert (pool.restarts(), pool.cache.hits) == (restarts, hits + 1)  # no worker spent again


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
    restarts = pool.restarts()
    results = score("hfrrf", [ScoreItem(megabyte, "1001"), ScoreItem(nested, "1")], scorer=scorer)
    assert [(r.reward, r.reason) for r in results] == [(0.0, "answer_too_long"), (0.0, "timeout")]
    assert pool.restarts() == restarts + 1  # the long answer never reached a worker


def test_closed_pool_refuses_work() -> None:
    p = VerifierPool(1, timeout_s=LIMIT_S)
    p.close()
    with pytest.raises(RuntimeError):
        p.submit(MathJob("1", "\\sqrt{1}"))


def test_a_worker_that_dies_mid_check_is_logged_and_counted(
    pool: VerifierPool, caplog: pytest.LogCaptureFixture
) -> None:
    before = dict(pool.failures)
    future = pool.submit(MathJob("5", "5^{5^{5^{5^{5}}}}"))
    while not future.running():
        time.sleep(0.01)
    time.sleep(0.1)  # let the job reach a worker
    with caplog.at_level(logging.WARNING, logger="shared.rewards.pool"):
        for slot in pool._slots:
            if slot._proc is not None:
                slot._proc.kill()
        verdict = future.result(timeout=30)
    # Killed under it (or, had the kill come first, timed out in a fresh worker): either way
    # a counted reason and a log line naming the item, never a silent 0.0.
    assert verdict.reason in ("verifier_error", "timeout")
    assert pool.failures[verdict.reason] == before.get(verdict.reason, 0) + 1
    assert any("5^{5^{5^{5^{5}}}}" in r.getMessage() for r in caplog.records)


def test_a_verifier_bug_is_a_logged_verdict_not_a_silent_zero(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(job: MathJob) -> None:
        raise ZeroDivisionError("a bug in the rules")

    monkeypatch.setattr(worker, "judge_math", broken)
    with caplog.at_level(logging.ERROR, logger="vr1.verifier"):
        verdict = worker.answer('{"gold": "1/2", "pred": "0.5"}')
    assert (verdict.ok, verdict.reason) == (False, "verifier_error")
    [record] = caplog.records
    assert "'1/2'" in record.getMessage()
    assert "'0.5'" in record.getMessage()
    assert record.exc_info is not None
    assert record.exc_info[0] is ZeroDivisionError

    caplog.clear()
    monkeypatch.setattr(mathcheck, "judge_math", broken)
    result = threading_result(lambda: InlineVerifier().check_many([MathJob("x^2", "x*x")]))
    assert result[0].reason == "verifier_error"
    assert any("'x^2'" in r.getMessage() for r in caplog.records)


def threading_result(call: object) -> list[object]:
    """Run ``call`` off the main thread (the in-process verifier's thread path)."""
    out: list[object] = []
    thread = threading.Thread(target=lambda: out.extend(call()))  # type: ignore[operator]
    thread.start()
    thread.join(timeout=60)
    return out
