"""CPU decode matvecs over weights repacked once at load, so the inner loop is one long run of
integer multiply-adds that LLVM vectorises (AVX2 / AVX-512 lanes of int16), not a per-format row
decode for every token.

The arithmetic is :mod:`rocmforge.backends.cpu_reference`'s, bit for bit: exact integer dot products
of the weight codes q with the int8 activation codes, then float32 steps in a fixed order. Per layout:

* ``nib32`` (Q4_0, Q4_1, Q4_K: 4-bit codes with one scale d and offset m per block of 32): byte j of
  block g holds code 32g + j in its low nibble and 32g + 16 + j in its high one, stored as
  ``q + off`` (off 8 for Q4_0's signed codes); the activations come in the same two halves (``xlo``,
  ``xhi``), so each byte multiplies two activations at the same index and one buffer holds the
  block's products. Per block, s = sum(nibble * x) - off * sum(x) (the same integer as sum(q * x))
  and ``acc += xd * (d * s) - m * xs32`` (``cpu_reference.matvec_int32``). 0.75 bytes per weight
  (Q4_1's file: 0.625);
* ``i8_16`` (every other integer format): the codes as int8 and d, m per 16 (m dropped when zero),
  per half block ``acc += xd * (d0 * s0 + d1 * s1) - (m0 * xs0 + m1 * xs1)``
  (``cpu_reference.matvec_int``).

A row's products go to a small int16 buffer in one pass (|code x activation| < 2^15), its half-block
sums (int32) and the float steps follow; the sums index with unsigned integers, since numba's
negative-index wraparound on signed ones kept LLVM from vectorising them (2x on this machine).
Rows are split over numba's threads.
"""

from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from .cpu_kernels import decode_rows_int, quantize_act

_F32 = np.float32
NIB32_FORMATS = ("Q4_0", "Q4_1", "Q4_K")


class PackedWeight:
    """One weight's rows in a kernel layout: ``kind`` "nib32" (codes (N, K/2) uint8, d and m (N, K/32),
    ``off``) or "i8_16" (codes (N, K) int8, d and m (N, K/16); m of shape (N, 0) when all zero)."""

    __slots__ = ("kind", "codes", "d", "m", "off", "shape")

    def __init__(self, kind, codes, d, m, off, shape):
        self.kind, self.codes, self.d, self.m, self.off, self.shape = kind, codes, d, m, off, shape

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.d.nbytes + self.m.nbytes)


