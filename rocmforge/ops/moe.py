"""Mixture of experts: route each token to its top-k experts, mix their gated FFNs.

{op: moe, in, router: ffn_gate_inp, gate: ffn_gate_exps, up: ffn_up_exps, down: ffn_down_exps,
 n_expert_used?: expr, gating?: softmax|sigmoid, norm_topk?: expr, act?: silu,
 shared?: {gate, up, down, gate_inp?}, out}
The shared expert (Qwen2-MoE) runs on every token, scaled by sigmoid(gate_inp(x)) when given.
"""

from __future__ import annotations

import numpy as np


def moe(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    k = int(ctx.value(step, "n_expert_used", "n_expert_used"))
    logits = be.linear(x, ctx.tensor(step["router"]))                       # (T, n_expert)
    weights, ids = be.moe_route(logits, k, step.get("gating", "softmax"), bool(ctx.value(step, "norm_topk", True)))
    act = step.get("act", "silu")
    y = be.moe_ffn(x, ctx.tensor(step["gate"]), ctx.tensor(step["up"]), ctx.tensor(step["down"]), weights, ids, act)
    shared = step.get("shared")
    if shared:
        h = be.mul(be.act(be.linear(x, ctx.tensor(shared["gate"])), act), be.linear(x, ctx.tensor(shared["up"])))
        s = be.linear(h, ctx.tensor(shared["down"]))
        if "gate_inp" in shared:
            g = be.to_numpy(be.linear(x, ctx.tensor(shared["gate_inp"])))    # (T, 1)
            s = be.mul(s, be.upload((1.0 / (1.0 + np.exp(-g))).astype(np.float32)))
        y = be.add(y, s)
    ctx.set(step["out"], y)
