"""The synchronous engine on a tiny model: batching, chunking, prefix cache, preemption, abort, sampling."""

import numpy as np
import pytest

from rocmforge.engine.llm_engine import LLMEngine
from rocmforge.engine.protocol import EngineRequest, SamplingOptions
from rocmforge.generate import generate_ids
from rocmforge.sampler import SamplingParams, log_softmax

P = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77, 150, 9, 240, 1, 33, 66, 180, 2, 8, 101, 55]
SYSTEM = [5, 9, 14, 200, 201, 17, 3, 3, 90, 91, 92, 93, 40, 41, 42, 43, 60, 61]   # a shared "system prompt"


@pytest.fixture(scope="module")
def model(tiny_model):
    return tiny_model("llama", "llama-gqa")


def greedy(rid, prompt, n=8, **kw):
    return EngineRequest(rid, list(prompt), SamplingOptions(max_tokens=n, temperature=0, **kw))


def tokens(events):
    return [e.token_id for e in events if e.token_id is not None]


def prompts(k):
    return [P[i % 7:i % 7 + 9 + 2 * i] for i in range(k)]


@pytest.fixture(scope="module")
def alone(model):
    """Greedy tokens of each prompt, one request at a time through Session (the contiguous cache)."""
    return [list(generate_ids(model, p, 8, SamplingParams(temperature=0))) for p in prompts(6)]


def test_batched_greedy_equals_alone(model, alone):
    eng = LLMEngine(model, max_num_seqs=6, num_blocks=64, block_size=4)
    out = eng.run_to_completion([greedy(f"r{i}", p) for i, p in enumerate(prompts(6))])
    for i in range(6):
        assert tokens(out[f"r{i}"]) == alone[i]
        assert out[f"r{i}"][-1].finish_reason == "length"
        assert out[f"r{i}"][-1].completion_tokens == 8
    st = eng.stats()
    assert st.kv_blocks_used == 0 and st.running == 0 and st.waiting == 0
    assert st.generation_tokens_total == 48 and st.prompt_tokens_total == sum(len(p) for p in prompts(6))


@pytest.mark.parametrize("budget", [1, 5])
def test_chunked_prefill_equals_unchunked(model, alone, budget):
    eng = LLMEngine(model, max_num_seqs=6, num_blocks=64, block_size=4, max_num_batched_tokens=budget)
    out = eng.run_to_completion([greedy(f"r{i}", p) for i, p in enumerate(prompts(6))])
    assert [tokens(out[f"r{i}"]) for i in range(6)] == alone


def test_prefix_cache_reuses_a_shared_system_prompt(model):
    reqs = [greedy(f"u{i}", SYSTEM + [70 + i, 71 + i, 72]) for i in range(4)]
    ref = {r.request_id: list(generate_ids(model, r.prompt_ids, 8, SamplingParams(temperature=0))) for r in reqs}
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=64, block_size=4)
    first = eng.run_to_completion(reqs[:1])
    assert eng.stats().prefix_hits_total == 0
    rest = eng.run_to_completion(reqs[1:])
    st = eng.stats()
    assert st.prefix_queries_total == sum(len(r.prompt_ids) for r in reqs)
    assert st.prefix_hits_total == 3 * 16          # the 4 full blocks of the system prompt, for 3 requests
    for r in reqs[1:]:
        assert rest[r.request_id][-1].cached_prompt_tokens == 16
    for rid, evs in {**first, **rest}.items():
        assert tokens(evs) == ref[rid]
    assert st.kv_blocks_used == 0


def test_preemption_under_a_tiny_pool_still_completes_every_request(model, alone):
    # 6 requests of up to 27 tokens in 16 blocks of 4: they cannot all hold their KV at once
    eng = LLMEngine(model, max_num_seqs=6, num_blocks=16, block_size=4)
    out = eng.run_to_completion([greedy(f"r{i}", p) for i, p in enumerate(prompts(6))])
    assert eng.stats().preempted_total > 0
    assert [tokens(out[f"r{i}"]) for i in range(6)] == alone
    assert all(out[f"r{i}"][-1].finish_reason == "length" for i in range(6))
    assert eng.stats().kv_blocks_used == 0


