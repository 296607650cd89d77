"""The GPU FP8 KV cache against the NumPy reference: the codes kv_store writes (both flavours,
bit for bit), attention reading them (decode, split-K, prefill, window, sinks), whole models."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import pytest

from .helpers import check, rand, tiny_model

pytestmark = pytest.mark.gpu

FLAVOURS = [("fp8_e4m3fn", ml_dtypes.float8_e4m3fn), ("fp8_e4m3fnuz", ml_dtypes.float8_e4m3fnuz)]
TOL = 5e-4          # the same codes on both sides: only the reduction order differs


def _edge_values(rng, n, scale):
    """Normal values plus the edges of the code space: saturation, subnormals, exact ties, zeros."""
    x = rand(rng, n) * 3 * scale
    fmax = 448.0
    specials = np.array([0.0, -0.0, 1e-9, -1e-9, fmax * 2, -fmax * 3, 2.0 ** -9, 2.0 ** -10, 1.0625, 1.1875,
                         17.0, 0.0048828125, -0.0029296875, 240.0, 464.0, 250.0], np.float32) * scale
    x[:specials.size] = specials
    return x


@pytest.mark.parametrize("flavour,elem", FLAVOURS)
def test_kv_store_codes_match_ml_dtypes(gb, rng, flavour, elem):
    from rocmforge.quant.act import kv_encode, kv_scale_for

    ks, vs = 0.37, 0.011
    cache = gb.new_kv_cache(1, 2, 64, 32, 40, dtype=flavour, scales={0: (ks, vs)})
    k = _edge_values(rng, 7 * 2 * 64, kv_scale_for(flavour, ks)).reshape(7, 2, 64)
    v = _edge_values(rng, 7 * 2 * 32, kv_scale_for(flavour, vs)).reshape(7, 2, 32)
    q = rand(rng, 7, 4, 64)
    gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), cache, 0, 0, 0.125)
    got_k = gb.to_numpy(cache.k[0][:7])
    got_v = gb.to_numpy(cache.v[0][:7])
    want_k = kv_encode(k, kv_scale_for(flavour, ks), flavour).view(np.uint8)
    want_v = kv_encode(v, kv_scale_for(flavour, vs), flavour).view(np.uint8)
    np.testing.assert_array_equal(got_k, want_k)
    np.testing.assert_array_equal(got_v, want_v)
    if flavour == "fp8_e4m3fnuz":
        assert not (got_k == 0x80).any(), "0x80 is E4M3FNUZ's NaN: zero must be written without a sign"


def _fp8_attn(gb, nb, rng, flavour, pieces, H, Hkv, D, scales, **extra):
    cg = gb.new_kv_cache(1, Hkv, D, D, sum(pieces) + 2, dtype=flavour, scales=scales)
    cn = nb.new_kv_cache(1, Hkv, D, D, sum(pieces) + 2, dtype=flavour, scales=scales)
    pos = 0
    for n in pieces:
        q, k, v = rand(rng, n, H, D), rand(rng, n, Hkv, D, scale=2.0), rand(rng, n, Hkv, D)
        got = gb.to_numpy(gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), cg, 0, pos, 1 / math.sqrt(D),
                                       **extra))
        ref = nb.attention(q, k, v, cn, 0, pos, 1 / math.sqrt(D), **extra)
        check(got, ref, TOL, f"{flavour} attention T={n} pos0={pos} {sorted(extra)}")
        pos += n
    assert cg.k_scale[0] == pytest.approx(cn.k_scale[0]) and cg.v_scale[0] == pytest.approx(cn.v_scale[0])


@pytest.mark.parametrize("flavour,elem", FLAVOURS)
@pytest.mark.parametrize("scales", [None, {0: (0.02, 0.004)}], ids=["dynamic", "static"])
def test_fp8_attention_decode_and_prefill(gb, nb, rng, flavour, elem, scales):
    _fp8_attn(gb, nb, rng, flavour, [45, 1, 1, 3], 8, 2, 128, scales)              # tiled prefill, then decode
    _fp8_attn(gb, nb, rng, flavour, [300, 1], 12, 4, 64, scales)                   # split-K decode
    _fp8_attn(gb, nb, rng, flavour, [40, 2], 8, 8, 64, scales, window=9, sinks=rand(rng, 8))


def test_fp8_default_flavour_and_bytes(gb):
    c8 = gb.new_kv_cache(2, 4, 64, 64, 128, dtype="fp8")
    c16 = gb.new_kv_cache(2, 4, 64, 64, 128, dtype="f16")
    assert c8.flavour == gb.fp8_kv_flavour
    assert c8.nbytes * 2 == c16.nbytes
    with pytest.raises(ValueError, match="unknown KV cache dtype"):
        gb.new_kv_cache(1, 1, 64, 64, 8, dtype="int4")


@pytest.mark.parametrize("flavour", ["fp8_e4m3fn", "fp8_e4m3fnuz"])
def test_fp8_model_gpu_vs_cpu(tmp_path, flavour):
    """A tiny llama with an FP8 KV cache (dynamic scales): GPU logits == CPU logits, prefill and decode,
    and both differ from the fp16 cache's (the FP8 cache is really used)."""
    import rocmforge

    path = tiny_model("llama", "llama-gqa", tmp_path, seed=5)
    ids = [1, 17, 200, 3, 45, 99, 5, 250, 128, 7, 64, 33, 2, 180]
    cpu = rocmforge.load_model(str(path), device="numpy", tokenizer=False, kv_cache_dtype=flavour)
    gpu = rocmforge.load_model(str(path), device="gpu", tokenizer=False, kv_cache_dtype=flavour)
    check(gpu.logits(ids), cpu.logits(ids), 5e-4, f"{flavour} prefill logits")
    # decode against a CPU session fed the same way: a dynamic scale comes from each layer's first
    # store, here the 8-token prefix on both sides (a full forward would take it from all 14)
    rows = {}
    for name, m in (("cpu", cpu), ("gpu", gpu)):
        s = m.new_session(32)
        s.feed(ids[:8])
        rows[name] = np.stack([s.feed([i]) for i in ids[8:]])     # GPU: graph replay included
    check(rows["gpu"], rows["cpu"], 5e-4, f"{flavour} decode logits")
    f16 = rocmforge.load_model(str(path), device="gpu", tokenizer=False, kv_cache_dtype="f16").logits(ids)
    assert not np.allclose(f16, gpu.logits(ids), rtol=0, atol=1e-6)
    assert gpu.kv_cache_bytes(100) * 2 == rocmforge.load_model(str(path), device="gpu", tokenizer=False,
                                                               kv_cache_dtype="f16").kv_cache_bytes(100)
