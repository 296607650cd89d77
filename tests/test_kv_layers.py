"""Hybrids hold K/V for their attention layers only, at each layer's real shape (the recipe's
``cache:`` section: ``if:`` over ``layer`` and per-layer n_head_kv / head_dim), and
Model.kv_cache_bytes counts exactly what a sequence's cache allocates."""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge import load_model
from rocmforge.backends.numpy_backend import NumpyBackend
from rocmforge.errors import RocmforgeError
from rocmforge.model import Session
from rocmforge.recipe import Executor
from rocmforge.registry import architectures

pytest.importorskip("transformers")
pytest.importorskip("torch")

T = 40      # positions of the caches measured below


def _attention_layers(arch: str, cfg: dict) -> list[int]:
    """Which layers of the tiny model run attention, read off its HF config (not the recipe)."""
    n = cfg["num_hidden_layers"]
    if arch == "jamba":
        return [i for i in range(n) if i % cfg["attn_layer_period"] == cfg["attn_layer_offset"]]
    return [i for i, t in enumerate(cfg["layer_types"]) if t in ("full_attention", "attention")]


@pytest.fixture(scope="module", params=["jamba", "lfm2", "granitemoehybrid", "qwen3_5"])
def hybrid(request, tmp_path_factory):
    from rocmforge.testing.tiny import make_hf_model

    arch = request.param
    tiny = architectures()[arch].recipe_obj.tiny[0]
    folder = make_hf_model(tiny["hf_class"], tiny["config"], tmp_path_factory.mktemp(arch) / "hf", seed=1)
    return arch, tiny["config"], folder


def test_hybrid_kv_bytes_are_the_attention_layers(hybrid):
    arch, cfg, folder = hybrid
    m = load_model(folder)
    attn = _attention_layers(arch, cfg)
    assert 0 < len(attn) < cfg["num_hidden_layers"]
    hkv = cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    want = len(attn) * hkv * 2 * d * T * 4                # K + V, float32 on the NumPy reference
    assert m.kv_cache_bytes(T) == want
    assert m.executor.cache_layers() == {i: (hkv, d, d) for i in attn}

    cache = m.executor.new_cache(T)
    assert cache.nbytes == want
    for layer in range(cfg["num_hidden_layers"]):
        if layer in attn:
            assert cache.k[layer].shape[1:] == (hkv, d) and cache.v[layer].shape[1:] == (hkv, d)
        else:
            assert cache.k[layer] is None and cache.v[layer] is None

    s = Session(m, T)
    s.feed(list(range(1, 12)))
    # the stored K/V had the declared shapes (a declared layer refuses any other), and fork copies them
    twin = s.fork()
    for c in (s.cache, twin.cache):
        assert [a is None for a in c.k] == [i not in attn for i in range(cfg["num_hidden_layers"])]
        assert c.nbytes == want
    np.testing.assert_array_equal(twin.feed([7]), s.feed([7]))


def test_gpu_cache_follows_the_declared_layers(hybrid):
    """GpuKVCache (run here over NumPy standing in for CuPy) allocates the same layers at the same
    shapes, in fp16: the bytes Model.kv_cache_bytes reports on a GPU."""
    from rocmforge.backends.cupy_attention import GpuKVCache

    arch, cfg, folder = hybrid
    m = load_model(folder, kv_cache_dtype="f16")
    ex = m.executor
    dims = ex.cache_dims()
    layers = ex.cache_layers()
    cache = GpuKVCache(np, int(m.hparams["n_layer"]), dims["n_head_kv"], dims["head_dim"], dims["head_dim_v"], T,
                       layers=layers)
    assert cache.nbytes == m.kv_cache_bytes(T) == m.executor.new_cache(T).nbytes
    first = min(layers)
    h, dk, dv = layers[first]
    assert cache.k[first].shape == (T, h, dk) and cache.k[first].dtype == np.float16
    recurrent = next(i for i in range(int(m.hparams["n_layer"])) if i not in layers)
    with pytest.raises(RocmforgeError, match=f"layer {recurrent} holds no K/V"):
        cache.buffers(recurrent, (h, dk), (h, dv))
    with pytest.raises(RocmforgeError, match="declares"):
        cache.buffers(first, (h + 1, dk), (h + 1, dv))


def _executor(arch: str, hparams: dict) -> Executor:
    return Executor(architectures()[arch].recipe_obj, hparams, lambda name: None, NumpyBackend())


def test_default_cache_is_every_layer_at_the_model_shape():
    """A recipe without a per-layer cache: every layer, today's shape, and no ``layers`` for the backend
    (a backend without the keyword keeps working); Mamba: no layer at all."""
    ex = _executor("llama", {"n_layer": 3, "n_head_kv": 2, "head_dim": 8})
    assert ex.cache_layers() == {0: (2, 8, 8), 1: (2, 8, 8), 2: (2, 8, 8)} and not ex.cache_per_layer()
    seen = {}
    ex.backend.new_kv_cache = lambda *a, **kw: seen.update(kw) or NumpyBackend().new_kv_cache(*a, **kw)
    assert ex.new_cache(8).nbytes == 3 * 2 * 16 * 8 * 4 and "layers" not in seen
    mamba = _executor("mamba2", {"n_layer": 2})
    assert mamba.cache_layers() == {} and mamba.cache_dims() == {"n_head_kv": 0, "head_dim": 0, "head_dim_v": 0}
    assert NumpyBackend().new_kv_cache(2, 0, 0, 0, 8, layers=mamba.cache_layers()).k == [None, None]
