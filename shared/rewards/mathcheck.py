"""Math-Verify, called the right way round (gold first), with its own timeouts off.

Math-Verify's timeouts use ``signal.alarm``, which fails outside the main thread; the pool
(``shared.rewards.pool``) enforces a hard limit instead by killing the worker process.
``judge_math`` is what a worker runs; ``judge_math_guarded`` is the in-process variant.
"""

from __future__ import annotations

import cmath
import logging
import re
import threading
from functools import lru_cache
from typing import Any

import sympy
from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

from shared.rewards.rules import (
    ANSWER_UNPARSEABLE,
    EXTRACTED_CHARS,
    GOLD_UNPARSEABLE,
    OK,
    TIMEOUT,
    VERIFIER_ERROR,
    WRONG,
    MathJob,
    Verdict,
)

log = logging.getLogger(__name__)
# The "timeout is disabled" warnings are expected: the caller enforces the limit.
logging.getLogger("math_verify.parser").setLevel(logging.ERROR)
logging.getLogger("math_verify.grader").setLevel(logging.ERROR)

_CONFIG = (LatexExtractionConfig(), ExprExtractionConfig())
_HAS_DELIMITER = re.compile(r"\$|\\\(|\\\[|\\boxed")
_HEAVY = re.compile(r"\^\s*\{[^{}]*\^|!|\\(?:int|sum|prod|lim)\b")
_IN_PROCESS_MAX_CHARS = 200
WORKER_READY = "ready"  # the line a worker prints once it has warmed up


def wrap_latex(s: str) -> str:
    """Wrap bare LaTeX in `$…$` so Math-Verify's LaTeX extraction sees it."""
    return s if _HAS_DELIMITER.search(s) else f"${s}$"


def _parse(s: str, seconds: int | None) -> list[Any]:
    """Math-Verify's parse with our config; timeouts only when a caller asks for them."""
    return list(parse(wrap_latex(s), extraction_config=_CONFIG, parsing_timeout=seconds))


def _parsed(items: list[Any]) -> bool:
    """True when at least one extraction is a sympy object, not only a raw string."""
    return any(not isinstance(item, str) for item in items)


@lru_cache(maxsize=4096)
def _parse_gold(gold: str) -> tuple[Any, ...]:
    """Gold answers repeat across a GRPO group: parse each once per worker."""
    return tuple(_parse(gold, None))


def judge_math(job: MathJob) -> Verdict:
    """Math-Verify verdict for one job, without any timeout (run it where it can be killed)."""
    gold = list(_parse_gold(job.gold))
    return _compare(job, gold, _parse(job.pred, None), None)


def _compare(job: MathJob, gold: list[Any], pred: list[Any], seconds: int | None) -> Verdict:
    """Gold first: Math-Verify's verify is asymmetric."""
    extracted = job.pred[:EXTRACTED_CHARS]
    if not _parsed(gold):
        return Verdict(None, GOLD_UNPARSEABLE, extracted)
    if not pred:
        return Verdict(False, ANSWER_UNPARSEABLE, extracted)
    if clearly_different(gold, pred):
        return Verdict(False, WRONG, extracted)
    ok = bool(verify(gold, pred, timeout_seconds=seconds))
    return Verdict(ok, OK if ok else WRONG, extracted)


# Fixed points where both sides are evaluated (irrational, away from 0, 1 and poles of
# the usual functions); a wrong answer nearly always shows at the first.
_POINTS = ((0.7345, 1.2391, 1.9183), (1.4142, 0.3861, 2.7077))
_CLEARLY = 1e-3  # relative difference: far beyond any rounding Math-Verify forgives


def clearly_different(gold: list[Any], pred: list[Any]) -> bool:
    """Whether every parsed gold expression differs from every parsed prediction by far
    at some point (a wrong answer, told in microseconds instead of a failed simplify).

    Only plain expressions are compared this way — no relations, sets, intervals or
    matrices, at most three variables — and a matching raw string always defers to
    Math-Verify, so this can only shorten a comparison whose answer is "wrong"."""
    if any(isinstance(g, str) and g in pred for g in gold):
        return False
    golds = [g for g in gold if not isinstance(g, str)]
    preds = [p for p in pred if not isinstance(p, str)]
    if not golds or not preds:
        return False
    return all(_differ(g, p) for g in golds for p in preds)


_UNTAMED = (sympy.factorial, sympy.gamma, sympy.Integral, sympy.Sum, sympy.Product, sympy.Limit)


def _tame(e: sympy.Expr) -> bool:
    """Small enough to evaluate at once: no towers, huge powers, factorials or integrals."""
    if e.count_ops() > 60 or e.has(*_UNTAMED):
        return False
    for power in e.atoms(sympy.Pow):
        exponent = power.exp
        if exponent.has(sympy.Pow) or (exponent.is_number and abs(complex(exponent)) > 64):
            return False
    return True


def _differ(a: Any, b: Any) -> bool:
    if not (isinstance(a, sympy.Expr) and isinstance(b, sympy.Expr)):
        return False
    if not (_tame(a) and _tame(b)):
        return False
    symbols = sorted(a.free_symbols | b.free_symbols, key=str)
    if len(symbols) > len(_POINTS[0]):
        return False
    for values in _POINTS:
        point = dict(zip(symbols, values, strict=False))
        try:
            x, y = complex(a.evalf(15, subs=point)), complex(b.evalf(15, subs=point))
        except (TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
            return False
        if not (cmath.isfinite(x) and cmath.isfinite(y)):
            return False
        if abs(x - y) > _CLEARLY * max(1.0, abs(x), abs(y)):
            return True
    return False


def judge_math_guarded(job: MathJob, *, seconds: int = 5) -> Verdict:
    """In-process variant: signal timeouts on the main thread, a cheap screen elsewhere."""
    try:
        if threading.current_thread() is threading.main_thread():
            gold = _parse(job.gold, seconds)
            return _compare(job, gold, _parse(job.pred, seconds), seconds)
        if _looks_heavy(job.gold) or _looks_heavy(job.pred):
            return Verdict(False, TIMEOUT, job.pred[:EXTRACTED_CHARS])
        return judge_math(job)
    except Exception:  # a verdict for this item, but never an unseen one
        log.exception("verifier error on gold %r, answer %r", job.gold[:200], job.pred[:200])
        return Verdict(False, VERIFIER_ERROR, job.pred[:EXTRACTED_CHARS])


def _looks_heavy(s: str) -> bool:
    """Inputs that can make sympy run for minutes: towers, factorials, integrals, long text."""
    return len(s) > _IN_PROCESS_MAX_CHARS or bool(_HEAVY.search(s)) or s.count("{") > 40


def warm_up() -> None:
    """Load sympy's parser and comparison paths once so the first real job is fast."""
    judge_math(MathJob("\\frac{1}{2}", "0.5"))
    judge_math(MathJob("2\\sqrt{3}", "\\sqrt{12}"))
