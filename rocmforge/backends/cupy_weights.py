"""How weights live on the GPU: which kernels read each format, the GpuWeight record, the arena.

Matrices stay in their file format (or the tiled regrouping of rocmforge/backends/gpu_layouts.py),
sub-allocated from a few large device chunks; 1-D tensors (norms, biases) are float32 arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..quant.formats import GPU_KERNEL_SUFFIX

# quant-registry format name -> kernel suffix (matvec_<s>, dequant_<s>) of kernels/rf_quant.h
# Which kernel runs a format is the quant registry's (GPU_KERNEL_SUFFIX); how it runs is ours:
# block formats whose elements are exact int8 multiples of a power of two take the int8-activation
# dp4a matvec; those decoded to floats (rf_fgroup_*) take a float matvec against float32 x.
FGROUP_KERNELS: dict[str, str] = {q: GPU_KERNEL_SUFFIX[q] for q in ("MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2")}
BLOCK_KERNELS: dict[str, str] = {q: s for q, s in GPU_KERNEL_SUFFIX.items()
                                 if q not in FGROUP_KERNELS and q not in ("F32", "F16", "BF16")}
# OCP MX formats (E8M0 scale in byte 0 of every block): dequant/matvec on the GPU
MX_FORMATS = {"MXINT8", "MXFP4_E2M1", "MXFP6_E2M3", "MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2"}
# plain formats: kernel suffix and the dequant_plain "kind"
FLOAT_KERNELS: dict[str, tuple[str, int]] = {"F32": ("f32", 0), "F16": ("f16", 1), "BF16": ("bf16", 2)}

# formats whose values can pass the fp16 range (E8M0 scales up to 2^127): prefill GEMM in float32.
# OCP MX weights decide per tensor at upload (GpuWeight.f32_gemm: largest scale x largest element).
F32_GEMM = {"MXFP4"}
_F16_MAX = 65504.0

MATVEC_MAX_T = 8          # must equal RF_MV_MAXT in kernels/matvec.hip
MATVEC_ROWS = 4           # warps per matvec block
MATVEC_RPW = 2            # rows per warp of the block-format matvecs (RF_MV_RPW; H100 sweep, RESULTS.md)
MATVEC_UNROLL = 1         # groups per lane loaded ahead (RF_MV_UNROLL)
_ARENA_CHUNK = 256 << 20
_ALIGN = 256


@dataclass
class GpuWeight:
    """A weight on the GPU in its file format: ``data`` is a uint8 view of the raw bytes."""

    qtype: str                 # registry name of the format on the GPU
    shape: tuple[int, ...]     # NumPy order: (..., rows, K)
    data: Any                  # cupy uint8 (n_bytes,)
    row_bytes: int
    f32_gemm: bool = False     # prefill GEMM in float32 (dequantised values may pass the fp16 range)
    tiled: str | None = None   # kernel suffix of the tiled layout the rows were regrouped into (gpu_layouts)

    @property
    def kernel(self) -> str | None:
        """Suffix of the matvec_/dequant_ kernels that read this weight (block formats)."""
        return self.tiled or BLOCK_KERNELS.get(self.qtype) or FGROUP_KERNELS.get(self.qtype)

    @property
    def K(self) -> int:
        return self.shape[-1]

    @property
    def rows(self) -> int:
        return int(np.prod(self.shape[:-1], dtype=np.int64))

    def typed(self, cp):
        """F32/F16 data as a typed (..., K) array view (float formats only)."""
        dt = {"F32": cp.float32, "F16": cp.float16}[self.qtype]
        return self.data.view(dt).reshape(self.shape)

    def expert(self, e: int) -> GpuWeight:
        """Expert ``e`` of an (E, rows, K) weight, as a 2-D weight (a view, no copy)."""
        per = int(np.prod(self.shape[1:-1], dtype=np.int64)) * self.row_bytes
        return GpuWeight(self.qtype, tuple(self.shape[1:]), self.data[e * per:(e + 1) * per], self.row_bytes,
                         self.f32_gemm, self.tiled)


class _Arena:
    """Bump allocator over a few large device chunks (weights live as long as the backend)."""

    def __init__(self, cp):
        self.cp = cp
        self.chunk = None
        self.off = 0

    def alloc(self, n: int):
        cp = self.cp
        n_al = (n + _ALIGN - 1) // _ALIGN * _ALIGN
        if n_al > _ARENA_CHUNK // 4:
            return cp.empty(n_al, cp.uint8)[:n]
        if self.chunk is None or self.off + n_al > self.chunk.size:
            self.chunk = cp.empty(_ARENA_CHUNK, cp.uint8)
            self.off = 0
        view = self.chunk[self.off:self.off + n]
        self.off += n_al
        return view


def _null():
    return np.uint64(0)


def _needs_f32_gemm(qtype: str, host: np.ndarray) -> bool:
    """Whether dequantised values of this tensor may pass the fp16 range (prefill GEMM in float32)."""
    if qtype in F32_GEMM:
        return True
    if qtype not in MX_FORMATS or host.size == 0:
        return False
    from ..quant import mx

    elem = mx.ELEMENTS[qtype]
    scales = host.reshape(-1, elem.type_size)[:, 0]
    finite = scales[scales != mx.SCALE_NAN]
    if finite.size == 0:
        return False
    return elem.max_value * 2.0 ** (int(finite.max()) - mx.E8M0_BIAS) > _F16_MAX
