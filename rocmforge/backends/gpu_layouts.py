"""How the GPU backend lays quantised weights out in device memory.

The file formats keep each 32-weight block's scale next to its quants: a Q4_0
block is 18 bytes, so its 16 quant bytes sit at 2-byte alignment and a kernel
can only read them two bytes at a time. At upload the backend regroups the
blocks of a row into *tiles*: n consecutive blocks store each field together
(n scales, then n payloads), the payloads 16-byte aligned (other fields at
least at their own size), the tile exactly as
large as its n blocks. A lane then reads a block's quants in one 16-byte load.
The decoders of these layouts are the ``rf_group_<suffix>`` functions of
kernels/rf_quant.h (RF_FOR_EACH_TILED_FORMAT), held bit-exact to the file
layout's by tests/gpu/test_quant_kernels.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Tile:
    suffix: str                  # kernel suffix of the tiled layout (matvec_<suffix>, dequant_<suffix>)
    blocks: int                  # blocks per tile
    fields: tuple[int, ...]      # byte sizes of a block's fields, in file order
    block_weights: int = 32      # weights per block (256 for the k-quant super-blocks)

    @property
    def block_bytes(self) -> int:
        return sum(self.fields)

    @property
    def weights(self) -> int:
        """Weights per tile: a row must hold a whole number of tiles."""
        return self.block_weights * self.blocks


TILES: dict[str, Tile] = {
    "Q4_0": Tile("q4_0t", 8, (2, 16)),            # f16 d | 16 B nibbles
    "Q4_1": Tile("q4_1t", 4, (2, 2, 16)),         # f16 d | f16 m | nibbles
    "Q5_0": Tile("q5_0t", 8, (2, 4, 16)),         # f16 d | u32 fifth bits | nibbles
    "Q5_1": Tile("q5_1t", 4, (2, 2, 4, 16)),
    "Q8_0": Tile("q8_0t", 8, (2, 32)),            # f16 d | 32 int8
    "IQ4_NL": Tile("iq4_nlt", 8, (2, 16)),
    "MXFP4": Tile("mxfp4t", 16, (1, 16)),         # E8M0 exponent | nibbles (GGUF's gpt-oss MXFP4)
    # 210-byte super-blocks: ql | qh | int8 sub-scales | f16 d (Q4_K / Q5_K super-blocks are 16-byte
    # multiples already and keep the file layout)
    "Q6_K": Tile("q6_kt", 8, (128, 64, 16, 2), 256),
}


def tile_for(qtype: str, K: int) -> Tile | None:
    """The tiled layout for a ``qtype`` weight with rows of K weights, or None to keep the file's."""
    t = TILES.get(qtype)
    return t if t is not None and K % t.weights == 0 else None


def tile_rows(raw: np.ndarray, rows: int, tile: Tile) -> np.ndarray:
    """File-layout bytes of ``rows`` rows -> the tiled layout (uint8, same size)."""
    blocks = np.ascontiguousarray(raw).reshape(rows, -1, tile.blocks, tile.block_bytes)
    parts, off = [], 0
    for size in tile.fields:
        parts.append(blocks[..., off:off + size].reshape(rows, blocks.shape[1], tile.blocks * size))
        off += size
    return np.concatenate(parts, axis=-1).reshape(-1)


def untile_rows(tiled: np.ndarray, rows: int, tile: Tile) -> np.ndarray:
    """The inverse of :func:`tile_rows` (tests, and reading a weight back)."""
    t = np.ascontiguousarray(tiled).reshape(rows, -1, tile.blocks * tile.block_bytes)
    parts, off = [], 0
    for size in tile.fields:
        parts.append(t[..., off:off + tile.blocks * size].reshape(rows, t.shape[1], tile.blocks, size))
        off += tile.blocks * size
    return np.concatenate(parts, axis=-1).reshape(-1)
