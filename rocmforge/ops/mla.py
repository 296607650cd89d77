"""Multi-head latent attention (DeepSeek-V2/V3, GLM-4.7-Flash...), in the absorbed form.

Each token is compressed to a latent ``c = kv_a_norm(kv_a(x)[:kv_lora])`` plus one shared rotary
key ``k_pe = rope(kv_a(x)[kv_lora:])``. The KV cache holds one "kv head" per token whose key is
``[c, k_pe]`` (kv_lora + rope_dim) and whose value is ``c`` (kv_lora): the recipe's top-level
``cache:`` section declares that shape. Per-head keys and values are never materialised: each
query head's no-rope part is absorbed through W_UK (``k_b``), q . k = (W_UK^T q_nope) . c +
q_pe . k_pe, and the attended latent goes through W_UV (``v_b``) before the output projection:

  q      = q(x) | q_b(q_a_norm(q_a(x)))            (T, H, nope + rope)
  Q      = [k_b[h] @ q_nope[h], rope(q_pe)]         (T, H, kv_lora + rope)
  K, V   = [c, rope(k_pe)], c                       (T, 1, kv_lora + rope), (T, 1, kv_lora)
  out    = o(v_b[h] @ attention(Q, K, V)[h])        Hkv = 1: multi-query attention

{op: mla, in, q: attn_q | q_a: attn_q_a, q_a_norm: attn_q_a_norm, q_b: attn_q_b; kv_a: attn_kv_a_mqa,
 kv_a_norm: attn_kv_a_norm; k_b: attn_k_b, v_b: attn_v_b | kv_b: attn_kv_b; o: attn_output;
 q_lora?: expr (default: the file has q_a), kv_lora: expr, nope_dim: expr, rope_dim: expr, v_dim: expr,
 rope_base?: expr (rope_theta), lora_eps?: expr (1e-6, the eps of HF's q_a/kv_a RMSNorms),
 mscale_all_dim?: expr, mscale?: expr, scale?: expr, out}

``k_b`` (H, kv_lora, nope) and ``v_b`` (H, v_dim, kv_lora) are llama.cpp's split of HF's
``kv_b_proj``; a file holding the unsplit ``kv_b`` (H * (nope + v_dim), kv_lora) -- HF checkpoints,
GGUFs from before the split -- is split here once. Rotary pairs are interleaved ("normal"), as
in DeepSeek's checkpoints. The softmax scale is transformers' ``softmax_scale``: 1/sqrt(nope +
rope) times yarn_mscale(factor, mscale_all_dim)^2 when the rope is scaled.
"""

from __future__ import annotations

import math

import numpy as np

from .attention import _attend
from .rope import inv_freq


def yarn_mscale(factor: float, mscale: float = 1.0) -> float:
    """YaRN's attention temperature for a context ``factor`` (DeepSeek's yarn_get_mscale)."""
    return 1.0 if factor <= 1 else 0.1 * mscale * math.log(factor) + 1.0


def _dims(ctx, step):
    return (int(ctx.value(step, "n_head", "n_head")), int(ctx.value(step, "kv_lora")),
            int(ctx.value(step, "nope_dim")), int(ctx.value(step, "rope_dim")), int(ctx.value(step, "v_dim")))


def _up_weights(ctx, step, H, R, N, V):
    """(k_b padded to (H, R + rope, N), v_b (H, V, R)) prepared once per layer."""
    be = ctx.backend
    rope = int(ctx.value(step, "rope_dim"))

    def make():
        if ctx.tensor(step["k_b"], optional=True) is not None:
            k_b = np.asarray(ctx.tensor(step["k_b"], host=True), np.float32).reshape(H, R, N)
            v_b = np.asarray(ctx.tensor(step["v_b"], host=True), np.float32).reshape(H, V, R)
        else:   # HF kv_b_proj: per head, nope rows of W_UK then V rows of W_UV, over the latent
            kv_b = np.asarray(ctx.tensor(step["kv_b"], host=True), np.float32).reshape(H, N + V, R)
            k_b, v_b = kv_b[:, :N].transpose(0, 2, 1), kv_b[:, N:]
        k_pad = np.zeros((H, R + rope, N), np.float32)      # zero rows where the rope part of Q goes
        k_pad[:, :R] = k_b
        return be.upload(k_pad), be.upload(np.ascontiguousarray(v_b))

    return ctx.cached(("mla_up", ctx.layer, id(step)), make)


