"""Top-k on the raw router logits, then a softmax over the k chosen (Granite MoE, JetMoE).

transformers' GraniteMoeTopKRouter: ``logits.topk(k)`` then ``softmax(top_k_logits)``.
Equal in exact arithmetic to a full softmax renormalised over its top k (llama.cpp's
``norm_w``); this router states the HF order of operations.
"""

from __future__ import annotations

import numpy as np

from . import router


@router("softmax_after_topk")
def softmax_after_topk(ctx, step, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = int(ctx.value(step, "n_expert_used", "n_expert_used"))
    logits = np.asarray(logits, np.float32)                                 # (T, n_expert)
    ids = np.argsort(-logits, axis=-1, kind="stable")[:, :k]                # highest first, lower id on ties
    top = np.take_along_axis(logits, ids, axis=-1)                          # (T, k)
    z = np.exp(top - top[:, :1])
    return (z / z.sum(axis=-1, keepdims=True)).astype(np.float32), ids.astype(np.int64)
