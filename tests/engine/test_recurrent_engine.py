"""Recurrent models (Mamba-2, a hybrid) through the serving engine: each request owns a recurrent state.

The state lives beside the paged KV (ModelStep hangs one on each sequence's view), is zeroed when a
preempted request starts over, is freed with the request's blocks, and rules out prefix caching.
"""

import numpy as np
import pytest

from rocmforge.engine.llm_engine import LLMEngine
from rocmforge.engine.model_step import ModelStep, StepItem
from rocmforge.engine.protocol import EngineRequest, SamplingOptions
from rocmforge.generate import generate_ids
from rocmforge.sampler import SamplingParams
from rocmforge.testing.conformance import nmse

P = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77, 150, 9, 240, 1, 33, 66, 180, 2, 8, 101, 55]

MODELS = [("mamba2", "mamba2-groups"),        # state only: conv + SSD state, no KV at all
          ("qwen3_5", "qwen3_5-hybrid")]      # gated-delta-net state + attention KV layers


@pytest.fixture(scope="module", params=MODELS, ids=[n for _, n in MODELS])
def model(request, tiny_model):
    return tiny_model(*request.param)


def greedy(rid, prompt, n=8):
    return EngineRequest(rid, list(prompt), SamplingOptions(max_tokens=n, temperature=0))


def tokens(events):
    return [e.token_id for e in events if e.token_id is not None]


def prompts(k):
    return [P[i:i + 7 + 3 * i] for i in range(k)]


def alone_tokens(model, prompt, n=8):
    """Greedy tokens through Session (contiguous cache, cache.state): the reference."""
    return list(generate_ids(model, prompt, n, SamplingParams(temperature=0)))


@pytest.fixture(scope="module")
def alone(model):
    return [alone_tokens(model, p) for p in prompts(3)]


def states(eng):
    st = eng.stats()
    return st.extra["recurrent_states"], st.extra["recurrent_state_bytes"]


def test_one_request_equals_generate(model, alone):
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=32, block_size=4)
    out = eng.run_to_completion([greedy("a", prompts(3)[2])])
    assert tokens(out["a"]) == alone[2]
    assert out["a"][-1].finish_reason == "length"
    assert states(eng) == (0, 0) and eng.stats().kv_blocks_used == 0


def test_kv_cache_gb_sizes_the_pool_of_a_model_with_or_without_kv(model, alone):
    from rocmforge.engine.model_step import kv_bytes_per_block

    eng = LLMEngine(model, max_num_seqs=2, max_model_len=64, kv_cache_gb=0.001, block_size=4)
    per_block = kv_bytes_per_block(model, 4)
    if per_block:                          # the hybrid: its attention layers' KV decides
        assert eng.pool.num_blocks == int(0.001 * (1 << 30)) // per_block
    else:                                  # Mamba-2 keeps no KV: the default count, not a division by zero
        assert eng.pool.num_blocks == 2 * 16
    assert tokens(eng.run_to_completion([greedy("a", prompts(3)[0])])["a"]) == alone[0]


@pytest.mark.parametrize("budget", [512, 5])      # whole prompts / prefill chunks beside decodes
def test_three_concurrent_requests_equal_each_alone(model, alone, budget):
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=32, block_size=4, max_num_batched_tokens=budget)
    for i, p in enumerate(prompts(3)):
        eng.add_request(greedy(f"r{i}", p))
    out, most = {f"r{i}": [] for i in range(3)}, 0
    while eng.has_unfinished():
        for ev in eng.step():
            out[ev.request_id].append(ev)
        most = max(most, eng.stats().running)
    assert most == 3                                   # they really ran side by side
    assert [tokens(out[f"r{i}"]) for i in range(3)] == alone
    assert states(eng) == (0, 0) and eng.stats().kv_blocks_used == 0


def test_abort_mid_decode_frees_state_and_blocks(model):
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=32, block_size=4)
    eng.add_request(greedy("a", P[:9], n=20))
    eng.add_request(greedy("b", P[3:12], n=20))
    for _ in range(4):
        eng.step()
    n, nbytes = states(eng)
    per_seq = model.executor.new_state().nbytes
    assert n == 2 and nbytes == 2 * per_seq > 0
    ev = eng.abort("a")
    assert ev.finish_reason == "abort"
    assert states(eng) == (1, per_seq)
    eng.abort("b")
    st = eng.stats()
    assert states(eng) == (0, 0) and st.kv_blocks_used == 0 and st.running == 0
    assert eng.runner._views == {} and eng.runner._absorbed == {}


def test_preemption_restarts_the_state_and_gives_the_same_tokens(model):
    ps = [P[i:i + 9] for i in range(4)]
    ref = [alone_tokens(model, p, 12) for p in ps]
    # 4 requests of 21 tokens in 12 blocks of 4: at most two hold their KV at once
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=12, block_size=4)
    out = eng.run_to_completion([greedy(f"r{i}", p, 12) for i, p in enumerate(ps)])
    assert eng.stats().preempted_total > 0
    assert [tokens(out[f"r{i}"]) for i in range(4)] == ref
    assert states(eng) == (0, 0) and eng.stats().kv_blocks_used == 0


