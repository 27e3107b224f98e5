"""Sympy-free equality for plain arithmetic LaTeX: `2\\sqrt{3}`, `\\frac{\\pi}{3}`, `x(x+3)`,
`\\sin^2 x`, `\\log_2 256`, and sets of such: `\\{1, 3\\}`.

Both sides are parsed into a small grammar (numbers, one-letter variables, `\\pi`, `+ - *
/ ^`, implicit products, `\\frac`, `\\sqrt`, `\\sin \\cos \\tan` of one factor, `\\ln`,
`\\log` with a base, parentheses and braces) and evaluated at three fixed points;
expressions that agree there are equal. Anything outside the grammar — decimals,
relations, other functions, `e`, `i`, a function of an unbraced product (`\\sin 2x`) —
returns None and goes to Math-Verify, so this path never has to be cleverer than it is.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from itertools import pairwise

_TOKEN = re.compile(
    r"\s*(?:(\d+)|\\(pi|frac|sqrt|sin|cos|tan|ln|log)(?![a-zA-Z])|([a-zA-Z])|([-+*/^(){}_]))"
)
_FUNCTIONS: dict[str, Callable[[float], float]] = {
    "sin": math.sin,
    "cos": math.cos,
    "tan": math.tan,
    "ln": math.log,
}
_REWRITES = (
    (re.compile(r"\\[dt]frac(?![a-zA-Z])"), r"\\frac"),
    (re.compile(r"\\(?:cdot|times)(?![a-zA-Z])"), "*"),
    (re.compile(r"\\(?:left|right)(?![a-zA-Z])|\\[,;! ]"), ""),
)
_POINTS = (
    {"pi": math.pi, **{c: 0.5 + (ord(c) % 7) / 11 for c in "abcdfghjklmnopqrstuvwxyz"}},
    {"pi": math.pi, **{c: 1.3 + (ord(c) % 5) / 7 for c in "abcdfghjklmnopqrstuvwxyz"}},
    {"pi": math.pi, **{c: -0.8 - (ord(c) % 3) / 5 for c in "abcdfghjklmnopqrstuvwxyz"}},
)
_MAX_TOKENS = 200
_MAX_EXPONENT = 16
Env = dict[str, float]
Node = Callable[[Env], float]


class _Unsupported(Exception):
    """The text leaves the grammar; Math-Verify decides."""


def _tokens(text: str) -> list[tuple[str, str]]:
    """(kind, value) tokens, or _Unsupported for any character outside the grammar."""
    for pattern, replacement in _REWRITES:
        text = pattern.sub(replacement, text)
    out: list[tuple[str, str]] = []
    pos, text = 0, text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or len(out) > _MAX_TOKENS:
            raise _Unsupported
        num, cmd, var, op = m.groups()
        if var in ("e", "i"):
            raise _Unsupported
        out.append(("num", num) if num else ("cmd", cmd) if cmd else ("var", var or op))
        if op:
            out[-1] = ("op", op)
        pos = m.end()
    _refuse_words(out)
    return out


def _refuse_words(tokens: list[tuple[str, str]]) -> None:
    """`sin`, `cm`, `or` would read as products of variables: refuse adjacent letters."""
    for (k1, _), (k2, _) in pairwise(tokens):
        if k1 == "var" and k2 == "var":
            raise _Unsupported


class _Parser:
    """Recursive descent over the tokens, building closures that evaluate at a point."""

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens, self.i = tokens, 0

    def peek(self) -> tuple[str, str]:
        return self.tokens[self.i] if self.i < len(self.tokens) else ("end", "")

    def take(self, value: str) -> None:
        if self.peek()[1] != value:
            raise _Unsupported
        self.i += 1

    def parse(self) -> Node:
        node = self.expr()
        if self.peek()[0] != "end":
            raise _Unsupported
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in (("op", "+"), ("op", "-")):
            op = self.peek()[1]
            self.i += 1
            left, right = node, self.term()
            node = _add(left, right) if op == "+" else _sub(left, right)
        return node

    def term(self) -> Node:
        node = self.unary()
        while True:
            kind, value = self.peek()
            if (kind, value) in (("op", "*"), ("op", "/")):
                self.i += 1
                left, right = node, self.unary()
                node = _mul(left, right) if value == "*" else _div(left, right)
            elif kind in ("num", "var", "cmd") or value in ("(", "{"):
                node = _mul(node, self.power())
            else:
                return node

    def unary(self) -> Node:
        if self.peek() == ("op", "-"):
            self.i += 1
            inner = self.unary()
            return lambda env: -inner(env)
        if self.peek() == ("op", "+"):
            self.i += 1
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek() != ("op", "^"):
            return base
        self.i += 1
        kind, value = self.peek()
        if kind == "num" and len(value) == 1:
            self.i += 1
            return _pow(base, lambda env: float(value))
        return _pow(base, self.group())

    def group(self) -> Node:
        self.take("{")
        node = self.expr()
        self.take("}")
        return node

    def atom(self) -> Node:
        kind, value = self.peek()
        self.i += 1
        if kind == "num":
            return lambda env: float(value)
        if kind == "var" or (kind, value) == ("cmd", "pi"):
            return lambda env: env[value]
        if (kind, value) == ("cmd", "frac"):
            return _div(self.group(), self.group())
        if (kind, value) == ("cmd", "sqrt"):
            return _sqrt(self.group())
        if kind == "cmd" and value in (*_FUNCTIONS, "log"):
            return self.function(value)
        if value in ("(", "{"):
            node = self.expr()
            self.take(")" if value == "(" else "}")
            return node
        raise _Unsupported

    def function(self, name: str) -> Node:
        """`\\sin x`, `\\sin^2 x`, `\\cos(2x)`, `\\ln 5`, `\\log_2 256`, `\\log_{3}{x}`: a function
        of one factor; `\\sin 2x` (is it sin(2x)?) is left to Math-Verify."""
        base: Node | None = None
        if name == "log":  # only with a base: `\\log x` means ln or log10 by convention
            self.take("_")
            kind, value = self.peek()
            if kind == "num":
                self.i += 1
                base = _const(value[0])
                if len(value) > 1:  # `\\log_28`: base 2 of 8
                    self.tokens.insert(self.i, ("num", value[1:]))
            else:
                base = self.group()
        exponent: Node | None = None
        if self.peek() == ("op", "^"):
            self.i += 1
            kind, value = self.peek()
            if kind == "num" and len(value) == 1:
                self.i += 1
                exponent = _const(value)
            else:
                exponent = self.group()
        grouped = self.peek()[1] in ("(", "{")
        argument = self.power()
        kind, value = self.peek()
        if not grouped and (kind in ("num", "var", "cmd") or value in ("(", "{")):
            raise _Unsupported  # `\\sin 2x`, `\\sin x \\cos x`: the argument's end is unclear
        node = _log(argument, base) if base is not None else _apply(_FUNCTIONS[name], argument)
        return _pow(node, exponent) if exponent is not None else node


def _const(value: str) -> Node:
    number = float(value)
    return lambda env: number


def _apply(function: Callable[[float], float], a: Node) -> Node:
    def run(env: Env) -> float:
        try:
            return function(a(env))
        except ValueError as exc:  # outside the domain (ln of a negative number)
            raise _Unsupported from exc

    return run


def _log(a: Node, base: Node) -> Node:
    def run(env: Env) -> float:
        value, b = a(env), base(env)
        if value <= 0 or b <= 0 or b == 1:
            raise _Unsupported
        return math.log(value) / math.log(b)

    return run


def _add(a: Node, b: Node) -> Node:
    return lambda env: a(env) + b(env)


def _sub(a: Node, b: Node) -> Node:
    return lambda env: a(env) - b(env)


def _mul(a: Node, b: Node) -> Node:
    return lambda env: a(env) * b(env)


def _div(a: Node, b: Node) -> Node:
    def run(env: Env) -> float:
        den = b(env)
        if den == 0:
            raise _Unsupported
        return a(env) / den

    return run


def _sqrt(a: Node) -> Node:
    def run(env: Env) -> float:
        value = a(env)
        if value < 0:
            raise _Unsupported
        return math.sqrt(value)

    return run


def _pow(a: Node, b: Node) -> Node:
    def run(env: Env) -> float:
        base, exponent = a(env), b(env)
        if abs(exponent) > _MAX_EXPONENT or (base < 0 and exponent != int(exponent)):
            raise _Unsupported
        return float(base**exponent)

    return run


def _values(text: str) -> list[float]:
    """The expression's value at each of the fixed points."""
    node = _Parser(_tokens(text)).parse()
    return [node(env) for env in _POINTS]


