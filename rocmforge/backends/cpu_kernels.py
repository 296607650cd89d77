"""CPU kernels that read quantised blocks directly (Numba): the float-decoded formats' matvec and row
dequantisation (the per-format row decoders they call live in :mod:`rocmforge.backends.cpu_decoders`;
the integer formats' decode matvecs, with the int8 activation quantisation, in
:mod:`rocmforge.backends.cpu_matvec` over the layouts :mod:`rocmforge.backends.cpu_packed` makes).

The arithmetic is the GPU's (kernels/rf_quant.h, kernels/matvec.hip), row by row:

* a weight row of K inputs decodes to small integers ``q[K]`` (int8) and, per 16 inputs, a scale
  ``d`` and an offset ``m`` (float32), so that ``weight_i = d[i/16] * q_i - m[i/16]``;
* an activation row is quantised per block of 32 (llama.cpp's Q8 blocks): ``xd = amax / 127``,
  ``xq_i = rint(x_i / xd)`` (int8), and per half-block ``xs = xd * sum(xq)``.

The OCP formats whose element values are not small integers (MXFP8 E4M3/E5M2, MXFP6 E3M2) decode
to float32 weights instead and take a float dot product against float x, summed per block of 32.

:mod:`rocmforge.backends.cpu_reference` is the NumPy statement of the same arithmetic; the tests
hold these kernels to it bit for bit (``fastmath=False``: LLVM neither reorders nor contracts).

Compilation: every kernel takes the format id as a run-time argument and branches once per row,
so each kernel compiles once for all formats (tens of seconds, the first time on a machine);
``cache=True`` keeps the machine code on disk and later starts load it (well under a second).
:func:`kernels` compiles or loads them and hands back their entry points, which skip the
dispatcher's per-call typing of the arguments.
"""

from __future__ import annotations

import logging
import os
import threading
import time

# How numba's OpenMP workers wait between parallel regions. A decode step launches ~120 matvecs
# tens of microseconds apart: a sleeping (passive) worker takes ~60 us to wake on the 2-core VMs,
# more than a small matrix takes, while a spinning one starts at once (SmolLM2's 3072x576 matvec:
# 278 us passive, 82 us spinning). So the workers spin for a bounded while (GOMP_SPINCOUNT, about
# a millisecond) and then sleep: between decode steps and requests they free the core. On a machine
# other busy processes share, a spinning worker that gets descheduled stalls the next kernel for a
# scheduler tick (a 90 us matvec took 12 ms on 2 busy cores): OMP_WAIT_POLICY=PASSIVE is the knob
# for that case. Setting OMP_WAIT_POLICY or GOMP_SPINCOUNT yourself overrides this.
if "OMP_WAIT_POLICY" not in os.environ and "GOMP_SPINCOUNT" not in os.environ:
    os.environ["GOMP_SPINCOUNT"] = os.environ.get("ROCMFORGE_CPU_SPIN", "20000")

import numba  # noqa: E402
import numpy as np
from numba import njit, prange  # noqa: E402

log = logging.getLogger(__name__)

_F32 = np.float32

from .cpu_decoders import (  # noqa: E402, F401 - the format tables are public here too
    FLOAT_FORMATS,
    FORMATS,
    INT_FORMATS,
    decode_row,
    decode_row_float,
)

# ---- matvec of the float-decoded formats: y (T, N) = x (T, K) @ W.T (+ bias) for T = 1..MAX_T ----
# W is up to three row blocks of one format (the q|k|v or gate|up weights of a layer, joined
# without a copy): rows 0..N0 of W0, then W1, then W2. One prange iteration per thread decodes
# each of its rows once and dots it with every column t.

@njit(inline="always", cache=True)
def _pick_row(W0, W1, W2, r):
    n0, n1 = W0.shape[0], W1.shape[0]
    if r < n0:
        return W0[r]
    if r < n0 + n1:
        return W1[r - n0]
    return W2[r - n0 - n1]


