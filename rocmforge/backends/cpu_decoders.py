"""The CPU kernels' row decoders (Numba): one quantised weight row's bytes to small integers and
per-16 scales/offsets (or to float32 weights for the OCP formats without integer elements), the
format tables they branch on, and the field readers they share. Imported through
:mod:`rocmforge.backends.cpu_kernels`, which sets numba's thread wait policy first.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
from numba import njit

_F32 = np.float32

# format name -> the id the kernels branch on; INT formats decode to (q, d, m)
INT_FORMATS: dict[str, int] = {
    "Q4_0": 0, "Q4_1": 1, "Q5_0": 2, "Q5_1": 3, "Q8_0": 4, "IQ4_NL": 5, "MXFP4": 6,
    "Q2_K": 7, "Q3_K": 8, "Q4_K": 9, "Q5_K": 10, "Q6_K": 11, "IQ4_XS": 12,
    "MXINT8": 13, "MXFP4_E2M1": 14, "MXFP6_E2M3": 15,
}
# formats decoded to float32 weights (float dot product)
FLOAT_FORMATS: dict[str, int] = {"MXFP8_E4M3": 20, "MXFP8_E5M2": 21, "MXFP6_E3M2": 22}
FORMATS = {**INT_FORMATS, **FLOAT_FORMATS}

# 16-entry value tables (rf_quant.h RF_KV_IQ4NL, RF_KV_MXFP4 = 2 * E2M1)
_KV_Q4_0 = (np.arange(16) - 8).astype(np.int8)       # Q4_0's nibble - 8, as a table like IQ4_NL's
_KV_IQ4NL = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.int8)
_KV_MXFP4 = np.array([0, 1, 2, 3, 4, 6, 8, 12, 0, -1, -2, -3, -4, -6, -8, -12], np.int8)
# element values of the float-decoded OCP formats, by code (ml_dtypes is the spec here)
_FP6_E3M2 = (np.arange(64, dtype=np.uint8) & 0x3F).view(ml_dtypes.float6_e3m2fn).astype(np.float32)
# 2^(e - 25) for the f16 exponents e = 0..31 (normal f16 = (1024 + f) * 2^(e - 25)); exact in float32
_POW2_F16 = np.array([2.0 ** (e - 25) for e in range(32)], np.float32)


# ---- scalar field readers ---------------------------------------------------------------------

@njit(inline="always", cache=True)
def _f16(row, o):
    h = np.int64(row[o]) | (np.int64(row[o + 1]) << 8)
    e = (h >> 10) & 31
    f = h & 1023
    if e == 0:
        v = _F32(f) * _F32(5.960464477539063e-08)        # subnormal: f * 2^-24, exact
    elif e == 31:
        v = _F32(np.inf) if f == 0 else _F32(np.nan)
    else:
        v = _F32(1024 + f) * _POW2_F16[e]
    return -v if (h >> 15) & 1 else v


@njit(inline="always", cache=True)
def _b(row, o):
    return np.int64(row[o])


@njit(inline="always", cache=True)
def _u32(row, o):
    return (_b(row, o) | (_b(row, o + 1) << 8) | (_b(row, o + 2) << 16)
            | (_b(row, o + 3) << 24))


@njit(inline="always", cache=True)
def _e8m0(e):
    """OCP E8M0 scale 2^(e - 127); 0xFF is NaN."""
    if e == 255:
        return _F32(np.nan)
    return _F32(2.0 ** (np.int64(e) - 127))


@njit(inline="always", cache=True)
def _e2m3_x8(c):
    """FP6 E2M3 code times 8 as a signed integer (rf_e2m3_x8)."""
    e = (c >> 3) & 3
    mm = c & 7
    mag = mm if e == 0 else ((8 | mm) << (e - 1))
    return -mag if c & 0x20 else mag


@njit(inline="always", cache=True)
def _set_scale(d, m, j, dd, mm):
    d[j] = dd
    d[j + 1] = dd
    m[j] = mm
    m[j + 1] = mm


@njit(inline="always", cache=True)
def _scale_min_k4(row, o, j):
    if j < 4:
        return _b(row, o + j) & 63, _b(row, o + j + 4) & 63
    return ((_b(row, o + j + 4) & 15) | ((_b(row, o + j - 4) >> 6) << 4),
            (_b(row, o + j + 4) >> 4) | ((_b(row, o + j) >> 6) << 4))


@njit(inline="always", cache=True)
def _q3k_scale(row, o, i):
    lo = (_b(row, o + i) & 15) if i < 8 else (_b(row, o + i - 8) >> 4)
    hi = (_b(row, o + 8 + (i & 3)) >> (2 * (i >> 2))) & 3
    return np.int64(lo | (hi << 4)) - 32


@njit(inline="always", cache=True)
def _fp8(c, e4m3):
    """FP8 code -> float32: E4M3 (bias 7, S.1111.111 NaN) or E5M2 (bias 15, IEEE-like inf/NaN)."""
    mb = 3 if e4m3 else 2
    bias = 7 if e4m3 else 15
    e = (c & 0x7F) >> mb
    f = c & ((1 << mb) - 1)
    if e4m3 and (c & 0x7F) == 0x7F:
        return _F32(np.nan)
    if not e4m3 and e == 31:
        v = _F32(np.inf) if f == 0 else _F32(np.nan)
    elif e == 0:
        v = _F32(f) * _F32(2.0 ** (1 - bias - mb))
    else:
        v = _F32(f | (1 << mb)) * _F32(2.0 ** (e - bias - mb))
    return -v if c & 0x80 else v


# ---- row decoders: raw row bytes -> q (int8, K), d and m (float32, K / 16) ---------------------

@njit(cache=True)
def decode_row(fmt, row, q, d, m):
    """Decode one row of format ``fmt`` (an INT_FORMATS id) into q, d, m."""
    K = q.shape[0]
    zero = _F32(0.0)
    if fmt == 0 or fmt == 5:                # Q4_0 / IQ4_NL {d; qs[16]}: d * table[nibble]
        tab = _KV_Q4_0 if fmt == 0 else _KV_IQ4NL
        for b in range(K // 32):
            p = 32 * b
            o = 18 * b
            _set_scale(d, m, 2 * b, _f16(row, o), zero)
            for j in range(16):
                c = _b(row, o + 2 + j)
                q[p + j] = tab[c & 15]
                q[p + 16 + j] = tab[c >> 4]
    elif fmt == 1:                          # Q4_1 {d, min; qs[16]}: d * nibble + min
        for b in range(K // 32):
            p = 32 * b
            o = 20 * b
            _set_scale(d, m, 2 * b, _f16(row, o), -_f16(row, o + 2))
            for j in range(16):
                c = _b(row, o + 4 + j)
                q[p + j] = np.int8(c & 15)
                q[p + 16 + j] = np.int8(c >> 4)
    elif fmt == 2 or fmt == 3:              # Q5_0 {d; qh; qs} / Q5_1 {d, min; qh; qs}
        for b in range(K // 32):
            p = 32 * b
            o = (22 if fmt == 2 else 24) * b
            h0 = 2 if fmt == 2 else 4
            off = 16 if fmt == 2 else 0
            _set_scale(d, m, 2 * b, _f16(row, o), zero if fmt == 2 else -_f16(row, o + 2))
            qh = _u32(row, o + h0)
            for j in range(16):
                c = _b(row, o + h0 + 4 + j)
                q[p + j] = np.int8(((c & 15) | (((qh >> j) & 1) << 4)) - off)
                q[p + 16 + j] = np.int8(((c >> 4) | (((qh >> (j + 16)) & 1) << 4)) - off)
    elif fmt == 4:                          # Q8_0 {d; int8 qs[32]}
        for b in range(K // 32):
            p = 32 * b
            o = 34 * b
            _set_scale(d, m, 2 * b, _f16(row, o), zero)
            for j in range(32):
                q[p + j] = np.int8(_b(row, o + 2 + j))
    elif fmt == 6:                          # GGUF MXFP4 {e; qs[16]}: 2^(e-128) * 2*E2M1
        for b in range(K // 32):
            p = 32 * b
            o = 17 * b
            _set_scale(d, m, 2 * b, _F32(2.0 ** (_b(row, o) - 128)), zero)
            for j in range(16):
                c = _b(row, o + 1 + j)
                q[p + j] = _KV_MXFP4[c & 15]
                q[p + 16 + j] = _KV_MXFP4[c >> 4]
    elif fmt == 13:                         # MXINT8 {e; int8[32]}: X * 2^-6 * q
        for b in range(K // 32):
            p = 32 * b
            o = 33 * b
            _set_scale(d, m, 2 * b, _e8m0(_b(row, o)) * _F32(0.015625), zero)
            for j in range(32):
                q[p + j] = np.int8(_b(row, o + 1 + j))
    elif fmt == 14:                         # OCP MXFP4 {e; 16 B}: byte j = elements 2j, 2j+1
        for b in range(K // 32):
            p = 32 * b
            o = 17 * b
            _set_scale(d, m, 2 * b, _e8m0(_b(row, o)) * _F32(0.5), zero)
            for j in range(16):
                c = _b(row, o + 1 + j)
                q[p + 2 * j] = _KV_MXFP4[c & 15]
                q[p + 2 * j + 1] = _KV_MXFP4[c >> 4]
    elif fmt == 15:                                   # 15: MXFP6 E2M3 {e; 8 x 3 B}: X/8 * 8*E2M3
        for b in range(K // 32):
            p = 32 * b
            o = 25 * b
            _set_scale(d, m, 2 * b, _e8m0(_b(row, o)) * _F32(0.125), zero)
            for k in range(8):
                w = _b(row, o + 1 + 3 * k) | (_b(row, o + 2 + 3 * k) << 8) \
                    | (_b(row, o + 3 + 3 * k) << 16)
                for i in range(4):
                    q[p + 4 * k + i] = np.int8(_e2m3_x8((w >> (6 * i)) & 63))
    elif fmt == 7:                            # Q2_K {scales[16]; qs[64]; d; dmin}
        for B in range(K // 256):
            for s in range(8):
                p = 256 * B + 32 * s
                j = 16 * B + 2 * s                  # index of the group's first half in d, m
                o = 84 * B
                dd, dmin = _f16(row, o + 80), _f16(row, o + 82)
                qs = o + 16 + (s >> 2) * 32
                sh = 2 * (s & 3)
                for ll in range(32):
                    q[p + ll] = np.int8((_b(row, qs + ll) >> sh) & 3)
                for h in range(2):
                    sc = _b(row, o + 2 * s + h)
                    d[j + h] = dd * _F32(sc & 15)
                    m[j + h] = dmin * _F32(sc >> 4)
    elif fmt == 8:                          # Q3_K {hmask[32]; qs[64]; scales[12]; d}
        for B in range(K // 256):
            for s in range(8):
                p = 256 * B + 32 * s
                j = 16 * B + 2 * s                  # index of the group's first half in d, m
                o = 110 * B
                dd = _f16(row, o + 108)
                qs = o + 32 + (s >> 2) * 32
                sh = 2 * (s & 3)
                for ll in range(32):
                    lo = (_b(row, qs + ll) >> sh) & 3
                    hb = (_b(row, o + ll) >> s) & 1
                    q[p + ll] = np.int8((lo | (hb << 2)) - 4)
                for h in range(2):
                    d[j + h] = dd * _F32(_q3k_scale(row, o + 96, 2 * s + h))
                    m[j + h] = zero
    elif fmt == 9 or fmt == 10:             # Q4_K {d; dmin; scales[12]; qs[128]} / Q5_K (+ qh[32])
        for B in range(K // 256):
            for s in range(8):
                p = 256 * B + 32 * s
                j = 16 * B + 2 * s                  # index of the group's first half in d, m
                o = (144 if fmt == 9 else 176) * B
                sc, mn = _scale_min_k4(row, o + 4, s)
                _set_scale(d, m, j, _f16(row, o) * _F32(sc), _f16(row, o + 2) * _F32(mn))
                qs = o + (16 if fmt == 9 else 48) + (s >> 1) * 32
                sh = 4 * (s & 1)
                for ll in range(32):
                    v = (_b(row, qs + ll) >> sh) & 15
                    if fmt == 10:
                        v |= ((_b(row, o + 16 + ll) >> s) & 1) << 4
                    q[p + ll] = np.int8(v)
    elif fmt == 11:                         # Q6_K {ql[128]; qh[64]; int8 scales[16]; d}
        for B in range(K // 256):
            for s in range(8):
                p = 256 * B + 32 * s
                j = 16 * B + 2 * s                  # index of the group's first half in d, m
                o = 210 * B
                dd = _f16(row, o + 208)
                h4, k4 = s >> 2, s & 3
                ql = o + h4 * 64 + (k4 & 1) * 32
                qh = o + 128 + h4 * 32
                shl, shh = 4 * (k4 >> 1), 2 * k4
                for ll in range(32):
                    v = ((_b(row, ql + ll) >> shl) & 15) | (((_b(row, qh + ll) >> shh) & 3) << 4)
                    q[p + ll] = np.int8(np.int64(v) - 32)
                sc = o + 192 + h4 * 8 + 2 * k4
                for h in range(2):
                    d[j + h] = dd * _F32(np.int8(_b(row, sc + h)))
                    m[j + h] = zero
    elif fmt == 12:                                   # 12: IQ4_XS {d; scales_h; scales_l[4]; qs[128]}
        for B in range(K // 256):
            for s in range(8):
                p = 256 * B + 32 * s
                j = 16 * B + 2 * s                  # index of the group's first half in d, m
                o = 136 * B
                sh16 = _b(row, o + 2) | (_b(row, o + 3) << 8)
                ls = ((_b(row, o + 4 + (s >> 1)) >> (4 * (s & 1))) & 15) | (((sh16 >> (2 * s)) & 3) << 4)
                _set_scale(d, m, j, _f16(row, o) * _F32(np.int64(ls) - 32), zero)
                qs = o + 8 + s * 16
                for ll in range(16):
                    c = _b(row, qs + ll)
                    q[p + ll] = _KV_IQ4NL[c & 15]
                    q[p + 16 + ll] = _KV_IQ4NL[c >> 4]


@njit(cache=True)
def decode_row_float(fmt, row, w):
    """Decode one row of a float-decoded OCP format (a FLOAT_FORMATS id): w = element * X."""
    K = w.shape[0]
    for b in range(K // 32):
        p = 32 * b
        if fmt == 22:                               # MXFP6 E3M2: 25-byte blocks, 6-bit codes
            o = 25 * b
            X = _e8m0(_b(row, o))
            for k in range(8):
                v = _b(row, o + 1 + 3 * k) | (_b(row, o + 2 + 3 * k) << 8) \
                    | (_b(row, o + 3 + 3 * k) << 16)
                for i in range(4):
                    w[p + 4 * k + i] = _FP6_E3M2[(v >> (6 * i)) & 63] * X
        else:                                       # MXFP8 E4M3 (20) / E5M2 (21): 33-byte blocks
            o = 33 * b
            X = _e8m0(_b(row, o))
            for i in range(32):
                w[p + i] = _fp8(_b(row, o + 1 + i), fmt == 20) * X
