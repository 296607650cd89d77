"""A tiny safe expression grammar for recipe conditions and computed options.

Parsed with ``ast`` and evaluated by walking the tree over a whitelist of
node types: names (hparams, ``layer``), numbers, strings, booleans,
arithmetic, comparisons (``in`` / ``not in`` included), ``and``/``or``/``not``,
``a if c else b`` and indexing a per-layer list (``layer_types[layer]``).
Never ``eval``: attribute access, calls, slices and lambdas are rejected.
"""

from __future__ import annotations

import ast
import operator
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

_BIN = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CMP = {
    ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
    ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}


class ExprError(ValueError):
    pass


def _check(node: ast.AST, text: str) -> None:
    allowed = (ast.Expression, ast.Name, ast.Load, ast.Constant, ast.BinOp, ast.UnaryOp,
               ast.BoolOp, ast.And, ast.Or, ast.Compare, ast.IfExp, ast.Subscript, *_BIN, *_CMP, *_UNARY)
    for sub in ast.walk(node):
        if not isinstance(sub, allowed):
            raise ExprError(f"'{text}': {type(sub).__name__} is not allowed in a recipe expression")


@lru_cache(maxsize=1024)
def parse(text: str) -> ast.Expression:
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"'{text}': not a valid expression ({exc.msg})") from None
    _check(tree, text)
    return tree


def names(text: str) -> set[str]:
    return {n.id for n in ast.walk(parse(text)) if isinstance(n, ast.Name)}


# Bounds that keep a hostile or mistaken expression from hanging or exhausting memory.
_MAX_POW_EXPONENT = 1024
_MAX_STR_LEN = 4096


def evaluate(text: str | int | float | bool, env: Mapping[str, Any]) -> Any:
    """Evaluate ``text`` with names looked up in ``env``; numbers pass through."""
    if not isinstance(text, str):
        return text
    try:
        return _eval(parse(text).body, env, text)
    except (ArithmeticError, TypeError) as exc:  # 1 / 0, 10.0 ** 400, "a" + 1
        raise ExprError(f"'{text}': {type(exc).__name__}: {exc}") from None


def _binop(node: ast.BinOp, env: Mapping[str, Any], text: str) -> Any:
    left, right = _eval(node.left, env, text), _eval(node.right, env, text)
    if isinstance(node.op, ast.Pow) and isinstance(right, (int, float)) and abs(right) > _MAX_POW_EXPONENT:
        raise ExprError(f"'{text}': exponent {right} is larger than {_MAX_POW_EXPONENT}")
    if isinstance(left, str) or isinstance(right, str):
        if not isinstance(node.op, ast.Add) or not (isinstance(left, str) and isinstance(right, str)):
            raise ExprError(f"'{text}': only + joins strings")
        if len(left) + len(right) > _MAX_STR_LEN:
            raise ExprError(f"'{text}': string longer than {_MAX_STR_LEN}")
    return _BIN[type(node.op)](left, right)


def _index(seq: Any, i: Any, text: str) -> Any:
    """``seq[i]`` for a per-layer list and an integer index, with an error that says which."""
    if not isinstance(seq, (list, tuple)):
        raise ExprError(f"'{text}': only a list can be indexed, found {type(seq).__name__}")
    if isinstance(i, bool) or not isinstance(i, int):
        raise ExprError(f"'{text}': a list index must be an integer, found {i!r}")
    if not -len(seq) <= i < len(seq):
        raise ExprError(f"'{text}': index {i} is outside the list of {len(seq)}")
    return seq[i]


def _eval(node: ast.AST, env: Mapping[str, Any], text: str) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id in ("true", "True"):
            return True
        if node.id in ("false", "False"):
            return False
        if node.id not in env:
            raise ExprError(f"'{text}': unknown name '{node.id}' (known: {', '.join(sorted(env))})")
        return env[node.id]
    if isinstance(node, ast.BinOp):
        return _binop(node, env, text)
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_eval(node.operand, env, text))
    if isinstance(node, ast.BoolOp):
        # Python semantics: short-circuit and return the deciding operand (``head_dim or 64``)
        value = None
        for v in node.values:
            value = _eval(v, env, text)
            if bool(value) != isinstance(node.op, ast.And):
                return value
        return value
    if isinstance(node, ast.Compare):
        left = _eval(node.left, env, text)
        for op, comp in zip(node.ops, node.comparators):
            right = _eval(comp, env, text)
            if not _CMP[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Subscript):
        return _index(_eval(node.value, env, text), _eval(node.slice, env, text), text)
    if isinstance(node, ast.IfExp):
        return _eval(node.body if _eval(node.test, env, text) else node.orelse, env, text)
    raise ExprError(f"'{text}': unsupported expression")
