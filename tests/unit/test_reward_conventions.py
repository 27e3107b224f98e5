"""Answer conventions that visual-math benchmarks and MATH-style golds use every day, each
written from its rule with several phrasings, the misses beside the hits; and input that
must never fail a batch or make a wrong answer right."""

from __future__ import annotations

import pytest

from shared.rewards import InlineVerifier, MathJob, ScoreItem, Scorer, judge_fast, score
from shared.rewards.mathcheck import judge_math_guarded

T, F, N = True, False, None


def verdict(gold: str, pred: str) -> tuple[bool | None, str]:
    result = judge_fast(gold, pred)
    if isinstance(result, MathJob):
        result = judge_math_guarded(result, seconds=5)
    return result.ok, result.reason


OPTION_LETTERS = [
    # the prediction dresses the letter in LaTeX
    ("C", "\\text{C}", T, "ok"),
    ("C", "\\textbf{(C)}", T, "ok"),
    ("C", "\\boxed{\\text{(C)}}", T, "ok"),
    ("C", "$\\mathrm{C}$", T, "ok"),
    ("C", "\\mathbf{C}", T, "ok"),
    ("C", "$\\boxed{\\textbf{C}}$", T, "ok"),
    ("C", "\\text{(B)}", F, "other_option_letter"),
    ("C", "\\textbf{B}", F, "other_option_letter"),
    ("(C)", "\\text{C}", T, "ok"),
    ("C. 12 cm", "\\textbf{(C)}", T, "ok"),
    ("(C)", "\\text{(C) and (D)}", F, "several_option_letters"),
    # the gold carries the option text after the letter
    ("C 12 cm", "C", T, "ok"),
    ("(C) 12 cm", "C", T, "ok"),
    ("C. $\\frac{1}{2}$", "C", T, "ok"),
    ("C: 12", "(C)", T, "ok"),
    ("C $\\sqrt{3}$", "\\text{C}", T, "ok"),
    ("C 12 cm", "B", F, "other_option_letter"),
    ("B 60°", "C", F, "other_option_letter"),
    # a word answer that starts with a capital letter stays a word
    ("A cat", "A cat", T, "ok"),
    ("A cat", "A", F, "wrong"),
]

PREFIXES = [
    ("7", "Final Answer: 7", T, "ok"),
    ("7", "Final answer is 7", T, "ok"),
    ("7", "The final answer is $7$.", T, "ok"),
    ("7", "The answer is 7", T, "ok"),
    ("7", "The correct answer is: 7", T, "ok"),
    ("7", "Answer: 7", T, "ok"),
    ("7", "Answer is 7", T, "ok"),
    ("7", "answer is \\boxed{7}", T, "ok"),
    ("7", "Answer is 8", F, "wrong"),
    ("red", "Final answer is red", T, "ok"),
    ("red", "Answer: Red.", T, "ok"),
    ("C", "Answer is (C)", T, "ok"),
    ("C", "Final answer is \\text{C}", T, "ok"),
    ("\\frac{1}{2}", "The answer is \\frac{2}{4}", T, "ok"),
]

THOUSANDS = [
    ("32349", "32,\\!349", T, "ok"),
    ("32349", "32{,}349", T, "ok"),
    ("32349", "32,349", T, "ok"),
    ("32349", "32\\,349", T, "ok"),
    ("32,349", "32349", T, "ok"),
    ("32{,}349", "32349", T, "ok"),
    ("32,\\!349", "32,349", T, "ok"),
    ("1234567", "1,234,567", T, "ok"),
    ("1234567", "1{,}234{,}567", T, "ok"),
    ("32349", "\\boxed{32,\\!349}", T, "ok"),
    ("32349", "32,\\!350", F, "wrong"),
    ("\\$32,\\!349", "32349", T, "ok"),
    # a list or a hedge stays one
    ("3", "3, 4", F, "hedged"),
    ("3", "3 or 4", F, "hedged"),
]

DECIMALS_AND_FRACTIONS = [
    ("\\frac{1}{12}", "0.0833333", T, "ok"),
    ("0.0833333", "\\frac{1}{12}", T, "ok"),
    ("1/3", "0.3333333333333333", T, "ok"),
    ("0.3333333333333333", "1/3", T, "ok"),
    ("\\frac{2}{3}", "0.666667", T, "ok"),
    ("0.666667", "2/3", T, "ok"),
    ("-\\frac{1}{7}", "-0.142857", T, "ok"),
    # too coarse to be the fraction
    ("1/3", "0.33", F, "wrong"),
    ("0.33", "\\frac{1}{3}", F, "wrong"),
    ("\\frac{1}{12}", "0.0833", F, "wrong"),
    # a fraction with a finite decimal form must be given exactly
    ("1/8", "0.125", T, "ok"),
    ("1/8", "0.1250", T, "ok"),
    ("1/8", "0.12500001", F, "wrong"),
    ("0.125", "\\frac{1}{8}", T, "ok"),
    ("3", "3.000001", F, "wrong"),
    ("2.5", "2.500001", F, "wrong"),
]