def test_a_request_that_can_never_fit_is_refused(model):
    eng = LLMEngine(model, max_num_seqs=2, num_blocks=4, block_size=4, max_model_len=64)
    with pytest.raises(ValueError, match="KV blocks"):
        eng.add_request(greedy("big", P[:10], n=10))
    with pytest.raises(ValueError, match="maximum length"):
        eng.add_request(greedy("long", P, n=60))
    with pytest.raises(ValueError, match="no tokens"):
        eng.add_request(greedy("empty", []))
    with pytest.raises(ValueError, match="max_tokens"):
        eng.add_request(greedy("zero", P[:3], n=0))
    with pytest.raises(ValueError, match="vocabulary"):
        eng.add_request(greedy("oov", [1, 10**6]))
    eng.add_request(greedy("ok", P[:3], n=4))
    with pytest.raises(ValueError, match="already in use"):
        eng.add_request(greedy("ok", P[:3], n=4))


def test_abort_frees_blocks_at_once(model):
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=64, block_size=4)
    for i, p in enumerate(prompts(3)):
        eng.add_request(greedy(f"r{i}", p, n=20))
    eng.step()
    eng.step()
    assert eng.stats().kv_blocks_used > 0
    ev = eng.abort("r1")
    assert ev.finish_reason == "abort" and ev.token_id is None
    assert eng.abort("r1") is None
    eng.abort("r0")
    eng.abort("r2")
    assert eng.stats().kv_blocks_used == 0 and not eng.has_unfinished()


def test_eos_and_stop_ids_end_a_request(model, alone):
    first = alone[0][0]
    eng = LLMEngine(model, num_blocks=64, block_size=4, eos_ids=[first])
    out = eng.run_to_completion([greedy("eos", prompts(1)[0]), greedy("ign", prompts(1)[0], ignore_eos=True),
                                 greedy("stop", prompts(1)[0], ignore_eos=True,
                                        stop_token_ids=frozenset({alone[0][2]}))])
    assert out["eos"] and tokens(out["eos"]) == [] and out["eos"][-1].finish_reason == "stop"
    assert tokens(out["ign"]) == alone[0]
    assert tokens(out["stop"]) == alone[0][:alone[0].index(alone[0][2])]
    assert out["stop"][-1].finish_reason == "stop"


def test_logprobs_come_from_the_model_logits(model):
    prompt = prompts(1)[0]
    eng = LLMEngine(model, num_blocks=64, block_size=4)
    out = eng.run_to_completion([greedy("lp", prompt, n=3, logprobs=4, prompt_logprobs=True)])["lp"]
    toks = tokens(out)
    full = model.logits(prompt + toks)
    for i, ev in enumerate(out):
        lp = log_softmax(full[len(prompt) - 1 + i])
        assert ev.logprob == pytest.approx(lp[ev.token_id], abs=1e-5)
        assert [t for t, _ in ev.top_logprobs] == list(np.argsort(-lp, kind="stable")[:4])
        assert ev.top_logprobs[0][0] == ev.token_id          # greedy: the most likely
    plp = out[0].prompt_logprobs
    assert plp[0] is None and len(plp) == len(prompt)
    for j in range(1, len(prompt)):
        assert plp[j] == pytest.approx(log_softmax(full[j - 1])[prompt[j]], abs=1e-5)
    assert all(ev.prompt_logprobs is None for ev in out[1:])


def test_seeded_sampling_is_the_same_batched_and_alone(model):
    def req(rid, seed):
        return EngineRequest(rid, prompts(1)[0], SamplingOptions(max_tokens=10, temperature=1.0, seed=seed,
                                                                 presence_penalty=0.5, frequency_penalty=0.3))

    alone = LLMEngine(model, num_blocks=64, block_size=4).run_to_completion([req("a", 7)])["a"]
    batch = LLMEngine(model, num_blocks=64, block_size=4).run_to_completion([req("x", 1), req("a", 7), req("y", 2)])
    assert tokens(batch["a"]) == tokens(alone)
    assert tokens(batch["x"]) != tokens(batch["a"])


class AllowOnly:
    def __init__(self, allowed, n_vocab, fail_at=None):
        self.mask = np.zeros(n_vocab, bool)
        self.mask[list(allowed)] = True
        self.seen, self.fail_at = [], fail_at

    def allowed(self):
        if self.fail_at is not None and len(self.seen) == self.fail_at:
            raise RuntimeError("grammar exploded")
        return self.mask

    def accept(self, t):
        assert self.mask[t]
        self.seen.append(t)

    def is_finished(self):
        return len(self.seen) == 5


