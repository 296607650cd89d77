"""The block pool and cache manager: accounting, reference counts, prefix hashes, LRU eviction, copy-on-write."""

import pytest

from rocmforge.engine.block_pool import BlockPool, NoFreeBlocks, block_hash
from rocmforge.engine.kv_cache_manager import KVCacheManager


def test_allocate_and_free_account_for_every_block():
    pool = BlockPool(8, block_size=4)
    a = pool.allocate(3)
    b = pool.allocate(5)
    assert pool.num_free == 0 and pool.num_used == 8
    assert len({x.id for x in a + b}) == 8 and all(x.ref_count == 1 for x in a + b)
    with pytest.raises(NoFreeBlocks):
        pool.allocate(1)
    pool.free(a)
    assert pool.num_free == 3
    with pytest.raises(RuntimeError, match="freed more often"):
        pool.free(a[:1])
    pool.free(b)
    assert pool.num_free == 8 and pool.num_used == 0


def test_take_and_free_count_references():
    pool = BlockPool(2, block_size=4)
    (blk,) = pool.allocate(1)
    pool.take(blk)
    assert blk.ref_count == 2
    pool.free([blk])
    assert blk.ref_count == 1 and pool.num_free == 1
    pool.free([blk])
    assert pool.num_free == 2


def test_block_hash_names_the_whole_prefix():
    h1 = block_hash(None, [1, 2, 3, 4])
    assert h1 == block_hash(None, [1, 2, 3, 4])
    assert h1 != block_hash(None, [1, 2, 3, 5])
    assert block_hash(h1, [5, 6, 7, 8]) != block_hash(block_hash(None, [0, 2, 3, 4]), [5, 6, 7, 8])


def test_cached_blocks_survive_free_and_are_evicted_least_recently_freed_first():
    pool = BlockPool(3, block_size=2)
    blocks = pool.allocate(3)
    hashes = [block_hash(None, [i, i]) for i in range(3)]
    for b, h in zip(blocks, hashes):
        pool.cache(b, h)
    pool.free([blocks[1]])
    pool.free([blocks[0]])
    pool.free([blocks[2]])
    assert pool.num_free == 3 and pool.num_cached == 3
    assert pool.lookup(hashes[0]) is blocks[0]       # still findable after free
    (fresh,) = pool.allocate(1)                      # evicts the first freed: block 1
    assert fresh is blocks[1] and fresh.hash is None
    assert pool.lookup(hashes[1]) is None and pool.lookup(hashes[0]) is blocks[0]
    assert pool.evictions == 1
    pool.take(blocks[0])                             # a hit revives a free cached block
    assert pool.num_free == 1 and blocks[0].ref_count == 1


def _mgr(num_blocks=16, bs=4, caching=True):
    return KVCacheManager(BlockPool(num_blocks, bs, enable_caching=caching))


def test_manager_tables_grow_by_blocks():
    m = _mgr()
    assert m.admit("a", list(range(6)), [], 6)
    assert m.num_blocks("a") == 2
    assert m.grow("a", 6, 2) and m.num_blocks("a") == 2     # positions 6, 7 fit block 1
    assert m.grow("a", 8, 1) and m.num_blocks("a") == 3
    m.free("a")
    assert m.pool.num_free == 16


def test_manager_refuses_without_taking_anything():
    m = _mgr(num_blocks=3)
    assert m.admit("a", list(range(8)), [], 8)
    assert not m.admit("b", list(range(8)), [], 8)
    assert not m.holds("b") and m.pool.num_free == 1
    assert not m.grow("a", 8, 9)
    assert m.num_blocks("a") == 2 and m.pool.num_free == 1


def test_prefix_hits_share_full_blocks_and_count():
    m = _mgr()
    prompt = list(range(100, 110))                   # 2 full blocks of 4 + 2 tokens
    assert m.find_prefix(prompt) == []
    assert m.admit("a", prompt, [], len(prompt))
    m.commit("a", prompt, len(prompt))
    hits = m.find_prefix(prompt + [7, 8])
    assert [b.id for b in hits] == m.block_table("a")[:2]
    assert m.admit("b", prompt + [7, 8], hits, 4)
    assert m.block_table("b")[:2] == m.block_table("a")[:2]
    assert m.block_table("b")[2] != m.block_table("a")[2]      # the partial block is recomputed, not shared
    assert all(b.ref_count == 2 for b in hits)
    assert m.prefix_queries == 10 + 12 and m.prefix_hits == 8
    m.free("a")
    m.free("b")
    assert m.pool.num_free == 16 and m.pool.num_cached >= 2


def test_a_prompt_of_whole_blocks_recomputes_its_last_token():
    m = _mgr()
    prompt = list(range(8))
    m.admit("a", prompt, [], 8)
    m.commit("a", prompt, 8)
    assert len(m.find_prefix(prompt)) == 1           # block 2 holds the last token: its logits are needed
    assert len(m.find_prefix(prompt + [9])) == 2


def test_freed_prefix_blocks_are_found_again():
    m = _mgr(num_blocks=4)
    prompt = list(range(9))
    m.admit("a", prompt, [], 9)
    m.commit("a", prompt, 9)
    m.free("a")
    hits = m.find_prefix(prompt)
    assert len(hits) == 2
    assert m.admit("b", prompt, hits, 1) and m.pool.num_free == 1


def test_no_caching_means_no_hits():
    m = _mgr(caching=False)
    prompt = list(range(9))
    m.admit("a", prompt, [], 9)
    m.commit("a", prompt, 9)
    assert m.find_prefix(prompt) == []


def test_fork_copies_the_shared_partial_block_on_write():
    m = _mgr()
    prompt = list(range(6))
    m.admit("a", prompt, [], 6)
    m.commit("a", prompt, 6)
    m.fork("a", "b")
    ta = m.block_table("a")
    assert m.block_table("b") == ta and m.pool.num_used == 2
    assert m.grow("b", 6, 1)
    tb = m.block_table("b")
    assert tb[0] == ta[0] and tb[1] != ta[1]
    assert m.pending_copies == [(ta[1], tb[1])]
    assert m.grow("a", 6, 1) and m.block_table("a") == ta     # a is the only holder now: no copy
    assert len(m.pending_copies) == 1
    m.free("a")
    m.free("b")
    assert m.pool.num_free == 16
