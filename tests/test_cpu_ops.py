"""The CPU backend's float ops (rocmforge.backends.cpu_ops, through CpuBackend) against the NumPy
backend: equal within float32 rounding (their sums run in another order), act_mul's silu and sigmoid
bit for bit (the same NumPy expressions in one buffer)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from rocmforge.backends.cpu_backend import CpuBackend  # noqa: E402
from rocmforge.backends.numpy_backend import NumpyBackend  # noqa: E402


@pytest.fixture(scope="module")
def be():
    return CpuBackend()


def _close(a, b, tol=2e-6):
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape and a.dtype == np.float32
    assert np.isfinite(a).all()
    np.testing.assert_allclose(a, b, rtol=tol, atol=tol * float(np.abs(b).max()))


@pytest.mark.parametrize("T", [1, 3, 8, 128])
def test_norms(be, T):
    rng = np.random.default_rng(T)
    a, b = (rng.standard_normal((T, 576)).astype(np.float32) * 3 for _ in range(2))
    w = rng.standard_normal(576).astype(np.float32)
    s, y = be.add_rms_norm(a, b, w, 1e-5)
    s0, y0 = NumpyBackend.add_rms_norm(be, a, b, w, 1e-5)
    np.testing.assert_array_equal(s, s0)
    _close(y, y0)
    heads = rng.standard_normal((T, 4, 64)).astype(np.float32)[:, ::2]       # strided (T, 2, 64)
    _close(be.rms_norm(heads, None, 1e-6), NumpyBackend.rms_norm(be, heads, None, 1e-6))
    _close(be.rms_norm(a, w, 1e-6), NumpyBackend.rms_norm(be, a, w, 1e-6))


@pytest.mark.parametrize("style", ["normal", "neox"])
@pytest.mark.parametrize("rot", [64, 32])
def test_rope(be, style, rot):
    rng = np.random.default_rng(1)
    qkv = rng.standard_normal((2, 9 * 64 + 2 * 3 * 64)).astype(np.float32)
    q = qkv[:, :576].reshape(2, 9, 64)             # column slices of the fused q|k|v output
    k = qkv[:, 576:768].reshape(2, 3, 64)
    pos = np.array([7, 1500])
    inv = 10000.0 ** (-np.arange(0, rot, 2) / rot)
    got = be.rope_qk(q, k, pos, inv, style, rot, 1.1)
    for g, x in zip(got, (q, k)):
        _close(g, NumpyBackend.rope(be, x, pos, inv, style, rot, 1.1))


@pytest.mark.parametrize("kind", ["silu", "gelu_tanh", "sigmoid", "relu"])
def test_act_mul_is_numpys(be, kind):
    rng = np.random.default_rng(2)
    g, u = (rng.standard_normal((2, 1536)).astype(np.float32) * 4 for _ in range(2))
    got, want = be.act_mul(g, u, kind), NumpyBackend.act_mul(be, g, u, kind)
    if kind == "gelu_tanh":          # the cube as two multiplies, not NumPy's float power
        _close(got, want)
    else:
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("H,Hkv,D,S,T,window,softcap", [
    (9, 3, 64, 200, 1, 0, 0.0), (4, 1, 256, 50, 3, 16, 0.0), (8, 4, 32, 7, 2, 0, 30.0), (2, 2, 16, 0, 4, 0, 0.0),
    # long enough that a (row, kv head) pair's keys are split over the threads and merged
    (4, 1, 64, 300, 2, 100, 0.0), (8, 4, 32, 150, 1, 0, 30.0), (4, 1, 32, 500, 3, 0, 0.0)])
def test_attention(be, H, Hkv, D, S, T, window, softcap):
    rng = np.random.default_rng(S + T)
    caches = [be.new_kv_cache(2, Hkv, D, D, 512) for _ in range(2)]
    if S:
        old = rng.standard_normal((S, Hkv, D)).astype(np.float32)
        for c in caches:
            c.store(1, 0, old, old * 0.5)
    q = rng.standard_normal((T, H, D)).astype(np.float32) * 2
    k, v = (rng.standard_normal((T, Hkv, D)).astype(np.float32) for _ in range(2))
    got = be.attention(q, k, v, caches[0], 1, S, 0.125, window=window, softcap=softcap)
    want = NumpyBackend.attention(be, q, k, v, caches[1], 1, S, 0.125, window=window, softcap=softcap)
    _close(got, want, 3e-6)
    np.testing.assert_array_equal(caches[0].k[1][:S + T], caches[1].k[1][:S + T])     # stored as NumPy does


def test_long_inputs_and_other_caches_go_to_numpy(be):
    """Prefill-sized attention and FP8 caches take the NumPy backend's code (the same floats)."""
    rng = np.random.default_rng(3)
    T = be.max_kernel_rows + 1
    q = rng.standard_normal((T, 2, 16)).astype(np.float32)
    k = rng.standard_normal((T, 1, 16)).astype(np.float32)
    for dtype in ("auto", "fp8"):
        c0, c1 = (be.new_kv_cache(1, 1, 16, 16, 64, dtype=dtype) for _ in range(2))
        np.testing.assert_array_equal(be.attention(q, k, k, c0, 0, 0, 0.25),
                                      NumpyBackend.attention(be, q, k, k, c1, 0, 0, 0.25))
    x = rng.standard_normal((T, 64)).astype(np.float32)
    _close(be.rms_norm(x, None, 1e-6), NumpyBackend.rms_norm(be, x, None, 1e-6))
