"""The answer rule: decide most answers without sympy, hand the rest to Math-Verify.

``judge_fast(gold, prediction)`` returns a final ``Verdict`` for option letters, plain
numbers, fractions, percentages, words and plain arithmetic LaTeX (``shared.rewards.arith``),
and a ``MathJob`` for anything that needs symbolic comparison; ``shared.rewards.mathcheck``
runs those jobs (in a worker process).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache
from typing import Literal

from shared.rewards.arith import structured_equal
from shared.rewards.text import clean_answer

Kind = Literal["empty", "choice", "number", "text", "math"]

OK = "ok"
WRONG = "wrong"
HEDGED = "hedged"
GOLD_EMPTY = "gold_empty"
GOLD_UNPARSEABLE = "gold_unparseable"
EMPTY_ANSWER = "empty_answer"
ANSWER_UNPARSEABLE = "answer_unparseable"
ANSWER_TOO_LONG = "answer_too_long"
NO_OPTION = "no_option_letter"
OTHER_OPTION = "other_option_letter"
SEVERAL_OPTIONS = "several_option_letters"
TIMEOUT = "timeout"
VERIFIER_ERROR = "verifier_error"
CONTROL_CHARS = "answer_control_chars"
# NUL and other control characters (tab and newlines aside) are not text a model means:
# an answer holding one is unreadable (never right), a gold holding one gives no verdict.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")

# Answers longer than this never reach sympy: no real final answer is that long.
MAX_MATH_CHARS = 2000
_CACHED_CHARS = 512
EXTRACTED_CHARS = 300


@dataclass(frozen=True)
class Verdict:
    """An answer verdict: True/False, or None for "no verdict" (bad gold answer)."""

    ok: bool | None
    reason: str
    extracted: str = ""


@dataclass(frozen=True)
class MathJob:
    """A (gold, prediction) pair that needs Math-Verify; both already cleaned."""

    gold: str
    pred: str


# --- multiple choice -------------------------------------------------------------------
# A gold option: `C`, `(C)`, `C.`, `(C) 12`, `C. 12 cm`, `C: 12`, and `C 12 cm` (a letter, a
# space, then option text that starts like math: a digit, sign, `$`, `\`, `(`), so that a
# gold such as `A cat` stays a word answer.
_GOLD_LETTER = re.compile(
    r"^\(?([A-H])\)?[.):]?$|^\(([A-H])\)\s*\S|^([A-H])[.:)]\s+\S"
    r"|^([A-H])\s+(?=[\d$\\(+\-−.√π])"
)
# LaTeX that dresses a letter: `\text{C}`, `\textbf{(C)}`, `\mathrm{C}`, `\mathbf{C}`.
_LETTER_DRESS = re.compile(
    r"\\(?:text|textbf|textrm|textit|textsf|mathrm|mathbf|mathit|mathsf|mbox|operatorname)"
    r"\s*\{([^{}]*)\}"
)
_OPTION_PREFIX = re.compile(r"^(?:option|choice)\s*", re.IGNORECASE)
_HEAD_LETTER = re.compile(r"^\(?([A-H])\)?(?=$|[\s.):,;/&])")
_LOWER_ONLY = re.compile(r"^\(?([a-h])\)?[.)]?$")
_MORE_LETTERS = re.compile(
    r"^\)?\s*(?:[,;/&]|or\b|and\b|\\text\{\s*(?:or|and)\s*\})\s*\(?[A-Ha-h]\)?(?=$|[\s.):,;])",
    re.IGNORECASE,
)


def undress(text: str) -> str:
    """Text with its LaTeX text and font commands replaced by their content."""
    for _ in range(4):
        stripped = _LETTER_DRESS.sub(r"\1", text)
        if stripped == text:
            break
        text = stripped
    return text.strip()


def gold_letter(gold: str) -> str | None:
    """The option letter a gold answer names (`B`, `(B)`, `B.`, `(B) 12`, `B 12 cm`,
    `\text{(B)}`), if it is one."""
    m = _GOLD_LETTER.match(undress(gold))
    return next((g for g in m.groups() if g), None) if m else None


def judge_choice(letter: str, pred: str) -> Verdict:
    """Right iff the prediction names exactly the gold option letter."""
    s = _OPTION_PREFIX.sub("", clean_answer(undress(pred)), count=1)
    lower = _LOWER_ONLY.match(s)
    if lower:
        named = lower.group(1).upper()
        return Verdict(named == letter, OK if named == letter else OTHER_OPTION, named)
    head = _HEAD_LETTER.match(s)
    if not head:
        return Verdict(False, NO_OPTION, s[:EXTRACTED_CHARS])
    named = head.group(1)
    if _MORE_LETTERS.match(s[head.end() :]):
        return Verdict(False, SEVERAL_OPTIONS, s[:EXTRACTED_CHARS])
    return Verdict(named == letter, OK if named == letter else OTHER_OPTION, named)


# --- numbers ---------------------------------------------------------------------------
_NUM = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"
_PLAIN = re.compile(rf"^{_NUM}$")
_SLASH = re.compile(rf"^({_NUM})\s*/\s*({_NUM})$")
_LATEX_FRAC = re.compile(rf"^([+-]?)\\[dt]?frac\{{\s*({_NUM})\s*\}}\{{\s*({_NUM})\s*\}}$")
_THOUSANDS = re.compile(r"^[+-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?$")
# Thousands separators as LaTeX writes them: `32{,}349`, `32,\!349`, `32,\,349`; and the
# thin spaces some write instead: `32\,349`, `32\!349`, `32~349`.
_LATEX_COMMA = re.compile(r"(?<=\d)(?:\{,\}|,\\[!,])(?=\d{3})")
_DIGIT_GAP = re.compile(r"(?<=\d)(?:\\,|\\!|\\ |~)(?=\d{3})")
_PERCENT = re.compile(r"\s*\\?%$")
# Longer numbers are not read as numbers (Python refuses integers past 4,300 digits, and no
# answer is that long); they go on to the length limit of the symbolic check.
_MAX_DIGITS = 100
# A decimal agrees with a fraction that has no finite decimal form (1/3, 1/12) when they
# differ by less than this, relative: `0.0833333` is `\frac{1}{12}`, `0.33` is not `1/3`.
DECIMAL_REL_TOL = Fraction(1, 100_000)


@dataclass(frozen=True)
class Number:
    """A plain number as written: its value and whether it carried a percent sign."""

    value: Fraction
    percent: bool = False
    decimal: bool = False  # written with a decimal point (possibly rounded)


def separators_removed(text: str) -> str:
    """`32,\\!349`, `32{,}349` and `32\\,349` as `32,349` (thousands, never a list)."""
    return _DIGIT_GAP.sub("", _LATEX_COMMA.sub(",", text))


def parse_number(text: str) -> Number | None:
    """Parse `-3`, `1,000.5`, `32{,}349`, `\\$18.90`, `3/4`, `\\frac{3}{4}`, `50\\%` exactly;
    None for anything else."""
    if sum(c.isdigit() for c in text) > _MAX_DIGITS:
        return None
    s = separators_removed(_CURRENCY.sub("", text.strip()).replace("−", "-"))
    percent = bool(_PERCENT.search(s))
    s = _PERCENT.sub("", s).strip()
    if _THOUSANDS.match(s):
        s = s.replace(",", "")
    value = _number_value(s)
    return Number(value, percent, "." in s) if value is not None else None


def _number_value(s: str) -> Fraction | None:
    """The exact value of a plain decimal, a slash fraction or a LaTeX fraction."""
    if _PLAIN.match(s):
        return Fraction(s)
    m = _SLASH.match(s)
    if m:
        den = Fraction(m.group(2))
        return Fraction(m.group(1)) / den if den else None
    m = _LATEX_FRAC.match(s)
    if m:
        den = Fraction(m.group(3))
        value = Fraction(m.group(2)) / den if den else None
        return -value if value is not None and m.group(1) == "-" else value
    return None


def numbers_equal(gold: Number, pred: Number) -> bool:
    """Equal values, the same in both directions; against a percentage, a bare number may
    be the percent or the fraction (`10%` is `10` and `0.1`); a decimal agrees with a
    fraction that has no finite decimal form within ``DECIMAL_REL_TOL``."""
    if gold.percent == pred.percent:
        return _values_agree(gold, gold.value, pred, pred.value)
    percent, bare = (gold, pred) if gold.percent else (pred, gold)
    return any(
        _values_agree(percent, value, bare, bare.value)
        for value in (percent.value, percent.value / 100)
    )


def _values_agree(a: Number, x: Fraction, b: Number, y: Fraction) -> bool:
    if x == y:
        return True
    if a.decimal == b.decimal:
        return False  # two exact values, or two decimals: equal or not
    exact = x if b.decimal else y
    if _terminates(exact):
        return False  # 1/8 is 0.125 exactly: a decimal must say so
    return abs(x - y) <= DECIMAL_REL_TOL * abs(exact)


def _terminates(value: Fraction) -> bool:
    """Whether a fraction has a finite decimal form (its denominator is 2^a·5^b)."""
    d = value.denominator
    for p in (2, 5):
        while d % p == 0:
            d //= p
    return d == 1


_UNIT_WORDS = (
    r"degrees?|deg|cm|mm|km|m|kg|g|mg|ml|l|s|sec|seconds?|mins?|minutes?|h|hrs?|hours?|days?|"
    r"weeks?|years?|units?|square\s+units|sq\.?\s*units|meters?|metres?|centimeters?|"
    r"centimetres?|millimeters?|kilometers?|inch(?:es)?|in|feet|foot|ft|yards?|yd|miles?|mi|"
    r"dollars?|cents?|liters?|litres?|grams?|kilograms?|percent|radians?|rad|mph|km/h|m/s|"
    r"pounds?|lbs?|points?|people|students|times"
)
_POWER = r"(?:\s*\^\s*\{?\s*[23]\s*\}?|[²³])?"
_UNIT_SUFFIX = re.compile(
    r"(?:\s*\^\s*\{?\s*\\circ\s*\}?|\s*°|\s*\\degree|\s*\\?%"
    rf"|\s*\\(?:text|mathrm|mbox|textrm)\{{\s*(?:{_UNIT_WORDS})\s*\}}{_POWER}"
    rf"|(?:\s+|~|\\,|\\ |\\;)?(?:{_UNIT_WORDS}){_POWER})$",
    re.IGNORECASE,
)
_CURRENCY = re.compile(r"^(?:\\\$|\$(?=\d)|£|€|¥)\s*")
_ASSIGNMENT = re.compile(
    r"^\s*(?:[A-Za-z](?:_\{?\w+\}?)?|[A-Z]{2,3}|\\angle\s*[A-Z]{1,3}|\\[a-zA-Z]+)\s*=\s*([^=]+)$"
)


def strip_units(pred: str) -> str:
    """Remove a currency sign and trailing units (`°`, `^\\circ`, `cm`, `\\text{ cm}`, `%`)."""
    s = _CURRENCY.sub("", pred.strip())
    for _ in range(3):
        stripped = _UNIT_SUFFIX.sub("", s).strip()
        if stripped == s or not stripped:
            break
        s = stripped
    return s


def strip_assignment(pred: str) -> str:
    """`x = 5` → `5`, `\\angle ABC = 30^\\circ` → `30^\\circ`; other text unchanged."""
    m = _ASSIGNMENT.match(pred)
    return m.group(1).strip() if m else pred


# --- text and hedges -------------------------------------------------------------------
_TEXT_GOLD = re.compile(r"^[^\d\\^_=+*/<>{}\[\]|$]*[^\W\d_][^\d\\^_=+*/<>{}\[\]|$]*$")
_TEXT_WRAPPER = re.compile(r"^\\(?:text|textbf|mathrm|mbox|textrm)\{([^{}]*)\}$")
_END_PUNCT = " \t\n.,;:!?。"
_OR = r"\s+or\s+|\s+and/or\s+|\\text\{\s*or\s*\}|\\(?:lor|vee)(?![a-zA-Z])"
_LIST = r"[,;]|\s+and\s+|\\text\{\s*and\s*\}"
_OR_SPLIT = re.compile(_OR, re.IGNORECASE)
_ANY_SPLIT = re.compile(f"{_OR}|{_LIST}", re.IGNORECASE)
_CANDIDATE = re.compile(r"\d|\\[a-zA-Z]")


def normalize_text(s: str) -> str:
    """Case-folded, whitespace-collapsed, without wrapping \\text{} or end punctuation."""
    m = _TEXT_WRAPPER.match(s.strip())
    s = m.group(1) if m else s
    s = " ".join(s.split()).casefold()
    return s.strip(_END_PUNCT).strip("\"'`“”‘’").strip(_END_PUNCT)


def is_hedged(pred: str, *, lists_count: bool) -> bool:
    """Several different candidate values joined by `or` (or by `,`/`and` if lists count)."""
    splitter = _ANY_SPLIT if lists_count else _OR_SPLIT
    parts = {normalize_text(p) for p in splitter.split(pred) if p and p.strip()}
    return len(parts) >= 2 and sum(1 for p in parts if _CANDIDATE.search(p)) >= 2


def _is_text_hedge(pred: str) -> bool:
    """Two or more different words joined by `or`."""
    parts = {normalize_text(p) for p in _OR_SPLIT.split(pred) if p and p.strip()}
    return len(parts) >= 2


# --- the rule --------------------------------------------------------------------------
def gold_kind(gold: str) -> Kind:
    """Which rule a cleaned gold answer is judged by."""
    if not gold:
        return "empty"
    if gold_letter(gold):
        return "choice"
    if parse_number(gold) is not None:
        return "number"
    if _TEXT_GOLD.match(gold) or _TEXT_WRAPPER.match(gold):
        return "text"
    return "math"


def judge_fast(gold_raw: str, pred_raw: str) -> Verdict | MathJob:
    """A verdict for the easy cases, or the Math-Verify job for the rest."""
    if len(gold_raw) + len(pred_raw) <= _CACHED_CHARS:
        return _judge_fast_cached(gold_raw, pred_raw)
    return _judge_fast(gold_raw, pred_raw)


@lru_cache(maxsize=65_536)
def _judge_fast_cached(gold_raw: str, pred_raw: str) -> Verdict | MathJob:
    """GRPO groups repeat (gold, answer) pairs: remember the short ones."""
    return _judge_fast(gold_raw, pred_raw)


@lru_cache(maxsize=8192)
def _gold(gold_raw: str) -> tuple[str, Kind]:
    """A cleaned gold answer and its rule; the same gold comes with every group member."""
    gold = clean_answer(gold_raw)
    return gold, gold_kind(gold)


def _judge_fast(gold_raw: str, pred_raw: str) -> Verdict | MathJob:
    """The rule itself, uncached."""
    if _CONTROL.search(gold_raw):
        return Verdict(None, GOLD_UNPARSEABLE, _CONTROL.sub("", pred_raw)[:EXTRACTED_CHARS])
    if _CONTROL.search(pred_raw):
        return Verdict(False, CONTROL_CHARS, _CONTROL.sub("", pred_raw)[:EXTRACTED_CHARS])
    (gold, kind), pred = _gold(gold_raw), clean_answer(pred_raw)
    if kind == "empty":
        return Verdict(None, GOLD_EMPTY, pred[:EXTRACTED_CHARS])
    if not pred:
        return Verdict(False, EMPTY_ANSWER, "")
    if kind == "choice":
        return judge_choice(gold_letter(gold) or "", pred)
    if kind == "text":
        return _judge_text(gold, pred)
    if kind == "number":
        return _judge_number(gold, pred)
    return _math_job(gold, pred, lists_count=False)


def _judge_text(gold: str, pred: str) -> Verdict:
    """Words: equal after normalisation; several alternatives are a hedge."""
    if normalize_text(gold) == normalize_text(pred):
        return Verdict(True, OK, pred[:EXTRACTED_CHARS])
    reason = HEDGED if _is_text_hedge(pred) else WRONG
    return Verdict(False, reason, pred[:EXTRACTED_CHARS])


def _judge_number(gold: str, pred: str) -> Verdict | MathJob:
    """A bare-number gold: exact comparison when the prediction is a plain number too."""
    assigned = strip_assignment(pred)
    as_percent = parse_number(assigned)  # `10%` keeps its sign here; units go below
    value = strip_units(assigned)
    gold_number = parse_number(gold)
    pred_number = as_percent if as_percent is not None else parse_number(value)
    if gold_number is not None and pred_number is not None:
        ok = numbers_equal(gold_number, pred_number)
        return Verdict(ok, OK if ok else WRONG, value[:EXTRACTED_CHARS])
    return _math_job(gold, value, lists_count=True)


def _math_job(gold: str, pred: str, *, lists_count: bool) -> Verdict | MathJob:
    """Hand a pair to Math-Verify unless it is a hedge or far too long to be an answer."""
    if len(gold) > MAX_MATH_CHARS:
        return Verdict(None, GOLD_UNPARSEABLE, pred[:EXTRACTED_CHARS])
    if len(pred) > MAX_MATH_CHARS:
        return Verdict(False, ANSWER_TOO_LONG, pred[:EXTRACTED_CHARS])
    pred = separators_removed(pred)
    gold_has_or = bool(_OR_SPLIT.search(gold))
    if not gold_has_or and is_hedged(pred, lists_count=lists_count and "," not in gold):
        return Verdict(False, HEDGED, pred[:EXTRACTED_CHARS])
    if "," not in gold and _THOUSANDS.match(pred.strip()):
        pred = pred.replace(",", "")
    equal = structured_equal(gold, pred)
    if equal is not None:
        return Verdict(equal, OK if equal else WRONG, pred[:EXTRACTED_CHARS])
    return MathJob(gold, pred)
