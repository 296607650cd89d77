"""The integer formats' decode weights in the layouts :mod:`rocmforge.backends.cpu_matvec` reads, and
the matvec that picks a kernel for one.

* ``raw``: Q4_0, Q4_1, Q5_0, Q5_1 and Q8_0 are read straight from the file's blocks (the memory map:
  no copy, so resident memory stays near the file's size);
* ``nib32``: Q4_K (4-bit codes, one scale d and offset m per 32 after its 6-bit sub-block scales) is
  repacked once at first use to nibbles per 32, byte j of block g holding code 32g + j in its low
  nibble and 32g + 16 + j in its high one, with d and m as float32 (0.75 bytes per weight);
* ``i8_16``: the other integer formats, decoded once to int8 codes with d and m per 16 (m dropped
  when all zero).

The arithmetic is :func:`rocmforge.backends.cpu_reference.matvec_lanes`' bit for bit (the lane
arithmetic of :mod:`rocmforge.backends.cpu_simd`'s row intrinsics): one scale and offset per 32 for raw
and nib32, per 16 for i8_16; :func:`lane_reference_codes` gives the codes it takes for each layout.
"""

from __future__ import annotations

import threading

import numpy as np

from . import cpu_matvec as mv
from .cpu_kernels import decode_rows_int

_F32 = np.float32
NIB32_FORMATS = ("Q4_K",)
RAW_FORMATS = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


class PackedWeight:
    """One weight's rows in a kernel layout: ``kind`` "raw" (``parts``: the file's row blocks of format
    ``fid``), "nib32" (codes (N, K/2) uint8 holding q + ``off``, d and m (N, K/32), the offset folded into
    m) or "i8_16" (codes (N, K) int8,
    d and m (N, K/16); m of shape (N, 0) when all zero)."""

    __slots__ = ("kind", "codes", "d", "m", "off", "shape", "fid", "parts", "entries")

    def __init__(self, kind, codes, d, m, off, shape, fid=-1, parts=()):
        self.kind, self.codes, self.d, self.m, self.off, self.shape = kind, codes, d, m, off, shape
        self.fid, self.parts = fid, parts       # raw: the format id and three uint8 row blocks of the file
        self.entries: dict = {}                 # (parallel, bias writeable) -> compiled entry point

    @property
    def nbytes(self) -> int:
        """Bytes this layout adds to the file's (0 for raw: it reads the memory map)."""
        if self.kind == "raw":
            return 0
        return int(self.codes.nbytes + self.d.nbytes + self.m.nbytes)


# the offset the raw kernels add to Q4_0's and Q5_0's signed codes (they multiply the unsigned ones)
RAW_CODE_OFFSET = {"Q4_0": 8, "Q5_0": 16}


def lane_reference_codes(qtype: str, q: np.ndarray, d: np.ndarray, m: np.ndarray, off: int = 0) -> tuple:
    """The (codes, d, m) that :func:`rocmforge.backends.cpu_reference.matvec_lanes` takes for a weight of
    format ``qtype`` decoded to q, d, m per 16 (cpu_kernels.decode_rows_int): what its kernel layout
    multiplies. Raw and nib32 (``off``: the PackedWeight's) use one d and m per 32 with the code offset
    folded into m; i8_16 the codes and scales as decoded (m empty when all zero, as packed)."""
    if qtype in RAW_FORMATS or qtype in NIB32_FORMATS:
        off = RAW_CODE_OFFSET.get(qtype, off)
        d32 = np.ascontiguousarray(d[:, 0::2])
        return q.astype(np.int16) + off, d32, m[:, 0::2] + _F32(off) * d32
    return q, d, (m if m.any() else np.zeros((q.shape[0], 0), np.float32))


