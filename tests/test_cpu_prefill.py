"""Prefill on the CPU kernels' weights (rocmforge.backends.cpu_prefill): the block dequantisers give
the float oracle's weights bit for bit from every decode layout, joined parts included, and the
chunked, threaded GEMM gives x @ W.T of those weights."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from rocmforge.backends import cpu_kernels as ck  # noqa: E402
from rocmforge.backends import cpu_packed as cpk  # noqa: E402
from rocmforge.backends import cpu_prefill as pf  # noqa: E402
from rocmforge.quant import dequantize, get_format  # noqa: E402
from rocmforge.quant.samples import random_blocks  # noqa: E402


@pytest.mark.parametrize("name", list(ck.INT_FORMATS))
def test_dequantised_chunks_are_the_oracles_weights(name, monkeypatch):
    K = 512 if get_format(name).block_size == 256 else 96
    N = 37
    raw = random_blocks(name, (N, K), seed=4)
    W = raw.reshape(N, -1)
    want = dequantize(raw, name, (N, K))
    x = np.random.default_rng(0).standard_normal((20, K)).astype(np.float32)
    monkeypatch.setattr(pf, "CHUNK", 5 * K)           # several chunks per part, dealt to both threads
    for parts, spans in (((W,), ((0, 37), (5, 9))), ((W[:10], W[10:11], W[11:]), ((0, 10), (10, 11), (11, 37)))):
        pw = cpk.pack(name, ck.FORMATS[name], parts, K)
        for r0, r1 in spans:
            out = np.full((r1 - r0, K), np.nan, np.float32)
            pf.dequantize_rows(pw, r0, r1, out)
            np.testing.assert_array_equal(out, want[r0:r1], err_msg=f"{name} {pw.kind} rows {r0}..{r1}")
        y = np.full((20, N), np.nan, np.float32)
        pf.linear(pw, x, y, 2)
        np.testing.assert_allclose(y, x @ want.T, rtol=1e-4, atol=1e-4 * float(np.abs(x @ want.T).max()))


@pytest.mark.parametrize("name", ["Q8_0", "Q4_1", "Q4_K", "Q6_K"])
def test_embedding_rows_are_the_oracles(name):
    """CpuBackend.embedding of a decode step's ids (the block dequantisers, one row each) and of many ids
    (the row decoders) gives the float oracle's rows, before and after the weight is packed."""
    from rocmforge.backends.cpu_backend import CpuBackend, QuantWeight

    K = 512 if get_format(name).block_size == 256 else 96
    raw = random_blocks(name, (37, K), seed=6)
    W = raw.reshape(37, -1)
    want = dequantize(raw, name, (37, K))
    be = CpuBackend()
    w = QuantWeight(name, ck.FORMATS[name], (37, K), [W[:20], W[20:]])
    for ids in ([3, 36, 20, 19], list(range(37))):
        np.testing.assert_array_equal(be.embedding(w, np.array(ids)), want[ids])
    be.linear(np.ones((1, K), np.float32), w)                 # packs it (the decode layout)
    np.testing.assert_array_equal(be.embedding(w, np.array([0, 21, 36])), want[[0, 21, 36]])
