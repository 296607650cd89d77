"""Linear over a batch of T rows on quantised 7B weights: the matvec per 8 rows, the batch kernels, dequant + GEMM.

Q4_0 rows take kernels/mmq_frag.hip (``mmq/<per_sm>``), next to kernels/mmq.hip's staged kernel (``staged/2``).

    PYTHONPATH=. python3 benchmarks/mmq_bench.py [--formats Q4_0,Q4_K] [--rows 8,16,32,64,128,256,512]
                                                [--per-sm 1,2,4] [--json out.json]

LLaMA-7B projection shapes (q|k|v and gate|up joined as the backend joins them), random blocks, random
activations; each cell is the mean of --reps launches queued behind a spinning kernel (so Python's launch time
does not count) and timed with CUDA events, after a warm-up.
GB/s counts the weight bytes once (the traffic that bounds a decode step). It says from which T the
dequant + GEMM overtakes the mmq kernel (the backend's ``mmq_max``) and which K split fills the GPU.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SHAPES = {"qkv": (12288, 4096), "o": (4096, 4096), "gate_up": (22016, 4096), "down": (4096, 11008)}


_SPIN = r"""extern "C" __global__ void spin(long long cycles) {
    const long long t0 = clock64();
    while (clock64() - t0 < cycles) {}
}"""


def _time(cp, fn, reps: int) -> float:
    """GPU microseconds per call: the calls queue behind a spinning kernel, so the launches' host time
    (tens of microseconds in Python) hides behind the GPU's and the events time the kernels alone."""
    fn()
    cp.cuda.Device().synchronize()
    spin = cp.RawKernel(_SPIN, "spin")
    spin((1,), (1,), (np.int64(60_000_000),))      # ~30 ms at ~2 GHz: longer than enqueueing the reps
    a, b = cp.cuda.Event(), cp.cuda.Event()
    a.record()
    for _ in range(reps):
        fn()
    b.record()
    b.synchronize()
    return cp.cuda.get_elapsed_time(a, b) * 1e3 / reps


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--formats", default="Q4_0,Q4_K,Q8_0")
    ap.add_argument("--rows", default="8,9,16,32,64,128,256,512")
    ap.add_argument("--per-sm", default="1,2,4", help="mmq K-split targets (blocks per multiprocessor)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help=f"of {', '.join(SHAPES)}")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--frag-min-blocks", type=lambda t: [int(v) for v in t.split(",") if v], default=[],
                    help="also time mmq_frag.hip with __launch_bounds__ asking for these blocks per SM")
    ap.add_argument("--json", help="write the cells here")
    a = ap.parse_args(argv)
    import cupy as cp

    from rocmforge.backends.cupy_backend import CupyBackend
    from rocmforge.quant.samples import random_blocks

    be = CupyBackend()
    rng = np.random.default_rng(0)
    cells = []
    print(f"{'fmt':6} {'shape':8} {'T':>4} {'path':12} {'us':>9} {'GB/s':>7}")
    for q in a.formats.split(","):
        for name in a.shapes.split(","):
            N, K = SHAPES[name]
            w = be.weight_from_array(q, (N, K), random_blocks(q, (N, K), N + K))
            nbytes = int(w.data.size)
            for T in (int(t) for t in a.rows.split(",")):
                x = be.upload((rng.standard_normal((T, K)) * 0.5).astype(np.float32))
                paths = {}
                if T <= 64:
                    paths["matvec/8"] = dict(mmq=False, mv_batch_max=64)
                for p in (int(v) for v in a.per_sm.split(",")):
                    paths[f"mmq/{p}"] = dict(mmq=True, mmq_max=1 << 20, mmq_per_sm=p, mmq_bn=None, mmq_frag=True)
                paths["mmq-bn64/2"] = dict(mmq=True, mmq_max=1 << 20, mmq_per_sm=2, mmq_bn=64, mmq_frag=True)
                if w.kernel == "q4_0t":      # the staged kernel next to the operands-from-tiles one
                    paths["staged/2"] = dict(mmq=True, mmq_max=1 << 20, mmq_per_sm=2, mmq_bn=None, mmq_frag=False)
                    for b in a.frag_min_blocks:     # registers capped for more resident blocks
                        paths[f"frag-minb{b}/2"] = dict(mmq=True, mmq_max=1 << 20, mmq_per_sm=2, mmq_bn=None,
                                                        mmq_frag=True, mmq_defines=(("RF_FRAG_MIN_BLOCKS", b),))
                paths["gemm"] = dict(mmq=False, mv_batch_max=0)
                for label, attrs in paths.items():
                    if (T <= 8 and label != "matvec/8") or (T > 64 and label in ("mmq-bn64/2", "staged/2")) \
                            or (T > 64 and label.startswith("frag-")):
                        continue
                    attrs.setdefault("mmq_defines", ())
                    for k, v in attrs.items():
                        setattr(be, k, v)
                    be._act_q8 = None
                    us = _time(cp, lambda x=x, w=w: (setattr(be, "_act_q8", None), be.linear(x, w)), a.reps)
                    cells.append(dict(format=q, shape=name, N=N, K=K, T=T, path=label, us=us,
                                      gbps=nbytes / us / 1e3))
                    print(f"{q:6} {name:8} {T:4d} {label:12} {us:9.1f} {nbytes / us / 1e3:7.0f}", flush=True)
    be.mmq, be.mmq_max, be.mmq_per_sm, be.mv_batch_max, be.mmq_bn, be.mmq_frag = True, 64, 2, 64, None, True
    be.mmq_defines = ()
    if a.json:
        Path(a.json).write_text(json.dumps(cells, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
