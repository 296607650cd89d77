"""FP8 paged KV on the NumPy backend: the pool holds the same codes as the per-sequence FP8 cache
(NumpyFP8KVCache) and attention through the block table equals it, both flavours; the pool's scales
are the file's or a fixed 1.0 per layer (never a first store's: the pool is shared); the engine
with an FP8 pool equals a Session with the same scales; one byte per K/V value."""

import ml_dtypes
import numpy as np
import pytest

from rocmforge.backends.numpy_backend import NumpyBackend, NumpyFP8KVCache
from rocmforge.quant.act import KV_POOL_SCALE, kv_decode, kv_pool_scales, kv_scale_for

from .test_paged_attention import OPTIONS

be = NumpyBackend()
FLAVOURS = {"fp8_e4m3fn": ml_dtypes.float8_e4m3fn, "fp8_e4m3fnuz": ml_dtypes.float8_e4m3fnuz}
# (H, Hkv, Dk, Dv): MHA, GQA, and an MLA-like latent cache (one kv head, Dv != Dk)
SHAPES = [(4, 4, 16, 16), (8, 2, 16, 16), (8, 1, 20, 12)]


def _qkv(rng, n, H, Hkv, Dk, Dv):
    return (rng.standard_normal((n, H, Dk)).astype(np.float32),
            (rng.standard_normal((n, Hkv, Dk)) * 3).astype(np.float32),        # some codes saturate at 1.0
            (rng.standard_normal((n, Hkv, Dv)) * 0.05).astype(np.float32))     # some are subnormal


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("shape", SHAPES, ids=["mha", "gqa", "mla"])
@pytest.mark.parametrize("scales", [None, {1: (0.02, 0.004)}], ids=["fixed", "file"])
@pytest.mark.parametrize("opt", ["plain", "all"])
def test_paged_fp8_equals_per_sequence_fp8(flavour, shape, scales, opt):
    H, Hkv, Dk, Dv = shape
    rng = np.random.default_rng(4)
    bs, n_blocks = 4, 12
    store = be.new_paged_kv(2, Hkv, Dk, Dv, n_blocks, bs, dtype=flavour, scales=scales)
    assert store.k[1].dtype == FLAVOURS[flavour] and store.flavour == flavour
    table = rng.permutation(n_blocks)[:8]                 # scattered blocks, in no order
    paged = store.view(table)
    # the per-sequence cache with the pool's scales given as file scales (its own rule would take a
    # dynamic one from the first store)
    same = scales or {1: (KV_POOL_SCALE, KV_POOL_SCALE)}
    flat = NumpyFP8KVCache(2, Hkv, Dk, Dv, 64, flavour, same)
    opts = {k: (v[:H] if isinstance(v, np.ndarray) else v) for k, v in OPTIONS[opt].items()}
    pos = 0
    for n in [6, 1, 1, 5, 1, 9, 1, 3]:               # prefill, decodes, chunks across block boundaries
        q, k, v = _qkv(rng, n, H, Hkv, Dk, Dv)
        ref = be.attention(q, k, v, flat, 1, pos, 0.3, **opts)
        got = be.attention(q, k, v, paged, 1, pos, 0.3, **opts)
        np.testing.assert_array_equal(got, ref)
        pos += n
    # the pool holds exactly the per-sequence cache's codes, at the table's slots
    kp = store.k[1].reshape(-1, Hkv, Dk)[paged.slots(0, pos)]
    vp = store.v[1].reshape(-1, Hkv, Dv)[paged.slots(0, pos)]
    np.testing.assert_array_equal(kp.view(np.uint8), flat.k[1][:pos].view(np.uint8))
    np.testing.assert_array_equal(vp.view(np.uint8), flat.v[1][:pos].view(np.uint8))
    assert flat.k_scale[1] == store.k_scale[1] and flat.v_scale[1] == store.v_scale[1]
    assert (kp.astype(np.float32) != 0).any() and len(np.unique(kp.view(np.uint8))) > 20
    kr, vr = be.kv_read(paged, 1, 3, 10)
    kf, vf = be.kv_read(flat, 1, 3, 10)
    np.testing.assert_array_equal(kr, kf)
    np.testing.assert_array_equal(vr, vf)


