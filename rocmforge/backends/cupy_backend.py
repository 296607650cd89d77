"""The GPU backend: kernels/*.hip run through CuPy ``RawModule`` (hipRTC on ROCm, NVRTC on CUDA).

CuPy is imported when a ``CupyBackend`` is made, never at ``import rocmforge``.
Kernel sources are read with ``importlib.resources`` from ``rocmforge.kernels``
(the top-level ``kernels/`` folder of a source checkout as a fallback), their
``#include "rf_*.h"`` lines inlined, and compiled on first use with the
device's warp size passed as ``-DRF_WARP_SIZE``; modules are cached per
(file, defines).

Weights stay quantised on the GPU (:class:`GpuWeight`: the raw GGUF block
bytes, sub-allocated from a few large arena chunks); so do the OCP MX formats
of rocmforge.quant.mx (MXINT8, MXFP4_E2M1, MXFP6_E2M3 through the int8 dp4a
matvec; MXFP8_E4M3/E5M2 and MXFP6_E3M2 through a float matvec). ``linear``
(rocmforge/backends/cupy_linear.py) runs a fused dequant+matvec kernel per format
for up to ``MATVEC_MAX_T`` rows (int8 activations and dp4a for block formats),
the batch kernels up to 64 rows, and past that (prefill) dequantises the weight
to fp16 for one BLAS GEMM. The KV cache is fp16 and preallocated for ``max_tokens``.

Single-token decode of one sequence (``Session.feed`` of one token) replays a
captured CUDA/HIP graph of the whole step (:meth:`CupyBackend.decode_step`,
rocmforge/backends/cupy_graph.py): in "step mode" embedding, rope, KV append
and decode attention read the token id and position from a small device
buffer instead of kernel arguments, so one capture serves every later step.
``ROCMFORGE_GPU_GRAPH=0`` (or ``backend.graphs = False``) keeps every step eager.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DeviceError, RocmforgeError
from .base import Backend
from .cupy_act import CupyActQuant
from .cupy_attention import DECODE_MAX_T, CupyAttention, GpuKVCache  # noqa: F401 - both public here too
from .cupy_delta import CupyDelta
from .cupy_elementwise import ACT_KINDS, CupyElementwise  # noqa: F401 - ACT_KINDS: public here too
from .cupy_linear import CupyLinear
from .cupy_moe import CupyMoe
from .cupy_paged import CupyPaged
from .cupy_rowops import CupyRowOps
from .cupy_source import (
    _inline_includes,
    kernel_source,  # noqa: F401 - public here too
)
from .cupy_state import CupyState
from .cupy_weights import (  # noqa: F401 - the format tables and GpuWeight are public here too
    BLOCK_KERNELS,
    F32_GEMM,
    FGROUP_KERNELS,
    FLOAT_KERNELS,
    MATVEC_MAX_T,
    MATVEC_ROWS,
    MATVEC_RPW,
    MATVEC_UNROLL,
    MX_FORMATS,
    GpuWeight,
    _Arena,
    _needs_f32_gemm,
    _null,
)


class CupyBackend(CupyPaged, CupyAttention, CupyMoe, CupyLinear, CupyElementwise, CupyRowOps, CupyState, CupyDelta,
                  CupyActQuant, Backend):
    name = "cupy"
    device = "gpu"
    queues_work = True

    def __init__(self, poison: bool = False, graphs: bool | None = None):
        """``poison``: fill every output buffer with NaN before a kernel writes it (tests).

        ``graphs``: replay single-token decode steps from a captured graph (default: on unless
        the environment sets ROCMFORGE_GPU_GRAPH=0)."""
        try:
            import cupy as cp
        except ImportError as exc:  # pragma: no cover - get_backend checks first
            raise DeviceError(f"the GPU backend needs CuPy ({exc})") from None
        self.cp = cp
        self.poison = poison
        dev = cp.cuda.Device()
        self.warp = int(dev.attributes["WarpSize"])
        self.n_sm = int(dev.attributes["MultiProcessorCount"])
        self.is_hip = bool(getattr(cp.cuda.runtime, "is_hip", False))
        self._modules: dict[tuple, Any] = {}
        self._kernels: dict[tuple, Any] = {}
        self._arena = _Arena(cp)
        self._small: dict[Any, Any] = {}
        self._pos_host: Any = None     # the last forward's positions (host array) and their device copy
        self._pos_dev: Any = None
        if graphs is None:
            graphs = os.environ.get("ROCMFORGE_GPU_GRAPH", "1").strip().lower() not in ("0", "false", "no", "off")
        self.graphs = bool(graphs)
        # set while a decode step runs in step mode (cupy_graph.StepBuffers): token id and
        # position come from device buffers; ops that need the host mark it on `_step.host`
        self._step: Any = None
        self._rows_of: Any = None       # (segments, device rows, mb) of the forward's batched paged decode
        self._runs_of: Any = None       # (segments, runs) of the forward's paged attention (cupy_paged.py)
        self._no_graph: Any = None   # executors whose steps cannot be captured (weakref.WeakSet)
        # matvec launch shape (benchmarks/gpu_ops.py --sweep tries others); t1: a MAXT=1 module for T = 1
        self.mv_rows, self.mv_rpw, self.mv_unroll, self.mv_t1 = MATVEC_ROWS, MATVEC_RPW, MATVEC_UNROLL, True
        # up to this many rows a linear runs the matvec once per MATVEC_MAX_T rows instead of
        # dequantising the whole matrix for a GEMM: a batched decode step of 9..64 sequences reads the
        # quantised weights ceil(T / 8) times (7B Q4_0, 16 rows on the H200: 2 x 1.7 ms against 20 ms of
        # dequant + cast + GEMM); a prefill chunk past it amortises the dequant over its rows
        self.mv_batch_max = 64
        # token rows per serving step (rocmforge.backends.base.Backend.step_tokens): a 64-request wave
        # of 200-token prompts prefills in two 8192-row steps (~0.4 s each for a 7B on an H200) instead
        # of seven, so a request that started decoding is held up once, not six times; a card of less
        # than 40 GB keeps 2048 (a 7B's 8192-row FFN activations alone take ~1.4 GB)
        self.step_tokens = 8192 if int(dev.mem_info[1]) >= 40 << 30 else 2048
        # 9..mmq_max rows of a block format run kernels/mmq.hip (cupy_mmq.py): the weights read once for
        # up to 64 rows and the integer dots on the tensor cores; off, they take the matvec per 8 rows
        # up to mv_batch_max, as other formats do
        self.mmq = True
        self.mmq_max = 64           # alone dequant + GEMM wins from ~40 rows, in the engine step it lost (RESULTS.md)
        self.mmq_per_sm = 2          # split K to about this many blocks per multiprocessor
        self.mmq_defines: tuple[tuple[str, int], ...] = ()
        self.mmq_bn: int | None = None   # columns per mmq block: None picks by the batch (cupy_mmq.TILES)
        self.mmq_frag = True         # Q4_0 tiles: operands loaded straight from the tiles (mmq_frag.hip)
        self.tiles = True            # regroup blocks into 16-byte aligned tiles at upload (or "Q4_0,Q8_0": those only)
        self.fuse = True             # join same-format q/k/v and gate/up rows into one weight
        self.fuse_steps = 2          # executor: join add + norm within (1) and across (2) layers
        self.gemm_ex = True          # prefill GEMMs write float32 from fp16 operands (cupy_gemm.py)
        self.act_cache = True        # quantise an activation once for the matvecs that share it (q/k/v, gate/up)
        self._act_q8: Any = None     # (x, (xq, xd, xs)) of the last quantised activation
        self._prof: Any = None       # cupy_profile.Profiler while launches are timed (bench --profile)

    # ------------------------------------------------------------ compilation
    def _kernel(self, file: str, name: str, defines: tuple[tuple[str, int], ...] = ()):
        key = (file, name, defines)
        k = self._kernels.get(key)
        if k is None:
            mkey = (file, defines)
            mod = self._modules.get(mkey)
            if mod is None:
                opts = [f"-DRF_WARP_SIZE={self.warp}"] + [f"-D{n}={v}" for n, v in defines]
                if not self.is_hip:
                    opts.append("--std=c++17")
                mod = self.cp.RawModule(code=_inline_includes(file), options=tuple(opts))
                self._modules[mkey] = mod
            k = self._kernels[key] = mod.get_function(name)
        return k

    def _launch(self, file, name, grid, block, args, defines=(), shared=0):
        k = self._kernel(file, name, defines)
        if self._prof is None:
            k(grid, block, args, shared_mem=shared)
        else:
            self._prof.launch(name, k, grid, block, args, shared)

    def _op(self, name, fn, *args, **kw):
        """``fn(*args, **kw)``: a CuPy op of the backend (cuBLAS matmul, cast, ...), timed while profiling."""
        if self._prof is None:
            return fn(*args, **kw)
        return self._prof.op(name, fn, args, kw)

    def _out(self, shape, dtype=None):
        cp = self.cp
        dtype = dtype or cp.float32
        if self.poison and np.dtype(dtype).kind == "f":
            return cp.full(shape, np.nan, dtype)
        if self.poison:
            return cp.full(shape, -7, dtype)
        return cp.empty(shape, dtype)

    def _f32(self, a):
        cp = self.cp
        return cp.ascontiguousarray(a, dtype=cp.float32)

    @staticmethod
    def _grid1d(n: int, threads: int = 256) -> int:
        return max(1, min((n + threads - 1) // threads, 65535 * 8))

    # ------------------------------------------------------------ data movement
    def _needs_host(self, what: str) -> None:
        """An op moved data between host and device inside a forward: such a step is not capturable."""
        if self._step is not None:
            self._step.host = self._step.host or what

    def upload(self, a):
        cp = self.cp
        self._needs_host("upload")
        a = np.asarray(a)
        if a.dtype.kind in "iub":
            return cp.asarray(a)
        return cp.asarray(a, dtype=cp.float32)

    def to_numpy(self, a):
        if isinstance(a, np.ndarray):
            return a
        self._needs_host("to_numpy")
        return self.cp.asnumpy(a)

    def synchronize(self) -> None:
        self.cp.cuda.Device().synchronize()

    def weight(self, raw):
        """1-D tensors (norms, biases) -> float32 arrays; matrices stay in their file format."""
        self._needs_host("weight upload")
        shape = tuple(int(s) for s in raw.shape)
        if len(shape) <= 1:
            return self._upload_f32(raw)
        qtype, host = self._host_bytes(raw)
        return self._upload(qtype, shape, host, getattr(raw, "name", "?"))

    def fuse_weights(self, raws):
        """Rows of same-format matrices joined (q|k|v, gate|up): one matvec and one GEMM instead of
        several. Biases join as float32. Different formats or widths stay apart (None)."""
        if not self.fuse:
            return None
        self._needs_host("weight upload")
        shapes = [tuple(int(s) for s in r.shape) for r in raws]
        if all(len(sh) == 1 for sh in shapes):
            return self._upload_f32_host(np.concatenate([np.asarray(r.dequantize(), np.float32).reshape(-1)
                                                         for r in raws]), "fused bias")
        if any(len(sh) != 2 for sh in shapes) or len({sh[1] for sh in shapes}) != 1:
            return None
        parts = [self._host_bytes(r) for r in raws]
        if len({q for q, _ in parts}) != 1:
            return None
        shape = (sum(sh[0] for sh in shapes), shapes[0][1])
        return self._upload(parts[0][0], shape, np.concatenate([h for _, h in parts]),
                            "+".join(getattr(r, "name", "?") for r in raws))

    def _host_bytes(self, raw) -> tuple[str, np.ndarray]:
        """(format on the GPU, raw bytes on the host) of a matrix."""
        qtype = raw.qtype.upper()
        if qtype in BLOCK_KERNELS or qtype in FLOAT_KERNELS or qtype in FGROUP_KERNELS:
            data = raw.data
            if isinstance(data, np.ndarray):
                return qtype, np.ascontiguousarray(data).reshape(-1).view(np.uint8)
            return qtype, np.frombuffer(memoryview(data).cast("B"), np.uint8)
        # no GPU decoder for this format yet: decode once on the CPU, keep float32
        return "F32", np.ascontiguousarray(raw.dequantize(), dtype=np.float32).reshape(-1).view(np.uint8)

    def _upload_f32(self, raw):
        return self._upload_f32_host(np.ascontiguousarray(raw.dequantize(), dtype=np.float32),
                                     getattr(raw, "name", "?"))

    def _upload_f32_host(self, a: np.ndarray, name: str):
        try:
            return self.cp.asarray(a)
        except self.cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceError(f"out of GPU memory while uploading tensor {name!r} ({exc}); use a smaller "
                              "model or device='cpu'") from None

    def _upload(self, qtype: str, shape: tuple[int, ...], host: np.ndarray, name: str) -> GpuWeight:
        """Raw bytes of a ``qtype`` matrix -> a GpuWeight in the arena, rows tiled where the format has a
        tiled layout (gpu_layouts) and ``self.tiles`` is on."""
        from .gpu_layouts import tile_for, tile_rows

        rows = int(np.prod(shape[:-1], dtype=np.int64))
        if host.size % max(rows, 1):
            raise RocmforgeError(f"tensor {name!r}: {host.size} bytes do not split into {rows} rows")
        f32_gemm = _needs_f32_gemm(qtype, host)
        wanted = bool(self.tiles) if isinstance(self.tiles, (bool, int)) else qtype in str(self.tiles).split(",")
        tile = tile_for(qtype, shape[-1]) if wanted else None
        if tile is not None:
            host = tile_rows(host, rows, tile)
        try:
            buf = self._arena.alloc(host.size)
            buf.set(host)
        except self.cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceError(f"out of GPU memory while uploading tensor {name!r} ({exc}); use a smaller "
                              "model or device='cpu'") from None
        return GpuWeight(qtype, shape, buf, host.size // max(rows, 1), f32_gemm, tile.suffix if tile else None)

    def weight_from_array(self, qtype: str, shape, raw_bytes: np.ndarray) -> GpuWeight:
        """Upload raw bytes of a ``qtype`` tensor of ``shape`` (tests, benchmarks)."""

        @dataclass
        class _R:
            name: str
            qtype: str
            shape: tuple
            data: np.ndarray

            def dequantize(self):
                from ..quant import dequantize

                return dequantize(self.data, self.qtype, self.shape)

        return self.weight(_R("array", qtype, tuple(shape), raw_bytes))

    # ------------------------------------------------------------ ops
    def embedding(self, w, ids):
        cp = self.cp
        if self._step is not None:            # a captured decode step: the token id lives on the device
            dev = self._step.tok
        else:
            dev = cp.asarray(np.asarray(ids, dtype=np.int64).reshape(-1))
        if not isinstance(w, GpuWeight):
            return cp.ascontiguousarray(w[dev], dtype=cp.float32)
        return self.dequant(w, rows=dev, dtype="f32")

    def decode_step(self, executor, ids, cache, pos0):
        """Host logits (1, vocab) of one token through the sequence's captured decode graph.

        None when this step must run eagerly (graphs off, not capturable, first step of the
        sequence, ...): the caller then runs ``executor.forward`` as usual."""
        if not self.graphs:
            return None
        from .cupy_graph import decode_step

        return decode_step(self, executor, ids, cache, pos0)
