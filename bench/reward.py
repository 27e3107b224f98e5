"""Reward throughput: our `hfrrf` batch scoring against a TRL-style Math-Verify baseline.

    python bench/reward.py [--items 5000] [--workers 2] [--json out.json]

The item set mimics GRPO: prompts of several kinds (integers, fractions, LaTeX, option
letters, words, malformed outputs), each answered by a group of 8 completions. The
baseline does what TRL's ``accuracy_reward`` does — ``parse(gold)``, ``parse(pred)``,
``verify`` — one item at a time in this process, on the same answer text we score.
Agreement compares answer verdicts where both sides give one.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from math_verify import parse, verify

from shared.rewards import (
    MathJob,
    ScoreItem,
    Scorer,
    ScoreResult,
    VerifierPool,
    judge_fast,
    score,
)
from shared.rewards.mathcheck import wrap_latex as wrap
from shared.rewards.text import clean_answer, extract_answer

GROUP = 8
BATCH = 512
Maker = Callable[[random.Random], tuple[str, list[str]]]


@dataclass(frozen=True)
class Case:
    kind: str
    item: ScoreItem


def dressed(answer: str, rng: random.Random) -> str:
    """A completion in the trained format, the answer in one of its usual dresses."""
    dress = rng.choice(["{}", "Final Answer: {}", "$\\boxed{{{}}}$", " {} "])
    return f"<think>Let me work it out step by step.</think><answer>{dress.format(answer)}</answer>"


def integers(rng: random.Random) -> tuple[str, list[str]]:
    n = rng.randint(-50, 5000)
    forms = [str(n), f"{n}.0", f"x = {n}", f"{n} cm", f"{n:,}", str(n + rng.randint(1, 9))]
    return str(n), [rng.choice(forms) for _ in range(GROUP)]


def fractions(rng: random.Random) -> tuple[str, list[str]]:
    a, b = rng.randint(1, 40), rng.randint(2, 16)
    forms = [f"\\frac{{{a}}}{{{b}}}", f"{a}/{b}", f"\\dfrac{{{2 * a}}}{{{2 * b}}}", f"{a + 1}/{b}"]
    if 100 % b == 0:
        forms.append(str(a / b))
    return f"\\frac{{{a}}}{{{b}}}", [rng.choice(forms) for _ in range(GROUP)]


def latex(rng: random.Random) -> tuple[str, list[str]]:
    k, m = rng.randint(2, 9), rng.choice([2, 3, 5, 6, 7])
    sqrt = [f"\\sqrt{{{k * k * m}}}", f"{k}\\sqrt{{{m}}}", f"{k + 1}\\sqrt{{{m}}}"]
    pi = [f"\\frac{{1}}{{{k}}}\\pi", f"\\pi/{k}", f"\\frac{{\\pi}}{{{k + 1}}}"]
    interval = [f"[{k},{k + m})", f"({k}, {k + m})", f"[{k}, {k + m + 1})"]
    choices = {
        "sqrt": (f"{k}\\sqrt{{{m}}}", sqrt),
        "pi": (f"\\frac{{\\pi}}{{{k}}}", pi),
        "poly": (f"x^2+{k}x", [f"x^2 + {k}x", f"{k}x+x^2", f"x(x+{k})", f"x^2+{k + 1}x"]),
        "interval": (f"[{k}, {k + m})", interval),
        "line": (f"y = {k}x + {m}", [f"y={k}x+{m}", f"y = {m} + {k}x", f"y = {m}x + {k}"]),
        "trig": ("\\sin^2 x", ["1 - \\cos^2 x", "\\sin^2 x", "\\cos^2 x", "\\sin x^2"]),
        "log": (str(k), [f"\\log_2 {2**k}", f"\\log_2 {2 ** (k + 1)}", str(k)]),
        "set": (f"\\{{1, {k}\\}}", [f"\\{{{k}, 1\\}}", f"\\{{1, {k + 1}\\}}", f"\\{{1,{k}\\}}"]),
    }
    gold, forms = choices[rng.choice(list(choices))]
    return gold, [rng.choice(forms) for _ in range(GROUP)]


def symbolic(rng: random.Random) -> tuple[str, list[str]]:
    """Answers only sympy decides here: complex numbers, `e`, relations, binomials."""
    k = rng.randint(2, 9)
    choices = {
        "complex": (f"{k}+3i", [f"3i+{k}", f"{k}-3i", f"{k} + 3i", f"{k}+3\\cdot i"]),
        "exp": (f"e^{{{k}}}", [f"e^{k}", f"{k}e", f"e^{{{k + 1}}}"]),
        "relation": (f"x > {k}", [f"{k} < x", f"x \\geq {k}", f"x>{k}"]),
        "binomial": (f"\\binom{{{k + 2}}}{{2}}", [str((k + 2) * (k + 1) // 2), str(k * k)]),
    }
    gold, forms = choices[rng.choice(list(choices))]
    return gold, [rng.choice(forms) for _ in range(GROUP)]


def letters(rng: random.Random) -> tuple[str, list[str]]:
    gold = rng.choice("ABCDE")
    forms = [gold, f"({gold})", f"{gold}.", f"({gold}) {rng.randint(1, 99)}", rng.choice("ABCDE")]
    return gold, [rng.choice(forms) for _ in range(GROUP)]


def words(rng: random.Random) -> tuple[str, list[str]]:
    colours = ["red", "green", "blue", "yellow", "circle", "square", "triangle"]
    gold = rng.choice(colours)
    forms = [gold, gold.capitalize(), gold.upper() + ".", rng.choice(colours)]
    return gold, [rng.choice(forms) for _ in range(GROUP)]


MAKERS: dict[str, tuple[float, Maker]] = {
    "integer": (0.28, integers),
    "fraction": (0.15, fractions),
    "latex": (0.15, latex),
    "symbolic": (0.03, symbolic),
    "letter": (0.15, letters),
    "word": (0.15, words),
    "malformed": (0.09, integers),
}


def malformed(answer: str, rng: random.Random) -> str:
    """A completion that breaks the format in one of the ways policies do."""
    shapes = [
        "The answer is {}",
        "<think>work</think><answer>{}",
        "<think>work</think><answer>{}</answer> Done.",
        "<THINK>work</THINK><answer>{}</answer>",
        "<think>..</think><answer>{}</answer></answer>",
    ]
    return rng.choice(shapes).format(answer)


def build_cases(n_items: int, seed: int = 0, symbolic_share: float = 0.03) -> list[Case]:
    """``n_items`` items in groups of 8 completions per gold answer."""
    rng = random.Random(seed)
    kinds = list(MAKERS)
    weights = [symbolic_share if k == "symbolic" else MAKERS[k][0] for k in kinds]
    cases: list[Case] = []
    while len(cases) < n_items:
        kind = rng.choices(kinds, weights)[0]
        gold, answers = MAKERS[kind][1](rng)
        dress = malformed if kind == "malformed" else dressed
        cases += [Case(kind, ScoreItem(dress(a, rng), gold)) for a in answers]
    return cases[:n_items]


def baseline_verdict(item: ScoreItem, *, wrap_latex: bool = False) -> bool | None:
    """TRL accuracy_reward's recipe on the answer text: parse gold, parse pred, verify."""
    gold_text, pred_text = item.answer, extract_answer(item.completion)
    if wrap_latex:
        gold_text, pred_text = wrap(gold_text), wrap(clean_answer(pred_text))
    gold = parse(gold_text)
    if not gold:
        return None
    return bool(verify(gold, parse(pred_text)))


