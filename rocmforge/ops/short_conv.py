"""LFM2's gated short convolution (Liquid AI): a double-gated causal depthwise conv over a few tokens.

{op: short_conv, in, in_proj: shortconv.in_proj, conv: shortconv.conv, out_proj: shortconv.out_proj,
 bias?: expr (in/out projection and conv biases, HF conv_bias), conv_state?: conv, out}

  B, C, x = in_proj(h)                      # three (T, n_embd) chunks, in that order
  y = C * conv(B * x)                       # causal depthwise conv of L taps, no activation
  out = out_proj(y)

The conv continues each sequence's ``conv`` state: the last L - 1 rows of ``B * x`` (the recipe's
``state:`` section, declared only on conv layers). transformers keeps the same window (its
``causal_conv1d_update`` prepends the cached rows and keeps the newest ones), llama.cpp's ssm_conv
too. A composition of backend primitives (linear, mul, conv1d_causal): no kernel of its own.
"""

from __future__ import annotations

from .ssm import dense, per_sequence


def short_conv(ctx, step):
    be = ctx.backend
    biased = bool(ctx.value(step, "bias", False))

    def proj(x, key: str):
        return be.linear(x, ctx.tensor(step[key]), ctx.tensor(step[key] + ".bias") if biased else None)

    bcx = proj(ctx.get(step["in"]), "in_proj")                                # (T, 3 * n_embd)
    d = bcx.shape[1] // 3
    bx = be.mul(bcx[:, :d], bcx[:, 2 * d:])                                  # B * x
    w = dense(ctx, step["conv"])                                              # (n_embd, L)
    b = dense(ctx, step["conv"] + ".bias", (d,)) if biased else None
    name = step.get("conv_state", "conv")
    y = per_sequence(ctx, lambda seg, xs: be.conv1d_causal(xs, w, b, ctx.state(seg, name)), bx)
    y = be.mul(bcx[:, d:2 * d], y)                                            # C * conv(B * x)
    ctx.set(step["out"], proj(y, "out_proj"))


def _tensors(step, has, value):
    keys = ("in_proj", "conv", "out_proj")
    out = [(step[k], True) for k in keys]
    if value(step, "bias", False):
        out += [(step[k] + ".bias", True) for k in keys]
    return out


short_conv.tensors = _tensors
