"""The CPU decode matvecs' inner block products as Numba intrinsics: LLVM vector IR of one block of
32 weight codes against 32 int8 activation codes, exact in int32.

LLVM's auto-vectoriser does not turn numba's per-block integer sums into SIMD (numba widens integer
arithmetic to int64 and the 32-iteration loops unroll before vectorising), so the block products are
written here as vector IR. On x86 with AVX2 they take llama.cpp's instruction sequence: ``vpmaddubsw``
(unsigned byte x signed byte, pairs summed into int16) and ``vpmaddwd`` against ones (int16 pairs into
int32), then one horizontal add. No step can overflow or saturate for the codes these formats hold:

* 4/5-bit codes are 0..31 (unsigned), activations -127..127: a pair sum is at most 2 * 31 * 127;
* signed int8 codes (Q8_0 and the repacked formats) go through the sign trick ``|w| * sign(x, w)``:
  |w| <= 128, so a pair sum is at most 2 * 128 * 127 = 32512 < 2^15.

With AVX-VNNI (or AVX512-VNNI + VL) one ``vpdpbusd`` does both steps; elsewhere (no AVX2) the same
values come from widened multiplies. Every path gives the same 8 int32 lanes (lane l: the exact sum of
products 4l..4l+3), so the row intrinsics at the bottom, and the kernels built on them, are bit for bit
:func:`rocmforge.backends.cpu_reference.matvec_lanes` on every machine.

Layout of a nibble block (Q4_0, Q4_1, Q5_x, and the repacked nib32 rows): 16 bytes, byte j holding
code j in its low nibble and code 16 + j in its high one; Q5's fifth bits are a little-endian uint32,
bit j for code j.
"""

from __future__ import annotations

import os

import llvmlite.binding as llvm
import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_FEATURES = llvm.get_host_cpu_features()
# ROCMFORGE_CPU_SIMD=avx2 or generic caps the path below what the CPU has (the tests compile every path
# this machine can run; numba's disk cache does not see this switch, so set NUMBA_CACHE_DIR with it)
_CAP = os.environ.get("ROCMFORGE_CPU_SIMD", "vnni")
HAVE_AVX2 = bool(_FEATURES.get("avx2", False)) and _CAP in ("vnni", "avx2")
# vpdpbusd on 256-bit vectors: AVX512-VNNI with AVX512VL (EVEX) or AVX-VNNI (VEX); one instruction for
# what AVX2 does in vpmaddubsw + vpmaddwd, with the same lanes (sums of 4 adjacent products, exact)
HAVE_VNNI = HAVE_AVX2 and _CAP == "vnni" and (
    bool(_FEATURES.get("avxvnni", False))
    or (bool(_FEATURES.get("avx512vnni", False)) and bool(_FEATURES.get("avx512vl", False))))

_I1, _I8, _I16, _I32 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V16I8, _V32I8 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 32)
_V16I16, _V8I32, _V4I32 = ir.VectorType(_I16, 16), ir.VectorType(_I32, 8), ir.VectorType(_I32, 4)
_V32I32 = ir.VectorType(_I32, 32)


def isa() -> str:
    """The instruction path the block products compile to on this machine."""
    if HAVE_VNNI:
        return "AVX-VNNI vpdpbusd"
    return "AVX2 vpmaddubsw/vpmaddwd" if HAVE_AVX2 else "generic LLVM vectors"


def _ptr(context, builder, arrty, arr, off):
    """Address of byte ``off`` of a C-contiguous uint8/int8 array of any rank (flat index: a 2-D
    array with r * row_bytes + o needs no row view, whose reference counting costs more than a block)."""
    data = context.make_array(arrty)(context, builder, arr).data
    return builder.gep(data, [off])


def _load(builder, ptr, ty):
    return builder.load(builder.bitcast(ptr, ty.as_pointer()), align=1)


def _splat(ty, value):
    return ir.Constant(ty, [value] * ty.count)


