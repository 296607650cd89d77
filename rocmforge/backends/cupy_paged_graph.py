"""Batched decode steps of the paged engine, replayed from captured CUDA/HIP graphs.

A decode step of R sequences launches the same few hundred kernels whatever their positions and
block tables are: in step mode (``backend._step`` is a :class:`BatchStepBuffers`) the embedding,
rope, paged KV append and attention read token ids, positions and tables from device buffers, so
one capture serves every later step of that shape. Shapes are bucketed as vLLM buckets its graphs:
R rounds up to 1, 2, 4 or a multiple of 8 (padding rows decode token 0 at position 0 into the pool's
scratch block; their logits are dropped), the table width to a power of two of at least 16 blocks
and of the pool's ``graph_width``: a server sets that to its longest request, so that a sequence
growing past 256 tokens does not stop on two eager steps and a capture (kernels read a table only up
to the position, so a wide one costs its upload alone).
The state of each shape lives on the pool (``store.graphs``):

1. the first step of a shape runs eagerly (compiles kernels, uploads what is not yet on the device);
2. the second runs once eagerly in step mode on a private stream and memory pool, which checks that
   nothing in it needs the host (MoE routing does) and fills the pool with the blocks the step
   needs; then the same step is captured (nothing runs) and replayed for this step's logits (the
   replay writes the same K/V rows again: idempotent);
3. later steps of the shape write the buffers and replay.

Models with recurrent state never come here (a replay after the eager pass would absorb a token
twice). Anything that cannot be captured falls back to eager steps, never an error (the rules of
cupy_graph.py, whose single-sequence graphs serve ``Session``).
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import numpy as np

from ..errors import RocmforgeError
from .cupy_graph import _PERMANENT, Captured, abandon_capture, capture_resources, eager_then_capture
from .paged import PagedKVView

log = logging.getLogger(__name__)


def bucket_rows(n: int) -> int:
    """Rows a captured step of n sequences has: 1, 2, 4, then multiples of 8."""
    if n <= 2:
        return n
    return 4 if n <= 4 else -(-n // 8) * 8


# the widest table a server's start-up captures for (see ModelStep.capture_graphs): 1024 blocks of 16
# are 16k tokens; a step past it captures a wider shape when it first comes
WIDTH_AT_START_MAX = 1024


def bucket_width(n: int, least: int = 16) -> int:
    """Table width (blocks per sequence) of a captured step whose longest table has n blocks: a power
    of two of at least 16 and ``least``."""
    w = 16
    while w < max(n, least):
        w *= 2
    return w


class BatchStepBuffers:
    """Device inputs of a captured batched step: token ids and positions (int64, R each) and the
    paged rows [pos (R) | tables (R, mb)] (int32) that kernels/paged_attention.hip's *_rows read."""

    def __init__(self, cp, R: int, mb: int):
        self.R, self.mb = R, mb
        self.ids = cp.zeros(2 * R, cp.int64)
        self.tok, self.pos = self.ids[:R], self.ids[R:]
        self.rows = cp.zeros(R + R * mb, cp.int32)
        self._host_ids = np.zeros(2 * R, np.int64)
        self._host_rows = np.zeros(R + R * mb, np.int32)
        self.host: str | bool = False      # why the step needed the host (False: it did not)

    def write(self, runs, scratch: int) -> None:
        R, mb = self.R, self.mb
        hi, hr = self._host_ids, self._host_rows
        hi[:] = 0
        hr[:R] = 0
        hr[R:] = scratch                   # padding rows and unused table entries: the scratch block
        for r, (ids, view, pos0) in enumerate(runs):
            hi[r], hi[R + r], hr[r] = int(ids[0]), pos0, pos0
            hr[R + r * mb: R + r * mb + len(view.table)] = view.table
        self.ids.set(hi)                   # on the current stream, ordered before the replay
        self.rows.set(hr)


class BatchGraph:
    """The captured decode step of one (rows, width) shape and everything it writes."""

    def __init__(self, executor, graph, step: BatchStepBuffers, out, pool, stream, padding):
        self.executor_ref = weakref.ref(executor)
        self.graph, self.step, self.out = graph, step, out      # out: static (R, vocab) logits
        self.pool, self.stream = pool, stream                   # keep the graph's buffers alive
        self.padding = padding                                  # views of the padding rows
        self.replays = 0


