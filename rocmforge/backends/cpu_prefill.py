"""Prefill on the CPU kernels' weights: y (T, N) = x (T, K) @ W.T for many token rows, as BLAS GEMMs
over float32 row chunks that are dequantised just before their GEMM and dropped after it (no float
copy of a whole matrix lives longer than a call).

The chunks come from the decode layouts of :mod:`rocmforge.backends.cpu_packed` (the file's blocks,
or the repacked copy the decode matvecs read anyway) through the block dequantisers below (intrinsics
on :mod:`rocmforge.backends.cpu_simd`'s loaders): 32 weights a step in vector IR, ``d * q - m`` in
float32, the same values as the row decoders (:func:`rocmforge.backends.cpu_kernels.dequant_rows`,
the float oracle's bit for bit); 1M weights in ~0.2-0.3 ms on one thread against the row decoders'
1.2-1.4 ms on two. A chunk of :data:`CHUNK` weights (1 MiB of float32) stays in the L2 cache
between its dequantisation and its GEMM.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import llvmlite.ir as ir
import numpy as np
from numba import njit, types
from numba.extending import intrinsic

from . import cpu_kernels  # noqa: F401 - sets the OpenMP wait policy before any parallel region runs
from .cpu_simd import (
    _F32T,
    _I32,
    _V32I8,
    _V32I32,
    RAW_LAYOUTS,
    _data,
    _f16_at,
    _f32_at,
    _fifth_bits,
    _load,
    _nibbles,
    _splat,
)

CHUNK = 1 << 18
_U = np.uint64


# ---- dequantisation of one block of 32 to float32 (prefill's BLAS path) ----------------------------
# weight = d * q - m in float32, one multiply then one subtract (no fused multiply-add), as
# cpu_kernels.dequant_rows and the float oracle compute it; Q4_0 / Q5_0 / Q8_0 have no m.

def _store_f32x32(builder, data, off, v):
    builder.store(v, builder.bitcast(builder.gep(data, [off]), v.type.as_pointer()), align=4)


_V32F32 = ir.VectorType(_F32T, 32)


def _splat32(builder, val):
    vec = builder.insert_element(ir.Constant(_V32F32, ir.Undefined), val, ir.Constant(_I32, 0))
    return builder.shuffle_vector(vec, vec, ir.Constant(_V32I32, [0] * 32))


def _deq_raw_intrinsic(fid):
    stride, qs, qh, mn, off = RAW_LAYOUTS[fid]

    @intrinsic
    def deq(typingctx, w, o, out, oo):
        """The 32 weights of the raw block at w[o:] into out[oo:oo+32] (flat float32 offsets)."""
        sig = types.void(w, o, out, oo)

        def codegen(context, builder, sig, args):
            W, BO, OUT, OO = args
            wd, od = _data(context, builder, sig.args[0], W), _data(context, builder, sig.args[2], OUT)
            if fid == 4:
                q = builder.sitofp(_load(builder, builder.gep(wd, [builder.add(BO, ir.Constant(BO.type, qs))]), _V32I8),
                                   _V32F32)
            else:
                u = _nibbles(builder, builder.gep(wd, [builder.add(BO, ir.Constant(BO.type, qs))]))
                if qh >= 0:
                    u = builder.or_(u, _fifth_bits(builder, builder.gep(wd, [builder.add(BO, ir.Constant(BO.type, qh))])))
                q = builder.sitofp(builder.sub(u, _splat(_V32I8, off)), _V32F32)
            y = builder.fmul(_splat32(builder, _f16_at(builder, builder.gep(wd, [BO]))), q)
            if mn >= 0:              # m = -min, as the row decoders keep it
                m = builder.fneg(_f16_at(builder, builder.gep(wd, [builder.add(BO, ir.Constant(BO.type, mn))])))
                y = builder.fsub(y, _splat32(builder, m))
            _store_f32x32(builder, od, OO, y)
            return context.get_dummy_value()

        return sig, codegen

    return deq


deq_q4_0, deq_q4_1, deq_q5_0, deq_q5_1, deq_q8_0 = (_deq_raw_intrinsic(f) for f in range(5))


def _deq_packed_intrinsic(kind):
    @intrinsic
    def deq(typingctx, w, co, d, m, so, out, oo):
        """nib32: the 32 codes at w[co:co+16] (nibbles), d[so], m[so]; i8_16 / i8_16_nom: 32 int8 codes at
        w[co:co+32], d[so], d[so+1] per half (and m) -> out[oo:oo+32]."""
        sig = types.void(w, co, d, m, so, out, oo)

        def codegen(context, builder, sig, args):
            W, CO, D, M, SO, OUT, OO = args
            wd, dd, md, od = (_data(context, builder, sig.args[i], args[i]) for i in (0, 2, 3, 5))
            one = ir.Constant(SO.type, 1)
            if kind == "nib32":
                q = builder.uitofp(_nibbles(builder, builder.gep(wd, [CO])), _V32F32)
                dv = _splat32(builder, _f32_at(builder, dd, SO))
                mv = _splat32(builder, _f32_at(builder, md, SO))
            else:
                q = builder.sitofp(_load(builder, builder.gep(wd, [CO]), _V32I8), _V32F32)
                halves = ir.Constant(_V32I32, [0] * 16 + [1] * 16)

                def two(data):
                    v = ir.Constant(ir.VectorType(_F32T, 2), ir.Undefined)
                    v = builder.insert_element(v, _f32_at(builder, data, SO), ir.Constant(_I32, 0))
                    v = builder.insert_element(v, _f32_at(builder, data, builder.add(SO, one)), ir.Constant(_I32, 1))
                    return builder.shuffle_vector(v, v, halves)

                dv = two(dd)
                mv = two(md) if kind == "i8_16" else None
            y = builder.fmul(dv, q)
            if mv is not None:
                y = builder.fsub(y, mv)
            _store_f32x32(builder, od, OO, y)
            return context.get_dummy_value()

        return sig, codegen

    return deq


deq_nib32, deq_i8_16, deq_i8_16_nom = (_deq_packed_intrinsic(k) for k in ("nib32", "i8_16", "i8_16_nom"))


@njit(inline="always", cache=True)
def _raw_row(fmt, W, r, out, i):
    G = out.shape[1] // 32
    nb = _U(W.shape[1])
    for g in range(G):
        o = _U(r) * nb
        oo = _U(i) * _U(out.shape[1]) + _U(32 * g)
        if fmt == 1:
            deq_q4_1(W, o + _U(20 * g), out, oo)
        elif fmt == 0:
            deq_q4_0(W, o + _U(18 * g), out, oo)
        elif fmt == 4:
            deq_q8_0(W, o + _U(34 * g), out, oo)
        elif fmt == 2:
            deq_q5_0(W, o + _U(22 * g), out, oo)
        else:
            deq_q5_1(W, o + _U(24 * g), out, oo)


@njit(nogil=True, cache=True)
def dq_raw(fmt, W, r0, out):
    """out[i] = the float32 weights of row r0 + i of the raw row block W (uint8 (n, row bytes))."""
    for i in range(out.shape[0]):
        _raw_row(fmt, W, r0 + i, out, i)


@njit(nogil=True, cache=True)
def dq_nib32(codes, d, m, r0, out):
    n, K = out.shape
    G = K // 32
    for i in range(n):
        r = r0 + i
        for g in range(G):
            deq_nib32(codes, _U(r) * _U(codes.shape[1]) + _U(16 * g), d, m, _U(r * G + g), out,
                      _U(i) * _U(K) + _U(32 * g))


@njit(nogil=True, cache=True)
def dq_i8_16(codes, d, m, r0, out):
    n, K = out.shape
    G = K // 32
    has_m = m.shape[1] > 0
    for i in range(n):
        r = r0 + i
        for g in range(G):
            co = _U(r) * _U(K) + _U(32 * g)
            so = _U(2 * (r * G + g))
            oo = _U(i) * _U(K) + _U(32 * g)
            if has_m:
                deq_i8_16(codes, co, d, m, so, out, oo)
            else:
                deq_i8_16_nom(codes, co, d, d, so, out, oo)


def dequantize_rows(w, r0: int, r1: int, out: np.ndarray) -> None:
    """out (r1 - r0, K) = the float32 weights of joined rows r0..r1 of PackedWeight ``w`` (for raw, the
    rows must lie in one of its parts)."""
    if w.kind == "raw":
        start = 0
        for part in w.parts:
            if r0 < start + part.shape[0]:
                dq_raw(w.fid, part, np.int64(r0 - start), out)
                return
            start += part.shape[0]
        raise IndexError(f"rows {r0}..{r1} outside the weight's {start} rows")
    if w.kind == "nib32":
        dq_nib32(w.codes, w.d, w.m, np.int64(r0), out)
    else:
        dq_i8_16(w.codes, w.d, w.m, np.int64(r0), out)


def _chunks(w, step: int) -> list[tuple[int, int]]:
    bounds = [0]
    for part in (w.parts if w.kind == "raw" else ()):
        bounds.append(bounds[-1] + part.shape[0])
    if len(bounds) == 1:
        bounds.append(w.shape[0])
    return [(r0, min(b, r0 + step)) for a, b in zip(bounds[:-1], bounds[1:]) for r0 in range(a, b, step)]


_pool: list = []


def _helpers(n: int) -> ThreadPoolExecutor:
    if not _pool or _pool[0][0] != n:
        _pool[:] = [(n, ThreadPoolExecutor(n, thread_name_prefix="rocmforge-prefill"))]
    return _pool[0][1]


def linear(w, x: np.ndarray, y: np.ndarray, nthreads: int) -> None:
    """y (T, N) = x (T, K) @ W.T, chunk by chunk (each within one part of a raw joined weight), the
    chunks dealt round-robin to ``nthreads`` threads (this one and helpers); each dequantises (numba,
    without the GIL) and multiplies (BLAS, which the caller keeps at one thread: see
    CpuBackend.forward_scope) its own."""
    K = w.shape[1]
    chunks = _chunks(w, max(1, CHUNK // K))
    n = max(1, min(nthreads, len(chunks)))

    def work(mine):
        buf = np.empty((max(r1 - r0 for r0, r1 in mine), K), np.float32)
        for r0, r1 in mine:
            chunk = buf[: r1 - r0]
            dequantize_rows(w, r0, r1, chunk)
            np.matmul(x, chunk.T, out=y[:, r0:r1])

    futures = [_helpers(n - 1).submit(work, chunks[i::n]) for i in range(1, n)]
    work(chunks[0::n])
    for f in futures:
        f.result()
