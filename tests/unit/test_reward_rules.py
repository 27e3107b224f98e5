"""Table-driven tests of the reward rules: format, answers, hedges, HFRRF, consistency."""

from __future__ import annotations

import pickle

import pytest

from shared.errors import InvalidInput, UnknownReward
from shared.rewards import (
    InlineVerifier,
    MathJob,
    ScoreItem,
    Scorer,
    check_format,
    consistency,
    judge_fast,
    reward_fn,
    score,
)
from shared.rewards.mathcheck import judge_math_guarded

T, F, N = True, False, None

ANSWER_CASES: list[tuple[str, str, bool | None, str]] = [
    # plain numbers and equivalent forms
    ("3", "3", T, "ok"),
    ("3", "3.0", T, "ok"),
    ("3", "6/2", T, "ok"),
    ("3", "\\dfrac{6}{2}", T, "ok"),
    ("3", "\\frac{6}{2}", T, "ok"),
    ("3", "$3$", T, "ok"),
    ("3", "$$3$$", T, "ok"),
    ("3", "\\(3\\)", T, "ok"),
    ("3", "\\boxed{3}", T, "ok"),
    ("3", "Final Answer: 3", T, "ok"),
    ("3", "final answer: $\\boxed{3}$.", T, "ok"),
    ("3", "FINAL ANSWER:3", T, "ok"),
    ("3", " Final Answer:X ".replace("X", "3"), T, "ok"),
    ("3", "3.", T, "ok"),
    ("3", "The answer is 3", T, "ok"),
    ("3", "\\boxed{2} then \\boxed{3}", T, "ok"),
    ("3", "4", F, "wrong"),
    ("3", "-3", F, "wrong"),
    ("-3", "-3", T, "ok"),
    ("-3", "−3", T, "ok"),
    ("0.5", "1/2", T, "ok"),
    ("0.5", "\\frac{1}{2}", T, "ok"),
    ("\\frac{1}{2}", "0.5", T, "ok"),
    ("-\\frac{1}{2}", "-0.5", T, "ok"),
    ("1.5", "1.50", T, "ok"),
    ("0.33", "\\frac{1}{3}", F, "wrong"),
    ("7", "\\boxed{7}.", T, "ok"),
    # symbolic forms (Math-Verify, gold first)
    ("\\sqrt{12}", "2\\sqrt{3}", T, "ok"),
    ("2\\sqrt{3}", "\\sqrt{12}", T, "ok"),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}\\sqrt{3}", T, "ok"),
    ("2", "\\sqrt{4}", T, "ok"),
    ("\\pi", "3.14", F, "wrong"),
    ("x^2+1", "1+x^2", T, "ok"),
    ("x^2+1", "x^2-1", F, "wrong"),
    ("(1,2)", "(1, 2)", T, "ok"),
    ("[1,2)", "[1,2)", T, "ok"),
    ("[1,2)", "(1,2)", F, "wrong"),
    ("2\\pi", "2\\pi", T, "ok"),
    ("\\frac{\\pi}{3}", "\\frac{1}{3}\\pi", T, "ok"),
    ("10^{6}", "1,000,000", T, "ok"),
    ("x^2+3x", "x(x+3)", T, "ok"),
    ("x^2+3x", "x^2+4x", F, "wrong"),
    ("x", "y", F, "wrong"),
    ("12", "2\\sqrt{36}", T, "ok"),
    ("[8, 13)", "(8, 13)", F, "wrong"),
    ("[8, 13)", "[8,13)", T, "ok"),
    ("(-\\infty, 2]", "(-\\infty,2]", T, "ok"),
    ("(-\\infty, 2]", "(\\infty, 2]", F, "wrong"),
    ("y = 9x + 7", "y=7+9x", T, "ok"),
    ("y = 9x + 7", "y = 7x + 9", F, "wrong"),
    ("\\{1, 2\\}", "\\{2, 1\\}", T, "ok"),
    ("3", "\\log_2 8", T, "ok"),
    ("\\sin^2 x", "1 - \\cos^2 x", T, "ok"),
    ("\\pi", "3.14159265358979", T, "ok"),
    # assignments
    ("5", "x = 5", T, "ok"),
    ("5", "x=5", T, "ok"),
    ("5", "y = 6", F, "wrong"),
    ("30", "\\angle ABC = 30^\\circ", T, "ok"),
    ("5", "AB = 5", T, "ok"),
    ("x=5", "5", T, "ok"),
    ("x=5", "x = 5", T, "ok"),
    # thousands separators
    ("1000", "1,000", T, "ok"),
    ("1000000", "1,000,000", T, "ok"),
    ("1234.5", "1,234.5", T, "ok"),
    ("1000", "1{,}000", T, "ok"),
    ("1000", "1\\,000", T, "ok"),
    ("1,000", "1000", T, "ok"),
    ("12", "1,2", F, "hedged"),
    # units after a bare-number gold
    ("30", "30°", T, "ok"),
    ("30", "30^\\circ", T, "ok"),
    ("30", "30^{\\circ}", T, "ok"),
    ("30", "30 degrees", T, "ok"),
    ("50", "50%", T, "ok"),
    ("50", "50\\%", T, "ok"),
    ("12", "12 cm", T, "ok"),
    ("12", "12cm", T, "ok"),
    ("12", "12\\text{ cm}", T, "ok"),
    ("12", "12 \\text{cm}^2", T, "ok"),
    ("12", "12 cm^2", T, "ok"),
    ("5", "\\$5", T, "ok"),
    ("12", "13 cm", F, "wrong"),
    ("50\\%", "0.5", T, "ok"),
    ("50\\%", "50", T, "ok"),
    ("50\\%", "50\\%", T, "ok"),
    ("0.5", "50%", T, "ok"),  # a percentage and its fraction agree both ways
    # hedges: several different candidates are wrong
    ("70", "70 or 110", F, "hedged"),
    ("70", "$70 \\text{ or } 110$", F, "hedged"),
    ("70", "70, 110", F, "hedged"),
    ("70", "70 and 110", F, "hedged"),
    ("70", "70; 110", F, "hedged"),
    ("x=2", "x = 2 or x = 3", F, "hedged"),
    ("\\sqrt{2}", "\\sqrt{2} \\lor -\\sqrt{2}", F, "hedged"),
    ("red", "red or blue", F, "hedged"),
    # multiple choice
    ("B", "B", T, "ok"),
    ("B", "(B)", T, "ok"),
    ("B", "B.", T, "ok"),
    ("B", "B)", T, "ok"),
    ("B", "B: 12", T, "ok"),
    ("B", "(B) 12", T, "ok"),
    ("B", "\\boxed{B}", T, "ok"),
    ("B", "$\\boxed{B}$", T, "ok"),
    ("B", "Final Answer: (B)", T, "ok"),
    ("B", "Option B", T, "ok"),
    ("B", "The answer is B", T, "ok"),
    ("B", "b", T, "ok"),
    ("B", "(b)", T, "ok"),
    ("B", "B: A triangle", T, "ok"),
    ("(B)", "B", T, "ok"),
    ("B.", "(B)", T, "ok"),
    ("(B) 12", "B", T, "ok"),
    ("H", "H", T, "ok"),
    ("B", "A", F, "other_option_letter"),
    ("B", "(C)", F, "other_option_letter"),
    ("B", "c", F, "other_option_letter"),
    ("B", "A or B", F, "several_option_letters"),
    ("B", "B or C", F, "several_option_letters"),
    ("B", "B, C", F, "several_option_letters"),
    ("B", "A and B", F, "several_option_letters"),
    ("B", "(B)/(C)", F, "several_option_letters"),
    ("B", "12", F, "no_option_letter"),
    ("B", "AB", F, "no_option_letter"),
    ("B", "Bob", F, "no_option_letter"),
    # text
    ("red", "red", T, "ok"),
    ("red", "Red", T, "ok"),
    ("red", "RED.", T, "ok"),
    ("red", "  red  ", T, "ok"),
    ("red", "\\text{red}", T, "ok"),
    ("dark red", "dark   Red", T, "ok"),
    ("yes", "Yes!", T, "ok"),
    ("north east", "North East.", T, "ok"),
    ("red", "blue", F, "wrong"),
    ("red", "redd", F, "wrong"),
    ("red", "the red", F, "wrong"),
    # empty answers and bad gold answers: no verdict, never a reward
    ("", "5", N, "gold_empty"),
    ("   ", "5", N, "gold_empty"),
    ("$$", "5", N, "gold_empty"),
    ("\\boxed{}", "5", N, "gold_empty"),
    ("\\frac{", "1", N, "gold_unparseable"),
    ("5", "", F, "empty_answer"),
    ("5", "\\boxed{}", F, "empty_answer"),
    ("x^2", "1+" * 1500 + "1", F, "answer_too_long"),
]


