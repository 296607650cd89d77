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


def capture_resources(cp):
    """(stream, pool) for a capture: a private non-blocking stream and memory pool. Raises where this
    CuPy / runtime has no stream capture."""
    stream = cp.cuda.Stream(non_blocking=True)
    if not hasattr(stream, "begin_capture"):
        raise RuntimeError("this CuPy has no stream capture")
    return stream, cp.cuda.MemoryPool()


class Captured:
    """What :func:`eager_then_capture` got: the eager pass's host ``logits`` (set as soon as it ran),
    why the step needed the host (``host``: then nothing was captured), the ``graph`` and its static
    output ``out``."""

    def __init__(self):
        self.logits, self.host, self.graph, self.out = None, False, None, None


def eager_then_capture(be, stream, pool, step, forward, to_host, got: Captured) -> Captured:
    """Run ``forward()`` (a decode step in step mode: ``be._step = step``) once eagerly on ``stream``
    with ``pool``'s memory, which checks for host needs and fills the pool with the step's blocks,
    then capture the same step (nothing runs). Fills ``got`` as it goes, so a caller that catches an
    exception still has the eager logits; raises when the capture itself fails."""
    cp = be.cp
    with cp.cuda.using_allocator(pool.malloc), stream:
        be._step = step
        try:
            out = forward()
            stream.synchronize()
            got.logits = to_host(out, stream)
            if step.host:
                got.host = str(step.host)
                return got
            del out
            mode = getattr(cp.cuda.runtime, "streamCaptureModeRelaxed", None)
            if mode is None:
                stream.begin_capture()
            else:
                stream.begin_capture(mode)
            try:
                got.out = forward()
            finally:
                got.graph = stream.end_capture()
        finally:
            be._step = None
    if step.host:                               # cannot happen after a clean eager pass, but be safe
        raise RuntimeError(f"the captured step needed the host ({step.host})")
    return got


def abandon_capture(be) -> None:
    """After a failed capture: leave step mode and let queued work finish (a failure here too is moot:
    the caller falls back to eager steps)."""
    be._step = None
    try:
        be.synchronize()
    except Exception:  # noqa: BLE001
        pass


def _capture(be, executor, ids, cache, tok: int, pos0: int):
    cp = be.cp
    try:
        stream, pool = capture_resources(cp)
    except Exception as exc:  # noqa: BLE001 - any reason means: eager
        _disable(be, executor, cache, f"no graph support ({type(exc).__name__}: {exc})", permanent=True)
        return None
    step = StepBuffers(cp)
    step.write(tok, pos0)
    be.synchronize()
    got = Captured()
    try:
        eager_then_capture(be, stream, pool, step, lambda: executor.forward(ids, cache, pos0),
                           lambda out, st: cp.asnumpy(out, stream=st), got)
        if got.host:
            _disable(be, executor, cache, f"the step needs the host ({got.host})", pool,
                     permanent=got.host in _PERMANENT)
            return got.logits
        g = DecodeGraph(executor, got.graph, step, got.out, pool, stream)
        # this step's logits from the graph itself (rewrites the same K/V row: idempotent)
        result = _replay(be, g, cache, tok, pos0)
    except Exception as exc:  # noqa: BLE001 - capture failures fall back to eager, never an error
        abandon_capture(be)
        _disable(be, executor, cache, f"capture failed ({type(exc).__name__}: {exc})", pool)
        return got.logits                            # eager step-mode logits, or None: run eager
    cache.graph = g
    log.debug("decode step captured at position %d", pos0)
    return result
