"""The scheduler and engine loop driven by a fake model step: budgets, seats, chunking, failures."""

import numpy as np
import pytest

from rocmforge.engine.llm_engine import LLMEngine
from rocmforge.engine.protocol import EngineRequest, SamplingOptions

V = 32


class FakeStep:
    """Logits that make the next greedy token (last token + 1) % V; records every batch."""

    vocab_size = V

    def __init__(self, fail_for=()):
        self.batches, self.fail_for, self.released = [], set(fail_for), []

    def run(self, items, while_running=None):
        if while_running is not None:
            while_running()
        self.batches.append([(it.seq_id, len(it.token_ids), it.pos0) for it in items])
        if self.fail_for & {it.seq_id for it in items}:
            raise MemoryError("out of memory")
        out = []
        for it in items:
            lg = np.zeros(V, np.float32)
            lg[(it.token_ids[-1] + 1) % V] = 1.0
            out.append(lg)
        return out

    def copy_blocks(self, pairs):
        pass

    def release(self, seq_id):
        self.released.append(seq_id)


def req(rid, n_prompt, n=4):
    return EngineRequest(rid, [1] * n_prompt, SamplingOptions(max_tokens=n, temperature=0))


def engine(step, **kw):
    kw.setdefault("num_blocks", 64)
    return LLMEngine(None, model_step=step, max_model_len=256, block_size=4, **kw)


def test_a_long_prompt_is_chunked_and_never_stalls_running_decodes():
    step = FakeStep()
    eng = engine(step, max_num_batched_tokens=8, max_num_seqs=4)
    eng.add_request(req("short", 2, n=30))
    eng.step()                                   # short's prefill
    eng.add_request(req("long", 40))
    for _ in range(6):
        eng.step()
    for batch in step.batches[1:]:
        assert sum(n for _, n, _ in batch) <= 8
        assert ("short", 1) in [(s, n) for s, n, _ in batch]      # a decode every step
    chunks = [n for b in step.batches for s, n, _ in b if s == "long"]
    assert chunks[:5] == [7, 7, 7, 7, 7] and sum(chunks) == 40


def test_max_num_seqs_caps_the_running_set():
    step = FakeStep()
    eng = engine(step, max_num_seqs=2)
    for i in range(5):
        eng.add_request(req(f"r{i}", 3))
    while eng.has_unfinished():
        eng.step()
        assert eng.stats().running <= 2
    assert max(len(b) for b in step.batches) == 2


def test_outputs_follow_the_logits():
    eng = engine(FakeStep())
    out = eng.run_to_completion([EngineRequest("a", [5, 6], SamplingOptions(max_tokens=4, temperature=0))])
    assert [e.token_id for e in out["a"]] == [7, 8, 9, 10]


def test_the_newest_request_is_preempted_and_finishes_later():
    step = FakeStep()
    eng = engine(step, num_blocks=6)                   # 24 positions
    eng.run_to_completion([req("old", 8, n=8), req("new", 8, n=8)])
    assert eng.stats().preempted_total >= 1
    seen = [s for b in step.batches for s, _, _ in b]
    assert seen[-1] == "new"
    assert eng.stats().kv_blocks_used == 0


def test_a_failing_sequence_fails_alone():
    step = FakeStep(fail_for={"bad"})
    eng = engine(step)
    out = eng.run_to_completion([req("good", 3), req("bad", 3), req("fine", 5)])
    assert out["bad"][-1].finish_reason == "error" and "MemoryError" in out["bad"][-1].error
    assert [e.finish_reason for e in out["good"]][-1] == "length" and len(out["good"]) == 4
    assert len(out["fine"]) == 4
    assert eng.stats().kv_blocks_used == 0 and "bad" in step.released


def test_a_bad_sampling_option_is_refused_up_front():
    eng = engine(FakeStep())
    with pytest.raises(ValueError, match="temperature"):
        eng.add_request(EngineRequest("t", [1], SamplingOptions(max_tokens=2, temperature=-1)))
    with pytest.raises(ValueError, match="presence_penalty"):
        eng.add_request(EngineRequest("p", [1], SamplingOptions(max_tokens=2, presence_penalty=5)))
    assert not eng.has_unfinished()
