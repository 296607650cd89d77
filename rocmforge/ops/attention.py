"""Self-attention: projections, optional QK-norm, rotary embedding, causal SDPA over the KV cache.

Step fields (tensor names are relative to the layer, ``blk.{i}.``):
  q, k, v | qkv (fused rows q|k|v), o      projection weights; naming both uses qkv when the
                                           model has it, else q/k/v (GGUF GLM/Phi-3 files hold either)
  bias: true                               q/k/v (or qkv) carry ``.bias`` tensors
  o_bias: true                             the output projection carries a bias
  q_norm, k_norm                           QK-norm weights (Qwen3, Gemma3: per head, RMSNorm)
  qk_norm_scope: head | all                per head (default) or over all heads at once (OLMo 2)
  qk_norm_type: rms | layer                RMSNorm (default) or LayerNorm (Cohere); ``.bias`` optional
  qk_norm_after_rope: true                 per-head QK-norm of the rotated q and k (HunYuan), not before rope
  qk_l2norm: expr                          weightless RMS normalisation of q and k after rope (Llama 4)
  rope: normal | neox | none               pair layout of the rotation
  nope: expr                               true: this layer has no rotary embedding (SmolLM3, Cohere 2)
  rope_dim, rope_base, rope_freqs          rotated dims (partial rotary; 0: the whole head), theta, the model's GGUF divisors
  rope_scaling: expr                       false: this layer's rope is unscaled (Gemma 3 local layers)
  n_head, n_head_kv, head_dim              default to the hparams of the same names
  scale, window, softcap                   1/sqrt(head_dim), 0 (full), 0 (off) by default
  chunk: expr                              > 0: keys only from the query's own chunk (Llama 4)
  alibi: expr                              true: ALiBi distance penalties instead of rope (BLOOM, MPT)
  alibi_bias_max: expr                     the slope schedule's maximum bias (8)
  sinks: name                              per-head sink logits in every softmax (gpt-oss)
  v_norm: expr                             weightless RMS normalisation of each value head (Gemma 4)
  head_dims_from_tensors: true             this layer's head_dim is its q_norm's size, n_head_kv its k rows / head_dim
                                           (Gemma 4 global layers have their own; the KV cache follows)
  kv_from: expr                            >= 0: no k/v of its own, attend over that (earlier) layer's cached
                                           K/V (Gemma 4 KV sharing); -1 (default): its own K/V
  temp_scale, temp_floor, temp_offset      > 0: q *= 1 + temp_scale * log(floor((pos + temp_offset) / temp_floor) + 1)
                                           after rope and norms (Llama 4 NoPE layers, Ministral 3)
  q_gate: expr                             true: q's rows are [q | gate] per head (2 * head_dim each); the
                                           attention output is scaled by sigmoid(gate) before o (Qwen3-Next)
"""

from __future__ import annotations

import math

import numpy as np

from .rope import inv_freq


def alibi_slopes(n_head: int, bias_max: float = 8.0) -> np.ndarray:
    """ALiBi's geometric slopes; heads beyond the largest power of two interleave a finer schedule."""
    n2 = 2 ** math.ceil(math.log2(n_head))
    slopes = 1.0 / 2.0 ** (np.arange(1, n2 + 1, dtype=np.float64) * bias_max / n2)
    if n2 != n_head:
        slopes = np.concatenate([slopes[1::2], slopes[::2]])[:n_head]
    return slopes.astype(np.float32)


def _project(ctx, step, x, H, Hkv, D, Dq=None):
    """q (T, H*Dq), k (T, Hkv*D), v (T, Hkv*Dv) from fused or separate projections (Dq: D by default)."""
    be = ctx.backend
    qw = H * (Dq or D)
    bias = bool(ctx.value(step, "bias", False))
    fused = ctx.tensor(step["qkv"], optional="q" in step) if "qkv" in step else None
    if fused is not None:
        qkv = be.linear(x, fused, ctx.tensor(step["qkv"] + ".bias") if bias else None)
        return qkv[:, :qw], qkv[:, qw: qw + Hkv * D], qkv[:, qw + Hkv * D:]
    names = [step["q"], step["k"], step["v"]]
    joined = ctx.fused(names)          # one matmul where the backend can join the three
    if joined is not None:
        qkv = be.linear(x, joined, ctx.fused([n + ".bias" for n in names]) if bias else None)
        return qkv[:, :qw], qkv[:, qw: qw + Hkv * D], qkv[:, qw + Hkv * D:]
    return tuple(be.linear(x, ctx.tensor(n), ctx.tensor(n + ".bias") if bias else None) for n in names)


def _gate_split(q, T, H, D):
    """(T, H * 2D) rows [q | gate] per head -> q (T, H * D), gate (T, H * D)."""
    qg = q.reshape(T, H, 2 * D)
    return qg[:, :, :D].reshape(T, H * D), qg[:, :, D:].reshape(T, H * D)


def _qk_norm(ctx, step, t, name):
    be = ctx.backend
    eps = ctx.value(step, "eps", "norm_eps")
    w = ctx.tensor(step[name])
    if step.get("qk_norm_type", "rms") == "layer":
        return be.layer_norm(t, w, ctx.tensor(step[name] + ".bias", optional=True), eps)
    return be.rms_norm(t, w, eps)