def run_baseline(cases: list[Case]) -> tuple[float, list[bool | None]]:
    start = time.perf_counter()
    verdicts = [baseline_verdict(c.item) for c in cases]
    return time.perf_counter() - start, verdicts


def run_ours(cases: list[Case], workers: int) -> tuple[float, float, list[ScoreResult], int]:
    start = time.perf_counter()
    with VerifierPool(workers, timeout_s=5.0) as pool:
        started = time.perf_counter() - start
        scorer = Scorer(pool)
        items = [c.item for c in cases]
        t0 = time.perf_counter()
        results: list[ScoreResult] = []
        for i in range(0, len(items), BATCH):
            results += score("hfrrf", items[i : i + BATCH], scorer=scorer)
        elapsed = time.perf_counter() - t0
        return elapsed, started, results, pool.cache.hits


def agreement(
    cases: list[Case], ours: list[ScoreResult], base: list[bool | None]
) -> tuple[float, int, Counter[str], dict[str, list[str]]]:
    """Share of items where both sides give a verdict and agree; disagreements by kind."""
    both = [(c, o, b) for c, o, b in zip(cases, ours, base, strict=True)]
    judged = [(c, o, b) for c, o, b in both if o.answer_ok is not None and b is not None]
    differ = [(c, o, b) for c, o, b in judged if o.answer_ok != b]
    kinds: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for c, o, b in differ:
        key = f"{c.kind}: ours={o.answer_ok} baseline={b}"
        kinds[key] += 1
        if len(examples.setdefault(key, [])) < 3:
            examples[key].append(f"gold={c.item.answer!r} answer={o.extracted!r}")
    return 1 - len(differ) / max(1, len(judged)), len(judged), kinds, examples


