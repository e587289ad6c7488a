"""A safe evaluator for the arithmetic a model writes (program of thought): no `eval`, no
names, no imports, bounded size and magnitude, so a hostile expression costs microseconds.

Contract: `evaluate(text)` returns an int or float, or raises `ExpressionError` saying why
(syntax, a forbidden construct, a bound). Allowed: numbers, + - * / // % **, unary +/-,
parentheses, and the calls abs, round, min, max, sqrt.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 512  # of the expression
MAX_NODES = 256  # AST nodes
MAX_EXPONENT = 64  # |b| in a ** b
MAX_MAGNITUDE = 1e18  # of any intermediate value

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}
_CALLS = {"abs": abs, "round": round, "min": min, "max": max, "sqrt": math.sqrt}


class ExpressionError(ValueError):
    """The text is not an arithmetic expression this evaluator computes."""


def evaluate(text: str) -> int | float:
    text = text.strip().rstrip(".").replace("×", "*").replace("÷", "/").replace("^", "**")
    if not text or len(text) > MAX_CHARS:
        raise ExpressionError(f"expression must be 1-{MAX_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExpressionError(f"not an expression: {exc.msg}") from None
    if sum(1 for _ in ast.walk(tree)) > MAX_NODES:
        raise ExpressionError(f"expression longer than {MAX_NODES} nodes")
    try:
        return _bounded(_eval(tree.body))
    except (ZeroDivisionError, OverflowError, ValueError) as exc:
        if isinstance(exc, ExpressionError):
            raise
        raise ExpressionError(f"cannot compute: {exc}") from None


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > MAX_EXPONENT:
            raise ExpressionError(f"exponent {right} is over {MAX_EXPONENT}")
        return _bounded(_BIN[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _CALLS \
            and not node.keywords and node.args:
        return _bounded(_CALLS[node.func.id](*(_eval(a) for a in node.args)))
    raise ExpressionError(f"{type(node).__name__} is not allowed (numbers, + - * / // % **, "
                           "abs, round, min, max, sqrt only)")


def _bounded(value):
    if isinstance(value, complex) or not abs(value) <= MAX_MAGNITUDE:
        raise ExpressionError(f"a value is over {MAX_MAGNITUDE:g} (or not a real number)")
    return value


def format_number(value: int | float) -> str:
    """12.0 -> "12"; 2/3 -> "0.666667"."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value) if isinstance(value, int) else f"{value:.6f}".rstrip("0").rstrip(".")