def pack(qtype: str, fid: int, parts, K: int) -> PackedWeight:
    """The rows of ``parts`` (uint8 row blocks of format ``qtype``) in their kernel layout."""
    N = sum(int(p.shape[0]) for p in parts)
    q = np.empty((N, K), np.int8)
    d = np.empty((N, K // 16), np.float32)
    m = np.empty((N, K // 16), np.float32)
    r = 0
    for p in parts:
        n = int(p.shape[0])
        if n:
            decode_rows_int(fid, np.ascontiguousarray(p), q[r:r + n], d[r:r + n], m[r:r + n])
        r += n
    if qtype in NIB32_FORMATS:
        off = 8 if q.min(initial=0) < 0 else 0
        paired = np.array_equal(d[:, 0::2], d[:, 1::2]) and np.array_equal(m[:, 0::2], m[:, 1::2])
        if paired and 0 <= int(q.min(initial=0)) + off and int(q.max(initial=0)) + off <= 15:
            u = (q.astype(np.int16) + off).astype(np.uint8).reshape(N, K // 32, 2, 16)
            codes = (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).reshape(N, K // 2)
            return PackedWeight("nib32", np.ascontiguousarray(codes), np.ascontiguousarray(d[:, 0::2]),
                                np.ascontiguousarray(m[:, 0::2]), off, (N, K))
    if not m.any():
        m = np.zeros((N, 0), np.float32)
    return PackedWeight("i8_16", q, d, m, 0, (N, K))


# ---- activations: int8 codes of each block of 32, in the two layouts the kernels read ----------

@njit(cache=True)
def _act_layouts(x, q16, xlo, xhi, xd, xs, isum, xs32, isum32):
    """x (T, K) -> codes q16 (T, K) int16, the half blocks xlo / xhi (T, K/2), scales xd (T, K/32),
    scaled half sums xs (T, K/16) (rf_q8.h), integer half sums isum (T, K/16), and per whole block
    of 32 the integer sums isum32 and xs32 = xd * isum32 (T, K/32)."""
    T, K = x.shape
    xq = np.empty((T, K), np.float32)
    quantize_act(x, xq, xd, xs)
    for t in range(T):
        for g in range(K // 32):
            s0 = 0
            s1 = 0
            for j in range(16):
                a = np.int16(xq[t, 32 * g + j])
                b = np.int16(xq[t, 32 * g + 16 + j])
                q16[t, 32 * g + j] = a
                q16[t, 32 * g + 16 + j] = b
                xlo[t, 16 * g + j] = a
                xhi[t, 16 * g + j] = b
                s0 += a
                s1 += b
            isum[t, 2 * g] = s0
            isum[t, 2 * g + 1] = s1
            isum32[t, g] = s0 + s1
            xs32[t, g] = xd[t, g] * _F32(s0 + s1)


# ---- the matvecs: y (T, N) = x (T, K) @ W.T (+ bias) -------------------------------------------

@njit(parallel=True, cache=True, fastmath=False)
def mv_nib32(codes, d, m, off, xlo, xhi, xd, xs32, isum32, bias, y, nthreads):
    N, K2 = codes.shape
    T, G = xd.shape
    U = np.uint64
    nchunk = max(1, min(N, 4 * nthreads))
    for c in prange(nchunk):
        p = np.empty(K2, np.int16)
        for r in range(c * N // nchunk, (c + 1) * N // nchunk):
            row, dr, mr = codes[r], d[r], m[r]
            for t in range(T):
                lo, hi, xdt, xst, ist = xlo[t], xhi[t], xd[t], xs32[t], isum32[t]
                for i in range(K2):              # the long vectorised run: both nibbles of a byte
                    b = row[i]
                    p[i] = np.int16(b & 15) * lo[i] + np.int16(b >> 4) * hi[i]
                acc = _F32(0.0)
                for g in range(G):
                    s = np.int32(0)
                    o = U(16 * g)
                    for j in range(16):
                        s += p[o + U(j)]
                    u = U(g)
                    s -= off * ist[u]
                    acc += xdt[u] * (dr[u] * _F32(s)) - mr[u] * xst[u]
                y[t, r] = acc + bias[r] if bias.shape[0] else acc


@njit(parallel=True, cache=True, fastmath=False)
def mv_i8_16(codes, d, m, q16, xd, xs, bias, y, nthreads):
    N, K = codes.shape
    T, G = xd.shape
    U = np.uint64
    has_m = m.shape[1] > 0
    nchunk = max(1, min(N, 4 * nthreads))
    for c in prange(nchunk):
        p = np.empty(K, np.int16)
        for r in range(c * N // nchunk, (c + 1) * N // nchunk):
            row, dr = codes[r], d[r]
            mr = m[r] if has_m else d[r]
            for t in range(T):
                xt, xdt, xst = q16[t], xd[t], xs[t]
                for i in range(K):               # the long vectorised run
                    p[i] = np.int16(row[i]) * xt[i]
                acc = _F32(0.0)
                for g in range(G):
                    s0 = np.int32(0)
                    s1 = np.int32(0)
                    o = U(32 * g)
                    for j in range(16):
                        s0 += p[o + U(j)]
                    for j in range(16):
                        s1 += p[o + U(16 + j)]
                    h0, h1 = U(2 * g), U(2 * g + 1)
                    part = xdt[U(g)] * (dr[h0] * _F32(s0) + dr[h1] * _F32(s1))
                    if has_m:
                        part -= mr[h0] * xst[h0] + mr[h1] * xst[h1]
                    else:
                        part -= _F32(0.0) * xst[h0] + _F32(0.0) * xst[h1]
                    acc += part
                y[t, r] = acc + bias[r] if bias.shape[0] else acc


# multiply-adds below which a matvec runs on the calling thread alone: waking numba's other OpenMP
# threads costs more than they save on a small matrix (2 cores, SmolLM2's shapes: 576 x 1536 took
# 91 us on one thread and 139 us on two, 3072 x 576 259 us and 207 us, the 49152-row head 3.2 / 1.6 ms)
PARALLEL_MIN_MACS = 1_200_000


def matvec(w: PackedWeight, x: np.ndarray, bias: np.ndarray, y: np.ndarray, nthreads: int) -> None:
    """y (T, N) = x (T, K) @ W.T + bias (bias of length 0: none), x float32 C-contiguous."""
    T, K = x.shape
    nthreads = nthreads if T * w.shape[0] * K >= PARALLEL_MIN_MACS else 1
    numba.set_num_threads(nthreads)       # per calling thread: the next parallel regions' team size
    q16 = np.empty((T, K), np.int16)
    xlo = np.empty((T, K // 2), np.int16)
    xhi = np.empty((T, K // 2), np.int16)
    xd = np.empty((T, K // 32), np.float32)
    xs = np.empty((T, K // 16), np.float32)
    isum = np.empty((T, K // 16), np.int32)
    xs32 = np.empty((T, K // 32), np.float32)
    isum32 = np.empty((T, K // 32), np.int32)
    _act_layouts(x, q16, xlo, xhi, xd, xs, isum, xs32, isum32)
    if w.kind == "nib32":
        mv_nib32(w.codes, w.d, w.m, np.int32(w.off), xlo, xhi, xd, xs32, isum32, bias, y, nthreads)
    else:
        mv_i8_16(w.codes, w.d, w.m, q16, xd, xs, bias, y, nthreads)
