"""The quant-format registry: every tensor type rocmforge reads, described once.

GGUF types are derived from ``gguf.constants.GGML_QUANT_SIZES`` (block size and
bytes per block) and from what the installed ``gguf.quants`` can dequantize, so
a newer gguf package brings its new types along. OCP MX types come from
``rocmforge.quant.mx``. Names are ``gguf.GGMLQuantizationType`` names for GGUF
types ("Q4_K", "IQ4_XS", "MXFP4", ...) and "MXFP8_E4M3", ..., "MXINT8" for the
OCP MX ones.

``kind`` is "float" for plain element types (one element per "block", no
scale: F32, F16, BF16, F64, the integer I8..I64 and the safetensors FP8 types
F8_E4M3, F8_E5M2, F8_E4M3FNUZ, F8_E5M2FNUZ) and "block" for everything with
shared scales.

GPU kernels (kernels/dequant.hip, kernels/matvec.hip) are named in
``GPU_KERNEL_SUFFIX`` below: a format with suffix ``s`` has ``dequant_s`` and
``matvec_s`` (plain float types share ``dequant_plain``). A format without one
is dequantized on the CPU at load and runs as F32 on the GPU.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Literal

import ml_dtypes
import numpy as np

from ..errors import QuantFormatError
from . import ggml, kquants, mx
from .ggml import Codec

# format -> kernel-name suffix; the instantiation lists are RF_FOR_EACH_*_FORMAT in kernels/rf_quant.h
GPU_KERNEL_SUFFIX: dict[str, str] = {
    "F32": "f32", "F16": "f16", "BF16": "bf16",
    "Q4_0": "q4_0", "Q4_1": "q4_1", "Q5_0": "q5_0", "Q5_1": "q5_1", "Q8_0": "q8_0",
    "Q2_K": "q2_k", "Q3_K": "q3_k", "Q4_K": "q4_k", "Q5_K": "q5_k", "Q6_K": "q6_k",
    "IQ4_NL": "iq4_nl", "IQ4_XS": "iq4_xs", "MXFP4": "mxfp4",
    "MXINT8": "mx_int8", "MXFP4_E2M1": "mx_fp4", "MXFP6_E2M3": "mx_fp6_e2m3",
    "MXFP6_E3M2": "mx_fp6_e3m2", "MXFP8_E4M3": "mx_fp8_e4m3", "MXFP8_E5M2": "mx_fp8_e5m2",
}
_PLAIN = {"F32", "F16", "BF16"}
# name -> (dequant kernel, matvec kernel)
_GPU_KERNELS: dict[str, tuple[str | None, str | None]] = {
    name: ("dequant_plain" if name in _PLAIN else f"dequant_{s}", f"matvec_{s}")
    for name, s in GPU_KERNEL_SUFFIX.items()
}

# One line per type users meet; the rest get a generic line from their sizes.
_DESCRIPTIONS: dict[str, str] = {
    "F32": "IEEE float32",
    "F16": "IEEE float16",
    "BF16": "bfloat16",
    "F64": "IEEE float64",
    "I8": "int8 (read as float)",
    "I16": "int16 (read as float)",
    "I32": "int32 (read as float)",
    "I64": "int64 (read as float)",
    "F8_E4M3": "OCP FP8 E4M3 (float8_e4m3fn; safetensors F8_E4M3)",
    "F8_E5M2": "OCP FP8 E5M2 (safetensors F8_E5M2)",
    "F8_E4M3FNUZ": "FP8 E4M3 FNUZ, bias 8, MI300's native FP8",
    "F8_E5M2FNUZ": "FP8 E5M2 FNUZ, bias 16, MI300's native FP8",
    "Q4_0": "32 x 4-bit, f16 scale (x - 8) * d",
    "Q4_1": "32 x 4-bit, f16 scale and min",
    "Q5_0": "32 x 5-bit, f16 scale (x - 16) * d",
    "Q5_1": "32 x 5-bit, f16 scale and min",
    "Q8_0": "32 x int8, f16 scale",
    "Q2_K": "k-quant super-block of 256: 16 x 16 2-bit, 4-bit sub-scales and mins",
    "Q3_K": "k-quant super-block of 256: 16 x 16 3-bit, 6-bit sub-scales",
    "Q4_K": "k-quant super-block of 256: 8 x 32 4-bit, 6-bit sub-scales and mins",
    "Q5_K": "k-quant super-block of 256: 8 x 32 5-bit, 6-bit sub-scales and mins",
    "Q6_K": "k-quant super-block of 256: 16 x 16 6-bit, int8 sub-scales",
    "IQ4_NL": "32 x 4-bit indices into a non-linear 16-value table, f16 scale",
    "IQ4_XS": "super-block of 256: 8 x 32 IQ4_NL indices, 6-bit sub-scales",
    "MXFP4": "GGUF MXFP4: E8M0 scale + 32 FP4 E2M1 (elements 0-15 low nibbles, 16-31 high)",
    "NVFP4": "NVIDIA FP4: 4 x 16 FP4 E2M1 with UE4M3 sub-scales",
    "TQ1_0": "ternary, 1.69 bits/weight",
    "TQ2_0": "ternary, 2 bits/weight",
}


# Plain FP8 element types as safetensors names them: no scale of their own
# (a per-tensor scale, if any, is applied by whoever loads the checkpoint).
FP8_DTYPES: dict[str, np.dtype] = {
    "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2),
    "F8_E4M3FNUZ": np.dtype(ml_dtypes.float8_e4m3fnuz),
    "F8_E5M2FNUZ": np.dtype(ml_dtypes.float8_e5m2fnuz),
}


@dataclass(frozen=True)
class QuantFormat:
    """One tensor type: its block geometry, where it comes from, and how to decode it.

    ``decode`` maps a ``uint8`` array of rows ``(n_rows, row_bytes)`` to
    ``float32`` ``(n_rows, row_elements)``; ``encode`` the reverse (None when we
    cannot quantize to this type).
    """

    name: str
    block_size: int                   # elements per block
    type_size: int                    # bytes per block
    gguf_type: int | None             # GGMLQuantizationType value, None for non-GGUF types
    kind: Literal["float", "block"]
    description: str
    dequant_kernel: str | None = None
    matvec_kernel: str | None = None
    dtype: np.dtype | None = None     # element dtype of "float" kinds
    decode: Codec | None = field(default=None, repr=False, compare=False)
    encode: Codec | None = field(default=None, repr=False, compare=False)

    @property
    def bits_per_weight(self) -> float:
        return 8.0 * self.type_size / self.block_size

    @property
    def can_quantize(self) -> bool:
        return self.encode is not None


def _make(name: str, block_size: int, type_size: int, gguf_type: int | None, kind: str,
          description: str, **kw) -> QuantFormat:
    dequant_kernel, matvec_kernel = _GPU_KERNELS.get(name, (None, None))
    return QuantFormat(name, block_size, type_size, gguf_type, kind, description,  # type: ignore[arg-type]
                       dequant_kernel, matvec_kernel, **kw)


def formats() -> dict[str, QuantFormat]:
    """All registered formats by name (a copy: the registry itself is read-only)."""
    return dict(_registry())


@functools.cache
def _registry() -> dict[str, QuantFormat]:
    """Built once, on first use (probing gguf.quants costs ~0.1 s)."""
    from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

    out: dict[str, QuantFormat] = {}
    for name, dtype in ggml.PLAIN_DTYPES.items():
        qtype = GGMLQuantizationType[name]
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        out[name] = _make(name, block_size, type_size, int(qtype), "float", _DESCRIPTIONS[name],
                          dtype=dtype, decode=ggml.plain_decoder(dtype), encode=ggml.plain_encoder(dtype))
    for name, dtype in FP8_DTYPES.items():
        out[name] = _make(name, 1, 1, None, "float", _DESCRIPTIONS[name],
                          dtype=dtype, decode=ggml.plain_decoder(dtype), encode=ggml.plain_encoder(dtype))
    for name, (qtype, can_quantize) in ggml.block_types().items():
        block_size, type_size = GGML_QUANT_SIZES[qtype]
        desc = _DESCRIPTIONS.get(name, f"GGUF block type: {block_size} weights in {type_size} bytes")
        out[name] = _make(name, block_size, type_size, int(qtype), "block", desc,
                          decode=ggml.gguf_decoder(qtype),
                          encode=_gguf_block_encoder(name, qtype, can_quantize))
    for name, elem in mx.ELEMENTS.items():
        out[name] = _make(name, mx.BLOCK, elem.type_size, None, "block",
                          elem.description + "; 32-element blocks, E8M0 scale first",
                          decode=mx.decoder(name), encode=mx.encoder(name))
    return out


def _gguf_block_encoder(name: str, qtype, can_quantize: bool) -> Codec | None:
    """gguf.quants' encoder where it has one, else our simple k-quant reference encoders."""
    if can_quantize:
        return ggml.gguf_encoder(qtype)
    if name in kquants.ENCODERS:
        return kquants.encoder(name)
    return None


def get_format(qtype: str | QuantFormat) -> QuantFormat:
    """The format called ``qtype`` (case-insensitive); QuantFormatError lists the known ones."""
    if isinstance(qtype, QuantFormat):
        return qtype
    fmts = _registry()
    fmt = fmts.get(str(qtype).upper()) if isinstance(qtype, str) else None
    if fmt is None:
        raise QuantFormatError(
            f"unknown quant type {qtype!r}: expected one of {', '.join(sorted(fmts))}")
    return fmt


def from_gguf_type(type_id: int) -> QuantFormat:
    """The format for a GGUF tensor type id (``ggml_type``)."""
    for fmt in _registry().values():
        if fmt.gguf_type == type_id:
            return fmt
    try:
        from gguf.constants import GGMLQuantizationType

        what = f"GGUF tensor type {GGMLQuantizationType(type_id).name} ({type_id}) is not supported"
    except ValueError:
        what = f"unknown GGUF tensor type id {type_id}"
    supported = sorted((f.gguf_type, f.name) for f in formats().values() if f.gguf_type is not None)
    raise QuantFormatError(
        f"{what}: expected one of {', '.join(f'{n} ({i})' for i, n in supported)}")