def routed(cases: list[Case]) -> Counter[str]:
    """Items per kind that the fast rules hand to the Math-Verify pool."""
    jobs = (judge_fast(c.item.answer, extract_answer(c.item.completion)) for c in cases)
    return Counter(c.kind for c, j in zip(cases, jobs, strict=True) if isinstance(j, MathJob))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--symbolic-share",
        type=float,
        default=0.03,
        help="share of prompts whose answers need sympy (trig identities, logs, sets)",
    )
    args = parser.parse_args()

    cases = build_cases(args.items, args.seed, args.symbolic_share)
    parse("1"), verify(parse("1"), parse("1"))  # the baseline's one-off warm-up, not timed
    base_s, base = run_baseline(cases)
    ours_s, start_s, ours, hits = run_ours(cases, args.workers)
    agree, judged, kinds, examples = agreement(cases, ours, base)
    report = {
        "ours_items_per_s": len(cases) / ours_s,
        "baseline_items_per_s": len(cases) / base_s,
        "ratio": base_s / ours_s,
        "agreement": agree,
    }
    print(f"{'':34}{'items':>8}{'seconds':>10}{'items/s':>11}")
    print(f"{'baseline (Math-Verify per item)':34}{len(cases):>8}{base_s:>10.2f}"
          f"{report['baseline_items_per_s']:>11.0f}")  # fmt: skip
    print(f"{'ours (hfrrf, batches, pool)':34}{len(cases):>8}{ours_s:>10.2f}"
          f"{report['ours_items_per_s']:>11.0f}")  # fmt: skip
    print(
        f"ratio {report['ratio']:.1f}x  agreement {agree:.2%} on {judged} items with two verdicts"
    )
    print(f"(pool start-up {start_s:.2f}s not timed; {hits} verdict cache hits)")
    print(f"mix: {dict(Counter(c.kind for c in cases))}")
    print(f"sent to Math-Verify workers: {dict(routed(cases))}")
    for key, count in kinds.most_common():
        print(f"  disagree {count:5d}  {key}   e.g. {'; '.join(examples[key])}")
    wrapped = [baseline_verdict(c.item, wrap_latex=True) for c in cases]
    still, _, _, _ = agreement(cases, ours, wrapped)
    print(f"agreement {still:.2%} when the baseline's answers are first wrapped in $…$")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
