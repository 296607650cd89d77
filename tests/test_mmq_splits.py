"""The K split of kernels/mmq.hip launches (cupy_mmq.splits): every group in exactly one split."""

from __future__ import annotations

import pytest

from rocmforge.backends.cupy_mmq import BM, TILES, splits, tile_for


@pytest.mark.parametrize("n_sm", [1, 60, 132, 304])
@pytest.mark.parametrize("N,K,T", [(4096, 4096, 16), (12288, 4096, 64), (4096, 11008, 9), (576, 576, 33),
                                   (64, 32, 64), (130, 2816, 100)])
@pytest.mark.parametrize("per_sm", [1, 2, 8])
@pytest.mark.parametrize("BN,BG", TILES)
def test_splits_cover_the_groups_once(n_sm, N, K, T, per_sm, BN, BG):
    s, gps = splits(n_sm, N, T, K, per_sm, BN, BG)
    ng = K // 32
    assert gps % BG == 0, "a split must start on a staged group set"
    assert (s - 1) * gps < ng <= s * gps, "the splits must cover every group, none empty"
    tiles = -(-N // BM) * -(-T // BN)
    stages = -(-ng // BG)
    if s == 1:
        assert tiles >= n_sm * per_sm or stages == 1 or gps >= ng
    else:
        assert tiles * (s - 1) < n_sm * per_sm * 2, "split more than the GPU needs"


def test_few_tiles_split_many_do_not():
    assert splits(132, 4096, 16, 4096)[0] > 1          # 64 row tiles on 132 multiprocessors
    assert splits(132, 32000, 64, 4096)[0] == 1         # 500 tiles fill the GPU already


def test_tiles_by_batch():
    assert [tile_for(t)[0] for t in (9, 16, 17, 32, 33, 64, 512)] == [16, 16, 32, 32, 64, 64, 64]
    assert tile_for(9, bn=64) == (64, 4)
    for bn, bg in TILES:     # the staging splits evenly over the block's threads (RF_MMQ_NA / NX)
        assert BM * bg % 128 == 0 and bn * bg % 128 == 0


def test_frag_kernels_exist_and_take_whole_stages():
    from pathlib import Path

    from rocmforge.backends.cupy_mmq import FRAG_GROUPS, FRAG_KERNELS
    from rocmforge.backends.gpu_layouts import TILES as LAYOUTS

    src = (Path(__file__).resolve().parents[1] / "kernels" / "mmq_frag.hip").read_text()
    for k in FRAG_KERNELS:
        assert f"mmq_frag_{k}(" in src, f"kernels/mmq_frag.hip has no mmq_frag_{k}"
        layout = next(t for t in LAYOUTS.values() if t.suffix == k)
        # a stage is one tile: a split of whole stages never cuts a tile, and a tiled row is whole tiles
        assert layout.blocks == FRAG_GROUPS
    for bn, _ in TILES:
        s, gps = splits(132, 4096, bn, 4096, 2, bn, FRAG_GROUPS)
        assert gps % FRAG_GROUPS == 0 and (s - 1) * gps < 128 <= s * gps