def verdict(gold: str, pred: str) -> tuple[bool | None, str]:
    """The full answer rule in this process: fast path, then Math-Verify."""
    result = judge_fast(gold, pred)
    if isinstance(result, MathJob):
        result = judge_math_guarded(result, seconds=5)
    return result.ok, result.reason


@pytest.mark.parametrize(("gold", "pred", "ok", "reason"), ANSWER_CASES)
def test_answer_rule(gold: str, pred: str, ok: bool | None, reason: str) -> None:
    assert verdict(gold, pred) == (ok, reason)


FORMAT_CASES: list[tuple[str, str]] = [
    ("<think>a</think><answer>5</answer>", "ok"),
    ("  <think>a</think>\n\n<answer> 5 </answer>\n", "ok"),
    ("<think>\nline one\nline two\n</think>\n<answer>Final Answer: 5</answer>", "ok"),
    ("<think></think><answer>5</answer>", "ok"),
    ("<answer>5</answer>", "format:no_think"),
    ("5", "format:no_think"),
    ("", "format:no_think"),
    ("So <think>a</think><answer>5</answer>", "format:text_outside"),
    ("<think>a</think> so <answer>5</answer>", "format:text_outside"),
    ("<think>a</think><answer>5</answer> done", "format:text_outside"),
    ("<think>a</think><answer>5</answer><answer>6</answer>", "format:nested_tag"),
    ("<think>a</think><answer>5</answer></think>", "format:text_outside"),
    ("<THINK>a</THINK><answer>5</answer>", "format:uppercase_tag"),
    ("<think>a</THINK><answer>5</answer>", "format:uppercase_tag"),
    ("<think>a</think><ANSWER>5</ANSWER>", "format:uppercase_tag"),
    ("<think>a</think><answer>5</Answer>", "format:uppercase_tag"),
    ("<think>abc", "format:truncated"),
    ("<think>a</think><answer>5", "format:truncated"),
    ("<think>a</think>", "format:no_answer"),
    ("<think>..</think><answer></answer></answer>", "format:nested_tag"),
    ("<think><think>a</think><answer>5</answer>", "format:nested_tag"),
    ("<think>a<answer>5</answer></think><answer>5</answer>", "format:nested_tag"),
    ("<think>a</think><think>b</think><answer>5</answer>", "format:text_outside"),
    ("<think>a</think><answer>x <think> y</answer>", "format:nested_tag"),
    ("<think>a < / think >b</think><answer>5</answer>", "format:nested_tag"),
    ("<think>a</think><answer>   </answer>", "format:empty_answer"),
    ("<think>a</think><answer>\n</answer>", "format:empty_answer"),
]


