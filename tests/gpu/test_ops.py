"""Every Backend op of CupyBackend against the NumPy reference, on fresh random inputs.

Outputs are poisoned (the backend is made with poison=True: every buffer a
kernel writes starts as NaN), so an unwritten element fails the NaN check.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from .helpers import check, rand

pytestmark = pytest.mark.gpu

TOL_F32 = 1e-7       # norms / elementwise in float32
TOL_RED = 5e-4       # matmul / attention in reduced precision


@pytest.mark.parametrize("shape", [(1, 64), (7, 80), (3, 4099), (5, 3, 128), (2, 5120)])
@pytest.mark.parametrize("with_w", [True, False])
def test_rms_norm(gb, nb, rng, shape, with_w):
    x = rand(rng, *shape, scale=3.0)
    w = rand(rng, shape[-1]) if with_w else None
    got = gb.to_numpy(gb.rms_norm(gb.upload(x), gb.upload(w) if with_w else None, 1e-6))
    check(got, nb.rms_norm(x, w, 1e-6), TOL_F32, "rms_norm")


@pytest.mark.parametrize("shape", [(1, 64), (7, 80), (3, 4099)])
def test_layer_norm(gb, nb, rng, shape):
    x = rand(rng, *shape) + 2.0
    w, b = rand(rng, shape[-1]), rand(rng, shape[-1])
    got = gb.to_numpy(gb.layer_norm(gb.upload(x), gb.upload(w), gb.upload(b), 1e-5))
    check(got, nb.layer_norm(x, w, b, 1e-5), TOL_F32, "layer_norm")
    got = gb.to_numpy(gb.layer_norm(gb.upload(x), None, None, 1e-5))
    check(got, nb.layer_norm(x, None, None, 1e-5), TOL_F32, "layer_norm no affine")


@pytest.mark.parametrize("style", ["normal", "neox"])
@pytest.mark.parametrize("T,H,D,rot", [(1, 4, 64, 64), (9, 3, 80, 80), (5, 2, 128, 64), (3, 8, 256, 256)])
def test_rope(gb, nb, rng, style, T, H, D, rot):
    x = rand(rng, T, H, D)
    pos = np.sort(rng.integers(0, 5000, T)).astype(np.int64)
    inv = (1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))).astype(np.float32)
    got = gb.to_numpy(gb.rope(gb.upload(x), pos, inv, style, rot, 1.1))
    check(got, nb.rope(x, pos, inv, style, rot, 1.1), TOL_F32, "rope")


@pytest.mark.parametrize("kind", ["silu", "gelu", "gelu_tanh", "relu"])
def test_act(gb, nb, rng, kind):
    x = rand(rng, 7, 1001, scale=3.0)
    check(gb.to_numpy(gb.act(gb.upload(x), kind)), nb.act(x, kind), TOL_F32, kind)


def test_elementwise(gb, nb, rng):
    a, b = rand(rng, 5, 333), rand(rng, 5, 333)
    row, col = rand(rng, 333), rand(rng, 5, 1)
    A, B = gb.upload(a), gb.upload(b)
    check(gb.to_numpy(gb.add(A, B)), a + b, TOL_F32, "add")
    check(gb.to_numpy(gb.mul(A, B)), a * b, TOL_F32, "mul")
    check(gb.to_numpy(gb.add(A, gb.upload(row))), a + row, TOL_F32, "add row")
    check(gb.to_numpy(gb.mul(A, gb.upload(col))), a * col, TOL_F32, "mul col")
    check(gb.to_numpy(gb.scale(A, 0.37)), nb.scale(a, 0.37), TOL_F32, "scale")
    x = rand(rng, 3, 517, scale=40.0)
    check(gb.to_numpy(gb.softcap(gb.upload(x), 30.0)), nb.softcap(x, 30.0), TOL_F32, "softcap")
    # non-contiguous views (q/k/v slices of a fused projection)
    big = rand(rng, 4, 96)
    G = gb.upload(big)
    check(gb.to_numpy(gb.add(G[:, :32], G[:, 32:64])), big[:, :32] + big[:, 32:64], TOL_F32, "views")


def test_argmax(gb, rng):
    x = rand(rng, 3, 32001)
    assert (gb.argmax(gb.upload(x)) == x.argmax(-1)).all()


def test_argmax_ties_nan_and_infinities_follow_numpy(gb, rng):
    x = rand(rng, 6, 32001)
    x[0, [7, 20000, 31999]] = 50.0                  # a tie across threads: the first
    x[1, [30000, 9]] = np.nan                        # NaN beats every number: the first NaN
    x[1, 5] = np.inf
    x[2] = -np.inf                                   # nothing larger than -inf: index 0
    x[3, [123, 31000]] = np.inf
    x[4] = 1.0                                       # all equal
    x[5, 32000] = 60.0                               # the last column
    want = np.argmax(x, axis=-1)
    assert want.tolist()[:5] == [7, 9, 0, 123, 0]
    assert gb.argmax(gb.upload(x)).tolist() == want.tolist()


def _raw(qtype, shape, rng):
    from rocmforge.quant.samples import random_blocks

    return random_blocks(qtype, shape, rng)


class _Raw:
    def __init__(self, name, qtype, shape, data):
        self.name, self.qtype, self.shape, self.data = name, qtype, tuple(shape), data

    def dequantize(self):
        from rocmforge.quant import dequantize

        return dequantize(self.data, self.qtype, self.shape)


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q4_K"])
def test_embedding(gb, nb, rng, qtype):
    raw = _Raw("token_embd", qtype, (300, 256), _raw(qtype, (300, 256), rng))
    ids = rng.integers(0, 300, 11)
    got = gb.to_numpy(gb.embedding(gb.weight(raw), ids))
    check(got, nb.embedding(nb.weight(raw), ids), 1e-12, "embedding")


@pytest.mark.parametrize("T", [1, 3, 8, 9, 40])
@pytest.mark.parametrize("qtype", ["F32", "F16", "BF16"])
def test_linear_float(gb, nb, rng, T, qtype):
    raw = _Raw("w", qtype, (301, 96), _raw(qtype, (301, 96), rng))
    x, bias = rand(rng, T, 96), rand(rng, 301)
    got = gb.to_numpy(gb.linear(gb.upload(x), gb.weight(raw), gb.upload(bias)))
    check(got, nb.linear(x, nb.weight(raw), bias), 1e-9 if (qtype == "F32" and T <= 8) else TOL_RED, "linear")


def _attn_case(gb, nb, rng, T_prefix, T, H, Hkv, D, window=0, cap=0.0, Dv=None, chunks=None, **extra):
    Dv = Dv or D
    total = T_prefix + T
    cg = gb.new_kv_cache(1, Hkv, D, Dv, total + 3)
    cn = nb.new_kv_cache(1, Hkv, D, Dv, total + 3)
    scale = 1.0 / math.sqrt(D)
    # fill the cache with the prefix (in one or several pieces), then the measured step
    pieces = chunks or ([T_prefix] if T_prefix else [])
    pos = 0
    for n in pieces + [T]:
        q, k, v = rand(rng, n, H, D), rand(rng, n, Hkv, D), rand(rng, n, Hkv, Dv)
        got = gb.to_numpy(gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), cg, 0, pos, scale, window, cap,
                                       **extra))
        ref = nb.attention(q, k, v, cn, 0, pos, scale, window, cap, **extra)
        check(got, ref, TOL_RED, f"attention T={n} pos0={pos} H={H} Hkv={Hkv} D={D} {sorted(extra)}")
        pos += n


@pytest.mark.parametrize("D", [64, 80, 128, 256])
@pytest.mark.parametrize("H,Hkv", [(4, 1), (8, 8), (14, 2), (32, 8)])
def test_attention_decode(gb, nb, rng, D, H, Hkv):
    _attn_case(gb, nb, rng, 37, 1, H, Hkv, D)


@pytest.mark.parametrize("D", [64, 128, 256])
@pytest.mark.parametrize("H,Hkv", [(4, 1), (6, 6), (14, 2)])
def test_attention_prefill(gb, nb, rng, D, H, Hkv):
    _attn_case(gb, nb, rng, 0, 45, H, Hkv, D)
    _attn_case(gb, nb, rng, 20, 13, H, Hkv, D)


@pytest.mark.parametrize("window,cap", [(16, 0.0), (0, 20.0), (7, 30.0)])
def test_attention_window_softcap(gb, nb, rng, window, cap):
    _attn_case(gb, nb, rng, 0, 50, 8, 2, 128, window=window, cap=cap)
    _attn_case(gb, nb, rng, 60, 1, 8, 2, 128, window=window, cap=cap)
    _attn_case(gb, nb, rng, 60, 3, 8, 2, 64, window=window, cap=cap)


@pytest.mark.parametrize("feature", ["alibi", "sinks", "chunk", "all"])
def test_attention_alibi_sinks_chunk(gb, nb, rng, feature):
    """ALiBi slopes, sink logits and chunked visibility, prefill and decode (split-K included)."""
    from rocmforge.ops.attention import alibi_slopes

    H, Hkv = 12, 4
    extra = {}
    if feature in ("alibi", "all"):
        extra["alibi"] = alibi_slopes(H)          # 12 heads: the interleaved non-power-of-two schedule
    if feature in ("sinks", "all"):
        extra["sinks"] = rand(rng, H, scale=3.0)
    if feature in ("chunk", "all"):
        extra["chunk"] = 24
    _attn_case(gb, nb, rng, 0, 70, H, Hkv, 64, **extra)                 # prefill across chunk borders
    _attn_case(gb, nb, rng, 300, 1, H, Hkv, 64, chunks=[150, 150], **extra)   # decode, several splits
    _attn_case(gb, nb, rng, 40, 3, H, Hkv, 128, window=9, **extra)


def test_head_matmul(gb, nb, rng):
    x, w = rand(rng, 7, 5, 48), rand(rng, 5, 32, 48)
    check(gb.to_numpy(gb.head_matmul(gb.upload(x), gb.upload(w))), nb.head_matmul(x, w), TOL_RED, "head_matmul")


@pytest.mark.parametrize("kind", ["relu2", "sigmoid", "tanh"])
def test_new_activations(gb, nb, rng, kind):
    x = rand(rng, 9, 130, scale=3.0)
    check(gb.to_numpy(gb.act(gb.upload(x), kind)), nb.act(x, kind), 1e-10, kind)


def test_attention_long(gb, nb, rng):
    """Past 4k tokens: prefill in chunks, then decode steps reading the whole cache (split-K path)."""
    _attn_case(gb, nb, rng, 4100, 1, 8, 2, 64, chunks=[2048, 2052])
    _attn_case(gb, nb, rng, 4097, 2, 4, 4, 128, chunks=[4097])


def test_attention_dv(gb, nb, rng):
    _attn_case(gb, nb, rng, 10, 1, 4, 2, 128, Dv=64)
    _attn_case(gb, nb, rng, 0, 20, 4, 2, 64, Dv=128)


def test_kv_overflow(gb, rng):
    from rocmforge.errors import RocmforgeError

    c = gb.new_kv_cache(1, 1, 64, 64, 4)
    q, k = gb.upload(rand(rng, 5, 1, 64)), gb.upload(rand(rng, 5, 1, 64))
    with pytest.raises(RocmforgeError):
        gb.attention(q, k, k, c, 0, 0, 0.125)


@pytest.mark.parametrize("gating", ["softmax", "sigmoid"])
@pytest.mark.parametrize("E,k", [(8, 2), (60, 4), (128, 8)])
def test_moe_route(gb, nb, rng, gating, E, k):
    lg = rand(rng, 5, E, scale=2.0)
    for norm in (True, False):
        w, ids = gb.moe_route(gb.upload(lg), k, gating, norm)
        w_ref, ids_ref = nb.moe_route(lg, k, gating, norm)
        assert (ids == ids_ref).all()
        check(w, w_ref, TOL_F32, "moe weights")


@pytest.mark.parametrize("qtype", ["F32", "Q4_0", "Q4_K"])
@pytest.mark.parametrize("T", [1, 5, 30])
def test_moe_ffn(gb, nb, rng, qtype, T):
    E, k = 6, 2
    d, ff = (256, 512) if qtype.endswith("_K") else (64, 96)
    gate = _Raw("g", qtype, (E, ff, d), _raw(qtype, (E, ff, d), rng))
    up = _Raw("u", qtype, (E, ff, d), _raw(qtype, (E, ff, d), rng))
    down = _Raw("d", qtype, (E, d, ff), _raw(qtype, (E, d, ff), rng))
    x = rand(rng, T, d)
    w_ref, ids = nb.moe_route(rand(rng, T, E), k, "softmax", True)
    got = gb.to_numpy(gb.moe_ffn(gb.upload(x), gb.weight(gate), gb.weight(up), gb.weight(down), w_ref, ids, "silu"))
    ref = nb.moe_ffn(x, nb.weight(gate), nb.weight(up), nb.weight(down), w_ref, ids, "silu")
    if qtype == "F32" or T * k > 64:
        check(got, ref, TOL_RED if T > 8 else 1e-8, "moe_ffn")
    else:
        # The fused path (T * k <= 64) quantises its activations to int8 blocks of 32 twice (x before gate/up,
        # h before down), as llama.cpp's q8 path does; the float reference carries neither rounding, so
        # the kernel is held exactly to a reference that rounds the same way.
        q8 = _emulate_q8_activations(nb)
        emu = q8.moe_ffn(x, nb.weight(gate), nb.weight(up), nb.weight(down), w_ref, ids, "silu")
        check(got, emu, 1e-6, "moe_ffn vs int8-activation reference")


def _q8(a):
    """Activations rounded as the GPU's quantize_act_q8 does: int8 per block of 32, scale absmax/127."""
    b = a.reshape(a.shape[0], -1, 32).astype(np.float32)
    d = np.abs(b).max(-1, keepdims=True) / 127
    return (np.rint(b * np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)) * d).reshape(a.shape).astype(np.float32)


def _emulate_q8_activations(nb):
    """A NumPy backend whose matmuls see int8-rounded activations (the fused matvec's arithmetic)."""
    from rocmforge.backends.numpy_backend import NumpyBackend

    class Q8(NumpyBackend):
        def moe_ffn(self, x, gate, up, down, weights, ids, act):
            out = np.zeros((x.shape[0], down.shape[1]), np.float32)
            xq = _q8(x)
            for e in np.unique(ids):
                rows, slot = np.nonzero(ids == e)
                h = self.act(xq[rows] @ gate[e].T, act) * (xq[rows] @ up[e].T)
                out[rows] += weights[rows, slot][:, None] * (_q8(h) @ down[e].T)
            return out

    return Q8()
