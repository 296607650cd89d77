"""The opt-in per-rank decode graphs, off the GPU: the ranks must replay together or not at all, and the
plan they need (a replicated embedding) is the same model."""

import numpy as np
import pytest

from rocmforge import load_model
from rocmforge.parallel import build_plan, shard_model
from rocmforge.parallel.comm import CommError
from rocmforge.testing.conformance import NMSE_EXACT, nmse


def test_replicated_embedding_plan_equals(tiny_path):
    path = tiny_path("llama", "llama-gqa", "F32")
    ref = load_model(path, tokenizer=False)
    plan = build_plan(ref.executor, ref.tensors, 2, embedding="replicated")
    assert "token_embd" not in plan.tensors and plan.tensors["output"].role == "vocab"
    tp = load_model(path, tokenizer=False, tensor_parallel=2)
    tp.executor.plan.tensors.pop("token_embd")          # as the graph path plans it, before any weight is read
    ids = [5, 9, 200, 31, 7]
    assert nmse(tp.logits(ids), ref.logits(ids)) <= NMSE_EXACT


def test_graphs_stay_off_on_the_cpu(tiny_path):
    tp = shard_model(load_model(tiny_path("llama", "llama-gqa", "F32"), tokenizer=False), 2, graphs=True)
    assert tp.backend.graphs is False and tp.executor.plan.tensors["token_embd"].role == "vocab"


def test_ranks_replay_together_or_not_at_all(tiny_path):
    tp = load_model(tiny_path("llama", "llama-gqa", "F32"), tokenizer=False, tensor_parallel=2)
    tp.backend.graphs = True
    ref = tp.logits([1, 2, 3])[-1]
    answers = {0: None, 1: None}
    for b in tp.executor.backends:
        b.inner.decode_step = lambda executor, ids, cache, pos0, r=b.rank: answers[r]
    s = tp.new_session(8)
    s.feed([1, 2])
    assert nmse(s.feed([3]), ref) <= NMSE_EXACT                     # all None: the step ran eagerly
    replayed = np.full((1, ref.size), 7.0, np.float32)
    answers.update({0: replayed, 1: replayed})
    assert (s.feed([4]) == 7.0).all()                               # all replayed: rank 0's logits
    answers[1] = None
    with pytest.raises(CommError, match=r"ranks \[1\] did not replay"):
        s.feed([5])
    with pytest.raises(CommError, match="unusable after an earlier failure"):
        tp.logits([1])
