"""The CPU backend's decode-sized float ops as Numba kernels: rms_norm (and the residual add before it),
rope of q and k, and attention of a few new queries over a float32 cache.

The NumPy backend computes these with whole-array expressions whose temporaries cost more than the
arithmetic at one token (SmolLM2's attention of one query over ~200 cached positions: ~70 µs in NumPy;
a 576-wide add + rms_norm: 15 µs). These kernels do one pass each, in float32 like the NumPy backend,
reductions in float64; they are not bit for bit NumPy's (summation order, ``fastmath`` vector sums,
libm's tanh / exp) and the tests hold them to the NumPy backend within float32 rounding.
:class:`rocmforge.backends.cpu_backend.CpuBackend` calls them for at most ``max_kernel_rows`` token rows
and leaves prefill, and every option they do not cover, to the NumPy backend.

Layout: activations (T, d) C-contiguous float32; heads (T, H, D) of any strides (q and k are column
slices of the fused q|k|v output); the cache's K and V (capacity, Hkv, D) C-contiguous float32.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from . import cpu_kernels  # noqa: F401 - sets the OpenMP wait policy before any parallel region runs
from .cpu_simd import f32_from_bits, prefetch

_F32 = np.float32


@njit(cache=True, fastmath=True)
def rms_norm_rows(x, w, has_w, eps, out):
    """out[t] = x[t] / sqrt(mean(x[t]^2) + eps) (* w): x, out (R, d)."""
    R, d = x.shape
    for r in range(R):
        ss = 0.0
        for i in range(d):
            v = np.float64(x[r, i])
            ss += v * v
        inv = _F32(1.0 / math.sqrt(ss / d + eps))
        if has_w:
            for i in range(d):
                out[r, i] = x[r, i] * inv * w[i]
        else:
            for i in range(d):
                out[r, i] = x[r, i] * inv


@njit(cache=True, fastmath=True)
def add_rms_norm_rows(a, b, w, has_w, eps, s, out):
    """s = a + b; out = rms_norm(s) (* w)."""
    R, d = a.shape
    for r in range(R):
        for i in range(d):
            s[r, i] = a[r, i] + b[r, i]
    rms_norm_rows(s, w, has_w, eps, out)


@njit(cache=True, fastmath=True)
def rope_rows(x, positions, inv_freq, neox, rot, mscale, out):
    """out (T, H, D) = x with the first ``rot`` dims of each head rotated (NumpyBackend.rope's convention)."""
    T, H, D = x.shape
    half = rot // 2
    c = np.empty(half, np.float32)
    sn = np.empty(half, np.float32)
    for t in range(T):
        p = np.float64(positions[t])
        for i in range(half):
            ang = p * np.float64(inv_freq[i])
            c[i] = _F32(math.cos(ang) * mscale)
            sn[i] = _F32(math.sin(ang) * mscale)
        for h in range(H):
            for i in range(rot, D):
                out[t, h, i] = x[t, h, i]
            for i in range(half):
                i0, i1 = (i, i + half) if neox else (2 * i, 2 * i + 1)
                a, b = x[t, h, i0], x[t, h, i1]
                out[t, h, i0] = a * c[i] - b * sn[i]
                out[t, h, i1] = a * sn[i] + b * c[i]


@njit(inline="always", cache=True, fastmath=True)
def _exp(x):
    """e^x for float32 x <= 0 in a form LLVM vectorises (libm's exp is a call per element): 2^n times a
    degree-7 polynomial of r = x - n ln 2, |r| <= ln 2 / 2 (relative error ~1e-7); below -87: 0."""
    if x < _F32(-87.0):
        return _F32(0.0)
    n = np.floor(x * _F32(1.4426950408889634) + _F32(0.5))       # float32 (math.floor: an int64)
    r = x - n * _F32(0.693359375) + n * _F32(2.12194440e-4)
    p = _F32(1.0 / 5040.0)
    p = p * r + _F32(1.0 / 720.0)
    p = p * r + _F32(1.0 / 120.0)
    p = p * r + _F32(1.0 / 24.0)
    p = p * r + _F32(1.0 / 6.0)
    p = p * r + _F32(0.5)
    p = p * r + _F32(1.0)
    p = p * r + _F32(1.0)
    return p * f32_from_bits(np.int32(n) + np.int32(127) << np.int32(23))


# cached positions ahead whose K and V rows the attention loops prefetch (they come from DRAM: the
# weights streamed since the last token have pushed them out of the caches)
_KV_AHEAD = 8


# keys per split below which a (row, kv head) pair is not split over threads
_SPLIT_MIN_KEYS = 64


@njit(inline="always", cache=True, fastmath=True)
def _attend_part(q, K, V, t, kh, j0, j1, scale, softcap, p, acc, mx, den):
    """Keys j0..j1 (exclusive) for the G = H // Hkv query heads of kv head kh, query row t: per head g
    the part's max score mx[g], its sum of exp(score - mx[g]) den[g] and its exp-weighted V rows
    acc[g] (flash-decoding's partial softmax; an empty part leaves mx = -inf, den = 0, acc = 0)."""
    D = q.shape[2]
    Dv = V.shape[2]
    G = p.shape[0]
    Hkv = K.shape[1]
    for j in range(j0, j1):
        prefetch(K, (j + _KV_AHEAD) * Hkv * D + kh * D)
        for g in range(G):
            s = _F32(0.0)
            for i in range(D):
                s += q[t, kh * G + g, i] * K[j, kh, i]
            s *= scale
            if softcap > 0:
                s = softcap * np.tanh(s / softcap)
            p[g, j - j0] = s
    for g in range(G):
        m = _F32(-np.inf)
        for j in range(j1 - j0):
            m = max(m, p[g, j])
        sm = _F32(0.0)
        for j in range(j1 - j0):
            e = _exp(p[g, j] - m)
            p[g, j] = e
            sm += e
        mx[g] = m
        den[g] = sm
        for i in range(Dv):
            acc[g, i] = 0.0
    for j in range(j0, j1):
        prefetch(V, (j + _KV_AHEAD) * Hkv * Dv + kh * Dv)
        for g in range(G):
            e = p[g, j - j0]
            for i in range(Dv):
                acc[g, i] += e * V[j, kh, i]


@njit(parallel=True, cache=True, fastmath=True)
def attend_cached(q, K, V, pos0, scale, window, softcap, nsplit, out):
    """Causal attention of q (T, H, D) at positions pos0.. over K, V (>= pos0 + T, Hkv, D / Dv) already
    holding them; GQA by head groups; ``window`` > 0: keys p - window < j <= p; ``softcap`` > 0: cap *
    tanh(score / cap) before the softmax. out (T, H, Dv). The G query heads of a kv head go together,
    so each cached K and V row is read once per query. The tasks, spread over the threads, are (row,
    kv head, part of the keys): up to ``nsplit`` parts of at least _SPLIT_MIN_KEYS keys (one kv head,
    Gemma 3's, would otherwise run on one thread), merged after as flash-decoding does."""
    T, H, _ = q.shape
    Hkv = K.shape[1]
    Dv = V.shape[2]
    G = H // Hkv
    S = pos0 + T
    ns = max(1, min(nsplit, S // _SPLIT_MIN_KEYS))
    pm = np.empty((T * Hkv * ns, G), np.float32)
    pl = np.empty((T * Hkv * ns, G), np.float32)
    pacc = np.empty((T * Hkv * ns, G, Dv), np.float32)
    for task in prange(T * Hkv * ns):
        t, rest = task // (Hkv * ns), task % (Hkv * ns)
        kh, part = rest // ns, rest % ns
        qp = pos0 + t
        lo = 0 if window <= 0 else max(0, qp - window + 1)
        n = qp + 1 - lo
        j0, j1 = lo + part * n // ns, lo + (part + 1) * n // ns
        p = np.empty((G, max(1, j1 - j0)), np.float32)
        _attend_part(q, K, V, t, kh, j0, j1, scale, softcap, p, pacc[task], pm[task], pl[task])
    for t in range(T):
        for kh in range(Hkv):
            base = (t * Hkv + kh) * ns
            for g in range(G):
                m = _F32(-np.inf)
                for part in range(ns):
                    m = max(m, pm[base + part, g])
                h = kh * G + g
                den = _F32(0.0)
                for i in range(Dv):
                    out[t, h, i] = 0.0
                for part in range(ns):
                    w = _exp(pm[base + part, g] - m) if pl[base + part, g] > 0 else _F32(0.0)
                    den += w * pl[base + part, g]
                    for i in range(Dv):
                        out[t, h, i] += w * pacc[base + part, g, i]
                inv = _F32(1.0) / den
                for i in range(Dv):
                    out[t, h, i] *= inv