@pytest.mark.parametrize(("completion", "reason"), FORMAT_CASES)
def test_format_rule(completion: str, reason: str) -> None:
    check = check_format(completion)
    assert (check.ok, check.reason) == (reason == "ok", reason)


@pytest.fixture(scope="module")
def scorer() -> Scorer:
    return Scorer(InlineVerifier())


GOOD = "<think>6/2 is 3.</think><answer>3</answer>"
HFRRF_CASES: list[tuple[str, str, str, float | None, str]] = [
    ("hfrrf", GOOD, "3", 1.0, "ok"),
    ("hfrrf", GOOD, "4", 0.0, "wrong"),
    ("hfrrf", "<think>x</think><answer>3</answer> extra", "3", 0.0, "format:text_outside"),
    ("hfrrf", "The answer is 3", "3", 0.0, "format:no_think"),
    ("hfrrf", GOOD, "", None, "gold_empty"),
    ("hfrrf", "no tags at all", "", None, "gold_empty"),
    ("format", GOOD, "4", 1.0, "ok"),
    ("format", "<think>x</think>", "3", 0.0, "format:no_answer"),
    ("accuracy", "The answer is 3", "3", 1.0, "ok"),
    ("accuracy", "<think>x</think><answer>3", "3", 1.0, "ok"),
    ("accuracy", GOOD, "4", 0.0, "wrong"),
    ("accuracy", GOOD, "", None, "gold_empty"),
]


