"""The cache manager room: which blocks each sequence holds, prefix reuse, copy-on-write.

A sequence's block table maps its positions to pool blocks: position p lives in
``table[p // block_size]`` at row ``p % block_size``. Only full blocks are hashed and shared, and a
sequence writes only at positions past what it has computed, so a block found in the prefix cache is
never written again. The partial last block of a shared prompt is recomputed by each sequence
(at most block_size - 1 tokens), and at least one prompt token is always recomputed: its logits are
what the first sampled token needs. A block shared by a fork is copied before its first write
(copy-on-write); the copies wait in ``pending_copies`` for the model step to carry them out.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

from .block_pool import Block, BlockPool, block_hash


def blocks_for(n_tokens: int, block_size: int) -> int:
    return -(-n_tokens // block_size)


class _Seq:
    __slots__ = ("blocks", "hashes")

    def __init__(self) -> None:
        self.blocks: list[Block] = []
        self.hashes: list[bytes] = []      # hashes of the leading full blocks, as far as computed


class KVCacheManager:
    def __init__(self, pool: BlockPool):
        self.pool = pool
        self.block_size = pool.block_size
        self._seqs: dict[Hashable, _Seq] = {}
        self.pending_copies: list[tuple[int, int]] = []   # (src block, dst block) for the next step
        self.prefix_queries = 0        # prompt tokens looked up
        self.prefix_hits = 0           # of those, tokens whose KV came from the cache

    # ---- queries
    def block_table(self, seq_id: Hashable) -> list[int]:
        return [b.id for b in self._seqs[seq_id].blocks]

    def holds(self, seq_id: Hashable) -> bool:
        return seq_id in self._seqs

    def num_blocks(self, seq_id: Hashable) -> int:
        seq = self._seqs.get(seq_id)
        return len(seq.blocks) if seq else 0

    def _hashes(self, tokens: Sequence[int], n_blocks: int, known: list[bytes] | None = None) -> list[bytes]:
        bs = self.block_size
        out = list(known or [])
        for i in range(len(out), n_blocks):
            out.append(block_hash(out[-1] if out else None, tokens[i * bs:(i + 1) * bs]))
        return out

    def find_prefix(self, tokens: Sequence[int]) -> list[Block]:
        """The cached blocks holding the longest cached prefix of ``tokens`` (full blocks only,
        leaving at least the last token to compute). Takes no references."""
        if not self.pool.enable_caching:
            return []
        hits: list[Block] = []
        parent = None
        for i in range((len(tokens) - 1) // self.block_size):
            parent = block_hash(parent, tokens[i * self.block_size:(i + 1) * self.block_size])
            block = self.pool.lookup(parent)
            if block is None:
                break
            hits.append(block)
        return hits

    # ---- allocation
    def admit(self, seq_id: Hashable, tokens: Sequence[int], hits: list[Block], num_new_tokens: int) -> bool:
        """Start ``seq_id`` holding the prefix-cache ``hits`` plus room for ``num_new_tokens`` after
        them. False (and nothing taken) when the pool lacks the blocks."""
        if seq_id in self._seqs:
            raise RuntimeError(f"sequence {seq_id!r} already holds KV blocks")
        n_cached = len(hits) * self.block_size
        need = blocks_for(n_cached + num_new_tokens, self.block_size) - len(hits)
        revived = sum(1 for b in hits if b.ref_count == 0)     # free cached blocks leave the free queue
        if need + revived > self.pool.num_free:
            return False
        seq = _Seq()
        for b in hits:
            self.pool.take(b)
        seq.blocks = list(hits) + self.pool.allocate(need)
        seq.hashes = [b.hash for b in hits]
        self._seqs[seq_id] = seq
        if self.pool.enable_caching:     # with caching off nothing was looked up: no queries, no misses
            self.prefix_queries += len(tokens)
            self.prefix_hits += n_cached
        return True

    def grow(self, seq_id: Hashable, num_computed: int, num_new_tokens: int) -> bool:
        """Room for ``num_new_tokens`` written after the first ``num_computed`` positions; False (and
        nothing taken) when the pool lacks the blocks."""
        seq = self._seqs[seq_id]
        need = max(0, blocks_for(num_computed + num_new_tokens, self.block_size) - len(seq.blocks))
        first = num_computed // self.block_size
        cow = [i for i in range(first, len(seq.blocks)) if seq.blocks[i].ref_count > 1]
        if need + len(cow) > self.pool.num_free:
            return False
        for i in cow:      # another sequence still reads this block: write into a copy of it
            old = seq.blocks[i]
            new = self.pool.allocate(1)[0]
            self.pending_copies.append((old.id, new.id))
            self.pool.free([old])
            seq.blocks[i] = new
            del seq.hashes[i:]
        seq.blocks.extend(self.pool.allocate(need))
        return True

    def commit(self, seq_id: Hashable, tokens: Sequence[int], num_computed: int) -> None:
        """The first ``num_computed`` positions of ``seq_id`` (holding ``tokens``) are written: its
        newly full blocks join the prefix cache."""
        seq = self._seqs[seq_id]
        n_full = min(num_computed // self.block_size, len(seq.blocks))
        if n_full <= len(seq.hashes):
            return
        seq.hashes = self._hashes(tokens, n_full, seq.hashes)
        for i in range(n_full):
            self.pool.cache(seq.blocks[i], seq.hashes[i])

    def fork(self, parent_id: Hashable, child_id: Hashable) -> None:
        """``child_id`` shares every block of ``parent_id`` (the partial last one is copied when either
        writes to it)."""
        parent = self._seqs[parent_id]
        child = _Seq()
        for b in parent.blocks:
            self.pool.take(b)
        child.blocks, child.hashes = list(parent.blocks), list(parent.hashes)
        self._seqs[child_id] = child

    def free(self, seq_id: Hashable) -> None:
        seq = self._seqs.pop(seq_id, None)
        if seq is not None:
            self.pool.free(seq.blocks[::-1])