def test_prefix_caching_is_off_and_reports_no_lookups(model, caplog):
    shared = P[:16]
    reqs = [greedy(f"u{i}", shared + [70 + i, 71]) for i in range(2)]
    with caplog.at_level("INFO", logger="rocmforge.engine.llm_engine"):
        eng = LLMEngine(model, max_num_seqs=4, num_blocks=32, block_size=4)
    assert "prefix caching is off" in caplog.text
    first = eng.run_to_completion(reqs[:1])
    second = eng.run_to_completion(reqs[1:])
    st = eng.stats()
    assert st.extra["prefix_caching"] == 0 and st.extra["kv_blocks_cached"] == 0
    assert st.prefix_queries_total == 0 and st.prefix_hits_total == 0      # nothing looked up, no fake misses
    assert second["u1"][-1].cached_prompt_tokens == 0
    assert tokens(first["u0"]) == alone_tokens(model, reqs[0].prompt_ids)
    assert tokens(second["u1"]) == alone_tokens(model, reqs[1].prompt_ids)


def test_a_failed_forward_replays_the_half_updated_state(model):
    """A forward that fails after its first layer has advanced some states: the next step of those
    sequences starts them over from position 0 instead of advancing them twice."""
    a, b = P[:10], P[4:15]
    full_a, full_b = model.logits(a), model.logits(b)
    step = ModelStep(model, num_blocks=16, block_size=4)
    step.run([StepItem("a", a[:6], 0, [0, 1, 2]), StepItem("b", b[:7], 0, [3, 4, 5])])

    def boom(layer):
        raise RuntimeError("injected")

    step.executor.on_layer = boom
    try:
        with pytest.raises(RuntimeError, match="injected"):
            step.run([StepItem("a", a[6:], 6, [0, 1, 2]), StepItem("b", b[7:], 7, [3, 4, 5])])
    finally:
        step.executor.on_layer = None
    out = step.run([StepItem("a", a[6:], 6, [0, 1, 2], all_rows=True), StepItem("b", b[7:], 7, [3, 4, 5])])
    assert out[0].shape == (4, model.hparams["vocab_size"])
    assert nmse(out[0], full_a[6:]) < 1e-10
    assert nmse(out[1], full_b[-1]) < 1e-10
    assert step.num_states == 2
    step.release("a")
    step.release("b")
    assert step.num_states == 0 and step.state_bytes == 0


def test_a_state_cannot_start_past_position_zero(model):
    step = ModelStep(model, num_blocks=8, block_size=4)
    from rocmforge.errors import RocmforgeError

    with pytest.raises(RocmforgeError, match="recurrent state"):
        step.run([StepItem("s", P[4:6], 4, [0, 1])])


def greedy_with_margins(model, prompt, n=8):
    """CPU greedy tokens and, per step, the gap between the best two logits."""
    ids, toks, gaps = list(prompt), [], []
    for _ in range(n):
        row = np.asarray(model.logits(ids)[-1], np.float64)
        top = np.sort(row)[::-1]
        toks.append(int(np.argmax(row)))
        gaps.append(float(top[0] - top[1]))
        ids.append(toks[-1])
    return toks, gaps


def agreed_prefix(got, want, gaps, tie=1e-3):
    """How many tokens ``got`` must match: ``want`` up to its first near-tie (the tiny random models'
    logits spread ~0.16, and fp16 KV moves a logit by ~1e-4: a closer pair may flip either way)."""
    n = next((i for i, g in enumerate(gaps) if g < tie), len(gaps))
    assert got[:n] == want[:n], (got, want, gaps)
    return n


@pytest.mark.gpu
@pytest.mark.parametrize("arch,name", MODELS, ids=[n for _, n in MODELS])
def test_gpu_engine_recurrent_batch_equals_cpu_generate(tiny_model, arch, name):
    gpu, cpu = tiny_model(arch, name, device="gpu"), tiny_model(arch, name)
    ps = prompts(3)
    ref = [greedy_with_margins(cpu, p) for p in ps]
    eng = LLMEngine(gpu, max_num_seqs=4, num_blocks=32, block_size=4, max_num_batched_tokens=8)
    out = eng.run_to_completion([greedy(f"r{i}", p) for i, p in enumerate(ps)])
    # float32 state on the GPU, fp16 KV: tokens agree up to each prompt's first near-tie (qwen3_5-hybrid's
    # first prompt starts with two logits equal to 1e-5, where the GPU once picked the other one)
    compared = sum(agreed_prefix(tokens(out[f"r{i}"]), *ref[i]) for i in range(3))
    assert compared >= 12, f"only {compared} of 24 tokens were clear of near-ties: the test compares too little"
    assert states(eng) == (0, 0) and eng.stats().kv_blocks_used == 0
    alone = LLMEngine(gpu, max_num_seqs=4, num_blocks=32, block_size=4)
    agreed_prefix(tokens(alone.run_to_completion([greedy("x", ps[1])])["x"]), *ref[1])


def test_states_are_separate_arrays_per_sequence(model):
    step = ModelStep(model, num_blocks=8, block_size=4)
    step.run([StepItem("a", P[:3], 0, [0]), StepItem("b", P[5:8], 0, [1])])
    sa, sb = step._views["a"].state, step._views["b"].state
    key = next(iter(sa.arrays))
    assert sa.arrays[key] is not sb.arrays[key]
    assert not np.array_equal(sa.arrays[key], sb.arrays[key])
