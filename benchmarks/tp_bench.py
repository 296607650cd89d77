"""Tensor-parallel scaling: decode tg and prefill pp of a 70B-shaped random Q4_0 model at TP=1, 2, 4, 8.

On a machine with several GPUs (the 70B file is ~40 GB on disk and fits one 141 GB H200 at TP=1):

    PYTHONPATH=. python3 benchmarks/tp_bench.py --workdir /tmp/tp --json > tp.json

Anywhere, in seconds (a tiny shape over CPU ranks: the figures mean nothing, the code path is the same):

    PYTHONPATH=. python3 benchmarks/tp_bench.py --shape tiny --device cpu --tp 1,2 --prompt 32 --gen 8

The file is written once per shape into --workdir by ``gpu_decode_bench.make_llama`` (llama.cpp's Q4_0
mix of random valid blocks: matrices Q4_0, output.weight Q6_K, norms F32). For each TP the model is
loaded with ``load_model(..., tensor_parallel=N)`` and prepared before timing; pp is a prefill of
--prompt random tokens and tg --gen greedy decode steps after it, the median of --repeat runs
(``rocmforge bench``'s measure). One more pass then times every collective (device events on GPUs:
from a collective's start to its end, waiting for the slowest rank included) and reports the
communication time per decode step and per prefill (max and mean over ranks) and the collectives
per step. --check-tokens N compares N greedy tokens and the prompt's logits with TP=1's. TP values
above the GPUs CuPy sees are listed as skipped. --graphs lets TP>1 decode steps replay per-rank graphs
(ROCMFORGE_TP_GRAPHS=1; rocmforge.parallel.runner); TP=1 uses the backend's default (graphs on).

Issue 15's bar: TP=2 >= 1.7x and TP=4 >= 3x TP=1, for tg and for pp.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# make_llama keywords; 70b is Llama-3-70B's published config, 7b Llama-2-7B's
SHAPES: dict[str, dict] = {
    "70b": dict(n_layer=80, d=8192, ff=28672, n_head=64, n_kv=8, vocab=128256, ctx=4096, rope_base=500000.0),
    "7b": dict(n_layer=32, d=4096, ff=11008, n_head=32, n_kv=32, vocab=32000, ctx=4096),
    "tiny": dict(n_layer=2, d=256, ff=512, n_head=8, n_kv=2, vocab=512, ctx=1024),
}
BAR = {2: 1.7, 4: 3.0}                 # minimum speed-up over TP=1
Q4_0 = (32, 18)                        # elements, bytes per block
Q6_K = (256, 210)


def parse_tp(text: str) -> list[int]:
    try:
        tps = sorted({int(t) for t in text.split(",") if t.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--tp {text!r}: expected a comma list of rank counts, e.g. 1,2,4,8") from None
    if not tps or tps[0] < 1:
        raise argparse.ArgumentTypeError(f"--tp {text!r}: rank counts are positive integers")
    return tps


def shape_plan(shape: dict, tp: int) -> dict:
    """How ``shape`` splits over ``tp`` ranks for a Q4_0 file: per-rank sizes and weight bytes, or the problems.

    The same rules as rocmforge.parallel (attention by KV-head groups, KV heads replicated when fewer
    than the ranks, row-parallel o / ffn_down cut at 32-element block boundaries, vocabulary-parallel
    embedding and head when the ranks divide the vocabulary)."""
    d, ff, H, Hkv, V = (shape[k] for k in ("d", "ff", "n_head", "n_kv", "vocab"))
    hd = d // H
    problems = []
    if H % tp:
        problems.append(f"{H} query heads do not split over {tp} ranks")
    if Hkv % tp and tp % Hkv:
        problems.append(f"{Hkv} KV heads neither split over nor replicate to {tp} ranks")
    for what, cols in (("attn_output", d), ("ffn_down", ff)):
        if cols % tp or (cols // tp) % Q4_0[0]:
            problems.append(f"{what}'s {cols} input columns do not split into whole Q4_0 blocks over {tp} ranks")
    kv = Hkv // tp if Hkv % tp == 0 else 1
    hq = H // tp if H % tp == 0 else H
    vocab = V // tp if V % tp == 0 else V

    def q4(rows, cols):
        return rows * cols // Q4_0[0] * Q4_0[1]

    layer = (q4(hq * hd, d) + 2 * q4(kv * hd, d) + q4(d, hq * hd) + 2 * q4(ff // tp, d) + q4(d, ff // tp)
             + 2 * 4 * d)                                  # two F32 norm vectors, whole on every rank
    per_rank = shape["n_layer"] * layer + q4(vocab, d) + vocab * d // Q6_K[0] * Q6_K[1] + 4 * d
    return {"tp": tp, "ok": not problems, "problems": problems, "heads_per_rank": hq, "kv_heads_per_rank": kv,
            "ff_per_rank": ff // tp, "vocab_per_rank": vocab, "weight_bytes_per_rank": per_rank}


def model_path(workdir: str | Path, name: str) -> Path:
    return Path(workdir) / f"tp-{name}-q4_0.gguf"


def write_model(name: str, path: Path) -> Path:
    """Write SHAPES[name] as a Q4_0 GGUF at ``path`` (kept when it is already there and complete)."""
    from gpu_decode_bench import make_llama

    done = path.with_suffix(".gguf.done")
    if path.exists() and done.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.redirect_stdout(sys.stderr):          # stdout is for --json
        make_llama(str(path), qtype="Q4_0", tokenizer=False, **SHAPES[name])
    done.write_text("ok\n")
    return path


def visible_gpus() -> int:
    try:
        import cupy

        return int(cupy.cuda.runtime.getDeviceCount())
    except Exception:  # noqa: BLE001 - no CuPy, no driver, no device: no GPUs
        return 0


def _greedy(model, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    s = model.new_session(len(prompt) + n + 1)
    first = logits = s.feed(prompt)
    toks = []
    for _ in range(n):
        toks.append(int(np.argmax(logits)))
        logits = s.feed([toks[-1]])
    return toks, first


def comm_pass(model, prompt: list[int], n_gen: int) -> dict:
    """One prefill and ``n_gen`` decode steps with every collective timed: per-rank seconds -> ms figures."""
    tp = model.executor
    comms = [b.comm for b in tp.backends]
    for c in comms:
        c.timing = True
    try:
        tp.comm_seconds()                                   # reset
        calls0 = [c.n_calls for c in comms]
        s = model.new_session(len(prompt) + n_gen + 1)
        model.backend.synchronize()
        t0 = time.perf_counter()
        logits = s.feed(prompt)
        model.backend.synchronize()
        t1 = time.perf_counter()
        pp = tp.comm_seconds()
        calls1 = [c.n_calls for c in comms]
        for _ in range(n_gen):
            logits = s.feed([int(np.argmax(logits))])
        model.backend.synchronize()
        t2 = time.perf_counter()
        tg = [x / max(n_gen, 1) for x in tp.comm_seconds()]
    finally:
        for c in comms:
            c.timing = False
    return {"pp_comm_ms_max": 1e3 * max(pp), "pp_comm_ms_mean": 1e3 * statistics.mean(pp),
            "pp_ms": 1e3 * (t1 - t0), "tg_comm_ms_per_step_max": 1e3 * max(tg),
            "tg_comm_ms_per_step_mean": 1e3 * statistics.mean(tg), "tg_ms_per_step": 1e3 * (t2 - t1) / max(n_gen, 1),
            "collectives_per_prefill": calls1[0] - calls0[0],
            "collectives_per_step": (comms[0].n_calls - calls1[0]) / max(n_gen, 1)}


def _devices(model) -> list[tuple]:
    """(cupy, device id) of every GPU the model runs on; [] on the CPU."""
    ranks = getattr(model.executor, "backends", None)
    pairs = [(b.inner, b.device_id) for b in ranks] if ranks else [(model.backend, 0)]
    return [(be.cp, dev) for be, dev in pairs if getattr(be, "cp", None) is not None and dev is not None]


def _release(devices: list[tuple]) -> None:
    """Hand the freed blocks of each GPU's memory pool back (the model must be gone already)."""
    gc.collect()
    for cp, dev in devices:
        with cp.cuda.Device(dev):
            cp.get_default_memory_pool().free_all_blocks()


