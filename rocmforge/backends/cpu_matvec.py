"""The CPU decode matvecs y (T, N) = x (T, K) @ W.T (+ bias) for the integer formats, one compiled call
each: the int8 quantisation of x and the block products (:mod:`rocmforge.backends.cpu_simd`) over the
weight's rows.

Three weight layouts (:mod:`rocmforge.backends.cpu_packed` chooses and builds them):

* ``raw`` — Q4_0, Q4_1, Q5_0, Q5_1, Q8_0 straight from the file's blocks (up to three row blocks
  joined, q|k|v or gate|up, no copy): one f16 scale d (and min) per 32;
* ``nib32`` — Q4_K repacked: nibbles per 32 (cpu_simd's nibble block), d and m float32 per 32;
* ``i8_16`` — every other integer format repacked to int8 codes, d and m float32 per 16.

Arithmetic: each row is one row intrinsic of :mod:`rocmforge.backends.cpu_simd` (the lane
arithmetic: exact int32 sums of 4 products per lane, scaled into two 8-lane float32 accumulators, the
offsets into one scalar sum), stated in NumPy by :func:`rocmforge.backends.cpu_reference.matvec_lanes`
and equal to it bit for bit.

Each layout has a serial and a ``parallel=True`` kernel: a parallel region costs a few microseconds
with spinning workers (tens with sleeping ones), more than the smallest matrices take on one core.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from .cpu_simd import (
    row_i8_16,
    row_i8_16_nom,
    row_nib32,
    row_q4_0,
    row_q4_1,
    row_q5_0,
    row_q5_1,
    row_q8_0,
)

_F32 = np.float32
_U = np.uint64

# format ids (cpu_decoders.INT_FORMATS) of the raw layout, with their block bytes
RAW_BLOCK_BYTES = {0: 18, 1: 20, 2: 22, 3: 24, 4: 34}


# ---- activations -------------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _quantize(x, xq, xd, xs, isum32, xs32):
    """x (T, K) float32 -> int8 codes xq (T, K), per block of 32 the scale xd, the code sum isum32 and
    xs32 = xd * isum32, per half block xs = xd * (half sum) (rf_q8.h; cpu_reference.quantize_act)."""
    T, K = x.shape
    for t in range(T):
        for g in range(K // 32):
            p = 32 * g
            amax = _F32(0.0)
            for i in range(32):
                a = abs(x[t, p + i])
                if a > amax:
                    amax = a
            dd = amax / _F32(127.0)
            inv = _F32(1.0) / dd if dd > _F32(0.0) else _F32(0.0)
            s0 = 0
            s1 = 0
            for i in range(16):
                v = np.int64(np.rint(x[t, p + i] * inv))
                xq[t, p + i] = v
                s0 += v
            for i in range(16, 32):
                v = np.int64(np.rint(x[t, p + i] * inv))
                xq[t, p + i] = v
                s1 += v
            xd[t, g] = dd
            xs[t, 2 * g] = dd * _F32(s0)
            xs[t, 2 * g + 1] = dd * _F32(s1)
            isum32[t, g] = s0 + s1
            xs32[t, g] = dd * _F32(s0 + s1)


@njit(cache=True)
def quantize(x, xq, xd, xs, isum32, xs32):
    _quantize(x, xq, xd, xs, isum32, xs32)


# ---- raw blocks ------------------------------------------------------------------------------

@njit(inline="always", cache=True)
def _raw_row(fmt, W, base, xq, t, xd, xs32):
    """Row block W's bytes from ``base`` (a flat offset) against activation row t. Flat offsets into
    the 2-D arrays, no row views (their reference counts cost more than a block)."""
    G = _U(xd.shape[1])
    xo = _U(t) * _U(xq.shape[1])
    so = _U(t) * G
    if fmt == 1:
        return row_q4_1(W, base, G, xq, xo, xd, xs32, so)
    if fmt == 0:
        return row_q4_0(W, base, G, xq, xo, xd, xs32, so)
    if fmt == 4:
        return row_q8_0(W, base, G, xq, xo, xd, xs32, so)
    if fmt == 2:
        return row_q5_0(W, base, G, xq, xo, xd, xs32, so)
    return row_q5_1(W, base, G, xq, xo, xd, xs32, so)


@njit(inline="always", cache=True)
def _raw_part(fmt, W, r0, r1, first, xq, xd, xs32, bias, y):
    """Rows r0..r1 of the joined weight that lie in part W, whose first row is joined row ``first``."""
    lo = max(r0, first)
    hi = min(r1, first + W.shape[0])
    nb = _U(W.shape[1])
    for r in range(lo, hi):
        base = _U(r - first) * nb
        for t in range(xq.shape[0]):
            acc = _raw_row(fmt, W, base, xq, t, xd, xs32)
            y[t, r] = acc + bias[r] if bias.shape[0] else acc


@njit(inline="always", cache=True)
def _raw_rows(fmt, W0, W1, W2, xq, xd, xs32, bias, y, r0, r1):
    n0, n1 = W0.shape[0], W1.shape[0]
    _raw_part(fmt, W0, r0, r1, 0, xq, xd, xs32, bias, y)
    _raw_part(fmt, W1, r0, r1, n0, xq, xd, xs32, bias, y)
    _raw_part(fmt, W2, r0, r1, n0 + n1, xq, xd, xs32, bias, y)


@njit(cache=True, fastmath=False)
def mv_raw(fmt, W0, W1, W2, x, bias, y, xq, xd, xs, isum32, xs32):
    _quantize(x, xq, xd, xs, isum32, xs32)
    _raw_rows(fmt, W0, W1, W2, xq, xd, xs32, bias, y, 0, y.shape[1])


@njit(parallel=True, cache=True, fastmath=False)
def mv_raw_par(fmt, W0, W1, W2, x, bias, y, xq, xd, xs, isum32, xs32, nchunk):
    _quantize(x, xq, xd, xs, isum32, xs32)
    N = y.shape[1]
    for c in prange(nchunk):
        _raw_rows(fmt, W0, W1, W2, xq, xd, xs32, bias, y, c * N // nchunk, (c + 1) * N // nchunk)


# ---- repacked nibbles per 32 (Q4_K) --------------------------------------------------------------

@njit(inline="always", cache=True)
def _nib32_rows(codes, d, m, xq, xd, xs32, bias, y, r0, r1):
    G = _U(d.shape[1])
    nb = _U(codes.shape[1])
    for r in range(r0, r1):
        base = _U(r) * nb
        for t in range(xq.shape[0]):
            acc = row_nib32(codes, base, G, d, m, _U(r) * G, xq, _U(t) * _U(xq.shape[1]), xd, xs32, _U(t) * G)
            y[t, r] = acc + bias[r] if bias.shape[0] else acc


@njit(cache=True, fastmath=False)
def mv_nib32(codes, d, m, x, bias, y, xq, xd, xs, isum32, xs32):
    _quantize(x, xq, xd, xs, isum32, xs32)
    _nib32_rows(codes, d, m, xq, xd, xs32, bias, y, 0, y.shape[1])


@njit(parallel=True, cache=True, fastmath=False)
def mv_nib32_par(codes, d, m, x, bias, y, xq, xd, xs, isum32, xs32, nchunk):
    _quantize(x, xq, xd, xs, isum32, xs32)
    N = y.shape[1]
    for c in prange(nchunk):
        _nib32_rows(codes, d, m, xq, xd, xs32, bias, y, c * N // nchunk, (c + 1) * N // nchunk)


# ---- repacked int8 codes, scales per 16 (every other integer format) ------------------------------

@njit(inline="always", cache=True)
def _i8_16_rows(codes, d, m, xq, xd, xs, bias, y, r0, r1):
    G = _U(xd.shape[1])
    has_m = m.shape[1] > 0
    nb = _U(codes.shape[1])
    for r in range(r0, r1):
        base = _U(r) * nb
        for t in range(xq.shape[0]):
            xo = _U(t) * _U(xq.shape[1])
            if has_m:
                acc = row_i8_16(codes, base, G, d, m, _U(2 * r) * G, xq, xo, xd, xs, _U(t) * G)
            else:
                acc = row_i8_16_nom(codes, base, G, d, d, _U(2 * r) * G, xq, xo, xd, xs, _U(t) * G)
            y[t, r] = acc + bias[r] if bias.shape[0] else acc


@njit(cache=True, fastmath=False)
def mv_i8_16(codes, d, m, x, bias, y, xq, xd, xs, isum32, xs32):
    _quantize(x, xq, xd, xs, isum32, xs32)
    _i8_16_rows(codes, d, m, xq, xd, xs, bias, y, 0, y.shape[1])


@njit(parallel=True, cache=True, fastmath=False)
def mv_i8_16_par(codes, d, m, x, bias, y, xq, xd, xs, isum32, xs32, nchunk):
    _quantize(x, xq, xd, xs, isum32, xs32)
    N = y.shape[1]
    for c in prange(nchunk):
        _i8_16_rows(codes, d, m, xq, xd, xs, bias, y, c * N // nchunk, (c + 1) * N // nchunk)