@pytest.mark.parametrize(("reward", "completion", "gold", "expected", "reason"), HFRRF_CASES)
def test_registered_rewards(
    scorer: Scorer, reward: str, completion: str, gold: str, expected: float | None, reason: str
) -> None:
    [result] = score(reward, [ScoreItem(completion, gold)], scorer=scorer)
    assert (result.reward, result.reason) == (expected, reason)


def test_details_report_both_checks(scorer: Scorer) -> None:
    [result] = score("hfrrf", [ScoreItem("<THINK>x</THINK><answer>3</answer>", "3")], scorer=scorer)
    assert (result.format_ok, result.answer_ok, result.extracted) == (False, True, "3")


def test_trl_form_accepts_strings_and_messages(scorer: Scorer) -> None:
    f = reward_fn("hfrrf", scorer=scorer)
    messages = [[{"role": "assistant", "content": GOOD}], [{"role": "assistant", "content": "3"}]]
    assert f(messages, answer=["3", "3"]) == [1.0, 0.0]
    assert f([GOOD, GOOD], solution=["3", "5"], prompts=["p", "p"]) == [1.0, 0.0]
    assert f.__name__ == "hfrrf_reward"


def test_trl_form_rejects_missing_or_mismatched_answers(scorer: Scorer) -> None:
    f = reward_fn("hfrrf", scorer=scorer)
    with pytest.raises(InvalidInput):
        f([GOOD])
    with pytest.raises(InvalidInput):
        f([GOOD, GOOD], answer=["3"])
    assert reward_fn("format", scorer=scorer)([GOOD, "x"]) == [1.0, 0.0]


def test_trl_form_pickles_by_name() -> None:
    restored = pickle.loads(pickle.dumps(reward_fn("accuracy")))
    assert (restored.__name__, restored.spec.name) == ("accuracy_reward", "accuracy")


def test_unknown_reward_is_a_typed_error() -> None:
    with pytest.raises(UnknownReward) as info:
        score("nope", [])
    assert info.value.status_code == 422


CONSISTENCY_CASES: list[tuple[str, bool | None]] = [
    ("<think>6/2, so the answer is 3.</think><answer>3</answer>", T),
    ("<think>So the answer is 4.</think><answer>3</answer>", F),
    ("<think>Final answer: \\boxed{\\sqrt{12}}</think><answer>2\\sqrt{3}</answer>", T),
    ("<think>The shape is red.</think><answer>red</answer>", T),
    ("<think>The shape is red.</think><answer>blue</answer>", F),
    ("<think>Therefore, the angle is 30 degrees.</think><answer>30</answer>", T),
    ("<think>The answer is B. Wait, no: the answer is C.</think><answer>C</answer>", T),
    ("<think>The answer is B. Wait, no: the answer is C.</think><answer>B</answer>", F),
    ("<think>Hmm, let me look.</think><answer>5</answer>", N),
    ("<think>The answer is 5.</think>", N),
    ("no reasoning at all", N),
]


@pytest.mark.parametrize(("completion", "expected"), CONSISTENCY_CASES)
def test_consistency(completion: str, expected: bool | None) -> None:
    assert consistency(completion) is expected
    assert consistency([{"role": "assistant", "content": completion}]) is expected