def attention(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    T = x.shape[0]
    H = int(ctx.value(step, "n_head", "n_head"))
    Hkv = int(ctx.value(step, "n_head_kv", "n_head_kv"))
    D = int(ctx.value(step, "head_dim", "head_dim"))
    src = int(ctx.value(step, "kv_from", -1))
    shared = src >= 0                              # K/V come from layer src's cache
    gated = bool(ctx.value(step, "q_gate", False))
    gate = None
    if step.get("head_dims_from_tensors"):
        D = int(ctx.tensor(step["q_norm"]).shape[0])
        if not shared:
            Hkv = int(ctx.tensor(step["k"]).shape[0]) // D

    if shared:
        bias = bool(ctx.value(step, "bias", False))
        q = be.linear(x, ctx.tensor(step["q"]), ctx.tensor(step["q"] + ".bias") if bias else None)
        if gated:
            q, gate = _gate_split(q, T, H, D)
        q = q.reshape(T, H, D)
        if "q_norm" in step:
            q = _qk_norm(ctx, step, q, "q_norm")
        k = v = None
    else:
        q, k, v = _project(ctx, step, x, H, Hkv, D, 2 * D if gated else None)
        if gated:
            q, gate = _gate_split(q, T, H, D)
        if "q_norm" in step and step.get("qk_norm_scope", "head") == "all":
            q, k = _qk_norm(ctx, step, q, "q_norm"), _qk_norm(ctx, step, k, "k_norm")   # over all heads at once
        q = q.reshape(T, H, D)      # (T, n_head, head_dim)
        k = k.reshape(T, Hkv, D)    # (T, n_head_kv, head_dim)
        v = v.reshape(T, Hkv, -1)
        late_norm = bool(step.get("qk_norm_after_rope", False))
        if "q_norm" in step and step.get("qk_norm_scope", "head") == "head" and not late_norm:
            q, k = _qk_norm(ctx, step, q, "q_norm"), _qk_norm(ctx, step, k, "k_norm")
        if ctx.value(step, "v_norm", False):
            v = be.rms_norm(v, None, ctx.value(step, "eps", "norm_eps"))

    style = step.get("rope", "normal")
    if style != "none" and not ctx.value(step, "nope", False):
        rot = int(ctx.value(step, "rope_dim", D)) or D      # 0: the whole head
        base = float(ctx.value(step, "rope_base", "rope_theta"))
        scaled = bool(ctx.value(step, "rope_scaling", True))
        # one table for the whole model (llama.cpp writes it for llama3 rope scaling), not per layer
        factors = (ctx.model_tensor(step["rope_freqs"], optional=True, host=True)
                   if "rope_freqs" in step and scaled else None)
        hp = ctx.hp if scaled else {**ctx.hp, "rope_scaling_type": "none"}
        freqs, mscale = ctx.cached(("rope", rot, base, scaled, factors is not None),
                                   lambda: inv_freq(rot, base, hp, factors))
        if k is not None:
            q, k = be.rope_qk(q, k, ctx.positions, freqs, style, rot, mscale)
        else:
            q = be.rope(q, ctx.positions, freqs, style, rot, mscale)
    if "q_norm" in step and not shared and late_norm:      # per head, of the rotated q and k (HunYuan)
        q, k = _qk_norm(ctx, step, q, "q_norm"), _qk_norm(ctx, step, k, "k_norm")
    if ctx.value(step, "qk_l2norm", False):
        q, k = be.rms_norm(q, None, ctx.value(step, "l2norm_eps", 1e-6)), be.rms_norm(k, None, ctx.value(step, "l2norm_eps", 1e-6))
    temp = float(ctx.value(step, "temp_scale", 0.0) or 0.0)
    if temp:    # query temperature by position: 1 + s * log(floor((p + offset) / floor) + 1)
        pos = (ctx.positions + float(ctx.value(step, "temp_offset", 0.0) or 0.0)) / float(ctx.value(step, "temp_floor"))
        q = be.mul(q, be.upload((np.log(np.floor(pos) + 1.0) * temp + 1.0).astype(np.float32).reshape(-1, 1, 1)))

    scale = float(ctx.value(step, "scale", 1.0 / math.sqrt(D)))
    opts = {
        "window": int(ctx.value(step, "window", 0) or 0),
        "softcap": float(ctx.value(step, "softcap", 0.0) or 0.0),
        "chunk": int(ctx.value(step, "chunk", 0) or 0),
        "alibi": (ctx.cached(("alibi", H, float(ctx.value(step, "alibi_bias_max", 8.0))),
                             lambda: alibi_slopes(H, float(ctx.value(step, "alibi_bias_max", 8.0))))
                  if ctx.value(step, "alibi", False) else None),
        "sinks": ctx.tensor(step["sinks"]) if "sinks" in step else None,
    }
    out = _attend(ctx, q, k, v, scale, opts, src if shared else ctx.layer)    # (T, H, Dv)
    if gate is not None:
        out = be.act_mul(gate, out.reshape(T, -1), "sigmoid")                  # sigmoid(gate) * out
    o_bias = ctx.tensor(step["o"] + ".bias") if ctx.value(step, "o_bias", False) else None
    ctx.set(step["out"], be.linear(out.reshape(T, -1), ctx.tensor(step["o"]), o_bias))


def _attend(ctx, q, k, v, scale, opts, layer=None):
    """Causal attention of every sequence in the batch against its own cache (layer ``layer`` of it, default this one).

    k, v None: the layer shares ``layer``'s cache; its K/V for these positions are read back
    (storing them again changes nothing)."""
    be = ctx.backend
    layer = ctx.layer if layer is None else layer
    if k is not None:
        return be.attention_batch(q, k, v, ctx.segments, layer, scale, **opts)
    parts = []
    for seg in ctx.segments:
        r = slice(seg.start, seg.start + seg.length)
        ks, vs = be.kv_read(seg.cache, layer, seg.pos0, seg.length)
        qs = q if len(ctx.segments) == 1 else q[r]
        parts.append(be.attention(qs, ks, vs, seg.cache, layer, seg.pos0, scale, **opts))
    return parts[0] if len(parts) == 1 else be.concat(parts)
