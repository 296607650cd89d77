"""Embedding, norms, residual add, scaling and the output head."""

from __future__ import annotations


def embedding(ctx, step):
    """{op: embedding, weight: token_embd, scale?: expr, out: x}"""
    x = ctx.backend.embedding(ctx.tensor(step["weight"]), ctx.ids)
    if "scale" in step:
        x = ctx.backend.scale(x, ctx.value(step, "scale"))
    ctx.set(step["out"], x)


def rms_norm(ctx, step):
    """{op: rms_norm, in, weight, eps?: expr (default norm_eps), out}"""
    x = ctx.get(step["in"])
    w = ctx.tensor(step["weight"]) if "weight" in step else None
    ctx.set(step["out"], ctx.backend.rms_norm(x, w, ctx.value(step, "eps", "norm_eps")))


def layer_norm(ctx, step):
    """{op: layer_norm, in, weight, bias?, eps?, out}"""
    x = ctx.get(step["in"])
    w = ctx.tensor(step["weight"]) if "weight" in step else None
    b = ctx.tensor(step["bias"], optional=True) if "bias" in step else None
    ctx.set(step["out"], ctx.backend.layer_norm(x, w, b, ctx.value(step, "eps", "norm_eps")))


def add(ctx, step):
    """{op: add, in: [a, b], out}"""
    a, b = step["in"]
    ctx.set(step["out"], ctx.backend.add(ctx.get(a), ctx.get(b)))


def scale(ctx, step):
    """{op: scale, in, by: expr, out}"""
    ctx.set(step["out"], ctx.backend.scale(ctx.get(step["in"]), ctx.value(step, "by")))


def output(ctx, step):
    """{op: output, in, weight: output, bias?: expr (true: ``<weight>.bias``, Phi-MoE), softcap?: expr, out: logits}"""
    bias = ctx.tensor(step["weight"] + ".bias") if ctx.value(step, "bias", False) else None
    y = ctx.backend.linear(ctx.get(step["in"]), ctx.tensor(step["weight"]), bias)
    cap = ctx.value(step, "softcap", 0.0)
    if cap:
        y = ctx.backend.softcap(y, cap)
    ctx.set(step["out"], y)


output.tensors = lambda step, has, value: [(step["weight"], True)] + (
    [(step["weight"] + ".bias", True)] if value(step, "bias", False) else [])


def position_embedding(ctx, step):
    """{op: position_embedding, in, weight: position_embd, offset?: expr, out}: add learned positions (GPT-2).

    ``offset`` shifts the row index (OPT's table starts at row 2)."""
    be = ctx.backend
    offset = int(ctx.value(step, "offset", 0) or 0)
    rows = be.embedding(ctx.model_tensor(step["weight"]), ctx.positions + offset)
    ctx.set(step["out"], be.add(ctx.get(step["in"]), rows))
