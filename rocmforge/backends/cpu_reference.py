"""The CPU kernels' arithmetic stated in NumPy: the integer-exact reference they are held to bit for bit.

:mod:`rocmforge.backends.cpu_kernels` computes ``y = x @ W.T`` from integer codes: the weights as
``d[i/16] * q_i - m[i/16]`` (q small integers), the activations as int8 blocks of 32. This module
does the same steps with whole-array NumPy operations, in the same float32 order, so any
difference is a kernel bug (threading, chunking, indexing, a vectoriser reordering sums). The
weight codes (q, d, m) are the kernels' row decoders' output, which the tests hold to the float
oracle :func:`rocmforge.quant.dequantize` separately.
"""

from __future__ import annotations

import numpy as np

_F32 = np.float32


def quantize_act(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (T, K) float32 -> xq (T, K) int32 codes, xd (T, K/32) scales, xs (T, K/16) scaled half sums."""
    T, K = x.shape
    xb = x.reshape(T, K // 32, 32)
    xd = np.abs(xb).max(axis=-1) / _F32(127.0)                                  # (T, G)
    with np.errstate(divide="ignore"):
        inv = np.where(xd > 0, _F32(1.0) / xd, _F32(0.0)).astype(np.float32)
    xq = np.rint(xb * inv[..., None]).astype(np.int32)                           # (T, G, 32)
    halves = xq.reshape(T, K // 32, 2, 16).sum(axis=-1)                          # (T, G, 2)
    xs = (xd[..., None] * halves.astype(np.float32)).reshape(T, K // 16)
    return xq.reshape(T, K), xd, xs


def matvec_float(w: np.ndarray, x: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y (T, N) from float32 weights w (N, K): per block of 32 a sequential sum, then block after block."""
    N, K = w.shape
    x = np.asarray(x, np.float32)
    acc = np.zeros((x.shape[0], N), np.float32)
    for g in range(K // 32):
        s = np.zeros_like(acc)
        for i in range(32 * g, 32 * g + 32):
            s = s + x[:, None, i] * w[None, :, i]
        acc = acc + s
    return acc + bias if bias is not None else acc


def dequantize(q: np.ndarray, d: np.ndarray, m: np.ndarray) -> np.ndarray:
    """The float32 weights the codes stand for: d[i/16] * q_i - m[i/16]."""
    return np.repeat(d, 16, axis=-1) * q.astype(np.float32) - np.repeat(m, 16, axis=-1)


def _tree8(a: np.ndarray) -> np.ndarray:
    """((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)) over the last axis of 8."""
    b = a[..., :4] + a[..., 4:]
    c = b[..., :2] + b[..., 2:]
    return c[..., 0] + c[..., 1]


def matvec_lanes(q: np.ndarray, d: np.ndarray, m: np.ndarray, x: np.ndarray,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """y (T, N) in the decode matvecs' lane arithmetic (cpu_simd's row intrinsics) from the codes q
    (N, K) the kernel multiplies (unsigned nibbles for Q4_0 / Q5_0, with their offset folded into
    m = off * d), scales d and offsets m per 32 or per 16 ((N, K/32) or (N, K/16): weight = d * q - m).

    Per block g of 32 the exact int sums of 4 adjacent products (8 lanes) become float32 and are
    scaled by c = xd * d (per lane: its half's d for the per-16 scales), then added to the even or
    the odd blocks' 8-lane accumulator; the offsets to one sum ``mm -= m * xs``, in order; then
    ``y = tree(acc_even + acc_odd) + mm``."""
    N, K = q.shape
    G = K // 32
    per16 = d.shape[1] == 2 * G
    xq, xd, xs = quantize_act(np.asarray(x, np.float32))
    T = xq.shape[0]
    lanes = np.einsum("ngla,tgla->tngl", q.reshape(N, G, 8, 4).astype(np.int64),
                      xq.reshape(T, G, 8, 4).astype(np.int64)).astype(np.float32)   # (T, N, G, 8)
    if per16:
        c = xd[:, None, :, None] * np.repeat(d.reshape(N, G, 2), 4, axis=-1)[None]     # (T, N, G, 8)
        xs_off = xs                                                                   # (T, 2G)
    else:
        c = np.broadcast_to((xd[:, None, :] * d[None])[..., None], lanes.shape)
        xs_off = xd * xq.reshape(T, G, 32).sum(axis=-1).astype(np.float32)            # xs32 (T, G)
    acc = np.zeros((2, T, N, 8), np.float32)
    for g in range(G):
        acc[g % 2] = acc[g % 2] + c[:, :, g] * lanes[:, :, g]
    mm = np.zeros((T, N), np.float32)
    for h in range(m.shape[1]):
        mm = mm - m[None, :, h] * xs_off[:, None, h]
    y = _tree8(acc[0] + acc[1]) + mm
    return y + bias if bias is not None else y