def _rope_tables(ctx, step, R, rope):
    """Frequencies over the whole [latent, rope] key (zeros on the latent: identity) and the
    (rope -> R + rope) placement of the rotary part, holding YaRN's cos/sin factor."""
    hp = ctx.hp
    base = float(ctx.value(step, "rope_base", "rope_theta"))
    kind = str(hp.get("rope_scaling_type") or "none").lower()
    factor = float(hp.get("rope_scaling_factor") or 1.0)
    m_all = float(ctx.value(step, "mscale_all_dim", 0.0) or 0.0)
    m = float(ctx.value(step, "mscale", m_all) or 0.0)

    def make():
        attn_factor = hp.get("rope_yarn_attn_factor") or (
            yarn_mscale(factor, m) / yarn_mscale(factor, m_all) if m and m_all else yarn_mscale(factor))
        freqs, mscale = inv_freq(rope, base, {**hp, "rope_yarn_attn_factor": attn_factor})
        if kind != "yarn":
            mscale = 1.0
        full = np.zeros((R + rope) // 2, np.float32)
        full[R // 2:] = freqs
        place = np.zeros((R + rope, rope), np.float32)
        place[R:, :] = np.eye(rope, dtype=np.float32) * np.float32(mscale)
        return full, ctx.backend.upload(place)

    return ctx.cached(("mla_rope", R, rope, base, kind, factor, m, m_all), make)


def _scale(ctx, step, N, rope):
    if "scale" in step:
        return float(ctx.value(step, "scale"))
    scale = 1.0 / math.sqrt(N + rope)
    kind = str(ctx.hp.get("rope_scaling_type") or "none").lower()
    m_all = float(ctx.value(step, "mscale_all_dim", 0.0) or 0.0)
    if kind not in ("none", "default", "") and m_all:
        scale *= yarn_mscale(float(ctx.hp.get("rope_scaling_factor") or 1.0), m_all) ** 2
    return scale


def mla(ctx, step):
    be = ctx.backend
    x = ctx.get(step["in"])
    T = x.shape[0]
    H, R, N, rope, V = _dims(ctx, step)
    eps = float(ctx.value(step, "lora_eps", 1e-6))

    q_lora = ctx.value(step, "q_lora", None)
    if q_lora is None:
        q_lora = "q_a" in step and ctx.tensor(step["q_a"], optional=True) is not None
    if q_lora:
        q = be.linear(be.rms_norm(be.linear(x, ctx.tensor(step["q_a"])), ctx.tensor(step["q_a_norm"]), eps),
                      ctx.tensor(step["q_b"]))
    else:
        q = be.linear(x, ctx.tensor(step["q"]))
    q = q.reshape(T, H, N + rope)                                            # (T, H, nope + rope)
    kv = be.linear(x, ctx.tensor(step["kv_a"]))                              # (T, kv_lora + rope)
    c = be.rms_norm(kv[:, :R], ctx.tensor(step["kv_a_norm"]), eps)          # (T, kv_lora)

    k_b, v_b = _up_weights(ctx, step, H, R, N, V)
    freqs, place = _rope_tables(ctx, step, R, rope)
    q_abs = be.head_matmul(q[:, :, :N], k_b)                                 # (T, H, kv_lora + rope), rope part 0
    q_pe = be.linear(q[:, :, N:].reshape(T * H, rope), place).reshape(T, H, R + rope)   # latent part 0
    Q = be.rope(be.add(q_abs, q_pe), ctx.positions, freqs, "normal", R + rope)
    k_c = be.linear(c, ctx.cached(("mla_latent", R, rope), lambda: be.upload(np.eye(R + rope, R, dtype=np.float32))))
    K = be.rope(be.add(k_c, be.linear(kv[:, R:], place)).reshape(T, 1, R + rope), ctx.positions, freqs, "normal",
                R + rope)
    lat = _attend(ctx, Q, K, c.reshape(T, 1, R), _scale(ctx, step, N, rope),
                  {"window": 0, "softcap": 0.0, "chunk": 0, "alibi": None, "sinks": None})   # (T, H, kv_lora)
    out = be.head_matmul(lat, v_b)                                           # (T, H, v_dim)
    ctx.set(step["out"], be.linear(out.reshape(T, H * V), ctx.tensor(step["o"])))


def _tensors(step, has, value):
    if "q_a" in step and has(step["q_a"]):
        yield from ((step[k], True) for k in ("q_a", "q_a_norm", "q_b"))
    else:
        yield step["q"], True
    yield step["kv_a"], True
    yield step["kv_a_norm"], True
    if "k_b" in step and has(step["k_b"]):
        yield step["k_b"], True
        yield step["v_b"], True
    else:
        yield step["kv_b"], True
    yield step["o"], True


mla.tensors = _tensors
