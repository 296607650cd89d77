"""A hybrid's paged KV pool holds its attention layers only, each at its own shape, and
--kv-cache-gb sizes the pool from those layers (a 3:1 Gated DeltaNet / attention stack gives four
times the blocks a pool of every layer would)."""

import pytest

from rocmforge.engine.llm_engine import LLMEngine
from rocmforge.engine.model_step import blocks_for_memory, kv_bytes_per_block
from rocmforge.engine.protocol import EngineRequest, SamplingOptions
from rocmforge.generate import generate_ids
from rocmforge.sampler import SamplingParams

HYBRIDS = [("qwen3_5", "qwen3_5-hybrid"), ("jamba", "jamba-hybrid"), ("granitemoehybrid", "granitemoehybrid-moe")]


@pytest.fixture(scope="module", params=HYBRIDS, ids=[n for _, n in HYBRIDS])
def model(request, tiny_model):
    from rocmforge.registry import architectures

    arch, name = request.param
    names = [t["name"] for t in architectures()[arch].recipe_obj.tiny]
    if name not in names:
        pytest.fail(f"{arch} has no tiny model {name!r} (it has {names})")
    return tiny_model(arch, name)


def test_pool_holds_attention_layers_only(model):
    ex = model.executor
    layers = ex.cache_layers()
    n_layer = int(model.hparams["n_layer"])
    assert 0 < len(layers) < n_layer                     # a hybrid: some layers hold K/V, not all
    eng = LLMEngine(model, max_num_seqs=2, num_blocks=10, block_size=4)
    store = eng.runner.store
    per_token = sum(h * (dk + dv) for h, dk, dv in layers.values())
    assert store.nbytes == 10 * 4 * per_token * store.k[next(iter(layers))].itemsize
    for i in range(n_layer):
        assert (store.k[i].size > 0) == (i in layers)
        if i in layers:
            assert store.k[i].shape[2:] == layers[i][:2] and store.v[i].shape[2:] == (layers[i][0], layers[i][2])
    assert kv_bytes_per_block(model, 4) == 4 * per_token * model.backend.kv_bytes
    every = kv_bytes_per_block(model, 4) * n_layer // len(layers)
    gb = 64 * every / (1 << 30)
    assert blocks_for_memory(model, gb, 4) == pytest.approx(64 * n_layer / len(layers), abs=1)


def test_engine_on_the_trimmed_pool_equals_generate(model):
    prompt = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200][: 6 + 1]
    prompt = [t % int(model.hparams["vocab_size"]) for t in prompt]
    want = list(generate_ids(model, prompt, 6, SamplingParams(temperature=0)))
    eng = LLMEngine(model, max_num_seqs=2, num_blocks=16, block_size=4)
    out = eng.run_to_completion([EngineRequest("a", prompt, SamplingOptions(max_tokens=6, temperature=0))])
    assert [e.token_id for e in out["a"] if e.token_id is not None] == want
    assert eng.stats().extra["kv_cache_bytes"] == eng.runner.store.nbytes
