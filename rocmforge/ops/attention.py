"""Self-attention: projections, optional QK-norm, rotary embedding, causal SDPA over the KV cache.

Step fields (tensor names are relative to the layer, ``blk.{i}.``):
  q, k, v | qkv (fused rows q|k|v), o      projection weights; naming both uses qkv when the
                                           model has it, else q/k/v (GGUF GLM/Phi-3 files hold either)
  bias: true                               q/k/v (or qkv) carry ``.bias`` tensors
  o_bias: true                             the output projection carries a bias
  q_norm, k_norm                           per-head RMSNorm weights (Qwen3, Gemma3)
  rope: normal | neox | none               pair layout of the rotation
  rope_dim, rope_base, rope_freqs          rotated dims (partial rotary), theta, GGUF divisors
  rope_scaling: expr                       false: this layer's rope is unscaled (Gemma 3 local layers)
  n_head, n_head_kv, head_dim              default to the hparams of the same names
  scale, window, softcap                   1/sqrt(head_dim), 0 (full), 0 (off) by default
"""

from __future__ import annotations

import math

from .rope import inv_freq


def attention(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    T = x.shape[0]
    H = int(ctx.value(step, "n_head", "n_head"))
    Hkv = int(ctx.value(step, "n_head_kv", "n_head_kv"))
    D = int(ctx.value(step, "head_dim", "head_dim"))
    bias = bool(ctx.value(step, "bias", False))

    fused = ctx.tensor(step["qkv"], optional="q" in step) if "qkv" in step else None
    if fused is not None:
        qkv = be.linear(x, fused, ctx.tensor(step["qkv"] + ".bias") if bias else None)
        q, k, v = qkv[:, : H * D], qkv[:, H * D: (H + Hkv) * D], qkv[:, (H + Hkv) * D:]
    else:
        names = [step["q"], step["k"], step["v"]]
        joined = ctx.fused(names)          # one matmul where the backend can join the three
        if joined is not None:
            qkv = be.linear(x, joined, ctx.fused([n + ".bias" for n in names]) if bias else None)
            q, k, v = qkv[:, : H * D], qkv[:, H * D: (H + Hkv) * D], qkv[:, (H + Hkv) * D:]
        else:
            q, k, v = (be.linear(x, ctx.tensor(n), ctx.tensor(n + ".bias") if bias else None) for n in names)
    q = q.reshape(T, H, D)      # (T, n_head, head_dim)
    k = k.reshape(T, Hkv, D)    # (T, n_head_kv, head_dim)
    v = v.reshape(T, Hkv, -1)

    if "q_norm" in step:
        eps = ctx.value(step, "eps", "norm_eps")
        q = be.rms_norm(q, ctx.tensor(step["q_norm"]), eps)
        k = be.rms_norm(k, ctx.tensor(step["k_norm"]), eps)

    style = step.get("rope", "normal")
    if style != "none":
        rot = int(ctx.value(step, "rope_dim", D))
        base = float(ctx.value(step, "rope_base", "rope_theta"))
        scaled = bool(ctx.value(step, "rope_scaling", True))
        factors = ctx.tensor(step["rope_freqs"], optional=True, host=True) if "rope_freqs" in step and scaled else None
        hp = ctx.hp if scaled else {**ctx.hp, "rope_scaling_type": "none"}
        freqs, mscale = ctx.cached(("rope", rot, base, scaled), lambda: inv_freq(rot, base, hp, factors))
        q = be.rope(q, ctx.positions, freqs, style, rot, mscale)
        k = be.rope(k, ctx.positions, freqs, style, rot, mscale)

    scale = float(ctx.value(step, "scale", 1.0 / math.sqrt(D)))
    window = int(ctx.value(step, "window", 0) or 0)
    cap = float(ctx.value(step, "softcap", 0.0) or 0.0)
    if len(ctx.segments) == 1:
        seg = ctx.segments[0]
        out = be.attention(q, k, v, seg.cache, ctx.layer, seg.pos0, scale, window, cap)   # (T, H, Dv)
    else:
        parts = []
        for seg in ctx.segments:
            r = slice(seg.start, seg.start + seg.length)
            parts.append(be.attention(q[r], k[r], v[r], seg.cache, ctx.layer, seg.pos0, scale, window, cap))
        out = be.concat(parts)
    o_bias = ctx.tensor(step["o"] + ".bias") if ctx.value(step, "o_bias", False) else None
    ctx.set(step["out"], be.linear(out.reshape(T, -1), ctx.tensor(step["o"]), o_bias))
