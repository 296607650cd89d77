"""gpt-oss mixture of experts: a biased router, top-k softmax, biased experts with a clamped SwiGLU.

{op: moe_oss, in, router: ffn_gate_inp, gate: ffn_gate_exps, up: ffn_up_exps, down: ffn_down_exps,
 n_expert_used?: expr, alpha?: expr (1.702), limit?: expr (7.0), out}

  logits = x @ router.T + router.bias                      (T, n_expert)
  top-k logits, weights = softmax over those k              (= softmax over all, renormalised)
  g = clamp(x @ gate_e.T + gate_e.bias, max=limit)
  u = clamp(x @ up_e.T + up_e.bias, -limit, limit)
  y = sum_j w_j * (down_e((u + 1) * g * sigmoid(alpha * g)) + down_e.bias)

Every tensor carries a ``.bias`` (router (n_expert,), experts (n_expert, rows)), as in
transformers' GptOssMLP and llama.cpp's LLM_FFN_SWIGLU_OAI_MOE.
"""

from __future__ import annotations

from .moe import expert_tensors


def moe_oss(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    k = int(ctx.value(step, "n_expert_used", "n_expert_used"))
    router, gate, up, down = expert_tensors(ctx, step)
    logits = be.linear(x, router, ctx.tensor(step["router"] + ".bias"))    # (T, n_expert)
    weights, ids = be.moe_route(logits, k, "softmax", True)
    biases = tuple(ctx.tensor(step[n] + ".bias") for n in ("gate", "up", "down"))   # (n_expert, rows)
    y = be.moe_ffn_oai(x, gate, up, down, *biases, weights, ids,
                       float(ctx.value(step, "alpha", 1.702)), float(ctx.value(step, "limit", 7.0)))
    ctx.set(step["out"], y)


def _tensors(step, has, value):
    for key in ("router", "gate", "up", "down"):
        yield step[key], True
        yield step[key] + ".bias", True


moe_oss.tensors = _tensors
