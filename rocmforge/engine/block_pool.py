"""The KV block pool: fixed-size blocks, reference counts, prefix hashes, LRU eviction.

A block holds ``block_size`` consecutive token positions of one or more sequences (more than one
when a prefix is shared). Block ids index the backend's pool tensors; this module only does the
bookkeeping (vLLM v1's ``block_pool.py`` is the model):

- ``ref_count`` counts the sequences whose block table holds the block; a block at 0 is free.
- A *full* block may carry a hash of (parent block's hash, its token ids), which names the whole
  prefix up to and including it. Cached blocks stay findable after they are freed, until the
  space is needed: free blocks sit in one LRU queue, and allocation takes the least recently
  freed one first, dropping its hash then.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np


def block_hash(parent: bytes | None, tokens: Sequence[int]) -> bytes:
    """The hash naming a full block whose prefix before it hashes to ``parent``.

    A cryptographic digest rather than Python's ``hash``: a collision would silently hand one
    request another's KV."""
    h = hashlib.sha256(parent or b"root")
    h.update(np.asarray(tokens, dtype=np.int64).tobytes())
    return h.digest()


class Block:
    __slots__ = ("id", "ref_count", "hash")

    def __init__(self, block_id: int):
        self.id = block_id
        self.ref_count = 0
        self.hash: bytes | None = None

    def __repr__(self) -> str:
        return f"Block({self.id}, ref={self.ref_count}, cached={self.hash is not None})"


class NoFreeBlocks(Exception):
    """The pool cannot hand out that many blocks now (the scheduler preempts and retries)."""


class BlockPool:
    def __init__(self, num_blocks: int, block_size: int = 16, enable_caching: bool = True):
        if num_blocks < 1:
            raise ValueError(f"the KV pool needs at least one block, got {num_blocks}")
        if block_size < 1:
            raise ValueError(f"block_size must be >= 1, got {block_size}")
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.blocks = [Block(i) for i in range(num_blocks)]
        # free blocks, least recently freed first; cached ones stay here until reused
        self._free: OrderedDict[int, Block] = OrderedDict((b.id, b) for b in self.blocks)
        self._cached: dict[bytes, Block] = {}
        self.evictions = 0

    # ---- counts
    @property
    def num_free(self) -> int:
        """Blocks that can be handed out now (free cached blocks included: they are evictable)."""
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.num_blocks - len(self._free)

    @property
    def num_cached(self) -> int:
        return len(self._cached)

    # ---- allocation
    def allocate(self, n: int) -> list[Block]:
        """``n`` blocks with ref_count 1, evicting the least recently freed cached ones as needed."""
        if n > len(self._free):
            raise NoFreeBlocks(f"{n} KV blocks asked for, {len(self._free)} free")
        out = []
        for _ in range(n):
            _, block = self._free.popitem(last=False)
            if block.hash is not None:
                del self._cached[block.hash]
                block.hash = None
                self.evictions += 1
            block.ref_count = 1
            out.append(block)
        return out

    def free(self, blocks: Sequence[Block]) -> None:
        """Drop one reference of each block. Pass a sequence's table tail first: its last blocks
        then leave the cache before its first ones (a longer prefix is less likely to recur)."""
        for block in blocks:
            if block.ref_count <= 0:
                raise RuntimeError(f"{block} freed more often than it was taken")
            block.ref_count -= 1
            if block.ref_count == 0:
                self._free[block.id] = block

    def take(self, block: Block) -> None:
        """One more reference to ``block`` (a prefix-cache hit or a fork)."""
        if block.ref_count == 0:
            del self._free[block.id]
        block.ref_count += 1

    # ---- prefix cache
    def lookup(self, h: bytes) -> Block | None:
        return self._cached.get(h) if self.enable_caching else None

    def cache(self, block: Block, h: bytes) -> None:
        """Register a full, written block under its prefix hash (a block already cached keeps its hash;
        another block with the same hash stays private: the first one is the one found)."""
        if not self.enable_caching or block.hash is not None or h in self._cached:
            return
        block.hash = h
        self._cached[h] = block

    def reset_cache(self) -> int:
        """Forget every free cached block (e.g. after the weights changed); returns how many."""
        n = 0
        for h, block in list(self._cached.items()):
            if block.ref_count == 0:
                del self._cached[h]
                block.hash = None
                n += 1
        return n
