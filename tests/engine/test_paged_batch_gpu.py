"""A batched paged decode step on the GPU: one KV-append and one attention launch for all sequences
(kernels/paged_attention.hip *_rows), and the engine's steps replayed from captured graphs
(rocmforge/backends/cupy_paged_graph.py), each against the per-sequence path it replaces."""

import numpy as np
import pytest

pytestmark = pytest.mark.gpu

from .test_paged_attention import OPTIONS, SHAPES, nmse  # noqa: E402


@pytest.fixture(scope="module")
def gb():
    from rocmforge.backends import get_backend

    return get_backend("gpu")


@pytest.mark.parametrize("shape", SHAPES, ids=["mha", "gqa", "mqa", "mla"])
@pytest.mark.parametrize("opt", list(OPTIONS))
@pytest.mark.parametrize("kv", ["auto", "fp8"])
def test_rows_attention_equals_one_launch_per_sequence(gb, shape, opt, kv):
    """R sequences at different positions with scattered tables: the rows kernels give, bit for bit,
    what one attention call per sequence gives, and store the same K/V codes."""
    from rocmforge.recipe import Segment

    H, Hkv, Dk, Dv = shape
    rng = np.random.default_rng(7)
    bs, nb, R = 4, 64, 5
    opts = {k: (v[:H] if isinstance(v, np.ndarray) else v) for k, v in OPTIONS[opt].items()}
    stores = [gb.new_paged_kv(1, Hkv, Dk, Dv, nb, bs, dtype=kv) for _ in range(2)]
    perm = rng.permutation(nb)                 # disjoint tables: no sequence writes another's block
    tables = [list(perm[i * 12:(i + 1) * 12]) for i in range(R)]
    lens = [3, 17, 1, 30, 9]
    views = [[s.view(t) for t in tables] for s in stores]
    for r, n in enumerate(lens):      # prefill each sequence alike in both stores
        q, k, v = (rng.standard_normal((n, h, d)).astype(np.float32) for h, d in ((H, Dk), (Hkv, Dk), (Hkv, Dv)))
        for vs in views:
            gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), vs[r], 0, 0, 0.3, **opts)
    for _ in range(3):                # decode steps: one token per sequence
        q = rng.standard_normal((R, H, Dk)).astype(np.float32)
        k = rng.standard_normal((R, Hkv, Dk)).astype(np.float32)
        v = rng.standard_normal((R, Hkv, Dv)).astype(np.float32)
        alone = np.concatenate([gb.to_numpy(gb.attention(gb.upload(q[r:r + 1]), gb.upload(k[r:r + 1]),
                                                         gb.upload(v[r:r + 1]), views[0][r], 0, lens[r], 0.3, **opts))
                                for r in range(R)])
        segs = [Segment(r, 1, views[1][r], lens[r]) for r in range(R)]
        rows = gb.to_numpy(gb.attention_batch(gb.upload(q), gb.upload(k), gb.upload(v), segs, 0, 0.3, **opts))
        np.testing.assert_array_equal(rows, alone)
        assert nmse(rows, alone) == 0.0
        lens = [n + 1 for n in lens]
        assert [vw.length[0] for vw in views[1]] == lens
    for layer_pool in ("k", "v"):
        a = gb.to_numpy(getattr(stores[0], layer_pool)[0][:nb].view(np.uint8))
        b = gb.to_numpy(getattr(stores[1], layer_pool)[0][:nb].view(np.uint8))
        for t, n in zip(tables, lens):    # the written rows agree (unwritten pool memory is uninitialised)
            for j in range(n):
                np.testing.assert_array_equal(a[t[j // bs], j % bs], b[t[j // bs], j % bs])


@pytest.mark.parametrize("kv", ["auto", "fp8"])
def test_mixed_step_rows_and_prompt_chunks_equal_one_call_per_sequence(gb, kv):
    """A serving step of running decodes and prompt chunks (two decodes side by side, lone decodes
    between chunks): the run of decodes takes the rows launch, the rest one call each, and the result
    is, bit for bit, one attention call per sequence."""
    from rocmforge.recipe import Segment

    H, Hkv, Dk, Dv = 8, 2, 64, 64
    rng = np.random.default_rng(11)
    bs, nb = 4, 96
    stores = [gb.new_paged_kv(1, Hkv, Dk, Dv, nb, bs, dtype=kv) for _ in range(2)]
    perm = rng.permutation(nb)
    lens = [5, 0, 12, 7, 0, 3, 0]             # 0: a new prompt, its first chunk in this step
    steps = [1, 9, 1, 1, 6, 1, 20]            # rows of each sequence in the step
    tables = [list(perm[i * 13:(i + 1) * 13]) for i in range(len(lens))]
    views = [[s.view(t) for t in tables] for s in stores]
    for r, n in enumerate(lens):
        if n:
            q, k, v = (rng.standard_normal((n, h, d)).astype(np.float32) for h, d in ((H, Dk), (Hkv, Dk), (Hkv, Dv)))
            for vs in views:
                gb.attention(gb.upload(q), gb.upload(k), gb.upload(v), vs[r], 0, 0, 0.3)
    T = sum(steps)
    q = rng.standard_normal((T, H, Dk)).astype(np.float32)
    k = rng.standard_normal((T, Hkv, Dk)).astype(np.float32)
    v = rng.standard_normal((T, Hkv, Dv)).astype(np.float32)
    starts = np.cumsum([0] + steps[:-1])
    alone = np.concatenate([gb.to_numpy(gb.attention(gb.upload(q[a:a + n]), gb.upload(k[a:a + n]),
                                                     gb.upload(v[a:a + n]), views[0][r], 0, lens[r], 0.3))
                            for r, (a, n) in enumerate(zip(starts, steps))])
    segs = [Segment(int(a), n, views[1][r], lens[r]) for r, (a, n) in enumerate(zip(starts, steps))]
    runs = gb._attention_runs(segs)
    assert [(rows, len(s)) for rows, s in runs] == [(False, 1), (False, 1), (True, 2), (False, 1), (False, 1),
                                                    (False, 1)], runs
    got = gb.to_numpy(gb.attention_batch(gb.upload(q), gb.upload(k), gb.upload(v), segs, 0, 0.3))
    np.testing.assert_array_equal(got, alone)
    assert [vw.length[0] for vw in views[1]] == [n + m for n, m in zip(lens, steps)]


@pytest.mark.parametrize("arch,name", [("llama", "llama-gqa"), ("gemma2", "gemma2-swa-softcap"),
                                       ("qwen3", "qwen3-headdim")])
def test_engine_graph_steps_equal_eager_steps(tiny_model, arch, name):
    """The engine with batched decode graphs (every bucket: 1, 2, 4 and padded 8 / 16 rows) gives the
    eager engine's greedy tokens and logprobs; the graphs were really replayed."""
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions

    model = tiny_model(arch, name, device="gpu")
    V = model.hparams["vocab_size"]
    rng = np.random.default_rng(3)
    prompts = [[int(t) for t in rng.integers(3, V, 5 + 2 * i)] for i in range(11)]

    def run(graphs: bool):
        model.backend.graphs = graphs
        try:
            eng = LLMEngine(model, max_num_seqs=11, num_blocks=200, block_size=4, max_num_batched_tokens=64)
            # staggered lengths: the batch shrinks 11 -> 1 as requests finish, three steps per size: every bucket
            reqs = [EngineRequest(f"r{i}", p, SamplingOptions(max_tokens=8 + 3 * i, temperature=0, logprobs=0,
                                                              ignore_eos=True)) for i, p in enumerate(prompts)]
            out = eng.run_to_completion(reqs)
            assert eng.stats().kv_blocks_used == 0
            graphs_ = dict(eng.runner.store.graphs)
            return ({k: [(e.token_id, e.logprob) for e in ev if e.token_id is not None] for k, ev in out.items()},
                    graphs_)
        finally:
            model.backend.graphs = True

    eager, g_off = run(False)
    replayed, g_on = run(True)
    assert not g_off
    captured = {k for k, g in g_on.items() if hasattr(g, "replays") and g.replays > 0}
    assert {(1, 16), (2, 16), (4, 16), (8, 16)} <= captured, g_on
    for rid in eager:
        assert [t for t, _ in replayed[rid]] == [t for t, _ in eager[rid]], rid
        np.testing.assert_allclose([lp for _, lp in replayed[rid]], [lp for _, lp in eager[rid]], atol=2e-3)


def _greedy(out):
    return {k: [e.token_id for e in v] for k, v in out.items()}


def _eager(model, reqs, **engine_kw):
    """The requests' tokens through an engine with graphs off: the reference."""
    from rocmforge.engine.llm_engine import LLMEngine

    model.backend.graphs = False
    try:
        return _greedy(LLMEngine(model, **engine_kw).run_to_completion(reqs()))
    finally:
        model.backend.graphs = True


def test_engine_graphs_stay_off_for_host_steps(tiny_model):
    """A MoE model's step routes on the host: no graph is kept, the tokens are the eager ones."""
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions

    model = tiny_model("llama", "mixtral-moe", device="gpu")
    reqs = lambda: [EngineRequest(f"r{i}", [3 + i, 9, 27, 81], SamplingOptions(max_tokens=6, temperature=0,  # noqa: E731
                                                                              ignore_eos=True)) for i in range(3)]
    kw = dict(max_num_seqs=3, num_blocks=40, block_size=4)
    eng = LLMEngine(model, **kw)
    out = eng.run_to_completion(reqs())
    assert not any(hasattr(g, "replays") for g in eng.runner.store.graphs.values())
    assert _greedy(out) == _eager(model, reqs, **kw)


def test_graphs_captured_at_start_serve_like_lazy_ones(tiny_model):
    """capture_graphs (what the server's engine does): every batch bucket up to max_num_seqs is captured
    before the first request, on dummy steps into the scratch block, with tables wide enough for the
    longest request; the requests then replay them (no new shape as they grow) and decode exactly as
    the eager engine does."""
    from rocmforge.backends.cupy_paged_graph import BatchGraph, bucket_width
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions

    model = tiny_model("llama", "llama-gqa", device="gpu")
    reqs = lambda: [EngineRequest(f"r{i}", [3 + i, 17, 42, 99, 7][: 3 + i % 3], SamplingOptions(  # noqa: E731
        max_tokens=10, temperature=0, ignore_eos=True)) for i in range(9)]
    kw = dict(max_num_seqs=9, num_blocks=120, block_size=4)
    eng = LLMEngine(model, capture_graphs=True, **kw)
    graphs = {k: g for k, g in eng.runner.store.graphs.items() if isinstance(g, BatchGraph)}
    width = bucket_width(min(-(-eng.max_model_len // 4), 1024))
    assert width > 16, "the tiny model's context should need a wider table than the least one"
    assert set(graphs) == {(r, width) for r in (1, 2, 4, 8, 16)}, eng.runner.store.graphs
    before = {k: g.replays for k, g in graphs.items()}
    out = eng.run_to_completion(reqs())
    assert set(eng.runner.store.graphs) == set(graphs), "a request's growth made another graph shape"
    assert eng.stats().kv_blocks_used == 0
    assert any(g.replays > before[k] for k, g in graphs.items())
    assert _greedy(out) == _eager(model, reqs, **kw)


def test_prefill_warm_up_leaves_requests_unchanged(tiny_model):
    """ModelStep.warm_up (at the server's start): dummy prefills through the GEMM and batch-kernel
    paths into the pool's first blocks; requests that then take those blocks, and share prefixes
    through the cache, decode exactly as on an engine that never warmed up."""
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions

    model = tiny_model("llama", "llama-gqa", device="gpu")
    shared = [5, 9, 13, 21, 34, 55, 89, 4]
    reqs = lambda: [EngineRequest(f"w{i}", shared + [3 + i, 17, 42][: 1 + i % 3], SamplingOptions(  # noqa: E731
        max_tokens=6, temperature=0, ignore_eos=True)) for i in range(4)]
    kw = dict(max_num_seqs=4, num_blocks=60, block_size=4)
    eng = LLMEngine(model, **kw)
    assert eng.runner.warm_up((80, 16)) == 2
    assert eng.stats().kv_blocks_used == 0 and eng.runner.num_states == 0
    assert _greedy(eng.run_to_completion(reqs())) == _eager(model, reqs, **kw)