def _eligible(executor, runs) -> bool:
    if not runs or any(len(ids) != 1 for ids, _, _ in runs) or executor.state_shapes():
        return False
    views = [v for _, v, _ in runs]
    if not all(isinstance(v, PagedKVView) for v in views) or len({id(v.pool) for v in views}) != 1:
        return False
    if not hasattr(views[0].pool, "graphs"):
        return False
    vocab = executor.hparams.get("vocab_size")
    for ids, view, pos0 in runs:
        if vocab and not 0 <= int(ids[0]) < vocab:
            return False
        try:
            view.check(0, pos0 + 1)
        except RocmforgeError:
            return False                     # the eager path raises the proper error
    return True


def decode_batch(be, executor, runs: list[tuple[Any, PagedKVView, int]]):
    """Logits (len(runs), vocab) of one decode step of ``runs``, or None: run it eagerly. A replayed
    step's are the graph's own output rows on the device, the launch queued and not waited for (the
    caller's host work overlaps the step; the next replay overwrites them)."""
    if be._no_graph is not None and executor in be._no_graph:
        return None
    if not _eligible(executor, runs):
        return None
    store = runs[0][1].pool
    key = (bucket_rows(len(runs)), bucket_width(max(len(v.table) for _, v, _ in runs), getattr(store, "graph_width", 16)))
    st = store.graphs.get(key)
    if st is None:                           # first step of this shape: eager
        store.graphs[key] = "warm"
        return None
    if isinstance(st, BatchGraph):
        if st.executor_ref() is not executor:
            return None
        return _replay(be, st, runs, store.scratch)
    if st == "warm":
        return _capture(be, executor, runs, store, key)
    return None                              # off for this shape


def _replay(be, g: BatchGraph, runs, scratch: int):
    cp = be.cp
    stream = cp.cuda.get_current_stream()
    g.step.write(runs, scratch)
    g.graph.launch(stream=stream)
    g.replays += 1
    for _, view, pos0 in runs:
        for i in range(len(view.length)):
            view.length[i] = pos0 + 1
    return g.out[:len(runs)]


def _off(be, executor, store, key, why: str, permanent: bool = False) -> None:
    log.debug("batched decode graph off for %s: %s", "the model" if permanent else f"shape {key}", why)
    store.graphs[key] = why
    if permanent:
        if be._no_graph is None:
            be._no_graph = weakref.WeakSet()
        be._no_graph.add(executor)


def _capture(be, executor, runs, store, key):
    cp = be.cp
    R, mb = key
    try:
        stream, pool = capture_resources(cp)
    except Exception as exc:  # noqa: BLE001 - any reason means: eager
        _off(be, executor, store, key, f"no graph support ({type(exc).__name__}: {exc})", permanent=True)
        return None
    step = BatchStepBuffers(cp, R, mb)
    step.write(runs, store.scratch)
    padding = [store.view([store.scratch]) for _ in range(R - len(runs))]
    padded = list(runs) + [([0], view, 0) for view in padding]
    n = len(runs)
    be.synchronize()
    got = Captured()
    try:
        eager_then_capture(be, stream, pool, step, lambda: executor.forward_batch(padded, last_only=True),
                           lambda out, st: cp.asnumpy(out[:n], stream=st), got)
        if got.host:
            _off(be, executor, store, key, f"the step needs the host ({got.host})", permanent=got.host in _PERMANENT)
            return got.logits
        g = BatchGraph(executor, got.graph, step, got.out, pool, stream, padding)
        result = _replay(be, g, runs, store.scratch)    # this step's logits from the graph itself
    except Exception as exc:  # noqa: BLE001 - capture failures fall back to eager, never an error
        abandon_capture(be)
        _off(be, executor, store, key, f"capture failed ({type(exc).__name__}: {exc})")
        return got.logits                    # the eager step-mode logits, or None: run eagerly
    store.graphs[key] = g
    log.debug("batched decode step captured for %d rows, %d blocks per table", R, mb)
    return result
