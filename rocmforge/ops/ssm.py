"""State-space mixers: Mamba (selective scan, S6) and Mamba-2 (SSD), each with a causal depthwise
convolution in front. Both carry a fixed-size state per sequence (the recipe's ``state:`` section:
``conv`` (d_conv - 1, conv channels) and ``ssm``), read and updated in place per sequence.

{op: mamba, in, in_proj: ssm_in, conv: ssm_conv1d, x_proj: ssm_x, dt_proj: ssm_dt, A: ssm_a, D: ssm_d,
 out_proj: ssm_out, d_inner, d_state, dt_rank: exprs, bias?: expr (in/out projection biases),
 conv_bias?: expr, act?: silu, conv_state?: conv, ssm_state?: ssm,
 dt_norm?, b_norm?, c_norm?: RMSNorm weights of dt, B, C (Jamba), eps?: expr (norm_eps), out}
  x, z = in_proj(h);  x = act(conv(x));  dt, B, C = x_proj(x);  [dt, B, C = rms_norm(dt, B, C)];  dt = dt_proj(dt)
  y = selective_scan(x, dt, A, B, C, D; dt_bias = dt_proj.bias) * silu(z);  out = out_proj(y)

{op: mamba2, in, in_proj: ssm_in, conv: ssm_conv1d, dt_bias: ssm_dt.bias, A: ssm_a, D: ssm_d, norm: ssm_norm,
 out_proj: ssm_out, d_inner, d_state, n_group, ssm_head_dim: exprs, dt_min?, dt_max?, eps?, bias?, conv_bias?,
 act?: silu, conv_state?, ssm_state?, in_scales?, out_bias?, use_norm?, norm_before_gate?, out}
  z, xBC, dt = in_proj(h) [* in_scales];  xBC = act(conv(xBC));  x, B, C = xBC
  y = ssd(x, dt, A, B, C, D; dt_bias, clip(dt_min, dt_max));  out = out_proj(gated_rms_norm(y, z) * norm)
 in_scales: five multipliers of in_proj's z, x, B, C and dt parts (Falcon-H1's ssm_multipliers).
 bias: in_proj and out_proj biases; out_bias (default: bias) decides for out_proj alone.
 use_norm (default true): false gates without a norm, y * silu(z) (Falcon-H1 without mamba_rms_norm).
 norm_before_gate (default false): rms_norm(y) * norm * silu(z) instead of rms_norm(y * silu(z)) * norm.
 d_inner need not be expand * n_embd (Falcon-H1's mamba_d_ssm).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import SchemaError


def dense(ctx, name: str, shape: tuple[int, ...] | None = None):
    """A small layer tensor (A, D, conv taps, norm) as a float32 backend array of ``shape``
    (GGUF files may hold them as (H, 1) or (G, C/G)); prepared once per model."""
    be = ctx.backend

    def make():
        host = np.ascontiguousarray(ctx.tensor(name, host=True), dtype=np.float32)
        return be.upload(host.reshape(shape) if shape is not None else host)

    return ctx.cached(("ssm_dense", ctx.layer, name, shape), make)


def per_sequence(ctx, fn: Callable, *rows):
    """fn(segment, *its rows of each array) for every sequence of the batch, stacked back."""
    if len(ctx.segments) == 1:
        return fn(ctx.segments[0], *rows)
    parts = []
    for seg in ctx.segments:
        r = slice(seg.start, seg.start + seg.length)
        parts.append(fn(seg, *(a[r] for a in rows)))
    return ctx.backend.concat(parts)


def _conv(ctx, step, x, channels: int):
    """act(causal depthwise conv(x)), each sequence continuing its ``conv`` state."""
    be = ctx.backend
    w = dense(ctx, step["conv"])                                            # (channels, d_conv)
    b = dense(ctx, step["conv"] + ".bias", (channels,)) if ctx.value(step, "conv_bias", True) else None
    name = step.get("conv_state", "conv")
    y = per_sequence(ctx, lambda seg, xs: be.conv1d_causal(xs, w, b, ctx.state(seg, name)), x)
    return be.act(y, step.get("act", "silu"))


def _linear(ctx, step, x, key: str, bias_key: str = "bias"):
    has_bias = ctx.value(step, bias_key, step.get("bias", False))
    bias = ctx.tensor(step[key] + ".bias") if has_bias else None
    return ctx.backend.linear(x, ctx.tensor(step[key]), bias)


_BCDT_NORMS = ("dt_norm", "b_norm", "c_norm")     # the mamba op's optional norm keys, in x_proj's order


def mamba(ctx, step):
    be = ctx.backend
    h = ctx.get(step["in"])
    di, N, R = (int(ctx.value(step, k)) for k in ("d_inner", "d_state", "dt_rank"))
    xz = _linear(ctx, step, h, "in_proj")                                   # (T, 2 * d_inner)
    x = _conv(ctx, step, xz[:, :di], di)                                    # (T, d_inner)
    dbc = be.linear(x, ctx.tensor(step["x_proj"]))                          # (T, dt_rank + 2N)
    dt, B, C = dbc[:, :R], dbc[:, R:R + N], dbc[:, R + N:R + 2 * N]
    if any(k in step for k in _BCDT_NORMS):                                 # Jamba: RMSNorm each before the scan
        eps = float(ctx.value(step, "eps", "norm_eps"))
        dt, B, C = (be.rms_norm(a, dense(ctx, step[k], (a.shape[1],)), eps) if k in step else a
                    for k, a in zip(_BCDT_NORMS, (dt, B, C)))
    dt = be.linear(dt, ctx.tensor(step["dt_proj"]))                         # (T, d_inner)
    A, D = dense(ctx, step["A"], (di, N)), dense(ctx, step["D"], (di,))
    dt_bias = dense(ctx, step["dt_proj"] + ".bias", (di,))
    name = step.get("ssm_state", "ssm")
    y = per_sequence(ctx, lambda seg, xs, ds, bs, cs: be.selective_scan(xs, ds, A, bs, cs, D, ctx.state(seg, name),
                                                                        dt_bias),
                     x, dt, B, C)
    y = be.act_mul(xz[:, di:], y, "silu")                                  # y * silu(z)
    ctx.set(step["out"], _linear(ctx, step, y, "out_proj"))


def mamba2(ctx, step):
    be = ctx.backend
    h = ctx.get(step["in"])
    T = h.shape[0]
    di, N, G, P = (int(ctx.value(step, k)) for k in ("d_inner", "d_state", "n_group", "ssm_head_dim"))
    H = di // P
    conv_dim = di + 2 * G * N
    zxbcdt = _linear(ctx, step, h, "in_proj")                              # (T, d_inner + conv_dim + H)
    scales = _part_scales(ctx, step, (di, di, G * N, G * N, H))
    if scales is not None:
        zxbcdt = be.mul(zxbcdt, scales)
    xbc = _conv(ctx, step, zxbcdt[:, di:di + conv_dim], conv_dim)
    dt = zxbcdt[:, di + conv_dim:]                                           # (T, H)
    A, D = dense(ctx, step["A"], (H,)), dense(ctx, step["D"], (H,))
    dt_bias = dense(ctx, step["dt_bias"], (H,))
    lo, hi = float(ctx.value(step, "dt_min", 0.0)), float(ctx.value(step, "dt_max", float("inf")))
    name = step.get("ssm_state", "ssm")

    def scan(seg, xs, ds, bs, cs):
        n = xs.shape[0]
        y = be.ssd_scan(xs.reshape(n, H, P), ds, A, bs.reshape(n, G, N), cs.reshape(n, G, N), D,
                        ctx.state(seg, name), dt_bias, lo, hi)
        return y.reshape(n, di)

    y = per_sequence(ctx, scan, xbc[:, :di], dt, xbc[:, di:di + G * N], xbc[:, di + G * N:])
    y, z = y.reshape(T, di), zxbcdt[:, :di]
    if not ctx.value(step, "use_norm", True):
        y = be.act_mul(z, y, "silu")                                         # y * silu(z)
    elif ctx.value(step, "norm_before_gate", False):
        y = be.act_mul(z, _group_rms_norm(ctx, step, y, G), "silu")
    else:
        eps = float(ctx.value(step, "eps", "norm_eps"))
        y = be.rms_norm_gated(y, z, dense(ctx, step["norm"], (di,)), di // G, eps)
    ctx.set(step["out"], _linear(ctx, step, y, "out_proj", "out_bias"))


def _part_scales(ctx, step, sizes: tuple[int, ...]):
    """(sum(sizes),): the row in_proj's output is multiplied by, each part's multiplier repeated;
    None without in_scales or when all are 1."""
    if step.get("in_scales") is None:
        return None
    scales = [float(v) for v in ctx.value(step, "in_scales")]
    if len(scales) != len(sizes):
        raise SchemaError(ctx.executor.recipe.file, "mamba2.in_scales", f"{len(sizes)} multipliers (z, x, B, C, dt)",
                          scales)
    if all(v == 1.0 for v in scales):
        return None
    return ctx.cached(("ssm_in_scales", tuple(scales), sizes),
                      lambda: ctx.backend.upload(np.repeat(np.asarray(scales, np.float32), sizes)))


def _group_rms_norm(ctx, step, y, G: int):
    """rms_norm over each of G groups of y's channels, times the norm weight: (T, d_inner)."""
    be = ctx.backend
    T, di = y.shape
    ones = ctx.cached(("ssm_ones", di // G), lambda: be.upload(np.ones(di // G, np.float32)))
    eps = float(ctx.value(step, "eps", "norm_eps"))
    y = be.rms_norm(y.reshape(T * G, di // G), ones, eps).reshape(T, di)
    return be.mul(y, dense(ctx, step["norm"], (di,)))


def _tensors(keys: tuple[str, ...], biased: tuple[str, ...], extra: tuple[str, ...] = (),
             optional: tuple[str, ...] = ()):
    """The tensors a step needs: ``keys``, ``extra`` keys' biases, ``optional`` keys the step names."""
    def rule(step, has, value):
        out = [(step[k], True) for k in keys] + [(step[k] + ".bias", True) for k in extra]
        out += [(step[k], True) for k in optional if k in step]
        if value(step, "conv_bias", True):
            out.append((step["conv"] + ".bias", True))
        if value(step, "bias", False):
            out += [(step[k] + ".bias", True) for k in biased]
        return out

    return rule


mamba.tensors = _tensors(("in_proj", "conv", "x_proj", "dt_proj", "A", "D", "out_proj"), ("in_proj", "out_proj"),
                         ("dt_proj",), _BCDT_NORMS)
_mamba2_tensors = _tensors(("in_proj", "conv", "dt_bias", "A", "D"), ("in_proj",))


def _mamba2_rule(step, has, value):
    out = _mamba2_tensors(step, has, value) + [(step["out_proj"], True)]
    if value(step, "use_norm", True):
        out.append((step["norm"], True))
    if value(step, "out_bias", value(step, "bias", False)):
        out.append((step["out_proj"] + ".bias", True))
    return out


mamba2.tensors = _mamba2_rule
