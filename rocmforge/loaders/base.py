"""What every loader hands back: raw tensors (still quantised) and metadata."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np


@dataclass
class RawTensor:
    """One tensor as stored in the file.

    ``shape`` is in NumPy order (outermost first; a GGUF ``ne`` list reversed),
    so a linear layer's weight is ``(out_features, in_features)``.
    ``data`` holds the raw bytes as a 1-D ``uint8`` array (usually a view of a
    memory map) for block-quantised types, or a typed array for F32/F16/BF16.
    ``qtype`` is the quant-registry name: "F32", "F16", "BF16", "Q4_0", "Q4_K", ...
    """

    name: str
    qtype: str
    shape: tuple[int, ...]
    data: np.ndarray

    @property
    def n_elements(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    def dequantize(self) -> np.ndarray:
        """Float32 values in ``shape``."""
        from ..quant import dequantize

        return dequantize(self.data, self.qtype, self.shape)


@dataclass
class LoadedFile:
    """A model file (or folder) after parsing: nothing is dequantised yet."""

    format: str                     # "gguf" or "hf"
    path: str
    metadata: dict[str, Any]        # GGUF key/values, or config.json
    tensors: dict[str, RawTensor]   # by name in the file
    file_size: int = 0
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. hf: tokenizer paths; quark: quant config