def test_pool_scales_are_the_files_or_a_fixed_one():
    file = {0: (0.5, 0.25), 2: (0.125, 3.0)}
    assert kv_pool_scales("fp8_e4m3fn", 3, file) == ([0.5, 1.0, 0.125], [0.25, 1.0, 3.0])
    # e4m3fn scales, doubled for e4m3fnuz (max 240): the fixed one too, so both cover the same range
    assert kv_pool_scales("fp8_e4m3fnuz", 3, file) == ([1.0, 2.0, 0.25], [0.5, 2.0, 6.0])
    assert kv_pool_scales("fp8_e4m3fnuz", 2) == ([2.0, 2.0], [2.0, 2.0]) == ([kv_scale_for("fp8_e4m3fnuz", 1.0)] * 2,) * 2
    store = be.new_paged_kv(3, 1, 4, 4, 2, 4, dtype="fp8", scales=file)   # fp8: e4m3fn on the CPU
    assert store.flavour == "fp8_e4m3fn" and store.k_scale == [0.5, 1.0, 0.125]
    assert be.new_paged_kv(1, 1, 4, 4, 2, 4).flavour is None
    with pytest.raises(ValueError, match="unknown KV cache dtype"):
        be.new_paged_kv(1, 1, 4, 4, 2, 4, dtype="int4")


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_a_request_does_not_depend_on_who_stored_first(flavour):
    """Dynamic first-store scales would give request B other codes when A (larger values) came first."""
    rng = np.random.default_rng(7)
    a = _qkv(rng, 5, 4, 2, 8, 8)
    a = (a[0], a[1] * 40, a[2] * 40)
    b = _qkv(rng, 6, 4, 2, 8, 8)
    outs = []
    for order in ("ab", "ba"):
        store = be.new_paged_kv(1, 2, 8, 8, 8, 4, dtype=flavour)
        views = {"a": store.view([0, 1]), "b": store.view([5, 2])}
        res = {name: be.attention(*{"a": a, "b": b}[name], views[name], 0, 0, 0.35) for name in order}
        outs.append(res["b"])
    np.testing.assert_array_equal(outs[0], outs[1])


@pytest.mark.parametrize("flavour", list(FLAVOURS))
def test_gpu_pool_decodes_codes_like_the_numpy_reference(flavour):
    """GpuPagedKV's host-side pieces run on NumPy arrays too (cp = numpy): its f16-bit-pattern decode
    with the kernels' factors equals kv_decode exactly, subnormals and saturation included."""
    from rocmforge.backends.cupy_paged import GpuPagedKV

    pool = GpuPagedKV(np, 2, 1, 4, 4, 2, 4, flavour, {1: (0.37, 0.011)})
    assert pool.k[0].dtype == np.uint8 and pool.defines == (("ATT_KV", 1 if flavour == "fp8_e4m3fn" else 2),)
    assert pool.k_scale == kv_pool_scales(flavour, 2, {1: (0.37, 0.011)})[0]
    codes = np.arange(256, dtype=np.uint8)
    codes = codes[~np.isnan(codes.view(FLAVOURS[flavour]).astype(np.float32))]    # every finite code
    for layer in (0, 1):
        k, v = pool.decode(layer, codes, codes[::-1])
        np.testing.assert_array_equal(k, kv_decode(codes.view(FLAVOURS[flavour]), pool.k_scale[layer]))
        np.testing.assert_array_equal(v, kv_decode(codes[::-1].view(FLAVOURS[flavour]), pool.v_scale[layer]))
    # 2 layers x K and V x (2 blocks + the scratch block that padded graph rows write) x 4 rows x 4 codes
    assert pool.nbytes == 2 * 2 * ((2 + 1) * 4 * 4)


# ---- whole models through the engine

IDS = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77]


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from rocmforge.registry import architectures
    from rocmforge.testing.tiny import make_hf_model

    t = next(t for t in architectures()["llama"].recipe_obj.tiny if t["name"] == "llama-gqa")
    folder = tmp_path_factory.mktemp("llama-gqa-fp8")
    make_hf_model(t["hf_class"], t["config"], folder, seed=3)
    return str(folder)


def _load(folder, kv, scales=None):
    import rocmforge

    m = rocmforge.load_model(folder, tokenizer=False, kv_cache_dtype=kv)
    if scales is not None:       # as a Quark export's k_scale / v_scale would give them
        m.kv_scales = m.executor.kv_scales = {i: scales for i in range(m.hparams["n_layer"])}
    return m


