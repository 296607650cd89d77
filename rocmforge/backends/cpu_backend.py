"""The CPU backend: quantised weights stay quantised; decode reads the blocks with Numba kernels.

``CpuBackend`` is the NumPy backend with one change: a 2-D weight in a block format the kernels
read (:data:`rocmforge.backends.cpu_kernels.FORMATS`) is kept as the file's bytes (a
:class:`QuantWeight`, a view of the memory map: no float copy), and

* ``linear`` with at most :attr:`CpuBackend.max_kernel_rows` token rows (decode, small batches)
  runs the int8 matvec kernel straight from the blocks, except inside a prefill's forward, whose
  last-row head stays in float like the rest of it (:meth:`CpuBackend.forward_scope`);
* longer inputs (prefill) dequantise the weight in row chunks (:mod:`rocmforge.backends.cpu_prefill`,
  vectorised block dequantisers, chunks dealt to both cores) and multiply each chunk with BLAS, so
  no float copy of a whole matrix lives longer than a call;
* ``embedding`` decodes only the rows it is asked for;
* rms_norm, add + rms_norm, rope and decode attention over a float32 cache run as Numba kernels
  (:mod:`rocmforge.backends.cpu_ops`), act * mul as NumPy in one buffer.

Norm weights, biases, float matrices and everything the kernels do not read (3-D expert
stacks, other block types) go through the NumPy backend unchanged, as do all other ops.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os

import numpy as np

from .numpy_backend import NumpyBackend, NumpyKVCache

log = logging.getLogger(__name__)

PREFILL_CHUNK = 1 << 20          # weights dequantised at a time on the BLAS path (4 MiB of float32)
_EMPTY = np.zeros(0, np.float32)


class QuantWeight:
    """A 2-D weight kept as raw blocks: up to three row blocks of one format (q|k|v, gate|up joined
    without a copy), each a uint8 (rows, row_bytes) view of the file."""

    __slots__ = ("qtype", "fid", "shape", "parts", "raw", "packed")

    def __init__(self, qtype: str, fid: int, shape: tuple[int, int], parts: list[np.ndarray]):
        self.qtype, self.fid, self.shape = qtype, fid, shape
        empty = parts[0][:0]
        self.parts = tuple(parts) + (empty,) * (3 - len(parts))
        self.raw = parts
        self.packed = None       # the decode matvec's layout (cpu_packed.PackedWeight), made at first use

    @property
    def ndim(self) -> int:
        return 2

    @property
    def nbytes(self) -> int:
        return sum(int(p.nbytes) for p in self.raw)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        """The float32 rows ``idx`` (int64 indices into the joined rows)."""
        from .cpu_kernels import kernels

        k = kernels()
        out = np.empty((len(idx), self.shape[1]), np.float32)
        start = 0
        for part in self.raw:
            sel = (idx >= start) & (idx < start + part.shape[0])
            if sel.any():
                local = np.ascontiguousarray(idx[sel] - start, dtype=np.int64)
                buf = np.empty((len(local), self.shape[1]), np.float32)
                k.rows(self.fid, part, local, buf)
                out[sel] = buf
            start += part.shape[0]
        return out

    def dequantize(self) -> np.ndarray:
        return self.rows(np.arange(self.shape[0], dtype=np.int64))

    def __array__(self, dtype=None, copy=None):
        # anything outside linear/embedding that reads the weight as an array gets the floats
        a = self.dequantize()
        return a if dtype is None else a.astype(dtype)

    def __getitem__(self, key):
        if isinstance(key, (np.ndarray, list)) and np.asarray(key).dtype.kind in "iu":
            return self.rows(np.asarray(key, np.int64).reshape(-1)).reshape(*np.shape(key), self.shape[1])
        return self.dequantize()[key]

    def __repr__(self) -> str:
        return f"QuantWeight({self.qtype}, {self.shape}, {len(self.raw)} part(s))"


class CpuBackend(NumpyBackend):
    name = "cpu"
    device = "cpu"
    # token rows up to which linear() runs the int8 kernels (each row re-reads the weights from
    # cache, so past a few rows dequantise + BLAS wins; measured on SmolLM2, see RESULTS.md)
    max_kernel_rows = int(os.environ.get("ROCMFORGE_CPU_KERNEL_ROWS", "8"))

    def __init__(self):
        from . import cpu_kernels, cpu_ops, cpu_packed, cpu_prefill

        # modules held here: an import statement in linear() costs ~2 us a call, ~120 calls a token
        self._ck, self._ops, self._pk, self._pf = cpu_kernels, cpu_ops, cpu_packed, cpu_prefill
        self.kernels = cpu_kernels.kernels()       # compiled, or loaded from numba's disk cache
        self._blas = None                          # threadpoolctl's controller, made at the first forward
        self._float_rows = False                   # inside a prefill forward: linear in float (forward_scope)

    @contextlib.contextmanager
    def forward_scope(self, n_rows):
        """A forward of more than max_kernel_rows rows (a prefill) runs every linear in float, its
        last-row head too: the int8 activations of the decode kernels move logits by ~1e-3 of their
        norm, enough to flip a near tie at a prompt's first token (SmolLM2's README chat answer: "The"
        led "L" by 0.08), so a prompt's first token is the float reference's."""
        before, self._float_rows = self._float_rows, n_rows > self.max_kernel_rows
        try:
            with self._blas_scope(n_rows):
                yield
        finally:
            self._float_rows = before

    def _blas_scope(self, n_rows):
        # BLAS at one thread: the prefill GEMMs are split over threads by cpu_prefill itself, and
        # OpenBLAS's own workers spin ~0.1 s after each call, taking a core from numba's kernels
        # (SmolLM2 pp128 210 vs 320 t/s, and the decode after it 70 vs 86 t/s). ROCMFORGE_BLAS_THREADS
        # still sets the count.
        if os.environ.get("ROCMFORGE_BLAS_THREADS"):
            return super().forward_scope(n_rows)
        if n_rows <= self.max_kernel_rows:       # decode runs no BLAS; the limit costs ~50 us a step
            return contextlib.nullcontext()
        if self._blas is None:
            from threadpoolctl import ThreadpoolController

            self._blas = ThreadpoolController()
        return self._blas.limit(limits=1, user_api="blas")

    def describe(self) -> str:
        ck = self._ck
        from .cpu_simd import isa

        secs = ck.compile_seconds or 0.0
        return (f"numba {ck.numba.__version__} int8 kernels ({ck.numba.threading_layer()}, "
                f"{self.kernels.nthreads} threads, {isa()}; ready in {secs:.1f} s): decode matvecs for T <= "
                f"{self.max_kernel_rows} read Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 from the file's blocks, Q4_K repacked to "
                f"nibbles per 32, the other integer formats repacked to int8 codes per 16; a prefill runs "
                f"in float, its row chunks dequantised for BLAS (one BLAS thread per core); norms, rope and "
                f"decode attention as numba kernels")

    # -- weights
    def _quant(self, raws) -> QuantWeight | None:
        q0 = raws[0].qtype
        if not self._ck.supported(q0) or any(r.qtype != q0 or len(r.shape) != 2 for r in raws):
            return None
        K = raws[0].shape[1]
        if any(r.shape[1] != K for r in raws) or len(raws) > 3:
            return None
        parts = [np.ascontiguousarray(r.data).view(np.uint8).reshape(r.shape[0], -1) for r in raws]
        return QuantWeight(q0, self._ck.FORMATS[q0], (sum(r.shape[0] for r in raws), K), parts)

    def weight(self, raw):
        q = self._quant([raw]) if len(raw.shape) == 2 else None
        return q if q is not None else super().weight(raw)

    def fuse_weights(self, raws):
        if len({r.qtype for r in raws}) == 1 and self._ck.supported(raws[0].qtype):
            return self._quant(raws)
        if any(self._ck.supported(r.qtype) and len(r.shape) == 2 for r in raws):
            return None                 # mixed formats: keep them apart (each stays quantised)
        return super().fuse_weights(raws)

    # -- ops that read weights
    def embedding(self, w, ids):
        if not isinstance(w, QuantWeight):
            return super().embedding(w, ids)
        idx = np.asarray(ids, np.int64).reshape(-1)
        if (len(idx) > self.max_kernel_rows or w.fid >= 20 or not len(idx) or idx.min() < 0
                or idx.max() >= w.shape[0] or (w.packed is None and w.qtype not in self._pk.RAW_FORMATS)):
            return w.rows(idx)
        if w.packed is None:             # the raw layout reads the file's blocks: no copy to make
            w.packed = self._pk.pack(w.qtype, w.fid, w.raw, w.shape[1])
        # a decode step's rows one at a time through the block dequantisers (the row decoders' parallel
        # region took 0.1-1 ms a token)
        out = np.empty((len(idx), w.shape[1]), np.float32)
        for i, r in enumerate(idx.tolist()):
            self._pf.dequantize_rows(w.packed, r, r + 1, out[i:i + 1])
        return out

    def linear(self, x, w, bias=None):
        if not isinstance(w, QuantWeight):
            return super().linear(x, w, bias)
        x = np.ascontiguousarray(x, dtype=np.float32)
        T = x.shape[0]
        N, K = w.shape
        if w.fid < 20 and w.packed is None:      # integer formats: the decode layout, made at first use
            w.packed = self._pk.pack(w.qtype, w.fid, w.raw, K)
        y = np.empty((T, N), np.float32)
        if T <= self.max_kernel_rows and not self._float_rows:
            b = _EMPTY if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
            if w.fid < 20:       # the layout's vectorised int8 matvec
                self._pk.matvec(w.packed, x, b, y, self.kernels.nthreads)
            else:
                self.kernels.matvec(w.fid, w.parts, x, b, y)
            return y
        if w.fid < 20 and w.packed.off == 0:      # BLAS on chunks the block dequantisers write
            self._pf.linear(w.packed, x, y, self.kernels.nthreads)
            if bias is not None:
                y += bias
            return y
        step = max(1, PREFILL_CHUNK // K)
        start = 0
        for part in w.raw:
            for r0 in range(0, part.shape[0], step):
                r1 = min(part.shape[0], r0 + step)
                chunk = np.empty((r1 - r0, K), np.float32)
                self.kernels.rows(w.fid, part, np.arange(r0, r1, dtype=np.int64), chunk)
                np.matmul(x, chunk.T, out=y[:, start + r0:start + r1])
            start += part.shape[0]
        if bias is not None:
            y += bias
        return y

    # -- float ops: cpu_ops' Numba kernels (one pass, no temporaries); attention only for decode-sized
    # inputs over a float32 cache, everything else through the NumPy backend
    def _small(self, x) -> bool:
        return x.shape[0] <= self.max_kernel_rows

    def rms_norm(self, x, w, eps):
        if x.dtype != np.float32:
            return super().rms_norm(x, w, eps)
        x2 = np.ascontiguousarray(x).reshape(-1, x.shape[-1])
        out = np.empty_like(x2)
        self._ops.rms_norm_rows(x2, _EMPTY if w is None else w, w is not None, float(eps), out)
        return out.reshape(x.shape)

    def add_rms_norm(self, a, b, w, eps):
        if a.ndim != 2 or a.shape != b.shape or a.dtype != np.float32 or b.dtype != np.float32:
            return super().add_rms_norm(a, b, w, eps)
        s, y = np.empty_like(a), np.empty_like(a)
        self._ops.add_rms_norm_rows(a, b, _EMPTY if w is None else w, w is not None, float(eps), s, y)
        return s, y

    def rope(self, x, positions, inv_freq, style, rot_dim, mscale=1.0):
        if style not in ("normal", "neox") or x.dtype != np.float32:
            return super().rope(x, positions, inv_freq, style, rot_dim, mscale)
        out = np.empty(x.shape, np.float32)
        self._ops.rope_rows(x, np.asarray(positions, np.int64), np.asarray(inv_freq, np.float64), style == "neox",
                            int(rot_dim), float(mscale), out)
        return out

    def rope_qk(self, q, k, positions, inv_freq, style, rot_dim, mscale=1.0):
        return (self.rope(q, positions, inv_freq, style, rot_dim, mscale),
                self.rope(k, positions, inv_freq, style, rot_dim, mscale))

    def act_mul(self, g, u, kind):
        # NumpyBackend.act's expressions step by step in one buffer: the same float32 operations in
        # the same order (bit for bit its result; gelu_tanh's cube as two multiplies, within rounding),
        # without its temporaries (numba's scalar tanh was slower than NumPy's vectorised one: 14 vs
        # 4 us at 1536 wide)
        if kind not in ("silu", "gelu_tanh", "sigmoid") or g.dtype != np.float32 or g.shape != u.shape:
            return super().act_mul(g, u, kind)
        if kind == "gelu_tanh":
            t = g * g           # g ** 3 is NumPy's float power: 18 ms at Gemma 3's (128, 2048), this 0.3 ms
            t *= g
            t *= 0.044715
            t += g
            t *= math.sqrt(2.0 / math.pi)
        else:
            t = g * 0.5
        np.tanh(t, out=t)
        t += 1.0
        if kind == "gelu_tanh":
            out = g * 0.5
            out *= t
        else:
            t *= 0.5
            out = np.multiply(g, t, out=t) if kind == "silu" else t
        out *= u
        return out

    def attention(self, q, k, v, cache, layer, pos0, scale, window=0, softcap=0.0, alibi=None, sinks=None,
                  chunk=0):
        if (type(cache) is not NumpyKVCache or cache.dtype != np.float32 or alibi is not None or sinks is not None
                or chunk or not self._small(q) or q.dtype != np.float32):
            return super().attention(q, k, v, cache, layer, pos0, scale, window, softcap, alibi, sinks, chunk)
        cache.store(layer, pos0, k, v)
        out = np.empty((*q.shape[:2], cache.v[layer].shape[-1]), np.float32)
        self._ops.attend_cached(q, cache.k[layer], cache.v[layer], int(pos0), np.float32(scale), int(window),
                                np.float32(softcap), self.kernels.nthreads, out)
        return out
