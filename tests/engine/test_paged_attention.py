"""Paged KV on the NumPy backend: attention read through a block table equals the contiguous cache."""

import numpy as np
import pytest

from rocmforge.backends.numpy_backend import NumpyBackend
from rocmforge.errors import RocmforgeError

be = NumpyBackend()


def nmse(got, ref):
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape and np.isfinite(got).all()
    return float(((got - ref) ** 2).sum() / max((ref * ref).sum(), 1e-30))


OPTIONS = {
    "plain": {},
    "window": {"window": 5},
    "softcap": {"softcap": 3.0},
    "alibi": {"alibi": np.linspace(0.05, 0.5, 8).astype(np.float32)},
    "sinks": {"sinks": np.linspace(-1, 1, 8).astype(np.float32)},
    "chunk": {"chunk": 7},
    "all": {"window": 9, "softcap": 4.0, "sinks": np.linspace(-1, 1, 8).astype(np.float32), "chunk": 11},
}

# (H, Hkv, Dk, Dv): MHA, GQA, MQA, and an MLA-like latent cache (one kv head, Dv != Dk)
SHAPES = [(8, 8, 16, 16), (8, 2, 16, 16), (8, 1, 12, 12), (8, 1, 20, 12)]


def _steps(rng, H, Hkv, Dk, Dv, lengths):
    for n in lengths:
        yield (rng.standard_normal((n, H, Dk)).astype(np.float32),
               rng.standard_normal((n, Hkv, Dk)).astype(np.float32),
               rng.standard_normal((n, Hkv, Dv)).astype(np.float32))


@pytest.mark.parametrize("shape", SHAPES, ids=["mha", "gqa", "mqa", "mla"])
@pytest.mark.parametrize("opt", list(OPTIONS))
def test_paged_attention_equals_contiguous(shape, opt):
    H, Hkv, Dk, Dv = shape
    rng = np.random.default_rng(1)
    bs, n_blocks = 4, 12
    store = be.new_paged_kv(2, Hkv, Dk, Dv, n_blocks, bs)
    store.k[1][:] = np.nan        # poison: a row read that was never written shows up as NaN
    store.v[1][:] = np.nan
    table = rng.permutation(n_blocks)[:8]          # blocks scattered over the pool, in no order
    paged = store.view(table)
    flat = be.new_kv_cache(2, Hkv, Dk, Dv, 64)
    opts = {k: (v[:H] if isinstance(v, np.ndarray) else v) for k, v in OPTIONS[opt].items()}
    pos = 0
    for q, k, v in _steps(rng, H, Hkv, Dk, Dv, [6, 1, 1, 5, 1, 9, 1]):   # prefill, decodes, chunks
        ref = be.attention(q, k, v, flat, 1, pos, 0.3, **opts)
        got = be.attention(q, k, v, paged, 1, pos, 0.3, **opts)
        assert nmse(got, ref) <= 1e-7
        pos += q.shape[0]
    assert paged.length[1] == pos
    kr, vr = be.kv_read(paged, 1, 3, 10)
    kf, vf = be.kv_read(flat, 1, 3, 10)
    np.testing.assert_array_equal(kr, kf)
    np.testing.assert_array_equal(vr, vf)


def test_a_layer_of_its_own_shape_gets_its_own_pool():
    store = be.new_paged_kv(2, 2, 8, 8, 4, 4)
    view = store.view([2, 0])
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 4, 16)).astype(np.float32)
    k = rng.standard_normal((5, 1, 16)).astype(np.float32)
    flat = be.new_kv_cache(2, 2, 8, 8, 16)
    ref = be.attention(q, k, k, flat, 0, 0, 0.25)
    got = be.attention(q, k, k, view, 0, 0, 0.25)
    assert nmse(got, ref) <= 1e-7
    assert store.k[0].shape == (4, 4, 1, 16) and store.k[1].shape == (4, 4, 2, 8)


def test_writing_past_the_table_is_a_clear_error():
    store = be.new_paged_kv(1, 1, 4, 4, 4, 4)
    view = store.view([1])
    x = np.zeros((5, 1, 4), np.float32)
    with pytest.raises(RocmforgeError, match="block table"):
        be.attention(x, x, x, view, 0, 0, 1.0)


def test_kv_read_before_the_shared_layer_ran_is_a_clear_error():
    store = be.new_paged_kv(2, 1, 4, 4, 4, 4)
    view = store.view([0, 1])
    with pytest.raises(RocmforgeError, match="sharing layer"):
        be.kv_read(view, 0, 0, 3)


def test_copy_blocks_copies_every_layer():
    store = be.new_paged_kv(2, 1, 4, 4, 3, 2)
    for layer in range(2):
        store.k[layer][0] = layer + 1.0
        store.v[layer][0] = layer + 2.0
    store.copy_blocks([(0, 2)])
    for layer in range(2):
        assert (store.k[layer][2] == layer + 1.0).all() and (store.v[layer][2] == layer + 2.0).all()
