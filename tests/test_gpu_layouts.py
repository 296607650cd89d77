"""The GPU's tiled weight layouts are a lossless regrouping of the file's blocks (host side)."""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge.backends.gpu_layouts import TILES, tile_for, tile_rows, untile_rows
from rocmforge.quant.samples import random_blocks


@pytest.mark.parametrize("qtype", sorted(TILES))
def test_tiles_round_trip_and_keep_size(qtype):
    tile = TILES[qtype]
    rows, K = 5, 2 * tile.weights
    raw = np.frombuffer(random_blocks(qtype, (rows, K), 3), np.uint8)
    tiled = tile_rows(raw, rows, tile)
    assert tiled.size == raw.size
    assert not np.array_equal(tiled, raw)          # it did regroup
    assert np.array_equal(untile_rows(tiled, rows, tile), raw)


@pytest.mark.parametrize("qtype", sorted(TILES))
def test_payload_16_byte_aligned_and_fields_at_their_own_size(qtype):
    tile = TILES[qtype]
    assert tile.blocks * tile.block_bytes % 16 == 0      # tiles (so rows) stay 16-byte aligned
    offsets = np.cumsum((0,) + tuple(tile.blocks * f for f in tile.fields))[:-1]
    assert int(offsets[-1]) % 16 == 0, offsets             # the quants: one 16-byte load per block
    assert all(int(o) % min(16, f) == 0 for o, f in zip(offsets, tile.fields)), offsets


def test_first_field_of_a_tile_holds_the_scales():
    tile = TILES["Q4_0"]
    raw = np.frombuffer(random_blocks("Q4_0", (1, 256), 0), np.uint8)
    tiled = tile_rows(raw, 1, tile)
    scales = raw.reshape(8, 18)[:, :2].reshape(-1)
    assert np.array_equal(tiled[:16], scales)
    assert np.array_equal(tiled[16:32], raw[2:18])


def test_rows_that_do_not_fill_tiles_keep_the_file_layout():
    assert tile_for("Q4_0", 256) is TILES["Q4_0"]
    assert tile_for("Q4_0", 96) is None
    assert tile_for("MXFP4", 256) is None          # 16-block tiles need K % 512 == 0
    assert tile_for("Q6_K", 4096) is TILES["Q6_K"]
    assert tile_for("Q6_K", 11008) is None         # 8 super-blocks of 256 per tile: K % 2048
    assert tile_for("Q4_K", 4096) is None          # 144-byte super-blocks: aligned as they are
