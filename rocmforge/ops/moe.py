"""Mixture of experts: route each token to its top-k experts, mix their gated FFNs.

{op: moe, in, router: ffn_gate_inp, gate: ffn_gate_exps, up: ffn_up_exps, down: ffn_down_exps,
 n_expert_used?: expr, gating?: softmax|sigmoid|<a router of rocmforge.ops.routers>, norm_topk?: expr, act?: silu,
 weight_input?: expr, shared?: {gate, up, down, gate_inp?}, out}
weight_input: the router weight scales each chosen expert's input instead of its output (Llama 4).
The shared expert (Qwen2-MoE) runs on every token, scaled by sigmoid(gate_inp(x)) when given.
"""

from __future__ import annotations

import numpy as np

from ..errors import TensorMapError
from .routers import routers


def expert_tensors(ctx, step) -> tuple:
    """The layer's router (n_expert, n_embd) and gate/up/down stacks (n_expert, rows, cols), counts checked.

    ``expert_shards`` (set by tensor parallelism, rocmforge.parallel): the stacks hold that
    fraction of the router's experts (a rank's whole experts)."""
    router = ctx.tensor(step["router"])
    gate, up, down = (ctx.tensor(step[n]) for n in ("gate", "up", "down"))
    shards = int(ctx.value(step, "expert_shards", 1) or 1)
    counts = {step[n]: t.shape[0] for n, t in (("router", router), ("gate", gate), ("up", up), ("down", down))}
    counts[step["router"]] //= shards
    if len(set(counts.values())) > 1:
        raise TensorMapError(f"layer {ctx.layer}: expert counts differ between tensors: {counts}")
    return router, gate, up, down


def moe(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    k = int(ctx.value(step, "n_expert_used", "n_expert_used"))
    router, gate, up, down = expert_tensors(ctx, step)
    logits = be.linear(x, router)                                           # (T, n_expert)
    gating = step.get("gating", "softmax")
    custom = routers().get(gating)
    if custom is not None:       # a family's own scheme (grouped top-k, correction bias, ...), on the host
        weights, ids = custom(ctx, step, be.to_numpy(logits))
    else:
        weights, ids = be.moe_route(logits, k, gating, bool(ctx.value(step, "norm_topk", True)))
    act = step.get("act", "silu")
    if ctx.value(step, "weight_input", False):
        # Llama 4: each chosen expert runs on x * its router weight (experts are not linear in it)
        ones = np.ones((ids.shape[0], 1), np.float32)
        parts = [be.moe_ffn(be.mul(x, be.upload(np.ascontiguousarray(weights[:, j:j + 1], np.float32))),
                            gate, up, down, ones, ids[:, j:j + 1], act) for j in range(ids.shape[1])]
        y = parts[0]
        for part in parts[1:]:
            y = be.add(y, part)
    else:
        y = be.moe_ffn(x, gate, up, down, weights, ids, act)
    shared = step.get("shared")
    if shared:
        h = be.mul(be.act(be.linear(x, ctx.tensor(shared["gate"])), act), be.linear(x, ctx.tensor(shared["up"])))
        s = be.linear(h, ctx.tensor(shared["down"]))
        if "gate_inp" in shared:
            # (T, 1); llama.cpp's GGUF stores the gate as a vector (n_embd,), HF as (1, n_embd)
            g = be.to_numpy(be.linear(x, ctx.tensor(shared["gate_inp"]))).reshape(-1, 1)
            s = be.mul(s, be.upload((1.0 / (1.0 + np.exp(-g))).astype(np.float32)))
        y = be.add(y, s)
    ctx.set(step["out"], y)