def arith_equal(gold: str, pred: str) -> bool | None:
    """True/False when both sides are plain arithmetic; None when Math-Verify must decide."""
    try:
        golds, preds = _values(gold), _values(pred)
    except (_Unsupported, OverflowError, ZeroDivisionError, KeyError, RecursionError):
        return None
    if not all(math.isfinite(v) for v in golds + preds):
        return None
    return _close(golds, preds)


def _close(a: list[float], b: list[float]) -> bool:
    """The same values at every point, up to rounding."""
    return all(abs(x - y) <= 1e-9 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b, strict=True))


_INTERVAL = re.compile(r"^([\[(])([^,]+),([^,]+)([\])])$")
_EQUATION = re.compile(r"^\s*([a-zA-Z])\s*=([^=]+)$")
_INFINITY = re.compile(r"^([+-]?)\s*\\infty$")


def _endpoint_equal(gold: str, pred: str) -> bool | None:
    """Interval ends: numbers and expressions, or the same signed infinity."""
    g, p = _INFINITY.match(gold.strip()), _INFINITY.match(pred.strip())
    if g or p:
        return bool(g and p) and (g.group(1) == "-") == (p.group(1) == "-")  # type: ignore[union-attr]
    return arith_equal(gold, pred)


_SET = re.compile(r"^\\\{(.*)\\\}$")


