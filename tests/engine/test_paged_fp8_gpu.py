"""FP8 paged KV on the GPU against the NumPy paged store: the codes paged_kv_store writes (bit for bit,
both flavours, through a scattered block table), the decode kernel walking the table and the gathered
prefill reading them, kv_read, and the engine on the GPU with an FP8 pool."""

import math

import ml_dtypes
import numpy as np
import pytest

from .test_paged_attention import OPTIONS, nmse

pytestmark = pytest.mark.gpu

FLAVOURS = {"fp8_e4m3fn": ml_dtypes.float8_e4m3fn, "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz}
TOL = 5e-4          # the same codes on both sides: only the reduction order differs


@pytest.fixture(scope="module")
def backends():
    from rocmforge.backends import get_backend

    return get_backend("numpy"), get_backend("gpu")


def _edge_values(rng, shape, scale):
    """Normal values plus the edges of the code space: saturation, subnormals, exact ties, zeros."""
    x = (rng.standard_normal(shape) * 3 * scale).astype(np.float32).reshape(-1)
    specials = np.array([0.0, -0.0, 1e-9, -1e-9, 896.0, -1344.0, 2.0 ** -9, 2.0 ** -10, 1.0625, 1.1875,
                         17.0, 0.0048828125, -0.0029296875, 240.0, 464.0, 250.0], np.float32) * scale
    x[:specials.size] = specials
    return x.reshape(shape)


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("scales", [None, {0: (0.37, 0.011)}], ids=["fixed", "file"])
def test_paged_fp8_codes_equal_numpy(backends, flavour, scales):
    nb, gb = backends
    rng = np.random.default_rng(5)
    Hkv, Dk, Dv, bs, n_blocks = 2, 64, 32, 4, 12
    table = rng.permutation(n_blocks)[:6]
    cpu = nb.new_paged_kv(1, Hkv, Dk, Dv, n_blocks, bs, dtype=flavour, scales=scales)
    gpu = gb.new_paged_kv(1, Hkv, Dk, Dv, n_blocks, bs, dtype=flavour, scales=scales)
    assert gpu.k_scale == cpu.k_scale and gpu.v_scale == cpu.v_scale
    cv, gv = cpu.view(table), gpu.view(table)
    pos = 0
    for n in (7, 1, 5, 1):                                 # prefill (gather), decode (table walk), blocks crossed
        k = _edge_values(rng, (n, Hkv, Dk), cpu.k_scale[0])
        v = _edge_values(rng, (n, Hkv, Dv), cpu.v_scale[0])
        q = rng.standard_normal((n, 4, Dk)).astype(np.float32)
        nb.attention(q, k, v, cv, 0, pos, 0.125)
        gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), gv, 0, pos, 0.125)
        pos += n
    got_k, got_v = gb.to_numpy(gpu.k[0]), gb.to_numpy(gpu.v[0])
    for got, want in ((got_k, cpu.k[0]), (got_v, cpu.v[0])):
        rows = got.reshape(-1, *got.shape[2:])[cv.slots(0, pos)]
        np.testing.assert_array_equal(rows, want.reshape(-1, *want.shape[2:])[cv.slots(0, pos)].view(np.uint8))
        if flavour == "fp8_e4m3fnuz":     # the written slots only: the pool's other bytes are uninitialised
            assert (rows == 0).any() and not (rows == 0x80).any(), \
                "0x80 is E4M3FNUZ's NaN: zero must be written without a sign"


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("shape", [(8, 2, 64, 64), (12, 4, 128, 128), (8, 1, 96, 64)], ids=["gqa", "gqa128", "mla"])
@pytest.mark.parametrize("opt", ["plain", "all"])
def test_gpu_paged_fp8_attention_matches_numpy(backends, flavour, shape, opt):
    nb, gb = backends
    H, Hkv, Dk, Dv = shape
    rng = np.random.default_rng(6)
    bs, n_blocks = 4, 40
    table = rng.permutation(n_blocks)[:30]
    scales = {0: (0.02, 0.004)} if opt == "all" else None
    cpu = nb.new_paged_kv(1, Hkv, Dk, Dv, n_blocks, bs, dtype=flavour, scales=scales).view(table)
    gpu = gb.new_paged_kv(1, Hkv, Dk, Dv, n_blocks, bs, dtype=flavour, scales=scales).view(table)
    opts = {k: (np.resize(v, H) if isinstance(v, np.ndarray) else v) for k, v in OPTIONS[opt].items()}
    pos, kscale = 0, cpu.pool.k_scale[0]
    for n in [9, 1, 1, 3, 1, 20, 4, 1, 40, 1]:            # prefill (gather + tiled), decodes (table walk)
        q = rng.standard_normal((n, H, Dk)).astype(np.float32)
        k = (rng.standard_normal((n, Hkv, Dk)) * 20 * kscale).astype(np.float32)
        v = (rng.standard_normal((n, Hkv, Dv)) * 20 * cpu.pool.v_scale[0]).astype(np.float32)
        ref = nb.attention(q, k, v, cpu, 0, pos, 1 / math.sqrt(Dk), **opts)
        got = gb.to_numpy(gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), gpu, 0, pos, 1 / math.sqrt(Dk),
                                       **opts))
        assert nmse(got, ref) <= TOL, (flavour, opt, n, pos)
        pos += n
    kr, vr = gb.kv_read(gpu, 0, 5, 30)
    kc, vc = nb.kv_read(cpu, 0, 5, 30)
    np.testing.assert_array_equal(gb.to_numpy(kr), kc)        # the decode is exact: the same codes, one scale
    np.testing.assert_array_equal(gb.to_numpy(vr), vc)


def test_gpu_fp8_pool_default_flavour_and_bytes(backends):
    _, gb = backends
    p8 = gb.new_paged_kv(2, 4, 64, 64, 10, 16, dtype="fp8")
    p16 = gb.new_paged_kv(2, 4, 64, 64, 10, 16)
    assert p8.flavour == gb.fp8_kv_flavour and p8.nbytes * 2 == p16.nbytes
    with pytest.raises(ValueError, match="unknown KV cache dtype"):
        gb.new_paged_kv(1, 1, 64, 64, 2, 4, dtype="int4")


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_gpu_fp8_paged_model_matches_cpu(tmp_path, flavour):
    """A tiny llama through an FP8 pool: GPU rows == CPU rows (chunked prefill, decode)."""
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    import rocmforge
    from rocmforge.engine.model_step import ModelStep, StepItem
    from rocmforge.registry import architectures
    from rocmforge.testing.tiny import make_hf_model

    from .test_paged_model import IDS

    t = next(t for t in architectures()["llama"].recipe_obj.tiny if t["name"] == "llama-gqa")
    make_hf_model(t["hf_class"], t["config"], tmp_path, seed=3)
    rows = {}
    for device in ("numpy", "gpu"):
        m = rocmforge.load_model(str(tmp_path), device=device, tokenizer=False, kv_cache_dtype=flavour)
        step = ModelStep(m, num_blocks=16, block_size=4)
        assert step.store.flavour == flavour
        table, out, pos = [11, 2, 7, 0, 13, 5], [], 0
        for n in (7, 6) + (1,) * (len(IDS) - 13):
            out.append(step.run([StepItem("s", IDS[pos:pos + n], pos, table, all_rows=True)])[0])
            pos += n
        rows[device] = np.concatenate(out)
    assert nmse(rows["gpu"], rows["numpy"]) <= TOL
