"""The recipe expression grammar: what it computes, and what it refuses."""

import pytest

from rocmforge import expr
from rocmforge.expr import ExprError

ENV = {"n_embd": 576, "n_head": 9, "n_expert": 0, "layer": 3, "eps": 1e-5, "kind": "yarn"}


@pytest.mark.parametrize("text, want", [
    ("1 + 2 * 3", 7),
    ("(1 + 2) * 3", 9),
    ("n_embd // n_head", 64),
    ("n_embd / n_head", 64.0),
    ("n_embd % 7", 576 % 7),
    ("2 ** 10", 1024),
    ("n_embd ** 0.5", 24.0),
    ("-n_head", -9),
    ("+n_head", 9),
    ("7 - 10", -3),
    ("eps * 2", 2e-5),
])
def test_arithmetic(text, want):
    assert expr.evaluate(text, ENV) == pytest.approx(want)


@pytest.mark.parametrize("text, want", [
    ("n_expert == 0", True),
    ("n_expert != 0", False),
    ("n_expert > 0", False),
    ("layer >= 3", True),
    ("layer < 3", False),
    ("layer <= 3", True),
    ("0 <= layer < 4", True),
    ("0 <= layer < 3", False),
    ("kind == 'yarn'", True),
    ("kind != 'yarn'", False),
])
def test_comparisons(text, want):
    assert expr.evaluate(text, ENV) is want


@pytest.mark.parametrize("text, want", [
    ("n_expert == 0 and layer == 3", True),
    ("n_expert == 0 and layer == 4", False),
    ("n_expert > 0 or layer == 3", True),
    ("n_expert > 0 or layer == 4", False),
    ("not n_expert", True),
    ("not (layer == 3)", False),
    ("true and not false", True),
    ("True or False", True),
])
def test_boolean_logic(text, want):
    assert bool(expr.evaluate(text, ENV)) is want


def test_and_or_return_operand_values_like_python():
    # ``a or b`` is the natural way to write a fallback in a recipe option
    assert expr.evaluate("n_expert or n_head", ENV) == 9
    assert expr.evaluate("n_head or n_expert", ENV) == 9
    assert expr.evaluate("n_head and n_embd", ENV) == 576
    assert expr.evaluate("n_expert and n_embd", ENV) == 0


def test_and_or_short_circuit():
    # the right side is never evaluated, so an unknown name there is no error
    assert expr.evaluate("n_expert > 0 and missing_name > 1", ENV) is False
    assert expr.evaluate("n_expert == 0 or missing_name > 1", ENV) is True


@pytest.mark.parametrize("text, want", [
    ("1 if n_expert == 0 else 2", 1),
    ("1 if n_expert > 0 else 2", 2),
    ("n_embd if layer % 2 else n_head", 576),
    ("0 if layer == 3 else missing_name", 0),  # only the chosen branch is evaluated
])
def test_if_else(text, want):
    assert expr.evaluate(text, ENV) == want


def test_numbers_pass_through():
    assert expr.evaluate(5, {}) == 5
    assert expr.evaluate(2.5, {}) == 2.5
    assert expr.evaluate(True, {}) is True


LAYERED = {"layer_types": ["sliding", "full", "sliding"], "no_rope": [1, 0, 1], "layer": 1, "moe_layers": [0, 2]}


@pytest.mark.parametrize("text, want", [
    ("layer_types[layer]", "full"),
    ("layer_types[layer] == 'full'", True),
    ("layer_types[0] == 'full'", False),
    ("layer_types[-1]", "sliding"),
    ("no_rope[layer + 1] == 1", True),
    ("layer in moe_layers", False),
    ("2 in moe_layers", True),
    ("layer not in moe_layers", True),
])
def test_per_layer_lists(text, want):
    assert expr.evaluate(text, LAYERED) == want


@pytest.mark.parametrize("text, message", [
    ("layer_types[3]", "outside the list of 3"),
    ("layer_types['a']", "must be an integer"),
    ("layer_types[True]", "must be an integer"),
    ("layer[0]", "only a list can be indexed"),
])
def test_per_layer_index_errors(text, message):
    with pytest.raises(ExprError, match=message):
        expr.evaluate(text, LAYERED)


def test_names():
    assert expr.names("n_embd // n_head if layer else eps") == {"n_embd", "n_head", "layer", "eps"}


@pytest.mark.parametrize("text, node", [
    ("len(kind)", "Call"),
    ("__import__('os').system('true')", "Call"),
    ("kind.upper", "Attribute"),
    ("().__class__", "Attribute"),
    ("().__class__.__bases__[0].__subclasses__()", "Call"),
    ("kind[0:1]", "Slice"),
    ("(lambda: 1)", "Lambda"),
    ("[1, 2]", "List"),
    ("(1, 2)", "Tuple"),
    ("{1: 2}", "Dict"),
    ("[x for x in kind]", "ListComp"),
    ("(x := 1)", "NamedExpr"),
    ("f'{kind}'", "JoinedStr"),
    ("1 if 1 else __builtins__.open", "Attribute"),
    ("n_head << 2", "LShift"),
])
def test_refuses_everything_but_the_grammar(text, node):
    with pytest.raises(ExprError) as exc:
        expr.parse(text)
    assert node in str(exc.value)
    assert text in str(exc.value)
    with pytest.raises(ExprError):
        expr.evaluate(text, ENV)


def test_refuses_dunder_names_and_builtins():
    # bare names only resolve through the given env, never Python's builtins
    for name in ("__builtins__", "__import__", "open", "eval"):
        with pytest.raises(ExprError, match="unknown name"):
            expr.evaluate(name, ENV)


def test_syntax_error_is_an_expr_error():
    with pytest.raises(ExprError, match="not a valid expression"):
        expr.parse("1 +")
    with pytest.raises(ExprError):
        expr.parse("import os")


def test_unknown_name_lists_known_ones():
    with pytest.raises(ExprError) as exc:
        expr.evaluate("n_embed // 2", {"n_embd": 1, "n_head": 2})
    msg = str(exc.value)
    assert "n_embed" in msg
    assert "n_embd" in msg and "n_head" in msg


def test_expr_error_is_a_value_error():
    assert issubclass(ExprError, ValueError)


@pytest.mark.parametrize("text", ["9 ** 9 ** 9", "10 ** 10 ** 10", "2 ** 100000000", "'x' * 10 ** 9"])
def test_huge_results_are_refused_not_computed(text):
    # a recipe is data: an expression must not be able to hang or exhaust memory
    with pytest.raises(ExprError):
        expr.evaluate(text, ENV)


@pytest.mark.parametrize("text", ["1 / 0", "n_head // n_expert", "n_head % 0", "kind + 1", "10.0 ** 400"])
def test_arithmetic_errors_become_expr_errors(text):
    with pytest.raises(ExprError) as exc:
        expr.evaluate(text, ENV)
    assert text in str(exc.value)
