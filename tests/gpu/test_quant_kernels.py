"""Every quant format's GPU dequant and fused matvec against rocmforge.quant.dequantize on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, rand

pytestmark = pytest.mark.gpu

FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
           "IQ4_NL", "IQ4_XS", "MXFP4", "F32", "F16", "BF16"]


@pytest.fixture(scope="module")
def gb():
    from rocmforge.backends.cupy_backend import CupyBackend

    return CupyBackend(poison=True)


def _case(qtype, N, K, seed):
    from rocmforge.quant import dequantize
    from rocmforge.quant.samples import random_blocks

    raw = random_blocks(qtype, (N, K), seed)
    return raw, dequantize(raw, qtype, (N, K))


@pytest.mark.parametrize("qtype", FORMATS)
def test_dequant(gb, qtype):
    raw, ref = _case(qtype, 37, 512, 1)
    w = gb.weight_from_array(qtype, (37, 512), raw)
    check(gb.to_numpy(gb.dequant(w)), ref, 1e-12, f"{qtype} dequant f32")
    if np.abs(ref).max() < 60000:      # random MXFP4 scales can exceed the fp16 range
        check(gb.to_numpy(gb.dequant(w, dtype="f16")).astype(np.float32), ref, 1e-6, f"{qtype} dequant f16")
    rows = np.array([36, 0, 5, 5], np.int64)
    check(gb.to_numpy(gb.dequant(w, rows=gb.upload(rows))), ref[rows], 1e-12, f"{qtype} rows")


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("N,K,T", [(1, 256, 1), (333, 1024, 1), (67, 2816, 3), (130, 512, 8), (64, 768, 21)])
def test_matvec(gb, qtype, N, K, T):
    raw, wref = _case(qtype, N, K, N * 7 + K)
    rng = np.random.default_rng(K + T)
    x = rand(rng, T, K)
    bias = rand(rng, N)
    w = gb.weight_from_array(qtype, (N, K), raw)
    got = gb.to_numpy(gb.linear(gb.upload(x), w, gb.upload(bias)))
    ref = x.astype(np.float64) @ wref.T.astype(np.float64) + bias
    if T <= 8 and qtype not in ("F32", "F16", "BF16"):
        # the kernel's own arithmetic, exactly: activations quantised to int8 blocks of 32 as on the GPU
        xb = x.reshape(T, -1, 32)
        d = np.abs(xb).max(-1, keepdims=True) / 127
        xq = np.rint(xb * np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)) * d
        ref_q = xq.reshape(T, K).astype(np.float64) @ wref.T.astype(np.float64) + bias
        check(got, ref_q, 1e-6, f"{qtype} matvec vs int8-activation reference N={N} K={K} T={T}")
    if N >= 64:   # one dot product alone says little about the activation-quantisation error
        check(got, ref, 5e-4, f"{qtype} matvec N={N} K={K} T={T}")
