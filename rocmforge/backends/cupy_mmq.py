"""Linear over a batch of 9..``mmq_max`` rows on the quantised weights: the tiled kernel of kernels/mmq.hip.

The matvec reads the weights once per 8 rows and is bound by its dp4a dot products from about 16 rows
on; ``mmq`` stages a tile of decoded weights once for up to 64 rows and runs the integer dots on the
tensor cores where the GPU has them (the same integers and float steps elsewhere). A matrix of few
row tiles (4096 outputs = 64 tiles) fills the GPU's multiprocessors only with its K range split across
blocks; the partial sums are then added in split order by ``mmq_reduce``, so a result never depends on
timing. Q4_0's tiles take kernels/mmq_frag.hip instead: its lanes load their mma operands straight
from the tiles and only the activations are staged.
"""

from __future__ import annotations

import numpy as np

BM = 64                           # RF_MMQ_BM of kernels/mmq.hip (and RF_FRAG_BM of mmq_frag.hip)
THREADS = 128                     # RF_MMQ_THREADS
BLOCKS_PER_SM = 2                 # split K until the launch has about this many blocks per multiprocessor
# (columns, groups per stage) of a block, RF_MMQ_BN / RF_MMQ_BG, by the batch's rows: few columns keep
# few accumulators and leave the shared memory for longer stages
TILES = ((16, 8), (32, 8), (64, 4))
# layouts whose lanes load their tensor-core operands straight from the weight tiles
# (kernels/mmq_frag.hip: only the activations staged, 8 groups per stage)
FRAG_KERNELS = frozenset({"q4_0t"})
FRAG_GROUPS = 8


def tile_for(T: int, bn: int | None = None) -> tuple[int, int]:
    """(RF_MMQ_BN, RF_MMQ_BG) for T rows (``bn`` forces the column count, for sweeps)."""
    for n, g in TILES:
        if (bn is None and T <= n) or n == bn:
            return n, g
    return TILES[-1]


def splits(n_sm: int, N: int, T: int, K: int, per_sm: int = BLOCKS_PER_SM, bn: int = 64,
           bg: int = 4) -> tuple[int, int]:
    """(splits, groups per split) for an (N, K) weight and T rows: enough blocks to fill ``n_sm``
    multiprocessors ``per_sm`` times over, each split a whole number of staged group sets."""
    BG = bg
    ng = K // 32
    stages = -(-ng // BG)
    tiles = -(-N // BM) * -(-T // bn)
    s = max(1, min(stages, -(-n_sm * per_sm // tiles)))
    gps = -(-stages // s) * BG
    return -(-ng // gps), gps


def mmq(be, x, w, bias=None, act_defines=()):
    """y (T, N) float32 = x (T, K) . w^T for a block-format GpuWeight ``w`` (its RfGroup decoder).

    ``act_defines``: the matvec module's, whose quantize_act_q8 makes the int8 activation (shared
    with the matvecs through the backend's activation cache); ``be.mmq_defines`` compile mmq.hip
    (``RF_MMQ_NO_MMA`` takes the plain-thread path on NVIDIA too, for tests)."""
    N, K = w.shape[-2], w.K
    T = x.shape[0]
    bn, bg = tile_for(T, be.mmq_bn)
    if be.mmq_frag and w.kernel in FRAG_KERNELS:
        file, name, bg = "mmq_frag.hip", f"mmq_frag_{w.kernel}", FRAG_GROUPS
        defines = (("RF_FRAG_BN", bn), *be.mmq_defines)
    else:
        file, name = "mmq.hip", f"mmq_{w.kernel}"
        defines = (("RF_MMQ_BN", bn), ("RF_MMQ_BG", bg), *be.mmq_defines)
    xq, xd, xs = be._quantize_act(x, act_defines)
    s, gps = splits(be.n_sm, N, T, K, be.mmq_per_sm, bn, bg)
    y = be._out((T, N))
    b = np.uint64(0) if bias is None else bias
    grid = (-(-N // BM), s, -(-T // bn))
    target = y if s == 1 else be._out((s * T, N))
    be._launch(file, name, grid, (THREADS,),
               (w.data, np.int64(w.row_bytes), xq, xd, xs, target, b, np.int32(N), np.int32(K), np.int32(T),
                np.int32(gps)), defines)
    if s > 1:
        reduce = "mmq_frag_reduce" if file == "mmq_frag.hip" else "mmq_reduce"
        be._launch(file, reduce, (be._grid1d(T * N),), (256,),
                   (target, y, b, np.int32(N), np.int32(T), np.int32(s)), defines)
    return y
