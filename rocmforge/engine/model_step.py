"""The model step room: one batched forward over the paged KV store, for the batch it is handed.

It knows nothing of request states or scheduling: it gets (sequence id, token ids, first position,
block table) per sequence and returns each sequence's logits, the last row or, for the sequences
that ask, every row. Each sequence's cache is a view of the one pool store
(rocmforge.backends.paged), so Executor.forward_batch runs many sequences unchanged.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass
class StepItem:
    seq_id: Hashable
    token_ids: list[int]
    pos0: int                  # position of token_ids[0]; positions before it are in the KV already
    block_table: list[int]
    all_rows: bool = False     # every row's logits (prompt logprobs), not just the last


def kv_bytes_per_block(model, block_size: int) -> int:
    """Bytes one block takes across all layers at the model's default K/V shape."""
    dims = model.executor.cache_dims()
    per_token = dims["n_head_kv"] * (dims["head_dim"] + dims["head_dim_v"]) * model.backend.kv_bytes
    return per_token * int(model.hparams["n_layer"]) * block_size


def blocks_for_memory(model, kv_cache_gb: float, block_size: int) -> int:
    n = int(kv_cache_gb * (1 << 30)) // kv_bytes_per_block(model, block_size)
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

    @property
    def vocab_size(self) -> int:
        return int(self.model.hparams["vocab_size"])

    def copy_blocks(self, pairs: Sequence[tuple[int, int]]) -> None:
        self.store.copy_blocks(pairs)

    def release(self, seq_id: Hashable) -> None:
        self._views.pop(seq_id, None)

    def run(self, items: list[StepItem]) -> list[np.ndarray]:
        """Logits per item, float32 on the host: (vocab,) for the last row, (n, vocab) with all_rows."""
        views = []
        for it in items:
            view = self._views.get(it.seq_id)
            if view is None:
                view = self._views[it.seq_id] = self.store.view()
            view.set_table(it.block_table, it.pos0)
            views.append(view)
        all_rows = any(it.all_rows for it in items)
        out = self.executor.forward_batch([(it.token_ids, v, it.pos0) for it, v in zip(items, views)],
                                          last_only=not all_rows)
        logits = self.backend.to_numpy(out)
        result, row = [], 0
        for it in items:
            n = len(it.token_ids) if all_rows else 1
            part = logits[row:row + n]
            row += n
            result.append(part if it.all_rows else part[-1])
        return result
