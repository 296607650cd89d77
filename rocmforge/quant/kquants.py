"""Simple reference encoders for the k-quants gguf.quants cannot quantize (Q4_K, Q5_K, Q6_K).

They write llama.cpp's block layouts (``block_q4_K`` etc. in ggml-common.h)
but pick scales the plain way: min/max per sub-block, no rmse search like
llama.cpp's ``make_qkx2_quants``. So the bytes differ from llama-quantize's and
the error is somewhat larger, but ``gguf.quants.dequantize`` reads them as
usual. They exist to make realistic test data for kernels and round trips.

All take ``(n_blocks, 256)`` float32 and return ``(n_blocks, type_size)`` uint8.
"""

from __future__ import annotations

import numpy as np

QK_K = 256


def _f16(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(float32 values as stored, their f16 bytes)."""
    h = x.astype("<f2")
    return h.astype(np.float32), h.view(np.uint8).reshape(-1, 2)


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b != 0, a / np.where(b != 0, b, 1), 0)


def _scale_min_k4(x: np.ndarray, levels: int):
    """Q4_K/Q5_K: 8 sub-blocks of 32 with 6-bit scales and mins; value = d*sc*q - dmin*m."""
    n = x.shape[0]
    xs = x.reshape(n, 8, 32)
    lo = np.minimum(xs.min(axis=-1), 0)
    sub_scale = (xs.max(axis=-1) - lo) / levels                   # (n, 8)
    sub_min = -lo
    d, d_bytes = _f16(sub_scale.max(axis=-1) / 63)
    dmin, dmin_bytes = _f16(sub_min.max(axis=-1) / 63)
    sc = np.clip(np.rint(_div(sub_scale, d[:, None])), 0, 63).astype(np.uint8)
    m = np.clip(np.rint(_div(sub_min, dmin[:, None])), 0, 63).astype(np.uint8)
    eff_scale = (d[:, None] * sc)[..., None]
    eff_min = (dmin[:, None] * m)[..., None]
    q = np.clip(np.rint(_div(xs + eff_min, eff_scale)), 0, levels).astype(np.uint8).reshape(n, QK_K)
    scales = np.empty((n, 12), np.uint8)
    scales[:, 0:4] = sc[:, :4] | ((sc[:, 4:] >> 4) << 6)
    scales[:, 4:8] = m[:, :4] | ((m[:, 4:] >> 4) << 6)
    scales[:, 8:12] = (sc[:, 4:] & 0xF) | ((m[:, 4:] & 0xF) << 4)
    return d_bytes, dmin_bytes, scales, q


def _nibbles(q: np.ndarray) -> np.ndarray:
    """(n, 256) codes -> (n, 128): byte 32j+l holds q[64j+l] (low) and q[64j+32+l] (high)."""
    q4 = (q & 0xF).reshape(-1, 4, 2, 32)
    return (q4[:, :, 0] | (q4[:, :, 1] << 4)).reshape(-1, 128)


def quantize_q4_k(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _scale_min_k4(x, 15)
    return np.concatenate([d, dmin, scales, _nibbles(q)], axis=1)


def quantize_q5_k(x: np.ndarray) -> np.ndarray:
    d, dmin, scales, q = _scale_min_k4(x, 31)
    hi = (q >> 4).reshape(-1, 4, 2, 32)                          # bit 2j: q[64j+l], 2j+1: q[64j+32+l]
    shifts = (2 * np.arange(4)[:, None] + np.arange(2)[None, :]).astype(np.uint8)[None, :, :, None]
    qh = (hi << shifts).sum(axis=(1, 2)).astype(np.uint8)         # (n, 32)
    return np.concatenate([d, dmin, scales, qh, _nibbles(q)], axis=1)


def quantize_q6_k(x: np.ndarray) -> np.ndarray:
    """16 sub-blocks of 16 with int8 scales; value = d * sc * (q - 32)."""
    n = x.shape[0]
    xs = x.reshape(n, 16, 16)
    idx = np.abs(xs).argmax(axis=-1)[..., None]
    sub_scale = np.take_along_axis(xs, idx, axis=-1)[..., 0] / -32   # largest |x| maps to -32
    d, d_bytes = _f16(np.abs(sub_scale).max(axis=-1) / 127)
    sc = np.clip(np.rint(_div(sub_scale, d[:, None])), -128, 127).astype(np.int8)
    eff = (d[:, None] * sc)[..., None]
    q = (np.clip(np.rint(_div(xs, eff)), -32, 31) + 32).astype(np.uint8).reshape(n, 2, 4, 32)
    ql = np.concatenate([(q[:, :, 0] & 0xF) | ((q[:, :, 2] & 0xF) << 4),
                         (q[:, :, 1] & 0xF) | ((q[:, :, 3] & 0xF) << 4)], axis=2).reshape(n, 128)
    qh = ((q[:, :, 0] >> 4) | ((q[:, :, 1] >> 4) << 2) | ((q[:, :, 2] >> 4) << 4)
          | ((q[:, :, 3] >> 4) << 6)).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), d_bytes], axis=1)


ENCODERS = {"Q4_K": quantize_q4_k, "Q5_K": quantize_q5_k, "Q6_K": quantize_q6_k}


def encoder(name: str):
    fn = ENCODERS[name]

    def encode(rows: np.ndarray) -> np.ndarray:
        n_rows = rows.shape[0]
        return fn(rows.reshape(-1, QK_K).astype(np.float32)).reshape(n_rows, -1)

    return encode