def _fn(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def _nibbles(builder, ptr):
    """16 bytes of nibbles -> <32 x i8> codes 0..15 (low nibbles first)."""
    v = _load(builder, ptr, _V16I8)
    lo = builder.and_(v, _splat(_V16I8, 15))
    hi = builder.lshr(v, _splat(_V16I8, 4))
    return builder.shuffle_vector(lo, hi, ir.Constant(_V32I32, list(range(32))))


def _fifth_bits(builder, ptr):
    """A little-endian uint32 at ptr -> <32 x i8>: 16 where bit j is set, else 0."""
    w = _load(builder, ptr, _I32)
    vec = builder.insert_element(ir.Constant(_V8I32, ir.Undefined), w, ir.Constant(_I32, 0))
    b = builder.bitcast(vec, _V32I8)
    spread = builder.shuffle_vector(b, b, ir.Constant(_V32I32, [j // 8 for j in range(32)]))
    bit = builder.and_(spread, ir.Constant(_V32I8, [1 << (j % 8) for j in range(32)]))
    on = builder.icmp_unsigned("!=", bit, _splat(_V32I8, 0))
    return builder.select(on, _splat(_V32I8, 16), _splat(_V32I8, 0))


def _pairs_u8s8(builder, u, s):
    """<32 x i8> unsigned codes u, signed s -> <8 x i32>: lane l = sum of products 4l..4l+3."""
    if HAVE_VNNI:
        return builder.call(_fn(builder, "llvm.x86.avx512.vpdpbusd.256", _V8I32, [_V8I32, _V8I32, _V8I32]),
                            [ir.Constant(_V8I32, [0] * 8), builder.bitcast(u, _V8I32), builder.bitcast(s, _V8I32)])
    if HAVE_AVX2:
        p16 = builder.call(_fn(builder, "llvm.x86.avx2.pmadd.ub.sw", _V16I16, [_V32I8, _V32I8]), [u, s])
        return builder.call(_fn(builder, "llvm.x86.avx2.pmadd.wd", _V8I32, [_V16I16, _V16I16]),
                            [p16, _splat(_V16I16, 1)])
    prod = builder.mul(builder.zext(u, _V32I32), builder.sext(s, _V32I32))
    acc = None
    for k in range(4):     # lane l of the result sums products 4l .. 4l + 3, as the AVX2 path does
        part = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, 8), [4 * lane + k for lane in range(8)]))
        acc = part if acc is None else builder.add(acc, part)
    return acc


def _pairs_s8s8(builder, w, x):
    """<32 x i8> signed w, signed x -> <8 x i32> as _pairs_u8s8 (the sign trick on AVX2)."""
    if HAVE_AVX2:
        a = builder.call(_fn(builder, "llvm.abs.v32i8", _V32I8, [_V32I8, _I1]), [w, ir.Constant(_I1, 0)])
        sx = builder.call(_fn(builder, "llvm.x86.avx2.psign.b", _V32I8, [_V32I8, _V32I8]), [x, w])
        return _pairs_u8s8(builder, a, sx)
    prod = builder.mul(builder.sext(w, _V32I32), builder.sext(x, _V32I32))
    acc = None
    for k in range(4):
        part = builder.shuffle_vector(prod, prod, ir.Constant(ir.VectorType(_I32, 8), [4 * lane + k for lane in range(8)]))
        acc = part if acc is None else builder.add(acc, part)
    return acc


# ---- whole rows: the block products scaled into float lanes ---------------------------------------
# A row's dot product with one activation row, all its blocks in one loop of vector IR. No
# horizontal sum per block: the 8 int32 lanes of a block's products (exact) are converted to float32,
# multiplied by the block's scale c = xd * d (the scale per half block for the per-16 layouts) and
# added to one of two 8-lane float32 accumulators, even blocks to one and odd to the other (two
# independent add chains). The offsets go to one scalar sum, block after block: ``mm -= m * xs32``
# (per 16: ``mm -= m0 * xs0`` then ``mm -= m1 * xs1``). The row's value is
# ``tree(acc_even + acc_odd) + mm`` with tree(a) = ((a0 + a4) + (a2 + a6)) + ((a1 + a5) + (a3 + a7)).
# No fused multiply-adds (numba's default fp-contract leaves fmul/fadd apart), so
# cpu_reference.matvec_lanes states the same float32 steps and is equal bit for bit.

_F32T = ir.FloatType()
_V8F32 = ir.VectorType(_F32T, 8)


def _data(context, builder, arrty, arr):
    return context.make_array(arrty)(context, builder, arr).data


def _f16_at(builder, ptr):
    return builder.fpext(builder.bitcast(_load(builder, ptr, _I16), ir.HalfType()), _F32T)


def _f32_at(builder, data, off):
    return builder.load(builder.gep(data, [off]))


def _bcast(builder, val, lanes):
    """<8 x float> from a list of scalars, lane i = lanes[i] (indices into vals)."""
    vec = ir.Constant(_V8F32, ir.Undefined)
    for i, v in enumerate(val):
        vec = builder.insert_element(vec, v, ir.Constant(_I32, i))
    return builder.shuffle_vector(vec, vec, ir.Constant(ir.VectorType(_I32, 8), lanes))


def _tree8(builder, a):
    b = builder.fadd(builder.shuffle_vector(a, a, ir.Constant(_V4I32, [0, 1, 2, 3])),
                     builder.shuffle_vector(a, a, ir.Constant(_V4I32, [4, 5, 6, 7])))
    v2 = ir.VectorType(_I32, 2)
    c = builder.fadd(builder.shuffle_vector(b, b, ir.Constant(v2, [0, 1])),
                     builder.shuffle_vector(b, b, ir.Constant(v2, [2, 3])))
    return builder.fadd(builder.extract_element(c, ir.Constant(_I32, 0)),
                        builder.extract_element(c, ir.Constant(_I32, 1)))


def _row(builder, G, block):
    """The lane arithmetic's loop over blocks g = 0..G-1 (G an i64): ``block(g, acc_ptr, mm_ptr)``
    adds block g's lanes into *acc_ptr and its offset terms into *mm_ptr."""
    zero = ir.Constant(_V8F32, [0.0] * 8)
    acc = [cgutils.alloca_once_value(builder, zero), cgutils.alloca_once_value(builder, zero)]
    mm = cgutils.alloca_once_value(builder, ir.Constant(_F32T, 0.0))
    one = ir.Constant(G.type, 1)
    with cgutils.for_range(builder, builder.lshr(G, one)) as loop:
        g0 = builder.shl(loop.index, one)
        block(g0, acc[0], mm)
        block(builder.add(g0, one), acc[1], mm)
    with builder.if_then(builder.trunc(builder.and_(G, one), _I1)):
        block(builder.sub(G, one), acc[0], mm)
    s = builder.fadd(builder.load(acc[0]), builder.load(acc[1]))
    return builder.fadd(_tree8(builder, s), builder.load(mm))


# bytes ahead of the block being read that each block prefetches (0: none). The rows stream from
# DRAM once per token; the hardware prefetchers stop at 4 KiB pages, and this VM's memory answers
# slowly enough that SmolLM2's decode went from 15.2 to 11.5-11.9 ms a token with 4096 (256: 14.9,
# 1024: 12.2, 8192: 11.8, 16384: 13.1). Like ROCMFORGE_CPU_SIMD, numba's disk cache does not see it.
PREFETCH = int(os.environ.get("ROCMFORGE_CPU_PREFETCH", "4096"))


def _prefetch(builder, ptr):
    if PREFETCH:
        p = builder.gep(ptr, [ir.Constant(_I32, PREFETCH)])
        builder.call(_fn(builder, "llvm.prefetch.p0", ir.VoidType(), [p.type, _I32, _I32, _I32]),
                     [p, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])


def _add_lanes(builder, acc, scale, lanes):
    builder.store(builder.fadd(builder.load(acc), builder.fmul(scale, builder.sitofp(lanes, _V8F32))), acc)


def _sub_term(builder, mm, a, b):
    builder.store(builder.fsub(builder.load(mm), builder.fmul(a, b)), mm)


# the file's blocks: bytes per block, offset of the nibbles (or int8 codes), of Q5's fifth bits,
# of the f16 min (Q4_1, Q5_1), and the code offset folded into m = off * d (Q4_0: 8, Q5_0: 16)
RAW_LAYOUTS = {0: (18, 2, -1, -1, 8), 1: (20, 4, -1, 2, 0), 2: (22, 6, 2, -1, 16), 3: (24, 8, 4, 2, 0),
               4: (34, 2, -1, -1, 0)}


def _raw_row_intrinsic(fid):
    stride, qs, qh, mn, off = RAW_LAYOUTS[fid]

    @intrinsic
    def row(typingctx, w, base, g, x, xo, xd, xs32, so):
        """Row of raw blocks w[base:] (G blocks) against int8 x[xo:], scales xd[so:], xs32[so:]."""
        sig = types.float32(w, base, g, x, xo, xd, xs32, so)

        def codegen(context, builder, sig, args):
            W, B, G, X, XO, XD, XS, SO = args
            wd = _data(context, builder, sig.args[0], W)
            xdata = _data(context, builder, sig.args[3], X)
            xdd = _data(context, builder, sig.args[5], XD)
            xsd = _data(context, builder, sig.args[6], XS)

            def block(gi, acc, mm):
                o = builder.add(B, builder.mul(gi, ir.Constant(gi.type, stride)))
                _prefetch(builder, builder.gep(wd, [o]))
                xp = builder.gep(xdata, [builder.add(XO, builder.shl(gi, ir.Constant(gi.type, 5)))])
                s = _load(builder, xp, _V32I8)
                if fid == 4:
                    lanes = _pairs_s8s8(builder, _load(builder, builder.gep(wd, [builder.add(o, ir.Constant(o.type, qs))]), _V32I8), s)
                else:
                    u = _nibbles(builder, builder.gep(wd, [builder.add(o, ir.Constant(o.type, qs))]))
                    if qh >= 0:
                        u = builder.or_(u, _fifth_bits(builder, builder.gep(wd, [builder.add(o, ir.Constant(o.type, qh))])))
                    lanes = _pairs_u8s8(builder, u, s)
                d = _f16_at(builder, builder.gep(wd, [o]))
                xg = _f32_at(builder, xdd, builder.add(SO, gi))
                c = builder.fmul(xg, d)
                _add_lanes(builder, acc, _bcast(builder, [c], [0] * 8), lanes)
                if mn >= 0:      # weight = d * q + min: mm -= (-min) * xs32
                    m = builder.fneg(_f16_at(builder, builder.gep(wd, [builder.add(o, ir.Constant(o.type, mn))])))
                    _sub_term(builder, mm, m, _f32_at(builder, xsd, builder.add(SO, gi)))
                elif off:
                    m = builder.fmul(d, ir.Constant(_F32T, float(off)))
                    _sub_term(builder, mm, m, _f32_at(builder, xsd, builder.add(SO, gi)))

            return _row(builder, G, block)

        return sig, codegen

    return row


row_q4_0, row_q4_1, row_q5_0, row_q5_1, row_q8_0 = (_raw_row_intrinsic(f) for f in range(5))


def _packed_row_intrinsic(kind):
    """A row of the repacked layouts: ``kind`` "nib32" (nibbles per 32, 16 bytes a block, d and m per
    32) or "i8_16" / "i8_16_nom" (int8 codes, 32 bytes a block, d and m per 16; _nom: no offsets)."""

    @intrinsic
    def row(typingctx, w, base, g, d, m, do, x, xo, xd, xs, so):
        """Row w[base:] of G blocks against int8 x[xo:]; d[do:], m[do:]; xd[so:], xs[so:] (per 16: 2 so)."""
        sig = types.float32(w, base, g, d, m, do, x, xo, xd, xs, so)

        def codegen(context, builder, sig, args):
            W, B, G, D, M, DO, X, XO, XD, XS, SO = args
            wd, dd, md, xdata, xdd, xsd = (_data(context, builder, sig.args[i], args[i]) for i in (0, 3, 4, 6, 8, 9))

            def k(gi, n):
                return ir.Constant(gi.type, n)

            def block(gi, acc, mm):
                s = _load(builder, builder.gep(xdata, [builder.add(XO, builder.shl(gi, k(gi, 5)))]), _V32I8)
                xg = _f32_at(builder, xdd, builder.add(SO, gi))
                if kind == "nib32":
                    wp = builder.gep(wd, [builder.add(B, builder.shl(gi, k(gi, 4)))])
                    _prefetch(builder, wp)
                    u = _nibbles(builder, wp)
                    c = builder.fmul(xg, _f32_at(builder, dd, builder.add(DO, gi)))
                    _add_lanes(builder, acc, _bcast(builder, [c], [0] * 8), _pairs_u8s8(builder, u, s))
                    _sub_term(builder, mm, _f32_at(builder, md, builder.add(DO, gi)),
                              _f32_at(builder, xsd, builder.add(SO, gi)))
                    return
                wp = builder.gep(wd, [builder.add(B, builder.shl(gi, k(gi, 5)))])
                _prefetch(builder, wp)
                a = _load(builder, wp, _V32I8)
                h0 = builder.add(DO, builder.shl(gi, k(gi, 1)))
                h1 = builder.add(h0, k(gi, 1))
                c0 = builder.fmul(xg, _f32_at(builder, dd, h0))
                c1 = builder.fmul(xg, _f32_at(builder, dd, h1))
                _add_lanes(builder, acc, _bcast(builder, [c0, c1], [0, 0, 0, 0, 1, 1, 1, 1]), _pairs_s8s8(builder, a, s))
                if kind == "i8_16":
                    x0 = builder.add(builder.shl(SO, k(gi, 1)), builder.shl(gi, k(gi, 1)))
                    _sub_term(builder, mm, _f32_at(builder, md, h0), _f32_at(builder, xsd, x0))
                    _sub_term(builder, mm, _f32_at(builder, md, h1), _f32_at(builder, xsd, builder.add(x0, k(gi, 1))))

            return _row(builder, G, block)

        return sig, codegen

    return row


row_nib32, row_i8_16, row_i8_16_nom = (_packed_row_intrinsic(k) for k in ("nib32", "i8_16", "i8_16_nom"))


@intrinsic
def f32_from_bits(typingctx, i):
    """The float32 whose IEEE bits are the int32 i (lets a vectorised exp build 2^n)."""
    sig = types.float32(i)

    def codegen(context, builder, sig, args):
        return builder.bitcast(builder.trunc(args[0], _I32) if args[0].type != _I32 else args[0], _F32T)

    return sig, codegen


@intrinsic
def prefetch(typingctx, arr, off):
    """Prefetch (for reading, into all cache levels) element ``off`` (flat) of a C-contiguous array."""
    sig = types.void(arr, off)

    def codegen(context, builder, sig, args):
        p = builder.gep(_data(context, builder, sig.args[0], args[0]), [args[1]])
        p = builder.bitcast(p, _I8.as_pointer())
        builder.call(_fn(builder, "llvm.prefetch.p0", ir.VoidType(), [p.type, _I32, _I32, _I32]),
                     [p, ir.Constant(_I32, 0), ir.Constant(_I32, 3), ir.Constant(_I32, 1)])
        return context.get_dummy_value()

    return sig, codegen
