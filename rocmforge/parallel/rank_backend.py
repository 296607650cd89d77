"""One rank's backend: the real backend, plus the collectives its sharded weights call for.

The ops run unchanged on a rank; what changes is the weights they are handed (the rank's
shards, rocmforge.parallel.shards). :meth:`RankBackend.weight` remembers the role of each
prepared weight that was cut, and the primitives that take such a weight add its one collective:

- ``linear`` with a row-parallel weight: the partial product, all-reduced; the bias is added by
  rank 0 only, so the sum holds it once;
- ``linear`` with a vocabulary slice (the output head): the rank's logits, all-gathered;
- ``embedding`` from a vocabulary slice: the rows of the ids the rank holds, zeros for the
  others, all-reduced (a sum with zeros: exactly the unsharded rows);
- ``moe_ffn`` / ``moe_ffn_oai`` with whole experts: each token's slots narrowed to the experts
  of this rank (renumbered into its range; a rank no token chose skips the experts); with
  sliced experts, as row-parallel; then one all-reduce.

Everything else is the wrapped backend's own (attribute access falls through to it).
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from .comm import Communicator
from .shards import Shard


class RankBackend:
    def __init__(self, inner: Any, comm: Communicator, device_id: int | None = None):
        self.inner = inner
        self.comm = comm
        self.rank = comm.rank
        self.device_id = device_id          # the GPU this rank runs on; None on the CPU
        self._roles: dict[int, tuple[Shard, Any]] = {}   # id(prepared weight) -> (its cut, the weight)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def scope(self):
        """The context this rank's work runs in: its GPU made current (nothing on the CPU)."""
        if self.device_id is None:
            return contextlib.nullcontext()
        return self.inner.cp.cuda.Device(self.device_id)

    # -- weights
    def _remember(self, raws: list, prepared: Any) -> Any:
        cut = getattr(raws[0], "tp_shard", None)
        if cut is not None and cut.role != "column" and prepared is not None:
            self._roles[id(prepared)] = (cut, prepared)      # holding the weight keeps its id unique
        return prepared

    def _role(self, w: Any) -> Shard | None:
        entry = self._roles.get(id(w))
        return entry[0] if entry is not None else None

    def weight(self, raw):
        return self._remember([raw], self.inner.weight(raw))

    def fuse_weights(self, raws):
        # only column cuts join (q/k/v, gate/up); a weight that communicates stays on its own
        if any(getattr(r, "tp_shard", None) is not None and r.tp_shard.role != "column" for r in raws):
            return None
        return self.inner.fuse_weights(raws)

    def decode_step(self, executor, ids, cache, pos0):
        return None      # eager: the rank's step holds collectives (graph capture of them: not yet)

    # -- the primitives that communicate
    def linear(self, x, w, bias=None):
        cut = self._role(w)
        if cut is None:
            return self.inner.linear(x, w, bias)
        if cut.role == "row":
            return self.comm.all_reduce(self.inner.linear(x, w, bias if self.rank == 0 else None))
        if cut.role == "vocab":
            return self.comm.all_gather(self.inner.linear(x, w, bias))
        return self.inner.linear(x, w, bias)

    def embedding(self, w, ids):
        cut = self._role(w)
        if cut is None or cut.role != "vocab":
            return self.inner.embedding(w, ids)
        start, stop = cut.first(self.rank)
        local = np.asarray(ids, dtype=np.int64).reshape(-1) - start
        mine = (local >= 0) & (local < stop - start)
        rows = self.inner.embedding(w, np.where(mine, local, 0))
        rows = self.inner.mul(rows, self.inner.upload(mine.astype(np.float32).reshape(-1, 1)))
        return self.comm.all_reduce(rows)

    def _local_experts(self, down, weights, ids):
        """(weights, ids, cut) of this rank's experts, or weights None when no token chose one of them.

        A backend may assume a token's k experts are distinct (the NumPy one adds each expert's rows
        with one scatter), so the rank's slots are packed: per token its own experts first,
        renumbered into the rank's range, then other experts of the rank it did not choose, with
        weight 0, up to the most any token chose here."""
        cut = self._role(down)
        if cut is None or cut.role != "experts":
            return weights, ids, cut
        start, stop = cut.first(self.rank)
        ids = np.asarray(ids)
        mine = (ids >= start) & (ids < stop)
        count = mine.sum(axis=1)
        k = int(count.max()) if ids.size else 0
        if k == 0:
            return None, None, cut
        order = np.argsort(~mine, axis=1, kind="stable")[:, :k]          # the token's own slots first
        local = np.take_along_axis(np.where(mine, ids - start, 0), order, axis=1)
        w = np.take_along_axis(np.where(mine, np.asarray(weights, np.float32), np.float32(0)), order, axis=1)
        valid = np.take_along_axis(mine, order, axis=1)
        used = np.zeros((ids.shape[0], stop - start), bool)
        rows = np.nonzero(valid)[0]
        used[rows, local[valid]] = True
        spare = np.argsort(used, axis=1, kind="stable")                  # experts the token did not choose
        pick = np.clip(np.arange(k)[None, :] - count[:, None], 0, None)
        local = np.where(valid, local, np.take_along_axis(spare, pick, axis=1))
        return np.where(valid, w, np.float32(0)).astype(np.float32), local.astype(ids.dtype), cut

    def moe_ffn(self, x, gate, up, down, weights, ids, act):
        weights, ids, cut = self._local_experts(down, weights, ids)
        if cut is None:
            return self.inner.moe_ffn(x, gate, up, down, weights, ids, act)
        y = self.inner.scale(x, 0.0) if weights is None else self.inner.moe_ffn(x, gate, up, down, weights, ids, act)
        return self.comm.all_reduce(y)

    def moe_ffn_oai(self, x, gate, up, down, gate_b, up_b, down_b, weights, ids, alpha, limit):
        weights, ids, cut = self._local_experts(down, weights, ids)
        if cut is None:
            return self.inner.moe_ffn_oai(x, gate, up, down, gate_b, up_b, down_b, weights, ids, alpha, limit)
        y = self.inner.scale(x, 0.0) if weights is None else self.inner.moe_ffn_oai(
            x, gate, up, down, gate_b, up_b, down_b, weights, ids, alpha, limit)
        return self.comm.all_reduce(y)
