"""The decode-graph bookkeeping (rocmforge/backends/cupy_graph.py, cupy_paged_graph.py) on the CPU, over
a stand-in for CuPy's streams, pools and graphs: which steps run eagerly, which capture and which
replay; what a step that needs the host or a failing capture leaves behind. The kernels and the
graphs themselves are tested on the GPU (tests/gpu/test_graph.py, tests/engine/test_paged_batch_gpu.py)."""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

from rocmforge.backends import cupy_graph, cupy_paged_graph
from rocmforge.backends.paged import PagedKVView


class FakeArray(np.ndarray):
    def set(self, host):
        self[...] = host


class FakeGraph:
    def __init__(self, log):
        self.log, self.launches = log, 0

    def launch(self, stream=None):
        self.launches += 1
        self.log.append("launch")


class FakeStream:
    def __init__(self, log, fail_capture=False):
        self.log, self.fail_capture, self.capturing = log, fail_capture, False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def synchronize(self):
        pass

    def begin_capture(self, mode=None):
        self.capturing = True
        self.log.append("begin_capture")

    def end_capture(self):
        self.capturing = False
        self.log.append("end_capture")
        if self.fail_capture:
            raise RuntimeError("operation not permitted when stream is capturing")
        return FakeGraph(self.log)


def fake_cp(log, fail_capture=False):
    streams = []

    def stream(non_blocking=False):
        streams.append(FakeStream(log, fail_capture))
        return streams[-1]

    cuda = types.SimpleNamespace(
        Stream=stream, MemoryPool=lambda: types.SimpleNamespace(malloc=None),
        using_allocator=lambda malloc: contextlib.nullcontext(), runtime=types.SimpleNamespace(),
        get_current_stream=lambda: None)
    return types.SimpleNamespace(
        cuda=cuda, zeros=lambda n, dtype: np.zeros(n, dtype).view(FakeArray), int64=np.int64, int32=np.int32,
        asnumpy=lambda a, stream=None: np.array(a)), streams


class FakeBackend:
    def __init__(self, log, fail_capture=False):
        self.cp, self.streams = fake_cp(log, fail_capture)
        self._step = None
        self._no_graph = None
        self.graphs = True

    def synchronize(self):
        pass


class FakeExecutor:
    """forward / forward_batch: logits that name the call; a step may mark itself as needing the host."""

    hparams = {"vocab_size": 100}

    def __init__(self, be, log, host_need=None):
        self.be, self.log, self.host_need, self.calls = be, log, host_need, []

    def _run(self, n):
        mode = "step" if self.be._step is not None else "eager"
        capturing = any(s.capturing for s in self.be.streams)
        self.calls.append("capture" if capturing else mode)
        self.log.append(self.calls[-1])
        if self.host_need and self.be._step is not None:
            self.be._step.host = self.host_need
        return np.full((n, 4), float(len(self.calls)), np.float32)

    def forward(self, ids, cache, pos0):
        return self._run(1)

    def forward_batch(self, runs, last_only=False):
        return self._run(len(runs))

    def state_shapes(self):
        return {}


class FakeCache:
    def __init__(self):
        self.graph, self.length, self.max_tokens = None, [0, 0], 64


# ---- one sequence (Session): cupy_graph.decode_step

def test_single_sequence_warm_capture_replay():
    log = []
    be = FakeBackend(log)
    ex = FakeExecutor(be, log)
    cache = FakeCache()
    assert cupy_graph.decode_step(be, ex, [5], cache, 3) is None          # 1st: eager (the caller runs it)
    assert cache.graph == "warm" and ex.calls == []
    got = cupy_graph.decode_step(be, ex, [6], cache, 4)                     # 2nd: eager in step mode, capture
    assert ex.calls == ["step", "capture"]
    assert log == ["step", "begin_capture", "capture", "end_capture", "launch"]
    assert isinstance(cache.graph, cupy_graph.DecodeGraph) and got.shape == (1, 4)
    assert cache.length == [5, 5] and be._step is None
    cupy_graph.decode_step(be, ex, [7], cache, 5)                           # 3rd: replay only
    assert ex.calls == ["step", "capture"] and cache.graph.replays == 2 and cache.length == [6, 6]
    np.testing.assert_array_equal(cache.graph.step.host_vals, [7, 5])       # the buffers the graph reads


def test_single_sequence_host_need_runs_eagerly_from_then_on():
    log = []
    be = FakeBackend(log)
    ex = FakeExecutor(be, log, host_need="moe_route")
    cache = FakeCache()
    cupy_graph.decode_step(be, ex, [5], cache, 3)
    got = cupy_graph.decode_step(be, ex, [6], cache, 4)
    assert ex.calls == ["step"] and "begin_capture" not in log              # no capture of such a step
    assert got is not None and got[0, 0] == 1.0                             # the eager step-mode logits
    assert isinstance(cache.graph, cupy_graph._Off) and ex in be._no_graph   # moe_route: the whole model
    assert cupy_graph.decode_step(be, ex, [7], FakeCache(), 0) is None      # a new sequence: straight to eager


