"""GPU kernel benchmarks: fused dequant+matvec per quant format, and a synthetic 7B-shaped decode step.

    PYTHONPATH=. python3 benchmarks/gpu_ops.py [--json out.json] [--layers 32] [--formats Q4_0,Q4_K]

Matvec: y = W x for one token (T=1), W (N, K) in each format; GB/s counts the
bytes of W (the traffic that bounds decode). Decode step: LLaMA-7B shapes
(d 4096, ff 11008, 32 heads, 32 layers, Q4_K weights, Q6_K head, 512 cached
tokens), every op through CupyBackend, timed with events, eager launches.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
           "IQ4_NL", "IQ4_XS", "MXFP4", "F16", "BF16", "F32",
           "MXINT8", "MXFP4_E2M1", "MXFP6_E2M3", "MXFP6_E3M2", "MXFP8_E4M3", "MXFP8_E5M2"]

# matvec launch configurations for --sweep: name -> CupyBackend attributes
CONFIGS = {
    "legacy": dict(mv_t1=False, act_cache=False, mv_rpw=1, mv_unroll=1),
    "t1": dict(mv_t1=True, act_cache=True, mv_rpw=1, mv_unroll=1),
    "t1-u2": dict(mv_t1=True, act_cache=True, mv_rpw=1, mv_unroll=2),
    "t1-u4": dict(mv_t1=True, act_cache=True, mv_rpw=1, mv_unroll=4),
    "t1-r2": dict(mv_t1=True, act_cache=True, mv_rpw=2, mv_unroll=1),
    "t1-r2-u2": dict(mv_t1=True, act_cache=True, mv_rpw=2, mv_unroll=2),
    "t1-r4": dict(mv_t1=True, act_cache=True, mv_rpw=4, mv_unroll=1),
    "t1-w8": dict(mv_t1=True, act_cache=True, mv_rpw=1, mv_unroll=2, mv_rows=8),
    "t1-r2-u4": dict(mv_t1=True, act_cache=True, mv_rpw=2, mv_unroll=4),
    "t1-r1-u4-w2": dict(mv_t1=True, act_cache=True, mv_rpw=1, mv_unroll=4, mv_rows=2),
    "t1-r2-u2-w8": dict(mv_t1=True, act_cache=True, mv_rpw=2, mv_unroll=2, mv_rows=8),
    "t1-r4-u2": dict(mv_t1=True, act_cache=True, mv_rpw=4, mv_unroll=2),
}


def configure(be, name):
    from rocmforge.backends import cupy_backend as cb

    be.mv_rows = cb.MATVEC_ROWS
    for k, v in CONFIGS[name].items():
        setattr(be, k, v)


def _graph(cp, fn):
    """Capture fn() into a CUDA/HIP graph on a private stream; None when capture is not possible."""
    s = cp.cuda.Stream(non_blocking=True)
    try:
        with s:
            fn()
            fn()
            s.synchronize()
            s.begin_capture()
            try:
                fn()
            finally:
                g = s.end_capture()
        g.launch(stream=s)
        s.synchronize()
        return g, s
    except Exception as exc:  # noqa: BLE001 - report and fall back to eager timing
        print(f"  (graph capture failed: {type(exc).__name__}: {exc})", flush=True)
        return None


def timeit(cp, fn, reps=20, iters=5, graph=True):
    """Seconds per call: median over `iters` samples of `reps` back-to-back calls.

    graph=True replays a captured graph (GPU time without Python launch cost);
    graph=False launches eagerly (what a Python loop pays)."""
    fn()
    stream = cp.cuda.get_current_stream()
    run = fn
    if graph:
        got = _graph(cp, fn)
        if got is None:
            return float("nan")
        g, stream = got
        run = lambda: g.launch(stream=stream)  # noqa: E731
    start, end = cp.cuda.Event(), cp.cuda.Event()
    times = []
    for _ in range(iters):
        start.record(stream)
        for _ in range(reps):
            run()
        end.record(stream)
        end.synchronize()
        times.append(cp.cuda.get_elapsed_time(start, end) * 1e-3 / reps)
    return float(np.median(times))


def bench_matvec(be, cp, formats, shapes, configs=(None,), eager=True, ref=True):
    from rocmforge.quant import nbytes
    from rocmforge.quant.samples import random_blocks

    rows = []
    for (N, K) in shapes:
        # several activation rows, rotated: a fresh x per call (as in decode) is quantised each time
        xs = [be.upload(np.random.default_rng(i).standard_normal((1, K)).astype(np.float32)) for i in range(4)]
        x = xs[0]
        for q in formats:
            raw = random_blocks(q, (N, K), 1)
            w = be.weight_from_array(q, (N, K), raw)
            for cfg in configs:
                if cfg is not None:
                    configure(be, cfg)
                be.linear(x, w)
                be._act_q8 = None
                t = timeit(cp, lambda w=w, xs=xs: [be.linear(xx, w) for xx in xs]) / len(xs)
                te = timeit(cp, lambda w=w, x=x: be.linear(x, w), graph=False) if eager else float("nan")
                b = nbytes(q, (N, K))
                rows.append({"format": q, "N": N, "K": K, "config": cfg, "us": t * 1e6, "GBps": b / t / 1e9,
                             "eager_us": te * 1e6})
                print(f"matvec {q:10s} {N:6d}x{K:<6d} {cfg or '':9s} {t * 1e6:8.1f} us {b / t / 1e9:8.1f} GB/s  "
                      f"(eager {te * 1e6:6.1f} us)", flush=True)
            del w
        if not ref:
            continue
        # reference points: fp16 cuBLAS gemv and a device copy of the same bytes
        w16 = cp.asarray(np.random.default_rng(2).standard_normal((N, K)).astype(np.float16))
        x16 = x.astype(cp.float16)
        t = timeit(cp, lambda w16=w16, x16=x16: w16 @ x16.T)
        rows.append({"format": "cuBLAS-f16", "N": N, "K": K, "us": t * 1e6, "GBps": N * K * 2 / t / 1e9})
        print(f"matvec cuBLAS f16 {N}x{K} {t * 1e6:8.1f} us {N * K * 2 / t / 1e9:8.1f} GB/s", flush=True)
    if not ref:
        return rows
    a = cp.empty(1 << 30, cp.uint8)
    b = cp.empty_like(a)
    t = timeit(cp, lambda: cp.copyto(b, a), reps=5, graph=False)
    rows.append({"format": "copy", "N": 0, "K": 0, "us": t * 1e6, "GBps": 2 * a.size / t / 1e9})
    print(f"device copy 1 GiB: {2 * a.size / t / 1e9:.0f} GB/s (read+write)", flush=True)
    return rows


def bench_small(be, cp):
    """Graph time per launch of the one-row ops a decode step runs between its matvecs."""
    rng = np.random.default_rng(5)
    d, ff, H, D = 4096, 11008, 32, 128
    x = be.upload(rng.standard_normal((1, d)).astype(np.float32))
    y = be.upload(rng.standard_normal((1, d)).astype(np.float32))
    w = be.upload(rng.standard_normal(d).astype(np.float32))
    g = be.upload(rng.standard_normal((1, ff)).astype(np.float32))
    u = be.upload(rng.standard_normal((1, ff)).astype(np.float32))
    q = be.upload(rng.standard_normal((1, H, D)).astype(np.float32))
    pos = be.upload(np.array([100], np.int64))
    inv = (1.0 / (10000.0 ** (np.arange(0, D, 2) / D))).astype(np.float32)
    be.act_cache = False
    ops = {"rms_norm 1x4096": lambda: be.rms_norm(x, w, 1e-5), "add 1x4096": lambda: be.add(x, y),
           "act_mul 1x11008": lambda: be.act_mul(g, u, "silu"), "rope 1x32x128": lambda: be.rope(q, pos, inv, "normal", D),
           "quantize_act 1x4096": lambda: be._quantize_act(x)}
    rows = []
    for name, fn in ops.items():
        t = timeit(cp, lambda fn=fn: [fn() for _ in range(10)]) / 10
        rows.append({"op": name, "us": t * 1e6})
        print(f"small op {name:22s} {t * 1e6:6.2f} us per launch (graph)", flush=True)
    be.act_cache = True
    return rows


def bench_decode(be, cp, n_layer=32, ctx=512, wq="Q4_K", hq="Q6_K", configs=(None,)):
    from rocmforge.quant import nbytes
    from rocmforge.quant.samples import random_blocks

    d, ff, H, Hkv, D, V = 4096, 11008, 32, 32, 128, 32000
    shapes = {"q": (d, d), "k": (Hkv * D, d), "v": (Hkv * D, d), "o": (d, d),
              "gate": (ff, d), "up": (ff, d), "down": (d, ff)}
    proto = {n: random_blocks(wq, s, i) for i, (n, s) in enumerate(shapes.items())}
    layers = [{n: be.weight_from_array(wq, s, proto[n]) for n, s in shapes.items()} for _ in range(n_layer)]
    head = be.weight_from_array(hq, (V, d), random_blocks(hq, (V, d), 9))
    rng = np.random.default_rng(0)
    norm = be.upload(1 + 0.1 * rng.standard_normal(d).astype(np.float32))
    cache = be.new_kv_cache(n_layer, Hkv, D, D, ctx + 64)
    cache.k[...] = 0.01
    cache.v[...] = 0.01
    inv = (1.0 / (10000.0 ** (np.arange(0, D, 2) / D))).astype(np.float32)
    x0 = be.upload(rng.standard_normal((1, d)).astype(np.float32))
    pos = be.upload(np.array([ctx], np.int64))     # static device buffer: the step can be captured

    def step():
        x = x0
        for i, L in enumerate(layers):
            h = be.rms_norm(x, norm, 1e-5)
            q = be.rope(be.linear(h, L["q"]).reshape(1, H, D), pos, inv, "normal", D)
            k = be.rope(be.linear(h, L["k"]).reshape(1, Hkv, D), pos, inv, "normal", D)
            v = be.linear(h, L["v"]).reshape(1, Hkv, D)
            a = be.attention(q, k, v, cache, i, ctx, 1 / math.sqrt(D))
            x = be.add(x, be.linear(a.reshape(1, -1), L["o"]))
            h = be.rms_norm(x, norm, 1e-5)
            x = be.add(x, be.linear(be.act_mul(be.linear(h, L["gate"]), be.linear(h, L["up"]), "silu"), L["down"]))
        return be.linear(be.rms_norm(x, norm, 1e-5), head)

    wbytes = n_layer * sum(nbytes(wq, s) for s in shapes.values()) + nbytes(hq, (V, d))
    kvbytes = n_layer * 2 * ctx * Hkv * D * 2
    outs = []
    for cfg in configs:
        if cfg is not None:
            configure(be, cfg)
        be._act_q8 = None
        t = timeit(cp, step, reps=5, iters=3)
        te = timeit(cp, step, reps=5, iters=3, graph=False) if cfg is None else float("nan")
        out = {"config": cfg, "n_layer": n_layer, "ctx": ctx, "ms": t * 1e3, "tok_s": 1 / t, "eager_ms": te * 1e3,
               "weight_GB": wbytes / 1e9, "GBps": (wbytes + kvbytes) / t / 1e9}
        print(f"decode step 7B {wq} ({n_layer} layers, ctx {ctx}) {cfg or ''}: graph {t * 1e3:.2f} ms = "
              f"{1 / t:.1f} tok/s, {(wbytes + kvbytes) / t / 1e9:.0f} GB/s effective; "
              f"eager {te * 1e3:.2f} ms = {1 / te:.1f} tok/s", flush=True)
        outs.append(out)
    return outs[0] if len(outs) == 1 else outs


def main():
    import cupy as cp

    from rocmforge.backends.cupy_backend import CupyBackend

    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--formats", default=",".join(FORMATS))
    ap.add_argument("--no-decode", action="store_true")
    ap.add_argument("--sweep", help="comma list of matvec configurations (CONFIGS) to compare, or 'all'")
    ap.add_argument("--wq", default="Q4_K", help="weight format of the synthetic decode step")
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="comma list of NxK matvec shapes")
    ap.add_argument("--small", action="store_true", help="also time the one-row ops between the matvecs")
    a = ap.parse_args()
    be = CupyBackend()
    props = cp.cuda.runtime.getDeviceProperties(0)
    card = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    print(f"card: {card}, warp {be.warp}, {be.n_sm} SMs", flush=True)
    t0 = time.time()
    shapes = [tuple(int(v) for v in sh.split("x")) for sh in a.shapes.split(",")]
    small = bench_small(be, cp) if a.small else None
    if a.sweep:
        cfgs = list(CONFIGS) if a.sweep == "all" else a.sweep.split(",")
        res = {"card": card, "matvec": bench_matvec(be, cp, a.formats.split(","), shapes, cfgs, eager=False, ref=False)}
        if not a.no_decode:
            res["decode"] = bench_decode(be, cp, a.layers, wq=a.wq, configs=cfgs)
        summary = {}
        for r in res["matvec"]:
            summary.setdefault(r["config"], []).append(f"{r['format']} {r['N']}: {r['GBps']:.0f}")
        for c, v in summary.items():
            print(f"sweep {c:9s} GB/s  " + ", ".join(v), flush=True)
    else:
        res = {"card": card, "matvec": bench_matvec(be, cp, a.formats.split(","), shapes)}
        if not a.no_decode:
            res["decode"] = bench_decode(be, cp, a.layers, wq=a.wq)
    res["small"] = small
    res["seconds"] = time.time() - t0
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
