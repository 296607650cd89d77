"""Feed-forward blocks: gated (SwiGLU / GeGLU) and plain MLPs.

Gated: down(act(gate(x)) * up(x)); ``gate_up`` names a fused tensor whose
rows are gate then up (Phi-3, GLM). Plain: down(act(up(x))).
"""

from __future__ import annotations


def _gated(ctx, step, default_act: str):
    be = ctx.backend
    x = ctx.get(step["in"])
    act = step.get("act", default_act)
    if ctx.value(step, "bias", False):     # gate/up/down carry ``.bias`` tensors (ERNIE 4.5 use_bias)
        g = be.linear(x, ctx.tensor(step["gate"]), ctx.tensor(step["gate"] + ".bias"))
        u = be.linear(x, ctx.tensor(step["up"]), ctx.tensor(step["up"] + ".bias"))
        down = ctx.tensor(step["down"])
        ctx.set(step["out"], be.linear(be.mul(be.act(g, act), u), down, ctx.tensor(step["down"] + ".bias")))
        return
    joined = ctx.tensor(step["gate_up"]) if "gate_up" in step else ctx.fused([step["gate"], step["up"]])
    if joined is not None:
        gu = be.linear(x, joined)
        half = gu.shape[1] // 2
        g, u = gu[:, :half], gu[:, half:]
    else:
        g = be.linear(x, ctx.tensor(step["gate"]))
        u = be.linear(x, ctx.tensor(step["up"]))
    ctx.set(step["out"], be.linear(be.act_mul(g, u, act), ctx.tensor(step["down"])))


def gated_ffn(ctx, step):
    """{op: swiglu, in, gate, up, down | gate_up, down; act?: silu, bias?: expr (gate/up/down biases), out}"""
    _gated(ctx, step, "silu")


def geglu(ctx, step):
    """{op: geglu, in, gate, up, down; act?: gelu_tanh, out}"""
    _gated(ctx, step, "gelu_tanh")


def mlp(ctx, step):
    """{op: mlp, in, up, down, bias?: true, act?: gelu, out}"""
    be = ctx.backend
    bias = bool(ctx.value(step, "bias", False))
    h = be.linear(ctx.get(step["in"]), ctx.tensor(step["up"]), ctx.tensor(step["up"] + ".bias") if bias else None)
    h = be.act(h, step.get("act", "gelu"))
    ctx.set(step["out"], be.linear(h, ctx.tensor(step["down"]), ctx.tensor(step["down"] + ".bias") if bias else None))
