"""SparseMixer top-2 routing of Phi-3.5-MoE, in eval mode (transformers' ``sparsemixer``, training=False).

Per token, twice: take the best remaining expert (argmax of the router logits, the first
choice masked out for the second), drop every expert whose logit lies further than
``2 * jitter_eps`` below that maximum relative to ``max(|logit|, maximum)``, and weight
the chosen expert by its softmax probability among those kept. The weights are not
renormalised. ``jitter_eps`` is the config's router_jitter_noise (step option ``jitter_eps``).
"""

from __future__ import annotations

import numpy as np

from ...errors import RocmforgeError
from . import router


def _pick(scores: np.ndarray, candidates: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """(weight (T,), id (T,)) of the best of ``candidates`` (scores with excluded experts at -inf)."""
    ids = np.argmax(candidates, axis=-1)                                   # first index on ties, as torch
    top = np.take_along_axis(candidates, ids[:, None], axis=-1)            # (T, 1)
    factor = np.maximum(np.abs(scores), top)
    gates = np.where((top - scores) / factor > 2 * eps, -np.inf, candidates)
    z = np.exp(gates - top)
    w = np.take_along_axis(z, ids[:, None], axis=-1)[:, 0] / z.sum(axis=-1)
    return w, ids


@router("sparsemixer")
def sparsemixer(ctx, step, logits: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    k = int(ctx.value(step, "n_expert_used", "n_expert_used"))
    if k != 2:
        raise RocmforgeError(f"layer {ctx.layer}: sparsemixer routing picks exactly 2 experts, the model asks for {k}")
    eps = float(ctx.value(step, "jitter_eps", 0.01))
    scores = np.asarray(logits, np.float32)                                # (T, n_expert)
    w1, i1 = _pick(scores, scores, eps)
    rest = scores.copy()
    rest[np.arange(len(scores)), i1] = -np.inf                             # the first choice is out
    w2, i2 = _pick(scores, rest, eps)
    return np.stack([w1, w2], axis=-1).astype(np.float32), np.stack([i1, i2], axis=-1).astype(np.int64)