def run_one(path: Path, tp: int, args, ref: dict | None) -> dict:
    import rocmforge
    from rocmforge.cli.bench import measure, random_prompt

    t0 = time.perf_counter()
    model = rocmforge.load_model(str(path), device=args.device, tokenizer=False, tensor_parallel=tp).prepare()
    model.backend.synchronize()
    res = {"tp": tp, "load_s": time.perf_counter() - t0, "backend": model.backend.name,
           "graphs": bool(getattr(model.backend, "graphs", False))}
    res.update(measure(model, args.prompt, args.gen, args.repeat, args.seed))
    prompt = random_prompt(model, args.prompt, args.seed)
    if tp > 1:
        res["comm"] = comm_pass(model, prompt, args.gen)
    if args.check_tokens:
        toks, logits = _greedy(model, prompt[:16], args.check_tokens)
        res["check"] = {"tokens": toks}
        if ref is not None and "check" in ref:
            want = ref["check"]["tokens"]
            same = next((i for i, (a, b) in enumerate(zip(toks, want)) if a != b), len(want))
            res["check"].update({"tokens_equal_to_tp1": same, "of": len(want)})
            ref_logits = ref["_logits"]
            res["check"]["prompt_logits_nmse_vs_tp1"] = float(
                ((logits - ref_logits) ** 2).sum() / max((ref_logits ** 2).sum(), 1e-30))
        res["_logits"] = logits
    devices = _devices(model)
    del model
    _release(devices)
    return res