@njit(parallel=True, cache=True, fastmath=False)
def matvec_float(fmt, W0, W1, W2, x, bias, y, nthreads):
    T, K = x.shape
    N = W0.shape[0] + W1.shape[0] + W2.shape[0]
    nchunk = max(1, min(N, 4 * nthreads))
    for c in prange(nchunk):
        w = np.empty(K, np.float32)
        for r in range(c * N // nchunk, (c + 1) * N // nchunk):
            decode_row_float(fmt, _pick_row(W0, W1, W2, r), w)
            for t in range(T):
                acc = _F32(0.0)
                for g in range(K // 32):
                    s = _F32(0.0)
                    for i in range(32 * g, 32 * g + 32):
                        s += w[i] * x[t, i]
                    acc += s
                y[t, r] = acc + bias[r] if bias.shape[0] else acc


# ---- dequantisation (prefill's BLAS path, embedding rows) -------------------------------------

@njit(parallel=True, cache=True, fastmath=False)
def dequant_rows(fmt, W, rows, out, nthreads):
    """out[i] = the float32 weights of row rows[i] of W (d * q - m, or the float decode)."""
    n = rows.shape[0]
    K = out.shape[1]
    nchunk = max(1, min(n, 4 * nthreads))
    for c in prange(nchunk):
        q = np.empty(K, np.int8)
        d = np.empty(K // 16, np.float32)
        m = np.empty(K // 16, np.float32)
        for i in range(c * n // nchunk, (c + 1) * n // nchunk):
            if fmt >= 20:
                decode_row_float(fmt, W[rows[i]], out[i])
            else:
                decode_row(fmt, W[rows[i]], q, d, m)
                for k in range(K):
                    out[i, k] = d[k >> 4] * _F32(q[k]) - m[k >> 4]


@njit(cache=True)
def decode_rows_int(fmt, W, q, d, m):
    """Every row of W -> q (N, K), d, m (N, K/16): what the reference computes with."""
    for r in range(W.shape[0]):
        decode_row(fmt, W[r], q[r], d[r], m[r])


# ---- entry points -----------------------------------------------------------------------------

_U8 = np.zeros((0, 64), np.uint8)
_F32_2D = np.zeros((1, 64), np.float32)
_NO_BIAS = np.zeros(0, np.float32)


class Kernels:
    """The compiled kernels, called through their entry points (no per-call argument typing).

    Arguments must have exactly the probe's types: uint8 C-contiguous 2-D weight blocks, float32
    C-contiguous activations and outputs, an int64 row list."""

    def __init__(self):
        probe_y = np.zeros((1, 0), np.float32)
        self._mv_float = _entry(matvec_float, (20, _U8, _U8, _U8, _F32_2D, _NO_BIAS, probe_y, 1))
        self._rows = _entry(dequant_rows, (0, _U8, np.zeros(0, np.int64), np.zeros((0, 64), np.float32), 1))
        self.nthreads = numba.get_num_threads()

    def matvec(self, fid: int, parts: tuple, x: np.ndarray, bias: np.ndarray, y: np.ndarray) -> None:
        """y (T, N) = x (T, K) @ W.T + bias for W the rows of ``parts`` (three uint8 (n_i, row_bytes) arrays)
        of a float-decoded format (FLOAT_FORMATS; the integer formats' matvecs are cpu_packed's)."""
        if fid < 20:
            raise ValueError(f"format id {fid} is an integer format: its matvec is cpu_packed.matvec")
        self._mv_float(fid, parts[0], parts[1], parts[2], x, bias, y, self.nthreads)

    def rows(self, fid: int, W: np.ndarray, rows: np.ndarray, out: np.ndarray) -> None:
        """out (len(rows), K) = the float32 weights of rows ``rows`` of W."""
        self._rows(fid, W, rows, out, self.nthreads)


def _entry(dispatcher, probe: tuple):
    """Compile (or load from the disk cache) ``dispatcher`` for the probe's types; its entry point."""
    dispatcher(*probe)
    (cres,) = dispatcher.overloads.values()
    return cres.entry_point


_lock = threading.Lock()
_kernels: Kernels | None = None
compile_seconds: float | None = None     # how long the first kernels() call took (compile or cache load)


def kernels() -> Kernels:
    """The kernels, compiled on first use (cached on disk: a later process only loads them)."""
    global _kernels, compile_seconds
    with _lock:
        if _kernels is None:
            t0 = time.perf_counter()
            _kernels = Kernels()
            compile_seconds = time.perf_counter() - t0
            log.info("CPU kernels (numba %s) ready in %.2f s", numba.__version__, compile_seconds)
        return _kernels


def supported(name: str) -> bool:
    """Whether the CPU kernels read format ``name`` directly."""
    return name in FORMATS