def pack(qtype: str, fid: int, parts, K: int) -> PackedWeight:
    """The rows of ``parts`` (uint8 row blocks of format ``qtype``) in their kernel layout."""
    N = sum(int(p.shape[0]) for p in parts)
    if qtype in RAW_FORMATS:
        blocks = [np.ascontiguousarray(p) for p in parts]
        blocks += [blocks[0][:0]] * (3 - len(blocks))
        return PackedWeight("raw", None, None, None, 0, (N, K), fid, tuple(blocks))
    q = np.empty((N, K), np.int8)
    d = np.empty((N, K // 16), np.float32)
    m = np.empty((N, K // 16), np.float32)
    r = 0
    for p in parts:
        n = int(p.shape[0])
        if n:
            decode_rows_int(fid, np.ascontiguousarray(p), q[r:r + n], d[r:r + n], m[r:r + n])
        r += n
    if qtype in NIB32_FORMATS:
        off = 8 if q.min(initial=0) < 0 else 0
        paired = np.array_equal(d[:, 0::2], d[:, 1::2]) and np.array_equal(m[:, 0::2], m[:, 1::2])
        if paired and 0 <= int(q.min(initial=0)) + off and int(q.max(initial=0)) + off <= 15:
            u = (q.astype(np.int16) + off).astype(np.uint8).reshape(N, K // 32, 2, 16)
            codes = (u[:, :, 0, :] | (u[:, :, 1, :] << 4)).reshape(N, K // 2)
            d32 = np.ascontiguousarray(d[:, 0::2])
            # the kernel multiplies the unsigned codes q + off: weight = d * (q + off) - (m + off * d)
            m32 = np.ascontiguousarray(m[:, 0::2] + _F32(off) * d32)
            return PackedWeight("nib32", np.ascontiguousarray(codes), d32, m32, off, (N, K))
    if not m.any():
        m = np.zeros((N, 0), np.float32)
    return PackedWeight("i8_16", q, d, m, 0, (N, K))



# ---- the matvec ------------------------------------------------------------------------------

# multiply-adds below which a matvec runs on the calling thread alone: even with spinning workers
# (cpu_kernels sets GOMP_SPINCOUNT) a region costs a few microseconds, more than a tiny matrix saves
PARALLEL_MIN_MACS = 150_000

_scratch = threading.local()


def _buffers(T: int, K: int) -> tuple:
    """The activation codes' buffers for (T, K), reused by every call of this thread."""
    cache = getattr(_scratch, "bufs", None)
    if cache is None:
        cache = _scratch.bufs = {}
    b = cache.get((T, K))
    if b is None:
        G = K // 32
        b = cache[(T, K)] = (np.empty((T, K), np.int8), np.empty((T, G), _F32), np.empty((T, 2 * G), _F32),
                             np.empty((T, G), np.int32), np.empty((T, G), _F32))
    return b


def _kernel_args(w: PackedWeight, x, bias, y, bufs) -> tuple:
    if w.kind == "raw":
        return (w.fid, *w.parts, x, bias, y, *bufs)
    if w.kind == "nib32":
        return (w.codes, w.d, w.m, x, bias, y, *bufs)
    return (w.codes, w.d, w.m, x, bias, y, *bufs)


_KERNELS = {"raw": (mv.mv_raw, mv.mv_raw_par), "nib32": (mv.mv_nib32, mv.mv_nib32_par),
            "i8_16": (mv.mv_i8_16, mv.mv_i8_16_par)}


def matvec(w: PackedWeight, x: np.ndarray, bias: np.ndarray, y: np.ndarray, nthreads: int) -> None:
    """y (T, N) = x (T, K) @ W.T + bias (bias of length 0: none), x float32 C-contiguous."""
    T, K = x.shape
    par = nthreads > 1 and T * w.shape[0] * K >= PARALLEL_MIN_MACS
    args = _kernel_args(w, x, bias, y, _buffers(T, K))
    if par:
        args = (*args, np.int64(2 * nthreads))
    key = (par, bias.flags.writeable)     # the only argument whose type can change between calls
    entry = w.entries.get(key)
    if entry is None:
        dispatcher = _KERNELS[w.kind][par]
        dispatcher(*args)            # compiles (or loads from numba's disk cache) for these types
        entry = w.entries[key] = _entry_for(dispatcher, args)
        return
    entry(*args)


def _entry_for(dispatcher, args):
    """The compiled entry point of ``dispatcher`` for ``args``' types: later calls skip the typing."""
    sig = tuple(dispatcher.typeof_pyval(a) for a in args)
    return dispatcher.overloads[sig].entry_point