def test_constraint_masks_every_draw_and_a_failing_one_fails_its_request_only(model, alone):
    v = model.hparams["vocab_size"]
    good = EngineRequest("c", prompts(1)[0], SamplingOptions(max_tokens=8, temperature=0), AllowOnly({4, 8, 15}, v))
    sampled = EngineRequest("s", prompts(1)[0], SamplingOptions(max_tokens=8, temperature=1.5, seed=3),
                            AllowOnly({16, 23, 42}, v))
    bad = EngineRequest("b", prompts(1)[0], SamplingOptions(max_tokens=8), AllowOnly({1}, v, fail_at=2))
    eng = LLMEngine(model, num_blocks=64, block_size=4)
    out = eng.run_to_completion([good, sampled, bad, greedy("plain", prompts(1)[0])])
    assert set(tokens(out["c"])) <= {4, 8, 15} and out["c"][-1].finish_reason == "stop"
    assert len(tokens(out["c"])) == 5
    lg = model.logits(prompts(1)[0])[-1]
    assert tokens(out["c"])[0] == max((4, 8, 15), key=lambda t: lg[t])     # greedy: the best allowed
    assert set(tokens(out["s"])) <= {16, 23, 42}
    assert out["b"][-1].finish_reason == "error" and "grammar exploded" in out["b"][-1].error
    assert tokens(out["b"]) == [1, 1]
    assert tokens(out["plain"]) == alone[0]
    assert eng.stats().kv_blocks_used == 0


def test_capture_graphs_is_a_no_op_on_the_cpu(tiny_model):
    """The server's engine asks for its decode graphs at start; a backend without them captures none
    and the engine serves as before."""
    from rocmforge.engine.llm_engine import LLMEngine
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions

    model = tiny_model("llama", "llama-gqa")
    eng = LLMEngine(model, max_num_seqs=4, num_blocks=40, block_size=4, capture_graphs=True)
    assert eng.runner.capture_graphs(4) == 0
    req = lambda: [EngineRequest("a", [3, 17, 42], SamplingOptions(max_tokens=4, temperature=0,  # noqa: E731
                                                                      ignore_eos=True))]
    got = [e.token_id for e in eng.run_to_completion(req())["a"]]
    want = [e.token_id for e in LLMEngine(model, max_num_seqs=4, num_blocks=40, block_size=4).run_to_completion(req())["a"]]
    assert got == want and len([t for t in got if t is not None]) == 4


def test_greedy_tokens_of_a_step_are_each_requests_draw():
    """The step's plain-greedy requests get their tokens from one argmax over their rows (read in
    place when they are consecutive rows of the model step's logits): each is what draw gives it
    alone, ties and NaNs included; other requests are left to draw."""
    from types import SimpleNamespace

    from rocmforge.engine.llm_engine import _greedy_tokens, _row_block
    from rocmforge.sampler import SamplingParams, draw

    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 50)).astype(np.float32)
    logits[1, [4, 9]] = logits[1].max() + 1.0          # a tie: the first maximum wins
    logits[2, 7] = np.nan

    def req(temperature=0.0, logprobs=None, penalty=1.0):
        return SimpleNamespace(constraint=None, sampling=SimpleNamespace(logprobs=logprobs),
                               params=SamplingParams(temperature=temperature, repetition_penalty=penalty))

    reqs = [req(), req(), req(), req(temperature=0.7), req(logprobs=2), req(penalty=1.3)]
    due = [(r, logits[i]) for i, r in enumerate(reqs)]
    got = _greedy_tokens(due)
    assert set(got) == {0, 1, 2}
    for i in got:
        assert got[i] == draw(logits[i], reqs[i].params, np.random.default_rng(1)).token
    assert got[1] == 4
    block = _row_block([logits[1], logits[2], logits[3]])
    assert block is not None and np.shares_memory(block, logits) and np.array_equal(block, logits[1:4], equal_nan=True)
    assert _row_block([logits[0], logits[2]]) is None           # not consecutive: stacked instead
    assert _greedy_tokens([due[0], due[2]]) == {0: int(np.argmax(logits[0])), 1: got[2]}
    assert _greedy_tokens(due[:1]) == {}                          # one request: its own draw
