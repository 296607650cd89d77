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

Elsewhere (no AVX2) the same values come from widened multiplies and ``llvm.vector.reduce.add``. Either
way the result is the exact integer dot product, so the kernels built on these stay bit for bit the
integer reference (:mod:`rocmforge.backends.cpu_reference`) on every machine.

Layout of a nibble block (Q4_0, Q4_1, Q5_x, and the repacked nib32 rows): 16 bytes, byte j holding
code j in its low nibble and code 16 + j in its high one; Q5's fifth bits are a little-endian uint32,
bit j for code j.
"""

from __future__ import annotations

import llvmlite.binding as llvm
import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_FEATURES = llvm.get_host_cpu_features()
HAVE_AVX2 = bool(_FEATURES.get("avx2", False))

_I1, _I8, _I16, _I32 = ir.IntType(1), ir.IntType(8), ir.IntType(16), ir.IntType(32)
_V16I8, _V32I8 = ir.VectorType(_I8, 16), ir.VectorType(_I8, 32)
_V16I16, _V8I32, _V4I32 = ir.VectorType(_I16, 16), ir.VectorType(_I32, 8), ir.VectorType(_I32, 4)
_V32I32 = ir.VectorType(_I32, 32)


def isa() -> str:
    """The instruction path the block products compile to on this machine."""
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


def _hsum(builder, v):
    n = v.type.count
    return builder.call(_fn(builder, f"llvm.vector.reduce.add.v{n}i32", _I32, [v.type]), [v])


def _halves(builder, v8):
    lo = builder.shuffle_vector(v8, v8, ir.Constant(_V4I32, [0, 1, 2, 3]))
    hi = builder.shuffle_vector(v8, v8, ir.Constant(_V4I32, [4, 5, 6, 7]))
    return _hsum(builder, lo), _hsum(builder, hi)


@intrinsic
def dot_nib(typingctx, w, wo, x, xo):
    """int32 sum over 32 codes of nibble block w[wo:wo+16] (codes 0..15) times int8 x[xo:xo+32]."""
    sig = types.int32(w, wo, x, xo)

    def codegen(context, builder, sig, args):
        u = _nibbles(builder, _ptr(context, builder, sig.args[0], args[0], args[1]))
        s = _load(builder, _ptr(context, builder, sig.args[2], args[2], args[3]), _V32I8)
        return _hsum(builder, _pairs_u8s8(builder, u, s))

    return sig, codegen


@intrinsic
def dot_nib5(typingctx, w, qo, ho, x, xo):
    """As dot_nib for 5-bit codes 0..31: nibbles at w[qo:qo+16], fifth bits the uint32 at w[ho:ho+4]."""
    sig = types.int32(w, qo, ho, x, xo)

    def codegen(context, builder, sig, args):
        u = _nibbles(builder, _ptr(context, builder, sig.args[0], args[0], args[1]))
        u = builder.or_(u, _fifth_bits(builder, _ptr(context, builder, sig.args[0], args[0], args[2])))
        s = _load(builder, _ptr(context, builder, sig.args[3], args[3], args[4]), _V32I8)
        return _hsum(builder, _pairs_u8s8(builder, u, s))

    return sig, codegen


@intrinsic
def dot_i8(typingctx, w, wo, x, xo):
    """int32 sum of signed int8 codes w[wo:wo+32] (a uint8 array read as int8) times int8 x[xo:xo+32]."""
    sig = types.int32(w, wo, x, xo)

    def codegen(context, builder, sig, args):
        a = _load(builder, _ptr(context, builder, sig.args[0], args[0], args[1]), _V32I8)
        s = _load(builder, _ptr(context, builder, sig.args[2], args[2], args[3]), _V32I8)
        return _hsum(builder, _pairs_s8s8(builder, a, s))

    return sig, codegen


@intrinsic
def dot_i8_halves(typingctx, w, wo, x, xo):
    """(sum over codes 0..15, sum over 16..31) of signed int8 w[wo:wo+32] times int8 x[xo:xo+32]."""
    sig = types.UniTuple(types.int32, 2)(w, wo, x, xo)

    def codegen(context, builder, sig, args):
        a = _load(builder, _ptr(context, builder, sig.args[0], args[0], args[1]), _V32I8)
        s = _load(builder, _ptr(context, builder, sig.args[2], args[2], args[3]), _V32I8)
        s0, s1 = _halves(builder, _pairs_s8s8(builder, a, s))
        return context.make_tuple(builder, sig.return_type, [s0, s1])

    return sig, codegen


@intrinsic
def load_f16(typingctx, w, o):
    """The IEEE half at bytes w[o:o+2] (little-endian) as float32 (exact; F16C where the CPU has it)."""
    sig = types.float32(w, o)

    def codegen(context, builder, sig, args):
        h = _load(builder, _ptr(context, builder, sig.args[0], args[0], args[1]), _I16)
        return builder.fpext(builder.bitcast(h, ir.HalfType()), ir.FloatType())

    return sig, codegen
