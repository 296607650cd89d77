"""CPU codecs for the GGUF (ggml) tensor types.

Block types are decoded by ``gguf.quants`` (llama.cpp's own NumPy port): it is
the oracle the GPU kernels are checked against, so we never re-implement a
decoder it already has. Plain types (F32, F16, BF16, F64, I8..I64) are decoded
here with a view and a cast. All data is little-endian, as in GGUF files.

Every codec works on rows: ``decode(rows)`` takes a ``uint8`` array of shape
``(n_rows, row_bytes)`` and returns ``float32`` ``(n_rows, row_elements)``;
``encode`` goes the other way.
"""

from __future__ import annotations

from collections.abc import Callable

import ml_dtypes
import numpy as np
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

Codec = Callable[[np.ndarray], np.ndarray]

# Plain (unblocked) GGUF types: NumPy element dtype, little-endian.
PLAIN_DTYPES: dict[str, np.dtype] = {
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "F64": np.dtype("<f8"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "I32": np.dtype("<i4"),
    "I64": np.dtype("<i8"),
}


def plain_decoder(dtype: np.dtype) -> Codec:
    def decode(rows: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(rows).view(dtype).astype(np.float32)

    return decode


def plain_encoder(dtype: np.dtype) -> Codec:
    """Cast with round-to-nearest-even; integers and FP8 saturate at their largest finite value."""

    def encode(rows: np.ndarray) -> np.ndarray:
        if dtype.kind == "i":
            info = np.iinfo(dtype)
            rows = np.clip(np.rint(rows), info.min, info.max)
        elif dtype.itemsize == 1:
            big = float(ml_dtypes.finfo(dtype).max)
            rows = np.where(np.isinf(rows), rows, np.clip(rows, -big, big))
        return np.ascontiguousarray(rows.astype(dtype)).view(np.uint8)

    return encode


def gguf_decoder(qtype: GGMLQuantizationType) -> Codec:
    import gguf.quants

    def decode(rows: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", over="ignore"):
            return gguf.quants.dequantize(rows, qtype)

    return decode


def gguf_encoder(qtype: GGMLQuantizationType) -> Codec:
    import gguf.quants

    def encode(rows: np.ndarray) -> np.ndarray:
        return gguf.quants.quantize(rows.astype(np.float32, copy=False), qtype)

    return encode


def _probe(qtype: GGMLQuantizationType, which: str) -> bool:
    """Whether this gguf version implements ``which`` ("quantize"/"dequantize") for qtype."""
    import gguf.quants

    block_size, type_size = GGML_QUANT_SIZES[qtype]
    try:
        with np.errstate(all="ignore"):
            if which == "dequantize":
                gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
            else:
                gguf.quants.quantize(np.zeros((1, block_size), np.float32), qtype)
    except NotImplementedError:
        return False
    return True


def block_types() -> dict[str, tuple[GGMLQuantizationType, bool]]:
    """Every GGUF block type the installed gguf can dequantize, with whether it can quantize."""
    out = {}
    for qtype, (block_size, _) in GGML_QUANT_SIZES.items():
        if block_size == 1 or not _probe(qtype, "dequantize"):
            continue
        out[qtype.name] = (qtype, _probe(qtype, "quantize"))
    return out
