"""DeepSeek's expert routers (transformers' DeepseekV2/V3TopkRouter), also used by GLM-4.5 and dots.llm1.

deepseek_v3 ("noaux_tc"): sigmoid scores; the per-expert correction bias (``exp_probs_b``) shifts
the scores for *choosing* experts only; experts come from the ``topk_group`` best of ``n_group``
groups, a group scoring the sum of its two best biased scores; the chosen experts' unbiased
scores are renormalised (``norm_topk``) and multiplied by ``scale`` (routed_scaling_factor).

deepseek_v2: softmax scores, top-k over all experts ("greedy") or within the ``topk_group`` groups
of highest maximum score ("group_limited_greedy"); weights times ``scale``, renormalised only when
``norm_topk`` says so (transformers' V2 router never renormalises).

Step options: n_expert_used, n_group, topk_group, norm_topk, norm_topk_eps, scale (expressions), exp_probs_b
(tensor, v3), method (v2: greedy | group_limited_greedy).
"""

from __future__ import annotations

import numpy as np

from . import router


def _opt(ctx, step, key, default):
    return ctx.value(step, key, default)


def _group_mask(choice: np.ndarray, n_group: int, topk_group: int, group_score) -> np.ndarray:
    """(T, E) True for experts of each token's topk_group best groups."""
    T, E = choice.shape
    groups = group_score(choice.reshape(T, n_group, E // n_group))            # (T, n_group)
    best = np.argsort(-groups, axis=-1, kind="stable")[:, :topk_group]
    keep = np.zeros((T, n_group), bool)
    np.put_along_axis(keep, best, True, axis=-1)
    return np.repeat(keep, E // n_group, axis=-1)


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-scores, axis=-1, kind="stable")[:, :k]


def _weights(ctx, step, scores, ids, norm_default: bool):
    """The chosen experts' scores, renormalised if asked (+ norm_topk_eps: 1e-20 as transformers' DeepSeek,
    1e-6 in its LFM2-MoE), times the routed scale."""
    w = np.take_along_axis(scores, ids, axis=-1)
    if _opt(ctx, step, "norm_topk", norm_default):
        w = w / (w.sum(-1, keepdims=True) + float(_opt(ctx, step, "norm_topk_eps", 1e-20)))
    w = w * float(_opt(ctx, step, "scale", 1.0))
    return w.astype(np.float32), ids


@router("deepseek_v3")
def deepseek_v3(ctx, step, logits):
    k = int(_opt(ctx, step, "n_expert_used", "n_expert_used"))
    scores = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))                 # (T, E)
    choice = scores
    if "exp_probs_b" in step:
        bias = ctx.tensor(step["exp_probs_b"], optional=True, host=True)
        if bias is not None:
            choice = scores + np.asarray(bias, np.float64).reshape(1, -1)
    n_group = int(_opt(ctx, step, "n_group", 1) or 1)
    if n_group > 1:
        mask = _group_mask(choice, n_group, int(_opt(ctx, step, "topk_group", n_group)),
                           lambda g: np.sort(g, axis=-1)[..., -2:].sum(-1))
        choice = np.where(mask, choice, -np.inf)
    return _weights(ctx, step, scores, _top(choice, k), norm_default=True)


@router("deepseek_v2")
def deepseek_v2(ctx, step, logits):
    k = int(_opt(ctx, step, "n_expert_used", "n_expert_used"))
    z = np.exp(logits.astype(np.float64) - logits.max(-1, keepdims=True))
    scores = z / z.sum(-1, keepdims=True)
    method = str(_opt(ctx, step, "method", "'greedy'"))
    if method == "group_limited_greedy":
        n_group = int(_opt(ctx, step, "n_group", 1) or 1)
        mask = _group_mask(scores, n_group, int(_opt(ctx, step, "topk_group", n_group)), lambda g: g.max(-1))
        scores = np.where(mask, scores, 0.0)
    elif method != "greedy":
        raise ValueError(f"deepseek_v2 router: unknown topk_method {method!r} (greedy, group_limited_greedy)")
    return _weights(ctx, step, scores, _top(scores, k), norm_default=False)
