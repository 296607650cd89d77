"""Gated DeltaNet (Yang et al. 2024), the linear-attention mixer of Qwen3-Next and Qwen3.5.

{op: gated_delta_net, in, qkv: attn_qkv, z: attn_gate | qkvz: ssm_in, beta: ssm_beta, alpha: ssm_alpha | ba: ssm_ba,
 conv: ssm_conv1d, dt_bias: ssm_dt.bias, A: ssm_a, norm: ssm_norm, out_proj: ssm_out,
 n_k_head, n_v_head, head_k_dim, head_v_dim: exprs, v_tiled?: expr, eps?, act?: silu,
 conv_state?: conv, ssm_state?: ssm, out}

  q | k | v = act(causal depthwise conv(qkv(h)))      (Hk*dk | Hk*dk | Hv*dv channels, conv state carried)
  beta = sigmoid(b(h)),  g = A * softplus(a(h) + dt_bias)               (per value head; A = -exp(A_log))
  o = gated delta rule(l2norm(q) / sqrt(dk), l2norm(k), v, g, beta)    (state S (Hv, dk, dv) carried)
  out = out_proj(rms_norm(o per head) * norm * silu(z(h)))              (norm before gate)

Projections come in two layouts, as llama.cpp reads them: ``qkv`` + ``z`` (all q | all k | all v, and
z), used when the model has them, else ``qkvz`` (HF Qwen3-Next's in_proj_qkvz and legacy GGUF ssm_in:
per key head [q, k, its Hv/Hk value heads, their z]). Likewise ``beta`` + ``alpha``, else ``ba``
(per key head [b of its value heads, a of its value heads]). ``v_tiled``: value head j reads key head
j % Hk instead of j // (Hv / Hk) (llama.cpp's qwen35 GGUF reorders value heads so).
"""

from __future__ import annotations

import numpy as np

from .ssm import dense, per_sequence


def _projections(ctx, step, h, Hk: int, r: int, dk: int, dv: int):
    """(x, z, b, a, per_key_head): the conv's input x (T, 2 Hk dk + Hv dv), z (T, Hv dv), b, a (T, Hv).

    x holds all q | all k | all v, or (per_key_head, from ``qkvz``) per key head [q, k, its values]."""
    be = ctx.backend
    T = h.shape[0]
    if "qkv" in step and ctx.tensor(step["qkv"], optional=True) is not None:
        x, z, per_key_head = be.linear(h, ctx.tensor(step["qkv"])), be.linear(h, ctx.tensor(step["z"])), False
    else:
        y = be.linear(h, ctx.tensor(step["qkvz"])).reshape(T, Hk, 2 * dk + 2 * r * dv)
        n = 2 * dk + r * dv
        x, z, per_key_head = y[:, :, :n].reshape(T, Hk * n), y[:, :, n:].reshape(T, Hk * r * dv), True
    if "beta" in step and ctx.tensor(step["beta"], optional=True) is not None:
        b, a = be.linear(h, ctx.tensor(step["beta"])), be.linear(h, ctx.tensor(step["alpha"]))
    else:
        ba = be.linear(h, ctx.tensor(step["ba"])).reshape(T, Hk, 2 * r)
        b, a = ba[:, :, :r].reshape(T, Hk * r), ba[:, :, r:].reshape(T, Hk * r)
    return x, z, b, a, per_key_head


def _conv_weight(ctx, step, Hk: int, dk: int, vd: int, per_key_head: bool):
    """The conv taps (channels, d_conv), stored for all q | all k | all v; rows reordered per key head
    when the input comes so (a depthwise conv treats every channel alike)."""
    def make():
        w = np.ascontiguousarray(ctx.tensor(step["conv"], host=True), dtype=np.float32)
        w = w.reshape(2 * Hk * dk + Hk * vd, -1)
        if per_key_head:
            kd = Hk * dk
            rows = [np.r_[h * dk:(h + 1) * dk, kd + h * dk:kd + (h + 1) * dk, 2 * kd + h * vd:2 * kd + (h + 1) * vd]
                    for h in range(Hk)]
            w = w[np.concatenate(rows)]
        return ctx.backend.upload(np.ascontiguousarray(w))

    return ctx.cached(("gdn_conv", ctx.layer, step["conv"], per_key_head), make)


def _split_qkv(x, Hk: int, Hv: int, dk: int, dv: int, per_key_head: bool):
    """q, k (n, Hk, dk), v (n, Hv, dv) from the conv's output."""
    n = x.shape[0]
    if per_key_head:
        y = x.reshape(n, Hk, -1)
        return y[:, :, :dk], y[:, :, dk:2 * dk], y[:, :, 2 * dk:].reshape(n, Hv, dv)
    kd = Hk * dk
    return x[:, :kd].reshape(n, Hk, dk), x[:, kd:2 * kd].reshape(n, Hk, dk), x[:, 2 * kd:].reshape(n, Hv, dv)


def gated_delta_net(ctx, step):
    be = ctx.backend
    h = ctx.get(step["in"])
    T = h.shape[0]
    Hk, Hv, dk, dv = (int(ctx.value(step, k)) for k in ("n_k_head", "n_v_head", "head_k_dim", "head_v_dim"))
    x, z, b, a, per_key_head = _projections(ctx, step, h, Hk, Hv // Hk, dk, dv)
    w = _conv_weight(ctx, step, Hk, dk, Hv // Hk * dv, per_key_head)
    conv_state = step.get("conv_state", "conv")
    x = per_sequence(ctx, lambda seg, xs: be.conv1d_causal(xs, w, None, ctx.state(seg, conv_state)), x)
    x = be.act(x, step.get("act", "silu"))
    A, dt_bias = dense(ctx, step["A"], (Hv,)), dense(ctx, step["dt_bias"], (Hv,))
    tiled = bool(ctx.value(step, "v_tiled", False))
    name = step.get("ssm_state", "ssm")

    def rule(seg, xs, bs, as_):
        q, k, v = _split_qkv(xs, Hk, Hv, dk, dv, per_key_head)
        return be.gated_delta_net(q, k, v, as_, bs, A, dt_bias, ctx.state(seg, name), tiled)

    o = per_sequence(ctx, rule, x, b, a)                                    # (T, Hv, dv)
    eps = float(ctx.value(step, "eps", "norm_eps"))
    y = be.rms_norm(o.reshape(T, Hv, dv), dense(ctx, step["norm"], (dv,)), eps)
    y = be.act_mul(z, y.reshape(T, Hv * dv), "silu")                        # norm(o) * silu(z)
    ctx.set(step["out"], be.linear(y, ctx.tensor(step["out_proj"])))


def _tensors(step, has, value):
    out = [(step[k], True) for k in ("conv", "dt_bias", "A", "norm", "out_proj")]
    if "qkv" in step and has(step["qkv"]):
        out += [(step["qkv"], True), (step["z"], True)]
    else:
        out.append((step["qkvz"], True))
    if "beta" in step and has(step["beta"]):
        out += [(step["beta"], True), (step["alpha"], True)]
    else:
        out.append((step["ba"], True))
    return out


gated_delta_net.tensors = _tensors
