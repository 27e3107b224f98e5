"""Reasoner post-processing: wording rewrites stay grammatical, reject rules, answers."""

from __future__ import annotations

import pytest

from services.reasoner.postprocess import Candidate, leaks_answer, precheck, rewrite_wording
from shared.contracts.sharegpt import assistant_turn, user_turn
from shared.rewards import extract_final_answer


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("The description says the circle is red.", "The image shows the circle is red."),
        ("the description mentions that there are 3 bars", "the image shows that there are 3 bars"),
        ("The description states two shapes.", "The image shows two shapes."),
        ("The detailed description notes a blue bar.", "The image shows a blue bar."),
        ("The description illustrates a red circle.", "The image illustrates a red circle."),
        ("The description shows a square.", "The image shows a square."),
        ("The description depicts a chart.", "The image depicts a chart."),
        ("This description describes a triangle.", "The image shows a triangle."),
        ("As described, the bar is tall.", "As shown, the bar is tall."),
        ("as described in the description, it is red", "as shown, it is red"),
        ("According to the description, x = 2.", "According to the image, x = 2."),
        (
            "Based on the given description, the answer is B.",
            "Based on the image, the answer is B.",
        ),
        ("From the description we see one shape.", "From the image we see one shape."),
        ("The shape described is green.", "The shape shown is green."),
        ("Looking at the description again, yes.", "Looking at the image again, yes."),
        ("Nothing to change here.", "Nothing to change here."),
    ],
)
def test_description_wording_becomes_image_wording(before: str, after: str) -> None:
    assert rewrite_wording(before) == after


@pytest.mark.parametrize(
    "text",
    [
        "The description says the shape is red. The description illustrates it well.",
        "the description shows, the description states, as described",
    ],
)
def test_rewrites_never_leave_a_doubled_verb(text: str) -> None:
    rewritten = rewrite_wording(text).lower()
    for verb in ("shows", "illustrates", "states", "says", "depicts"):
        assert f"image shows {verb}" not in rewritten
    assert "description" not in rewritten


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        ("The answer is given as 5, so we check.", True),
        ("We are told the answer is red.", True),
        ("Matching the provided answer, it is B.", True),
        ("The ground truth says 3.", True),
        ("So the correct answer is 5.", False),
        ("The answer is 5.", False),
        ("Given the bars, the tallest is 4.", False),
    ],
)
def test_answer_leaks(text: str, leak: bool) -> None:
    assert leaks_answer(text) is leak


@pytest.mark.parametrize(
    ("content", "answer"),
    [
        ("Final Answer: 5", "5"),
        ("blah\n**Final Answer:** \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("So the answer is red.", "red"),
        ("Thus the final answer is: B.", "B"),
        ("Work.\nThe final answer is 42", "42"),
        ("<answer>Final answer is $\\frac{1}{2}$</answer>", "$\\frac{1}{2}$"),
        ("<answer>Final Answer: (C)</answer>", "(C)"),
        ("The colour.\nBlue", "Blue"),
        ("\\boxed{12}", "12"),
        ("", ""),
    ],
)
def test_final_answer_extraction(content: str, answer: str) -> None:
    assert extract_final_answer(content) == answer


@pytest.mark.parametrize(
    ("candidate", "reason"),
    [
        (Candidate("thinking", "5", "length"), "truncated"),
        (Candidate("   ", "5", "stop"), "empty_cot"),
        (Candidate("x" * 101, "5", "stop"), "too_long"),
        (Candidate("fine", "", "stop"), "no_final_answer"),
        (Candidate("The answer is given as 5.", "5", "stop"), "answer_leak"),
        (Candidate("Count them: 5.", "5", "stop"), None),
    ],
)
def test_precheck_reasons(candidate: Candidate, reason: str | None) -> None:
    assert precheck(candidate, max_cot_chars=100, reject_leaks=True) == reason


def test_training_turns() -> None:
    assert assistant_turn(" a ", " 5 ") == "<think>\na\n</think>\n<answer>5</answer>"
    assert user_turn("What is x?", 1) == "<image>What is x?"
    assert user_turn("<image>\nWhat is x?", 1) == "<image>What is x?"
    assert user_turn("<image> A <image> B?", 2).count("<image>") == 2
    assert user_turn("Text only?", 0) == "Text only?"