def test_single_sequence_failed_capture_keeps_the_eager_logits():
    log = []
    be = FakeBackend(log, fail_capture=True)
    ex = FakeExecutor(be, log)
    cache = FakeCache()
    cupy_graph.decode_step(be, ex, [5], cache, 3)
    got = cupy_graph.decode_step(be, ex, [6], cache, 4)
    assert got is not None and got[0, 0] == 1.0 and be._step is None
    assert isinstance(cache.graph, cupy_graph._Off) and "capture failed" in cache.graph.why
    assert cupy_graph.decode_step(be, ex, [7], cache, 5) is None            # eager from then on


# ---- many sequences (the serving engine): cupy_paged_graph.decode_batch

class FakeStore:
    n_layer, block_size, num_blocks = 2, 4, 10
    scratch = 10

    def __init__(self):
        self.graphs = {}

    def view(self, table=(), max_tokens=None):
        return PagedKVView(self, table, max_tokens)


def _runs(store, n, pos=5):
    views = [store.view([i, i + 1]) for i in range(n)]
    return [([10 + i], v, pos) for i, v in enumerate(views)]


@pytest.mark.parametrize("n,rows", [(1, 1), (3, 4), (5, 8), (11, 16)])
def test_batch_warm_capture_replay_with_padding(n, rows):
    log = []
    be = FakeBackend(log)
    ex = FakeExecutor(be, log)
    store = FakeStore()
    runs = _runs(store, n)
    assert cupy_paged_graph.decode_batch(be, ex, runs) is None and store.graphs == {(rows, 16): "warm"}
    got = cupy_paged_graph.decode_batch(be, ex, runs)
    assert log == ["step", "begin_capture", "capture", "end_capture", "launch"]
    g = store.graphs[(rows, 16)]
    assert isinstance(g, cupy_paged_graph.BatchGraph) and got.shape == (n, 4) and len(g.padding) == rows - n
    assert all(v.table.tolist() == [store.scratch] for v in g.padding)
    later = _runs(store, n, pos=6)
    cupy_paged_graph.decode_batch(be, ex, later)
    assert ex.calls == ["step", "capture"] and g.replays == 2
    assert all(v.length == [7, 7] for _, v, _ in later)                    # every layer holds position 6 now
    # the step buffers hold this step's tokens and positions, padding rows token 0 at position 0 in scratch
    R, mb = rows, 16
    ids, pos = g.step._host_ids[:R], g.step._host_ids[R:]
    assert ids[:n].tolist() == [10 + i for i in range(n)] and (ids[n:] == 0).all()
    assert pos[:n].tolist() == [6] * n and (pos[n:] == 0).all()
    tables = g.step._host_rows[R:].reshape(R, mb)
    assert tables[0, :2].tolist() == [0, 1] and (tables[0, 2:] == store.scratch).all()
    assert (tables[n:] == store.scratch).all()


def test_batch_host_need_and_failed_capture():
    log = []
    be = FakeBackend(log)
    ex = FakeExecutor(be, log, host_need="kv_read")
    store = FakeStore()
    runs = _runs(store, 2)
    cupy_paged_graph.decode_batch(be, ex, runs)
    got = cupy_paged_graph.decode_batch(be, ex, runs)
    assert got is not None and got.shape == (2, 4) and "begin_capture" not in log
    assert ex in be._no_graph                                                # kv_read: the whole model
    assert cupy_paged_graph.decode_batch(be, ex, _runs(store, 5)) is None

    log2 = []
    be2 = FakeBackend(log2, fail_capture=True)
    ex2 = FakeExecutor(be2, log2)
    store2 = FakeStore()
    cupy_paged_graph.decode_batch(be2, ex2, _runs(store2, 2))
    got2 = cupy_paged_graph.decode_batch(be2, ex2, _runs(store2, 2))
    assert got2 is not None and got2[0, 0] == 1.0 and be2._step is None      # the eager step-mode logits
    assert "capture failed" in store2.graphs[(2, 16)]
    assert cupy_paged_graph.decode_batch(be2, ex2, _runs(store2, 2)) is None  # that shape stays eager


def test_batch_not_eligible():
    log = []
    be = FakeBackend(log)
    ex = FakeExecutor(be, log)
    store = FakeStore()
    two_tokens = [([1, 2], store.view([0, 1]), 0)]
    assert cupy_paged_graph.decode_batch(be, ex, two_tokens) is None and store.graphs == {}
    past_table = [([1], store.view([0]), 4)]                                  # position 4 needs a 2nd block
    assert cupy_paged_graph.decode_batch(be, ex, past_table) is None and store.graphs == {}
    out_of_vocab = [([100], store.view([0]), 0)]
    assert cupy_paged_graph.decode_batch(be, ex, out_of_vocab) is None and store.graphs == {}


def test_buckets():
    assert [cupy_paged_graph.bucket_rows(n) for n in (1, 2, 3, 4, 5, 8, 9, 64, 65)] == [1, 2, 4, 4, 8, 8, 16, 64, 72]
    assert [cupy_paged_graph.bucket_width(n) for n in (1, 16, 17, 100)] == [16, 16, 32, 128]
    # a server's start-up width: every table up to it shares one shape per row count
    assert [cupy_paged_graph.bucket_width(n, 256) for n in (1, 100, 256, 257)] == [256, 256, 256, 512]
    assert cupy_paged_graph.bucket_width(3, 40) == 64
