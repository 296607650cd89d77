"""ERNIE 4.5 MoE routing (transformers' Ernie4_5_MoeTopKRouter).

Softmax over all experts; the per-expert correction bias (moe_statics.e_score_correction_bias,
GGUF ``exp_probs_b``) is added for *choosing* the top k only; the chosen experts' unbiased
probabilities are renormalised by ``max(sum, norm_min)`` (moe_norm_min).

Step options: n_expert_used, norm_min (expressions), exp_probs_b (tensor, optional).
"""

from __future__ import annotations

import numpy as np

from . import router


@router("ernie")
def ernie(ctx, step, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = int(ctx.value(step, "n_expert_used", "n_expert_used"))
    logits = np.asarray(logits, np.float32)                                 # (T, n_expert)
    z = np.exp(logits - logits.max(axis=-1, keepdims=True))
    probs = z / z.sum(axis=-1, keepdims=True)
    choice = probs
    if "exp_probs_b" in step:
        bias = ctx.tensor(step["exp_probs_b"], optional=True, host=True)
        if bias is not None:
            choice = probs + np.asarray(bias, np.float32).reshape(1, -1)
    ids = np.argsort(-choice, axis=-1, kind="stable")[:, :k]               # highest first, lower id on ties
    w = np.take_along_axis(probs, ids, axis=-1)
    w = w / np.maximum(w.sum(axis=-1, keepdims=True), float(ctx.value(step, "norm_min", 1e-12)))
    return w.astype(np.float32), ids.astype(np.int64)