def _set_equal(gold: str, pred: str) -> bool | None:
    """Two sets of plain arithmetic elements: the same elements, in any order."""
    g, p = _SET.match(gold.strip()), _SET.match(pred.strip())
    if not (g and p):
        return None
    golds = [e for e in g.group(1).split(",") if e.strip()]
    preds = [e for e in p.group(1).split(",") if e.strip()]
    if any("{" in e or "}" in e for e in golds + preds) and not all(
        e.count("{") == e.count("}") for e in golds + preds
    ):
        return None  # a comma inside an element (`\\frac{1,2}`): not a plain list
    values = []
    for side in (golds, preds):
        try:
            values.append([_values(e) for e in side])
        except (_Unsupported, OverflowError, ZeroDivisionError, KeyError, RecursionError):
            return None
    left, right = values
    if not all(math.isfinite(v) for point in left + right for v in point):
        return None
    return all(any(_close(a, b) for b in right) for a in left) and all(
        any(_close(b, a) for a in left) for b in right
    )


def structured_equal(gold: str, pred: str) -> bool | None:
    """Two-ended intervals, `y = …` with the same left side, sets, or plain arithmetic; else
    None."""
    if gold.strip().startswith("\\{") or pred.strip().startswith("\\{"):
        return _set_equal(gold, pred)
    g, p = _INTERVAL.match(gold.strip()), _INTERVAL.match(pred.strip())
    if g and p:
        if (g.group(1), g.group(4)) != (p.group(1), p.group(4)):
            return False
        ends = [_endpoint_equal(g.group(i), p.group(i)) for i in (2, 3)]
        return None if None in ends else all(ends)
    ge, pe = _EQUATION.match(gold), _EQUATION.match(pred)
    if ge and pe and ge.group(1) == pe.group(1):
        return arith_equal(ge.group(2), pe.group(2))
    return arith_equal(gold, pred)
