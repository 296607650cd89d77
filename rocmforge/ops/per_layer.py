"""Per-layer input embeddings (Gemma 3n / Gemma 4 "PLE") and a layer-output scale.

{op: per_layer_inputs, in: x, embd: per_layer_token_embd, proj: per_layer_model_proj,
 norm: per_layer_proj_norm, n_embd: expr (per-layer width P), out}       embed section, after the embedding
  e = embd[ids] * sqrt(P)                         (T, n_layer * P), the token's own per-layer vectors
  p = rms_norm((x @ proj.T) / sqrt(n_embd))       normalised per layer slice of P
  out = (p + e) / sqrt(2)

{op: per_layer_mix, in: x, inputs: <per_layer_inputs out>, gate: inp_gate, proj: proj, norm: post_norm,
 n_embd: expr, act?: gelu_tanh, out}                                      block section
  x + rms_norm(proj(act(gate(x)) * inputs[:, layer * P:(layer + 1) * P]))

{op: scale_by, in, weight, out}                   x * weight (a (1,) tensor: Gemma 4 layer_scalar); skipped
                                                  when the model has no such tensor
"""

from __future__ import annotations

import math


def per_layer_inputs(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    T = x.shape[0]
    P = int(ctx.value(step, "n_embd"))
    e = be.scale(be.embedding(ctx.tensor(step["embd"]), ctx.ids), math.sqrt(P))        # (T, L*P)
    p = be.scale(be.linear(x, ctx.tensor(step["proj"])), 1.0 / math.sqrt(x.shape[1]))  # (T, L*P)
    L = p.shape[1] // P
    p = be.rms_norm(p.reshape(T, L, P), ctx.tensor(step["norm"]), ctx.value(step, "eps", "norm_eps")).reshape(T, L * P)
    ctx.set(step["out"], be.scale(be.add(p, e), 2.0 ** -0.5))


def per_layer_mix(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    P = int(ctx.value(step, "n_embd"))
    ple = ctx.get(step["inputs"])[:, ctx.layer * P:(ctx.layer + 1) * P]                  # (T, P)
    h = be.mul(be.act(be.linear(x, ctx.tensor(step["gate"])), step.get("act", "gelu_tanh")), ple)
    h = be.rms_norm(be.linear(h, ctx.tensor(step["proj"])), ctx.tensor(step["norm"]), ctx.value(step, "eps", "norm_eps"))
    ctx.set(step["out"], be.add(x, h))


def scale_by(ctx, step):
    x = ctx.get(step["in"])
    w = ctx.tensor(step["weight"], optional=True)
    ctx.set(step["out"], x if w is None else ctx.backend.mul(x, w))


per_layer_inputs.tensors = lambda step, has, value: [(step[k], True) for k in ("embd", "proj", "norm")]
per_layer_mix.tensors = lambda step, has, value: [(step[k], True) for k in ("gate", "proj", "norm")]
scale_by.tensors = lambda step, has, value: [(step["weight"], False)]
