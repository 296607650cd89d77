"""The model step room: one batched forward over the paged KV store, for the batch it is handed.

It knows nothing of request states or scheduling: it gets (sequence id, token ids, first position,
block table) per sequence and returns each sequence's logits, the last row or, for the sequences
that ask, every row. Each sequence's cache is a view of the one pool store
(rocmforge.backends.paged), so Executor.forward_batch runs many sequences unchanged.

A recurrent model (a recipe with a ``state:`` section: Mamba, hybrids) also keeps a fixed-size state
per sequence, which the KV blocks cannot hold: the step owns one per sequence, hung on its view as
``view.state`` (what ``ctx.state(seg, name)`` reads), made at the sequence's first step and dropped
by ``release`` (finished, aborted, preempted). Unlike KV, which a step may rewrite, a state absorbs
each token exactly once, so the step keeps the tokens it absorbed: a sequence starting over at
position 0 (a preempted request recomputed) gets a zeroed state, and one whose state a failed
forward may have half-updated is replayed from position 0 on its next step. A state cannot start
past position 0 (it is not stored per block), so prefix caching is off for such models.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from ..errors import RocmforgeError

log = logging.getLogger(__name__)


@dataclass
class StepItem:
    seq_id: Hashable
    token_ids: list[int]
    pos0: int                  # position of token_ids[0]; positions before it are in the KV already
    block_table: list[int]
    all_rows: bool = False     # every row's logits (prompt logprobs), not just the last
    greedy: bool = False       # only the last row's argmax is wanted (see ModelStep.run)


def kv_bytes_per_block(model, block_size: int) -> int:
    """Bytes one block takes across the layers that hold K/V, at their shapes (a hybrid's attention
    layers only; 0: a model that keeps no KV, e.g. Mamba)."""
    ex = model.executor
    per_elem = 1 if model.kv_cache_dtype.startswith("fp8") else model.backend.kv_bytes   # FP8: 1 byte
    if ex.cache_per_layer():
        per_token = sum(h * (dk + dv) for h, dk, dv in ex.cache_layers().values())
    else:
        dims = ex.cache_dims()
        per_token = dims["n_head_kv"] * (dims["head_dim"] + dims["head_dim_v"]) * int(model.hparams["n_layer"])
    return per_token * per_elem * block_size


def blocks_for_memory(model, kv_cache_gb: float, block_size: int) -> int | None:
    """Blocks that ``kv_cache_gb`` GiB hold; None when blocks take no memory (the caller picks a count)."""
    per_block = kv_bytes_per_block(model, block_size)
    if per_block == 0:
        return None
    n = int(kv_cache_gb * (1 << 30)) // per_block
    if n < 1:
        raise ValueError(f"--kv-cache-gb {kv_cache_gb} holds no block of {block_size} tokens "
                         f"({kv_bytes_per_block(model, block_size)} bytes each)")
    return n


class ModelStep:
    def __init__(self, model, num_blocks: int, block_size: int):
        self.model = model
        self.executor = model.executor
        self.backend = model.backend
        self.store = self.executor.new_paged_cache(num_blocks, block_size)
        self._views: dict[Hashable, object] = {}
        self.has_state = bool(self.executor.state_shapes())
        self._absorbed: dict[Hashable, list[int]] = {}    # recurrent models: the tokens each state holds
        self._stale: set[Hashable] = set()                # states a failed forward may have half-updated

    def capture_graphs(self, max_num_seqs: int, max_model_len: int | None = None) -> int:
        """Capture the batched decode graphs of every batch bucket up to ``max_num_seqs`` now, as vLLM
        does at start-up, so that no request waits for a capture (each costs about three eager steps).
        Their tables are wide enough for ``max_model_len`` tokens (up to the cap of
        cupy_paged_graph.WIDTH_AT_START_MAX blocks), so no request's growth needs another shape either.
        The dummy steps decode token 0 at position 0 into the pool's scratch block. Returns how many
        shapes were captured (0 where the backend keeps no such graphs); never raises."""
        scratch = getattr(self.store, "scratch", None)
        if scratch is None or self.has_state or not getattr(self.backend, "graphs", False):
            return 0
        from ..backends.cupy_paged_graph import WIDTH_AT_START_MAX, BatchGraph, bucket_rows, bucket_width

        if max_model_len is not None and hasattr(self.store, "graph_width"):
            blocks = -(-int(max_model_len) // self.store.block_size)
            self.store.graph_width = bucket_width(min(blocks, WIDTH_AT_START_MAX))

        sizes = sorted({bucket_rows(n) for n in range(1, max_num_seqs + 1)})
        done = 0
        try:
            for R in sizes:
                runs = [([0], self.store.view([scratch]), 0) for _ in range(R)]
                for _ in range(2):         # the first call marks the shape warm, the second captures it
                    self.backend.decode_batch_step(self.executor, runs)
                done += any(isinstance(g, BatchGraph) and g.step.R == R for g in self.store.graphs.values())
        except Exception as exc:          # noqa: BLE001 - a failed warm-up leaves lazy captures, not an error
            log.warning("decode graph warm-up stopped after %d shapes: %s: %s", done, type(exc).__name__, exc)
        return done

    def warm_up(self, sizes: Sequence[int] = (80, 16)) -> int:
        """Run one dummy prefill of each of ``sizes`` tokens on a GPU, so that the kernels a first
        request meets (the prefill GEMM path past 64 rows, the batch kernel below, tiled prefill
        attention) are compiled at start-up, not inside a user's time to first token (NVRTC takes
        seconds per module). The prefills write the pool's first blocks, which no request holds yet
        and which no prefix hash points to. Returns how many ran; never raises."""
        if getattr(self.backend, "device", "cpu") == "cpu" or self.has_state:
            return 0
        bs = self.store.block_size
        done = 0
        for i, n in enumerate(sizes):
            need = -(-n // bs)
            if need > self.store.num_blocks:
                continue
            try:
                self.run([StepItem(("warm-up", i), [1 + t % 7 for t in range(n)], 0, list(range(need)))])
                done += 1
            except Exception as exc:     # noqa: BLE001 - a failed warm-up only leaves compiles for later
                log.warning("prefill warm-up of %d tokens failed: %s: %s", n, type(exc).__name__, exc)
            finally:
                self.release(("warm-up", i))
        return done

    @property
    def vocab_size(self) -> int:
        return int(self.model.hparams["vocab_size"])

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        self.store.copy_blocks(pairs)

    def release(self, seq_id: Hashable) -> None:
        """``seq_id`` is done with its view here (finished, aborted, preempted): its recurrent state goes now."""
        view = self._views.pop(seq_id, None)
        if view is not None:
            view.state = None
        self._absorbed.pop(seq_id, None)
        self._stale.discard(seq_id)

    # ---- recurrent state (zero and empty for a model without)
    @property
    def num_states(self) -> int:
        """Live recurrent states: one per sequence that has run and not been released."""
        return sum(1 for v in self._views.values() if getattr(v, "state", None) is not None)

    @property
    def state_bytes(self) -> int:
        return sum(v.state.nbytes for v in self._views.values() if getattr(v, "state", None) is not None)

    def _with_state(self, it: StepItem, view) -> tuple[list[int], int]:
        """The tokens and first position to run for ``it``, its state made ready (zeroed or replayed)."""
        if view.state is None:
            view.state = self.executor.new_state()
            self._absorbed[it.seq_id] = []
        done = self._absorbed[it.seq_id]
        ids, pos0 = list(it.token_ids), it.pos0
        if pos0 > len(done):
            raise RocmforgeError(f"sequence {it.seq_id!r} continues at position {pos0}, but its recurrent state has "
                                 f"taken {len(done)} tokens (a recurrent model cannot reuse cached KV prefixes)")
        if pos0 < len(done) or it.seq_id in self._stale:     # start over: zeros, then every token before pos0
            view.state.reset()
            ids, pos0 = done[:pos0] + ids, 0
        return ids, pos0

    def run(self, items: list[StepItem], while_running: Callable[[], None] | None = None) -> list:
        """Logits per item, float32 on the host: (vocab,) for the last row, (n, vocab) with all_rows.
        When every item is ``greedy``, each gets its token id (an int) instead, the argmax taken where
        the logits are (on a GPU only the ids cross to the host). ``while_running`` is called once the
        step's work is queued and before its results are waited for: on a GPU the caller's host work
        (handing the last step's tokens to the server) then overlaps this step. A backend that does not
        queue work (the CPU) has it called before the forward."""
        runs = []
        for it in items:
            view = self._views.get(it.seq_id)
            if view is None:
                view = self._views[it.seq_id] = self.store.view()
                view.state = None
            ids, pos0 = self._with_state(it, view) if self.has_state else (it.token_ids, it.pos0)
            view.set_table(it.block_table, pos0)
            runs.append((ids, view, pos0))
        all_rows = any(it.all_rows for it in items)
        if while_running is not None and not getattr(self.backend, "queues_work", False):
            while_running()           # nothing to overlap: the caller's work would wait a whole step
            while_running = None
        try:
            out = None
            if not all_rows and not self.has_state and all(len(ids) == 1 for ids, _, _ in runs):
                out = self.backend.decode_batch_step(self.executor, runs)     # a replayed graph, or None
            if out is None:
                out = self.executor.forward_batch(runs, last_only=not all_rows)
        except BaseException:
            self._stale.update(it.seq_id for it in items if it.seq_id in self._absorbed)
            raise
        for it, (ids, _, pos0) in zip(items, runs):
            if it.seq_id in self._absorbed:
                self._absorbed[it.seq_id][pos0:] = ids
                self._stale.discard(it.seq_id)
        if while_running is not None:
            while_running()
        if not all_rows and all(it.greedy for it in items):
            return [int(t) for t in self.backend.argmax(out)]
        logits = self.backend.to_numpy(out)
        result, row = [], 0
        for it, (ids, _, _) in zip(items, runs):
            n = len(ids) if all_rows else 1
            part = logits[row:row + n]
            row += n
            result.append(part[n - len(it.token_ids):] if it.all_rows else part[-1])
        return result
