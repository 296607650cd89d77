"""Random but valid raw blocks for any registered format: test data for the
CPU codecs and for the GPU kernels checked against them.

Random bytes are not valid blocks for most GGUF types: their f16 scales may
come out inf or NaN. ``random_blocks`` fills every byte at random, then writes
finite, moderate f16 values over the scale fields listed in ``F16_SCALES``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import nbytes
from .formats import get_format

# Byte offsets of the f16 scale fields inside one block (ggml's block_* structs).
F16_SCALES: dict[str, tuple[int, ...]] = {
    "Q4_0": (0,), "Q4_1": (0, 2), "Q5_0": (0,), "Q5_1": (0, 2), "Q8_0": (0,),
    "Q2_K": (80, 82),            # scales[16], qs[64], d, dmin
    "Q3_K": (108,),              # hmask[32], qs[64], scales[12], d
    "Q4_K": (0, 2), "Q5_K": (0, 2),
    "Q6_K": (208,),              # ql[128], qh[64], scales[16], d
    "IQ2_XXS": (0,), "IQ2_XS": (0,), "IQ2_S": (0,), "IQ3_XXS": (0,), "IQ3_S": (0,),
    "IQ1_S": (0,), "IQ4_NL": (0,), "IQ4_XS": (0,),
    "TQ1_0": (52,),              # qs[48], qh[4], d
    "TQ2_0": (64,),              # qs[64], d
}


def random_blocks(qtype: str, shape: Sequence[int], seed: int | np.random.Generator = 0) -> np.ndarray:
    """1-D uint8 raw data for a ``qtype`` tensor of ``shape`` whose every block is valid."""
    fmt = get_format(qtype)
    rng = np.random.default_rng(seed)
    n = nbytes(fmt, shape)
    if fmt.kind == "float":
        x = rng.standard_normal(n // fmt.type_size).astype(np.float32)
        return np.ascontiguousarray(x.astype(fmt.dtype)).view(np.uint8)
    raw = rng.integers(0, 256, size=n, dtype=np.uint8)
    blocks = raw.reshape(-1, fmt.type_size)
    for off in F16_SCALES.get(fmt.name, ()):
        d = rng.uniform(-1, 1, len(blocks)) * 2.0 ** rng.integers(-10, 1, len(blocks))
        blocks[:, off:off + 2] = d.astype("<f2").view(np.uint8).reshape(-1, 2)
    if fmt.name == "IQ1_M":
        # the f16 scale is spread over the top nibbles of scales[4] (u16 at
        # byte 48); clearing f16 bit 14 (byte 55, bit 6) keeps it finite.
        blocks[:, 55] &= 0xBF
    if fmt.name.startswith("MX"):
        # keep the E8M0 scale near 1 so products stay finite (0xFF is NaN)
        blocks[:, 0] = rng.integers(127 - 20, 127 + 20, len(blocks), dtype=np.uint8)
    if fmt.name == "MXFP8_E4M3":
        codes = blocks[:, 1:]
        codes[(codes & 0x7F) == 0x7F] &= 0xFE          # S.1111.111 is NaN
    if fmt.name == "MXFP8_E5M2":
        codes = blocks[:, 1:]
        codes[(codes & 0x7C) == 0x7C] &= 0xBF          # exponent 11111 is inf/NaN
    return raw