def scaling(runs: list[dict]) -> dict:
    base = next((r for r in runs if r["tp"] == 1 and "tg_tps" in r), None)
    out = {}
    for r in runs:
        if base is None or r["tp"] == 1 or "tg_tps" not in r:
            continue
        tg, pp = r["tg_tps"] / base["tg_tps"], r["pp_tps"] / base["pp_tps"]
        bar = BAR.get(r["tp"])
        out[str(r["tp"])] = {"tg_speedup": tg, "pp_speedup": pp, "bar": bar,
                             "meets_bar": None if bar is None else bool(tg >= bar and pp >= bar)}
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("--shape", default="70b", choices=sorted(SHAPES), help="model shape (default 70b)")
    ap.add_argument("--model", help="an existing GGUF to use instead of writing --shape's")
    ap.add_argument("--workdir", default="/tmp/tp-bench", help="where the GGUF goes (70b: ~40 GB)")
    ap.add_argument("--tp", type=parse_tp, default=[1, 2, 4, 8], help="comma list of rank counts (default 1,2,4,8)")
    ap.add_argument("--device", default="gpu", choices=["gpu", "cpu"], help="gpu (default) or cpu ranks")
    ap.add_argument("--prompt", type=int, default=512, help="prefill tokens (default 512: pp512)")
    ap.add_argument("--gen", type=int, default=128, help="decode steps (default 128: tg128)")
    ap.add_argument("--repeat", type=int, default=3, help="runs per figure; the median is reported")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompt")
    ap.add_argument("--check-tokens", type=int, default=0, metavar="N",
                    help="compare N greedy tokens and the prompt's logits with TP=1's (default off)")
    ap.add_argument("--graphs", action="store_true", help="TP>1 decode steps replay per-rank graphs")
    ap.add_argument("--plan-only", action="store_true", help="print how the shape splits and exit")
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shape = SHAPES[args.shape]
    plans = [shape_plan(shape, t) for t in args.tp]
    if args.plan_only:
        print(json.dumps({"shape": args.shape, "dims": shape, "plans": plans}, indent=1))
        return 0
    if args.graphs:
        os.environ["ROCMFORGE_TP_GRAPHS"] = "1"
    os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
    gpus = visible_gpus() if args.device == "gpu" else 0
    path = Path(args.model) if args.model else write_model(args.shape, model_path(args.workdir, args.shape))
    out = {"shape": args.shape, "dims": shape, "file": str(path), "file_gb": path.stat().st_size / 1e9,
           "device": args.device, "gpus": gpus, "prompt": args.prompt, "gen": args.gen, "repeat": args.repeat,
           "nccl_env": {k: v for k, v in os.environ.items() if k.startswith("NCCL_")}, "runs": []}
    ref = None
    for t, plan in zip(args.tp, plans):
        if args.device == "gpu" and t > gpus:
            out["runs"].append({"tp": t, "skipped": f"needs {t} GPUs, {gpus} visible"})
            continue
        if not plan["ok"]:
            out["runs"].append({"tp": t, "skipped": "; ".join(plan["problems"])})
            continue
        r = run_one(path, t, args, ref)
        if t == 1:
            ref = r
        out["runs"].append(r)
        if not args.json:
            comm = r.get("comm", {})
            print(f"TP={t}: pp{args.prompt} {r['pp_tps']:9.1f} t/s   tg{args.gen} {r['tg_tps']:8.1f} t/s"
                  + (f"   comm {comm['tg_comm_ms_per_step_max']:.3f} ms/step (max over ranks), "
                     f"{comm['pp_comm_ms_max']:.2f} ms/prefill" if comm else ""), file=sys.stderr, flush=True)
    for r in out["runs"]:
        r.pop("_logits", None)
    out["scaling"] = scaling(out["runs"])
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out["scaling"].items():
            print(f"TP={k}: tg x{v['tg_speedup']:.2f}, pp x{v['pp_speedup']:.2f}"
                  + (f" (bar x{v['bar']}: {'met' if v['meets_bar'] else 'not met'})" if v["bar"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
