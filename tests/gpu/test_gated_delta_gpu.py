"""Gated DeltaNet on the GPU (kernels/gated_delta.hip through cupy_delta.py) against the NumPy reference
(its chunked form for prompts past GDN_CHUNK). The qwen3_5 / qwen3_next tiny models GPU == CPU (full
forward, prefill + decode, batch, fork) run with the other recurrent models in test_ssm_gpu.py."""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge.backends.numpy_backend import NumpyBackend

from .helpers import check, rand

pytestmark = pytest.mark.gpu

ref = NumpyBackend()


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("cupy")
    from rocmforge.backends.cupy_backend import CupyBackend

    return CupyBackend(poison=True)


# (T, Hk, Hv, dk, dv, tiled): decode, grouped / tiled heads, dk != dv, dk not a multiple of the slice,
# prompts past GDN_CHUNK (both backends run the chunked form), the released head sizes
CASES = [(1, 2, 4, 16, 8, False), (9, 2, 6, 16, 16, True), (5, 3, 3, 20, 12, False), (1, 1, 2, 4, 4, False),
         (130, 2, 4, 32, 16, False), (3, 16, 32, 128, 128, True), (200, 2, 4, 64, 32, True)]


@pytest.mark.parametrize("T,Hk,Hv,dk,dv,tiled", CASES)
def test_gated_delta_net(gpu, T, Hk, Hv, dk, dv, tiled):
    rng = np.random.default_rng(T * 7 + dk)
    q, k, v = rand(rng, T, Hk, dk), rand(rng, T, Hk, dk), rand(rng, T, Hv, dv)
    a, b, A, dtb = rand(rng, T, Hv), rand(rng, T, Hv), -np.exp(rand(rng, Hv)), rand(rng, Hv)
    S0 = rand(rng, Hv, dk, dv, scale=0.3)
    s_cpu, s_gpu = S0.copy(), gpu.upload(S0)
    want = ref.gated_delta_net(q, k, v, a, b, A, dtb, s_cpu, tiled)
    got = gpu.gated_delta_net(*(gpu.upload(x) for x in (q, k, v, a, b, A, dtb)), s_gpu, tiled)
    check(gpu.to_numpy(got), want, 1e-9, "gated_delta_net")
    check(gpu.to_numpy(s_gpu), s_cpu, 1e-9, "gated_delta_net state")

