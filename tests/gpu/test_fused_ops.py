"""The GPU's fused decode ops against the NumPy reference and against their unfused GPU forms.

A norm or a gated-FFN product that also writes the int8 blocks of its output must write exactly
what quantize_act_q8 would (the matvec then reads them instead of quantising again); rope of q and
k in one launch, reading views of a joined q|k|v row, must equal two rope calls on copies.
"""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, rand

pytestmark = pytest.mark.gpu


def _blocks_of(gb, y):
    """(xq, xd, xs) of y from the stand-alone quantize kernel (a fresh array: no cache hit)."""
    fresh = gb.cp.array(y, copy=True)
    gb._act_q8 = None
    q = gb._quantize_act(fresh)
    gb._act_q8 = None
    return [gb.to_numpy(a) for a in q]


def _cached_blocks(gb, y):
    last = gb._act_q8
    assert last is not None and last[0] is y, "the kernel did not leave its int8 blocks for the matvec"
    return [gb.to_numpy(a) for a in last[1]]


def _same_blocks(got, want, what):
    for name, g, w in zip(("xq", "xd", "xs"), got, want):
        assert np.array_equal(g, w), f"{what}: {name} differs from quantize_act_q8's"


@pytest.mark.parametrize("T,D", [(1, 4096), (3, 256), (8, 2048)])
def test_rms_norm_writes_the_matvec_blocks(gb, nb, rng, T, D):
    x, w = rand(rng, T, D), rand(rng, D)
    y = gb.rms_norm(gb.upload(x), gb.upload(w), 1e-5)
    check(gb.to_numpy(y), nb.rms_norm(x, w, 1e-5), 1e-7, "rms_norm")
    _same_blocks(_cached_blocks(gb, y), _blocks_of(gb, y), "rms_norm")


@pytest.mark.parametrize("T,D", [(1, 4096), (5, 512), (20, 512), (2, 96)])
def test_add_rms_norm(gb, nb, rng, T, D):
    a, b, w = rand(rng, T, D), rand(rng, T, D), rand(rng, D)
    s, y = gb.add_rms_norm(gb.upload(a), gb.upload(b), gb.upload(w), 1e-6)
    assert np.array_equal(gb.to_numpy(s), a + b)
    ref_s, ref_y = nb.add_rms_norm(a, b, w, 1e-6)
    check(gb.to_numpy(y), ref_y, 1e-7, "add_rms_norm")
    if T <= 8 and D % 32 == 0:
        _same_blocks(_cached_blocks(gb, y), _blocks_of(gb, y), "add_rms_norm")


@pytest.mark.parametrize("T,F", [(1, 11008), (4, 1024), (30, 512), (2, 36)])
@pytest.mark.parametrize("kind", ["silu", "gelu_tanh"])
def test_act_mul_of_a_joined_gate_up(gb, nb, rng, T, F, kind):
    gu = rand(rng, T, 2 * F)
    d = gb.upload(gu)
    y = gb.act_mul(d[:, :F], d[:, F:], kind)        # views: rows 2F apart
    check(gb.to_numpy(y), nb.act_mul(gu[:, :F], gu[:, F:], kind), 1e-7, f"act_mul {kind}")
    if T <= 8 and F % 32 == 0:
        _same_blocks(_cached_blocks(gb, y), _blocks_of(gb, y), "act_mul")


@pytest.mark.parametrize("T", [1, 6])
@pytest.mark.parametrize("style,rot", [("normal", 128), ("neox", 64)])
def test_rope_qk_of_a_joined_qkv(gb, rng, T, style, rot):
    H, Hk, D = 8, 2, 128
    qkv = gb.upload(rand(rng, T, (H + 2 * Hk) * D))
    q = qkv[:, :H * D].reshape(T, H, D)
    k = qkv[:, H * D:(H + Hk) * D].reshape(T, Hk, D)
    pos = np.arange(40, 40 + T, dtype=np.int64)
    inv = (1.0 / (10000.0 ** (np.arange(0, rot, 2) / rot))).astype(np.float32)
    yq, yk = gb.rope_qk(q, k, pos, inv, style, rot, 0.9)
    wq = gb.rope(gb.cp.ascontiguousarray(q), pos, inv, style, rot, 0.9)
    wk = gb.rope(gb.cp.ascontiguousarray(k), pos, inv, style, rot, 0.9)
    assert np.array_equal(gb.to_numpy(yq), gb.to_numpy(wq))
    assert np.array_equal(gb.to_numpy(yk), gb.to_numpy(wk))


def test_matvec_reads_the_norms_blocks(gb, rng):
    """linear() after rms_norm uses the norm's int8 blocks: the same product as quantising again."""
    from rocmforge.quant.samples import random_blocks

    N, K = 96, 1024
    w = gb.weight_from_array("Q4_0", (N, K), random_blocks("Q4_0", (N, K), 2))
    x, nw = rand(rng, 1, K), rand(rng, K)
    h = gb.rms_norm(gb.upload(x), gb.upload(nw), 1e-5)
    fused = gb.to_numpy(gb.linear(h, w))
    gb._act_q8 = None
    again = gb.to_numpy(gb.linear(gb.cp.array(h, copy=True), w))
    assert np.array_equal(fused, again)


def test_prefill_gemm_writes_float32_directly(rng):
    """The fp16 x fp16 -> float32 gemmEx path equals matmul + cast; on CUDA it must be the path taken."""
    from rocmforge.backends import cupy_gemm
    from rocmforge.backends.cupy_backend import CupyBackend
    from rocmforge.quant import dequantize
    from rocmforge.quant.samples import random_blocks

    N, K, T = 320, 1024, 48
    raw = random_blocks("Q4_0", (N, K), 6)
    x = rand(rng, T, K)
    ex, cast = CupyBackend(poison=True), CupyBackend(poison=True)
    cast.gemm_ex = False
    y_ex = ex.to_numpy(ex.linear(ex.upload(x), ex.weight_from_array("Q4_0", (N, K), raw)))
    y_cast = cast.to_numpy(cast.linear(cast.upload(x), cast.weight_from_array("Q4_0", (N, K), raw)))
    if not ex.is_hip:
        assert not cupy_gemm._state.get("off"), "gemmEx fell back on CUDA"
    check(y_ex, y_cast, 1e-6, "gemmEx vs matmul + cast")
    check(y_ex, x.astype(np.float64) @ dequantize(raw, "Q4_0", (N, K)).T.astype(np.float64), 5e-4, "gemmEx")