def _session_greedy(m, prompt, n):
    s = m.new_session(len(prompt) + n)
    logits, out = s.feed(prompt), []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits = s.feed([out[-1]])
    return out


@pytest.mark.parametrize("flavour", list(FLAVOURS))
@pytest.mark.parametrize("scales", [None, (0.01, 0.004)], ids=["fixed", "file"])
def test_engine_fp8_equals_session_with_the_same_scales(tiny_folder, flavour, scales):
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.model_step import ModelStep, StepItem
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions
    from rocmforge.testing.conformance import nmse

    engine_model = _load(tiny_folder, flavour, scales)
    # the Session takes the pool's rule as file scales (it would otherwise take a first store's)
    session_model = _load(tiny_folder, flavour, scales or (1.0, 1.0))
    prompts = [IDS[: 5 + 2 * i] for i in range(3)]
    eng = LLMEngine(engine_model, max_num_seqs=4, num_blocks=32, block_size=4, max_num_batched_tokens=8)
    assert eng.runner.store.flavour == flavour
    out = eng.run_to_completion([EngineRequest(f"r{i}", p, SamplingOptions(max_tokens=6, temperature=0))
                                 for i, p in enumerate(prompts)])
    got = [[e.token_id for e in out[f"r{i}"] if e.token_id is not None] for i in range(len(prompts))]
    assert got == [_session_greedy(session_model, p, 6) for p in prompts]
    # logits: chunked prefill + decode through the pool == the Session's, and != a float cache's
    step = ModelStep(engine_model, num_blocks=8, block_size=4)
    table, rows, pos = [6, 1, 4, 0], [], 0
    for n in (5, 4, 1, 1, 1):
        rows.append(step.run([StepItem("s", IDS[pos:pos + n], pos, table, all_rows=True)])[0])
        pos += n
    s = session_model.new_session(16)
    want = np.concatenate([s.feed(IDS[p:p + n], all_logits=True) for p, n in ((0, 5), (5, 4), (9, 1), (10, 1),
                                                                           (11, 1))])
    assert nmse(np.concatenate(rows), want) < 1e-10
    f32 = ModelStep(_load(tiny_folder, "auto"), num_blocks=8, block_size=4)
    ref = f32.run([StepItem("s", IDS[:12], 0, table, all_rows=True)])[0]
    assert 1e-8 < nmse(np.concatenate(rows), ref) < 1e-2        # the FP8 pool is really used


def test_fp8_pool_takes_one_byte_per_value(tiny_folder):
    from rocmforge.cli.serve import kv_cache_summary
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.model_step import blocks_for_memory, kv_bytes_per_block

    fp8, f32 = _load(tiny_folder, "fp8"), _load(tiny_folder, "auto")
    a = LLMEngine(fp8, max_num_seqs=2, num_blocks=10, block_size=4).runner.store
    b = LLMEngine(f32, max_num_seqs=2, num_blocks=10, block_size=4).runner.store
    dims, n_layer = fp8.executor.cache_dims(), fp8.hparams["n_layer"]
    assert a.nbytes == n_layer * 10 * 4 * dims["n_head_kv"] * (dims["head_dim"] + dims["head_dim_v"])
    assert a.nbytes * 4 == b.nbytes        # the NumPy reference's float pool is float32: a quarter
    # the same --kv-cache-gb holds four times the blocks here (twice f16's on a GPU: kv_bytes 2 vs 1)
    assert kv_bytes_per_block(fp8, 16) * 4 == kv_bytes_per_block(f32, 16) == a.nbytes // 10 * 4 * 4
    gb = 100 * kv_bytes_per_block(f32, 16) / (1 << 30)
    assert blocks_for_memory(f32, gb, 16) == 100 and blocks_for_memory(fp8, gb, 16) == 400
    eng = LLMEngine(fp8, max_num_seqs=2, num_blocks=10, block_size=4)
    assert eng.stats().extra["kv_cache_bytes"] == a.nbytes
    line = kv_cache_summary(eng)
    assert line.startswith("KV cache fp8_e4m3fn, a fixed scale of 1.0") and "10 blocks of 4 tokens" in line
    assert f"({a.nbytes} bytes)" in line
    assert kv_cache_summary(LLMEngine(f32, num_blocks=10, block_size=4)).startswith("KV cache float32: 10 blocks")
