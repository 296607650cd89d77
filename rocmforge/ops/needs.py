"""Which tensors a recipe step reads, so load_model can name every missing one up front.

A step names tensors under well-known keys (``weight``, ``q``, ``gate``, ...).
The generic rule takes every such key as required; the rules below add what
the generic rule cannot see: alternatives (a fused ``qkv`` or separate q/k/v,
``gate_up`` or gate + up), ``.bias`` tensors switched on by a flag, optional
tables. An op may carry its own rule as a ``tensors(step, has, value)``
attribute returning (name, required) pairs; plugins' ops do the same.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

Need = tuple[str, bool]          # (tensor name relative to the step's scope, required)

# keys whose value is a tensor of the step's layer (or of the model in embed/head steps)
TENSOR_KEYS = ("weight", "q", "k", "v", "o", "qkv", "q_norm", "k_norm", "gate", "up", "down", "gate_up",
               "router", "sinks", "exp_probs_b")


def _generic(step: dict, has: Callable[[str], bool], value: Callable) -> Iterable[Need]:
    for key in TENSOR_KEYS:
        if isinstance(step.get(key), str):
            yield step[key], True


def _attention(step, has, value):
    bias = bool(value(step, "bias", False))
    if int(value(step, "kv_from", -1)) >= 0:     # shares an earlier layer's K/V: only q and o of its own
        for name in (step["q"], step["o"]):
            yield name, True
        if bias:
            yield step["q"] + ".bias", True
        if value(step, "o_bias", False):
            yield step["o"] + ".bias", True
        for key in ("q_norm", "sinks"):
            if key in step:
                yield step[key], True
        return
    if "qkv" in step and ("q" not in step or has(step["qkv"])):
        proj = [step["qkv"]]
    else:
        proj = [step["q"], step["k"], step["v"]]
    for name in proj:
        yield name, True
        if bias:
            yield name + ".bias", True
    yield step["o"], True
    if value(step, "o_bias", False):
        yield step["o"] + ".bias", True
    for key in ("q_norm", "k_norm", "sinks"):
        if key in step:
            yield step[key], True


def _gated(step, has, value):
    if "gate_up" in step:
        yield step["gate_up"], True
    else:
        yield step["gate"], True
        yield step["up"], True
    yield step["down"], True
    if value(step, "bias", False):
        for key in ("gate", "up", "down"):
            yield step[key] + ".bias", True


def _mlp(step, has, value):
    bias = bool(value(step, "bias", False))
    for key in ("up", "down"):
        yield step[key], True
        if bias:
            yield step[key] + ".bias", True


def _layer_norm(step, has, value):
    if "weight" in step:
        yield step["weight"], True


def _moe(step, has, value):
    yield from _generic(step, has, value)
    shared = step.get("shared") or {}
    for key in ("gate", "up", "down", "gate_inp"):
        if key in shared:
            yield shared[key], True


RULES: dict[str, Callable[[dict, Callable, Callable], Iterable[Need]]] = {
    "attention": _attention,
    "swiglu": _gated,
    "geglu": _gated,
    "mlp": _mlp,
    "layer_norm": _layer_norm,     # its bias is optional
    "moe": _moe,
}


def step_tensors(op_name: str, fn: Callable, step: dict, has: Callable[[str], bool], value: Callable) -> list[Need]:
    rule = getattr(fn, "tensors", None) or RULES.get(op_name, _generic)
    return list(rule(step, has, value))