PERCENTAGES = [  # a percentage and its fraction agree, in both directions
    ("0.1", "10%", T, "ok"),
    ("10%", "0.1", T, "ok"),
    ("0.1", "10\\%", T, "ok"),
    ("10\\%", "0.1", T, "ok"),
    ("10%", "10", T, "ok"),
    ("10", "10%", T, "ok"),
    ("0.25", "25\\%", T, "ok"),
    ("25\\%", "\\frac{1}{4}", T, "ok"),
    ("0.1", "1%", F, "wrong"),
    ("10%", "0.01", F, "wrong"),
]

CONTROL = [  # NUL and other control characters never make an answer right
    ("4", "4\x00\x00", F, "answer_control_chars"),
    ("4", "\x004", F, "answer_control_chars"),
    ("4", "4\x1b[0m", F, "answer_control_chars"),
    ("red", "red\x7f", F, "answer_control_chars"),
    ("4\x00", "4", N, "gold_unparseable"),
    ("4", "4\t", T, "ok"),  # tab and newlines are whitespace
    ("4", "\n4\n", T, "ok"),
]


# Shapes decided without sympy (evaluated at fixed points), as Math-Verify decides them.
WITHOUT_SYMPY = [
    ("\\sin^2 x", "1 - \\cos^2 x", T, "ok"),
    ("\\sin^2 x", "\\cos^2 x", F, "wrong"),
    ("\\sin^2 x", "\\sin x^2", F, "wrong"),
    ("\\tan x", "\\frac{\\sin x}{\\cos x}", T, "ok"),
    ("\\sin(2x)", "2\\sin(x)\\cos(x)", T, "ok"),
    ("8", "\\log_2 256", T, "ok"),
    ("3", "\\log_{2} 8", T, "ok"),
    ("3", "\\log_28", T, "ok"),
    ("8", "\\log_2 512", F, "wrong"),
    ("\\ln 8", "3\\ln 2", T, "ok"),
    ("\\{1, 5\\}", "\\{5, 1\\}", T, "ok"),
    ("\\{1, 5\\}", "\\{1,5\\}", T, "ok"),
    ("\\{1, 5\\}", "\\{1, 6\\}", F, "wrong"),
    ("\\{1, 5\\}", "\\{1, 5, 6\\}", F, "wrong"),
    ("\\{\\frac{1}{2}, 3\\}", "\\{3, 0.5\\}", T, "ok"),  # a decimal: Math-Verify
]


@pytest.mark.parametrize(
    ("gold", "pred", "ok", "reason"),
    OPTION_LETTERS
    + PREFIXES
    + THOUSANDS
    + DECIMALS_AND_FRACTIONS
    + PERCENTAGES
    + CONTROL
    + WITHOUT_SYMPY,
)
def test_convention(gold: str, pred: str, ok: bool | None, reason: str) -> None:
    assert verdict(gold, pred) == (ok, reason)


@pytest.mark.parametrize(("gold", "pred"), [(g, p) for g, p, _, _ in WITHOUT_SYMPY[:-1]])
def test_trig_logs_and_sets_need_no_sympy(gold: str, pred: str) -> None:
    assert not isinstance(judge_fast(gold, pred), MathJob)


@pytest.mark.parametrize(
    ("gold", "pred"),
    [("\\sin 2x", "2\\sin x\\cos x"), ("2", "\\log 100"), ("\\sin x \\cos x", "x")],
)
def test_unclear_function_arguments_go_to_math_verify(gold: str, pred: str) -> None:
    assert isinstance(judge_fast(gold, pred), MathJob)


def test_kept_as_before() -> None:
    """No free reward on an unparseable gold, hedges score 0, gold first."""
    assert verdict("", "7") == (None, "gold_empty")
    assert verdict("x" * 3000 + "+1", "1")[0] is None
    assert verdict("2", "1 or 2") == (False, "hedged")
    assert verdict("\\sqrt{12}", "2\\sqrt{3}") == (True, "ok")


def completion(answer: str) -> str:
    return f"<think>Working.</think><answer>{answer}</answer>"


BIG = "9" * 5000  # past Python's 4,300-digit limit for int("...")

PATHOLOGICAL = [
    (ScoreItem(completion(BIG), "7"), 0.0, "answer_too_long"),
    (ScoreItem(completion("7"), BIG), None, "gold_unparseable"),
    (ScoreItem(f"<think>{BIG} is large, so 7</think><answer>7</answer>", "7"), 1.0, "ok"),
    (ScoreItem(completion("9" * 3000), "9" * 3000), None, "gold_unparseable"),
    (ScoreItem(completion("{" * 600 + "1" + "}" * 600), "1"), 0.0, None),
    (ScoreItem(completion("10^{10^{10^{10^{10}}}}"), "1"), 0.0, None),
    (ScoreItem(completion("4\x00\x00"), "4"), 0.0, "answer_control_chars"),
    (ScoreItem(completion("1+" * 50_000 + "1"), "50001"), 0.0, "answer_too_long"),
    (ScoreItem(completion("x" * 100_000), "x"), 0.0, None),
    (ScoreItem(completion("7"), "7"), 1.0, "ok"),
]


def test_a_batch_of_pathological_items_scores_each_alone() -> None:
    items = [item for item, _, _ in PATHOLOGICAL]
    results = score("hfrrf", items, scorer=Scorer(InlineVerifier(seconds=3)))
    for (item, reward, reason), result in zip(PATHOLOGICAL, results, strict=True):
        assert result.reward == reward, (item.completion[:60], result)
        if reason is not None:
            assert result.reason == reason, (item.completion[:60], result)
