"""What tensor parallelism does not do yet, it refuses by name at load time (never runs wrong)."""

import numpy as np
import pytest

from rocmforge import load_model
from rocmforge.errors import RocmforgeError
from rocmforge.parallel import ShardError


def test_quantised_cut_inside_blocks(tiny_path):
    # llama-gqa's ffn_down is (64, 96) Q4_0: 48 columns per rank would cut its 32-element blocks
    with pytest.raises(ShardError, match=r"op 'swiglu', layer 0\).*blk\.0\.ffn_down \(Q4_0.*32-element Q4_0 blocks"):
        load_model(tiny_path("llama", "llama-gqa", "Q4_0"), tokenizer=False, tensor_parallel=2)


def test_heads_that_do_not_split(tiny_path):
    with pytest.raises(ShardError, match=r"tensor_parallel=3: .*op 'attention', layer 0\): 4 query heads do not "
                                         r"split over 3 ranks"):
        load_model(tiny_path("llama", "llama-gqa", "F32"), tokenizer=False, tensor_parallel=3)


@pytest.mark.parametrize("arch,name,op", [("mamba", "mamba-s6", "mamba"), ("deepseek2", "deepseek2-lite", "mla"),
                                          ("bloom", "bloom-alibi", "attention")])
def test_ops_that_cannot_shard_name_themselves(tiny_path, arch, name, op):
    with pytest.raises(ShardError, match=rf"op '{op}'.*(cannot be sharded yet|ALiBi)"):
        load_model(tiny_path(arch, name), tokenizer=False, tensor_parallel=2)


def test_bad_rank_counts():
    with pytest.raises(RocmforgeError, match="positive integer"):
        from rocmforge.parallel import shard_model

        shard_model(object(), 0)


def test_engine_and_fork_refuse(tiny_path):
    tp = load_model(tiny_path("llama", "llama-gqa", "F32"), tokenizer=False, tensor_parallel=2)
    with pytest.raises(RocmforgeError, match="does not run tensor-parallel models yet"):
        tp.executor.new_paged_cache(8, 16)
    s = tp.new_session(8)
    s.feed([1, 2])
    with pytest.raises(RocmforgeError, match="fork of a tensor-parallel model"):
        s.fork()


def test_a_rank_that_fails_raises_and_the_model_recovers(tiny_path):
    path = tiny_path("llama", "llama-gqa", "F32")
    tp = load_model(path, tokenizer=False, tensor_parallel=2, device="numpy")   # its rms_norm is the one patched
    want = tp.logits([1, 2, 3])
    rank1 = tp.executor.backends[1]
    real = rank1.inner.rms_norm
    calls = {"n": 0}

    def flaky(*args):
        calls["n"] += 1
        if calls["n"] == 3:                  # in the second layer, between collectives
            raise FloatingPointError("rank 1 fails")
        return real(*args)

    rank1.inner.rms_norm = flaky
    with pytest.raises(FloatingPointError, match="rank 1 fails"):
        tp.logits([1, 2, 3])
    rank1.inner.rms_norm = real
    np.testing.assert_array_equal(tp.logits([1, 2, 3]), want)
