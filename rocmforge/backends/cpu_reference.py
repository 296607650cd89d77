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


def matvec_int(q: np.ndarray, d: np.ndarray, m: np.ndarray, x: np.ndarray,
               bias: np.ndarray | None = None) -> np.ndarray:
    """y (T, N) from weight codes q (N, K), d and m (N, K/16) and activations x (T, K)."""
    N, K = q.shape
    G = K // 32
    xq, xd, xs = quantize_act(np.asarray(x, np.float32))
    # int32 dot products of every half block: (T, N, G, 2), exact in int64
    s = np.einsum("nghj,tghj->tngh", q.reshape(N, G, 2, 16).astype(np.int64),
                  xq.reshape(-1, G, 2, 16).astype(np.int64)).astype(np.float32)
    d2, m2 = d.reshape(N, G, 2), m.reshape(N, G, 2)
    xs2 = xs.reshape(-1, 1, G, 2)
    part = xd[:, None, :] * (d2[None, :, :, 0] * s[..., 0] + d2[None, :, :, 1] * s[..., 1]) \
        - (m2[None, :, :, 0] * xs2[..., 0] + m2[None, :, :, 1] * xs2[..., 1])         # (T, N, G)
    acc = np.zeros(part.shape[:2], np.float32)
    for g in range(G):                     # the kernels' order: block after block
        acc = acc + part[:, :, g]
    return acc + bias if bias is not None else acc


def matvec_int32(q: np.ndarray, d: np.ndarray, m: np.ndarray, x: np.ndarray,
                 bias: np.ndarray | None = None) -> np.ndarray:
    """y (T, N) for weights with one scale and offset per whole block of 32 (d, m (N, K/32): Q4_0,
    Q4_1, Q4_K): per block the int dot product s of all 32 codes, then
    ``acc += xd * (d * s) - m * xs32`` with xs32 = xd * (sum of the block's activation codes)."""
    N, K = q.shape
    G = K // 32
    xq, xd, _ = quantize_act(np.asarray(x, np.float32))
    s = np.einsum("ngj,tgj->tng", q.reshape(N, G, 32).astype(np.int64),
                  xq.reshape(-1, G, 32).astype(np.int64)).astype(np.float32)       # (T, N, G)
    xs32 = xd * xq.reshape(-1, G, 32).sum(axis=-1).astype(np.float32)             # (T, G)
    part = xd[:, None, :] * (d[None] * s) - m[None] * xs32[:, None, :]
    acc = np.zeros(part.shape[:2], np.float32)
    for g in range(G):                     # the kernels' order: block after block
        acc = acc + part[:, :, g]
    return acc + bias if bias is not None else acc


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
