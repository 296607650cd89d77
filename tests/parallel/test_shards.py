"""Cutting tensors for tensor parallelism: whole quantised blocks, straight from the bytes."""

import numpy as np
import pytest

from rocmforge.loaders.base import RawTensor
from rocmforge.parallel.rank_backend import RankBackend
from rocmforge.parallel.rules import local_kv_heads
from rocmforge.parallel.shards import ShardError, even, split, take
from rocmforge.quant import quantize


def _raw(qtype: str, shape, seed=0) -> tuple[RawTensor, np.ndarray]:
    a = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if qtype == "F32":
        return RawTensor("w", "F32", shape, a), a
    if qtype == "F16":
        return RawTensor("w", "F16", shape, a.astype(np.float16)), a.astype(np.float16).astype(np.float32)
    data = quantize(a, qtype).reshape(-1)
    raw = RawTensor("w", qtype, shape, data)
    return raw, raw.dequantize()


@pytest.mark.parametrize("qtype", ["F32", "F16", "Q8_0", "Q4_0", "Q4_K"])
def test_rows_and_columns_cut_exactly(qtype):
    raw, full = _raw(qtype, (12, 512))
    rows = split(0, even(12, 2))
    cols = split(1, even(512, 2), "row")
    for r in range(2):
        part = take(raw, rows, r)
        assert part.qtype == qtype and part.shape == (6, 512)
        np.testing.assert_array_equal(part.dequantize(), full[6 * r:6 * (r + 1)])
        part = take(raw, cols, r)
        assert part.shape == (12, 256)
        np.testing.assert_array_equal(part.dequantize(), full[:, 256 * r:256 * (r + 1)])


def test_several_ranges_and_experts():
    raw, full = _raw("Q8_0", (4, 6, 64))        # (experts, rows, cols)
    fused = split(1, [[(0, 1), (3, 4)], [(1, 3), (4, 6)]])
    np.testing.assert_array_equal(take(raw, fused, 1).dequantize(), full[:, [1, 2, 4, 5]])
    experts = split(0, even(4, 2), "experts")
    np.testing.assert_array_equal(take(raw, experts, 1).dequantize(), full[2:])
    assert take(raw, experts, 1).tp_shard.role == "experts"


def test_cut_inside_a_block_is_refused():
    raw, _ = _raw("Q4_0", (8, 96))
    with pytest.raises(ShardError, match=r"w \(Q4_0, shape \(8, 96\)\).*columns 0:48.*32-element"):
        take(raw, split(1, even(96, 2), "row"), 0)
    with pytest.raises(ShardError, match="cannot be split evenly into 4"):
        even(6, 4)


def test_local_kv_heads():
    assert [local_kv_heads(h, n) for h, n in ((8, 4), (2, 4), (1, 8), (4, 4))] == [2, 1, 1, 1]
    with pytest.raises(ShardError, match="3 KV heads split over 2 ranks"):
        local_kv_heads(3, 2)


class _Comm:
    rank, size = 1, 2


def test_expert_slots_packed_distinct():
    """A rank's slots hold each token's own experts (renumbered) and distinct zero-weight fillers: a backend
    that scatters an expert's rows at once (NumPy) would drop a duplicate."""
    be = RankBackend(None, _Comm())
    down = object()
    be._roles[id(down)] = (split(0, even(8, 2), "experts"), down)      # rank 1: experts 4..7
    ids = np.array([[4, 0, 7], [1, 2, 3], [5, 6, 0], [7, 1, 2]])
    w = np.array([[.5, .3, .2], [.4, .4, .2], [.6, .3, .1], [.7, .2, .1]], np.float32)
    weights, local, _ = be._local_experts(down, w, ids)
    assert local.shape == (4, 2)
    for t in range(4):
        assert len(set(local[t])) == 2 and local[t].max() < 4
        got = {int(e) + 4: float(x) for e, x in zip(local[t], weights[t]) if x}
        want = {int(e): float(x) for e, x in zip(ids[t], w[t]) if 4 <= e < 8}
        assert got == want
    assert be._local_experts(down, w[1:2], ids[1:2])[0] is None      # no token chose this rank's experts
