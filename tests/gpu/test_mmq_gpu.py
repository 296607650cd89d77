"""kernels/mmq.hip (linear over 9..64 rows): the int8-activation arithmetic of the matvec, on both of its paths.

The kernel's integers are exact and its float steps the matvec's, so against the matvec it may differ
only by summation order; the tensor-core path (NVIDIA) and the plain-thread path (AMD, or forced with
RF_MMQ_NO_MMA) run the same float sequence per output and must agree bit for bit; a split-K launch is
deterministic.
"""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, quant_case, rand

pytestmark = pytest.mark.gpu

FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
           "IQ4_NL", "IQ4_XS", "MXFP4", "MXINT8", "MXFP4_E2M1", "MXFP6_E2M3"]
# (N, K, T): tails of every tile (rows, columns, groups), one column tile exactly, splits of K
SHAPES = [(130, 512, 9), (333, 1024, 16), (64, 2816, 33), (257, 768, 64), (4096, 4096, 24)]


_case = quant_case


def _int8_reference(x, wref, bias):
    """x quantised to int8 blocks of 32 as quantize_act_q8 does, then the exact float64 product."""
    T, K = x.shape
    xb = x.reshape(T, -1, 32)
    d = np.abs(xb).max(-1, keepdims=True) / 127
    xq = np.rint(xb * np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)) * d
    return xq.reshape(T, K).astype(np.float64) @ wref.T.astype(np.float64) + bias


def _linear(gb, x, w, bias, **attrs):
    attrs.setdefault("mmq_max", 64)       # the kernel at every batch here, past the backend's GEMM switch
    old = {k: getattr(gb, k) for k in attrs}
    try:
        for k, v in attrs.items():
            setattr(gb, k, v)
        return gb.to_numpy(gb.linear(gb.upload(x), w, gb.upload(bias)))
    finally:
        for k, v in old.items():
            setattr(gb, k, v)


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("N,K,T", SHAPES)
def test_mmq_is_the_int8_activation_product(gb, qtype, N, K, T):
    raw, wref = _case(qtype, N, K, N * 5 + K)
    rng = np.random.default_rng(N + K + T)
    x, bias = rand(rng, T, K), rand(rng, N)
    w = gb.weight_from_array(qtype, (N, K), raw)
    got = _linear(gb, x, w, bias, mmq=True)
    check(got, _int8_reference(x, wref, bias), 1e-6, f"{qtype} mmq vs int8-activation reference {N}x{K} T={T}")
    per8 = _linear(gb, x, w, bias, mmq=False)
    check(got, per8, 1e-10, f"{qtype} mmq vs the matvec per 8 rows")
    plain = _linear(gb, x, w, bias, mmq=True, mmq_defines=(("RF_MMQ_NO_MMA", 1),))
    assert np.array_equal(got, plain), f"{qtype}: the tensor-core and plain-thread paths differ"


@pytest.mark.parametrize("per_sm", [1, 2, 8])
def test_mmq_splits_are_deterministic(gb, per_sm):
    from rocmforge.backends.cupy_mmq import splits

    N, K, T = 4096, 4096, 40
    raw, wref = _case("Q4_0", N, K, 11)
    rng = np.random.default_rng(7)
    x, bias = rand(rng, T, K), rand(rng, N)
    w = gb.weight_from_array("Q4_0", (N, K), raw)
    assert splits(gb.n_sm, N, T, K, per_sm)[0] > 1, "this shape should split K"
    a = _linear(gb, x, w, bias, mmq_per_sm=per_sm)
    b = _linear(gb, x, w, bias, mmq_per_sm=per_sm)
    assert np.array_equal(a, b), "a split-K launch changed between two runs"
    check(a, _int8_reference(x, wref, bias), 1e-6, f"Q4_0 split per_sm={per_sm}")


@pytest.mark.parametrize("N,K,T", SHAPES)
@pytest.mark.parametrize("bn", [None, 64])
def test_frag_kernel_is_the_staged_kernels_product(gb, N, K, T, bn):
    """Q4_0 tiles run kernels/mmq_frag.hip (operands straight from the tiles): the int8-activation
    product, the staged kernel's up to summation rounding, its tensor-core and plain-thread paths bit
    for bit, at the batch's own column tile and at a forced 64 (columns past T clamped, not written)."""
    raw, wref = _case("Q4_0", N, K, N * 3 + K)
    rng = np.random.default_rng(N * 7 + T)
    x, bias = rand(rng, T, K), rand(rng, N)
    w = gb.weight_from_array("Q4_0", (N, K), raw)
    assert w.kernel == "q4_0t", "the shapes here must take the tiled layout"
    frag = _linear(gb, x, w, bias, mmq=True, mmq_frag=True, mmq_bn=bn)
    staged = _linear(gb, x, w, bias, mmq=True, mmq_frag=False, mmq_bn=bn)
    check(frag, _int8_reference(x, wref, bias), 1e-6, f"frag vs int8 reference {N}x{K} T={T}")
    check(frag, staged, 1e-10, f"frag vs staged mmq {N}x{K} T={T}")
    assert not np.array_equal(frag, np.zeros_like(frag))
    plain = _linear(gb, x, w, bias, mmq=True, mmq_frag=True, mmq_bn=bn, mmq_defines=(("RF_MMQ_NO_MMA", 1),))
    assert np.array_equal(frag, plain), "the frag kernel's tensor-core and plain-thread paths differ"
