"""Single-token decode of one sequence replayed from a captured CUDA/HIP graph.

A decode step launches a few hundred small kernels; from Python each costs
~25 µs to launch, replayed from a graph ~1 µs. The step's kernels take the
token id and position from a tiny device buffer (step mode of CupyBackend:
embedding, rope, KV append and decode attention), so one capture serves every
later step of the sequence; before each replay the host writes the new token
id and position into that buffer, and the logits land in the same static
array every time.

Per sequence (the graph state lives on its GpuKVCache, ``cache.graph``):

1. its first single-token step runs eagerly as always (compiles the decode
   kernels, uploads any weight not used yet);
2. the second runs once eagerly in step mode on a private stream and memory
   pool, which both checks that nothing in the step needs the host (MoE
   routing does: ops mark ``backend._step.host``) and leaves the pool with
   the blocks the step needs; then the same step is captured (nothing runs),
   and the graph is launched for this step's logits;
3. later steps: write (token, position), replay, copy the logits back.

Every array allocated during capture comes from the graph's own memory
pool, which lives as long as the graph: no other allocation can reuse that
memory while the graph may still write it.

Anything unusual (graphs missing from this CuPy / HIP build, capture errors,
an op that syncs with the host) logs at debug level and falls back to the
eager path, never an error.
"""

from __future__ import annotations

import logging
import weakref
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# host needs that are part of the model (not a one-off upload): its steps are never captured
_PERMANENT = ("moe_route", "moe_ffn", "to_numpy", "upload", "argmax", "kv_read")


class StepBuffers:
    """Device int64 [token id, position] of the step being captured / replayed."""

    def __init__(self, cp):
        self.buf = cp.zeros(2, cp.int64)
        self.tok = self.buf[0:1]
        self.pos = self.buf[1:2]
        self.host_vals = np.zeros(2, np.int64)
        self.host: str | bool = False      # why the step needed the host (False: it did not)

    def write(self, tok: int, pos: int) -> None:
        self.host_vals[0], self.host_vals[1] = tok, pos
        self.buf.set(self.host_vals)        # on the current stream, ordered before the replay


class DecodeGraph:
    """The captured decode step of one sequence and everything it writes."""

    def __init__(self, executor, graph, step: StepBuffers, out, pool, stream):
        self.executor_ref = weakref.ref(executor)
        self.graph = graph
        self.step = step
        self.out = out          # static (1, vocab) logits the graph writes
        self.pool = pool        # keeps every buffer of the graph alive and out of other hands
        self.stream = stream
        self.replays = 0


class _Off:
    """Graphs are off for this sequence; keeps the private pool alive while its arrays may be."""

    def __init__(self, why: str, pool: Any = None):
        self.why = why
        self.pool = pool


def _disable(be, executor, cache, why: str, pool: Any = None, permanent: bool = False) -> None:
    log.debug("decode graph off for this %s: %s", "model" if permanent else "sequence", why)
    cache.graph = _Off(why, pool)
    if permanent:
        if be._no_graph is None:
            be._no_graph = weakref.WeakSet()
        be._no_graph.add(executor)


def decode_step(be, executor, ids, cache, pos0: int):
    """Host logits (1, vocab) of token ids[0] at position pos0, or None: run the step eagerly."""
    if len(ids) != 1 or not hasattr(cache, "graph"):
        return None
    if be._no_graph is not None and executor in be._no_graph:
        return None
    tok = int(ids[0])
    vocab = executor.hparams.get("vocab_size")
    if (vocab and not 0 <= tok < vocab) or pos0 + 1 > cache.max_tokens:
        return None                                  # the eager path raises the proper error
    st = cache.graph
    if st is None:                                   # first decode step of the sequence: eager
        cache.graph = "warm"
        return None
    if isinstance(st, DecodeGraph):
        if st.executor_ref() is not executor:
            return None
        return _replay(be, st, cache, tok, pos0)
    if st == "warm":
        return _capture(be, executor, ids, cache, tok, pos0)
    return None                                      # _Off


def _replay(be, g: DecodeGraph, cache, tok: int, pos0: int):
    cp = be.cp
    stream = cp.cuda.get_current_stream()
    g.step.write(tok, pos0)
    g.graph.launch(stream=stream)
    g.replays += 1
    for i in range(len(cache.length)):
        cache.length[i] = pos0 + 1
    return cp.asnumpy(g.out, stream=stream)


def _capture(be, executor, ids, cache, tok: int, pos0: int):
    cp = be.cp
    try:
        stream = cp.cuda.Stream(non_blocking=True)
        if not hasattr(stream, "begin_capture"):
            raise RuntimeError("this CuPy has no stream capture")
        pool = cp.cuda.MemoryPool()
    except Exception as exc:  # noqa: BLE001 - any reason means: eager
        _disable(be, executor, cache, f"no graph support ({type(exc).__name__}: {exc})", permanent=True)
        return None
    step = StepBuffers(cp)
    step.write(tok, pos0)
    be.synchronize()
    logits = None
    try:
        with cp.cuda.using_allocator(pool.malloc), stream:
            be._step = step
            try:
                # 1. eager in step mode: checks for host needs, fills the pool with the step's blocks
                out = executor.forward(ids, cache, pos0)
                stream.synchronize()
                if step.host:
                    logits = cp.asnumpy(out, stream=stream)
                    why = str(step.host)
                    _disable(be, executor, cache, f"the step needs the host ({why})", pool,
                             permanent=why in _PERMANENT)
                    return logits
                logits = cp.asnumpy(out, stream=stream)
                del out
                # 2. capture the same step (nothing runs)
                mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
                if mode is None:
                    stream.begin_capture()
                else:
                    stream.begin_capture(mode)
                try:
                    out = executor.forward(ids, cache, pos0)
                finally:
                    graph = stream.end_capture()
            finally:
                be._step = None
        if step.host:                               # cannot happen after a clean eager pass, but be safe
            raise RuntimeError(f"the captured step needed the host ({step.host})")
        g = DecodeGraph(executor, graph, step, out, pool, stream)
        # 3. this step's logits from the graph itself (rewrites the same K/V row: idempotent)
        got = _replay(be, g, cache, tok, pos0)
    except Exception as exc:  # noqa: BLE001 - capture failures fall back to eager, never an error
        be._step = None
        try:
            be.synchronize()
        except Exception:  # noqa: BLE001
            pass
        _disable(be, executor, cache, f"capture failed ({type(exc).__name__}: {exc})", pool)
        return logits                                # eager step-mode logits, or None: run eager
    cache.graph = g
    log.debug("decode step captured at position %d", pos0)
    return got
