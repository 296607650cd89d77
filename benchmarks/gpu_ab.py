"""A/B of GPU backend settings on one model: pp/tg (rocmforge bench's measure) per variant, same run.

    PYTHONPATH=. python3 benchmarks/gpu_ab.py MODEL.gguf --variant base: --variant flat:tiles=0,fuse=0 \\
        [--prompt 512 --gen 128 --repeat 3 --profile --json out.json]

A variant is ``name:attr=value,...`` of CupyBackend attributes (tiles, fuse, graphs, mv_rpw, mv_unroll,
mv_rows, act_cache, ...), set after the model is opened and before its weights are uploaded, so
layout settings (tiles, fuse) take effect. Each variant loads the model afresh. ``--profile`` adds the
per-kernel table of one decode step (rocmforge bench --profile's) for every variant.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_variant(text: str) -> tuple[str, dict]:
    name, _, spec = text.partition(":")
    attrs = {}
    for item in filter(None, spec.split(",")):
        key, _, val = item.partition("=")
        attrs[key.strip()] = int(val) if val.strip().lstrip("-").isdigit() else val.strip()
    return name, attrs


def batched_decode(model, n: int, n_prompt: int, n_gen: int) -> float:
    """Aggregate tokens/s of ``n`` sequences decoding together (Session.feed_batch, one step for all)."""
    import numpy as np

    from rocmforge.cli.bench import random_prompt
    from rocmforge.model import Session

    sessions = [model.new_session(n_prompt + n_gen + 2) for _ in range(n)]
    last = [s.feed(random_prompt(model, n_prompt, seed=i)) for i, s in enumerate(sessions)]
    steps = max(8, n_gen // 4)
    last = Session.feed_batch(sessions, [[int(np.argmax(lg))] for lg in last])   # warm-up: compiles this T's kernels
    model.backend.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        last = Session.feed_batch(sessions, [[int(np.argmax(lg))] for lg in last])
    model.backend.synchronize()
    tps = n * steps / (time.perf_counter() - t0)
    print(f"  batched decode x{n}: {tps:8.1f} t/s aggregate ({steps} steps, eager)", flush=True)
    return tps


def run_variant(path: str, attrs: dict, a) -> dict:
    import rocmforge
    from rocmforge.cli.bench import measure, random_prompt

    t0 = time.time()
    model = rocmforge.load_model(path, device="gpu", tokenizer=False)
    for k, v in attrs.items():
        if not hasattr(model.backend, k):
            raise SystemExit(f"CupyBackend has no attribute {k!r}")
        setattr(model.backend, k, v)
    model.prepare()
    model.backend.synchronize()
    load_s = time.time() - t0
    r = measure(model, a.prompt, a.gen, a.repeat)
    r["load_s"] = load_s
    r["gpu_mem_bytes"] = int(model.backend.cp.get_default_memory_pool().used_bytes())
    if a.batch:
        r["batched"] = {n: batched_decode(model, n, a.prompt, a.gen) for n in a.batch}
    if a.profile:
        from rocmforge.backends.cupy_profile import format_table, profile_decode

        prof = profile_decode(model, random_prompt(model, a.prompt))
        r["profile"] = prof.to_dict()
        print(format_table(prof), flush=True)
    del model
    gc.collect()
    return r


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--variant", action="append", required=True, help="name:attr=value,... (repeatable)")
    ap.add_argument("--prompt", type=int, default=512)
    ap.add_argument("--gen", type=int, default=128)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--batch", type=lambda t: [int(v) for v in t.split(",")], default=[],
                    help="comma list of batch sizes: aggregate decode tokens/s of that many sequences at once")
    ap.add_argument("--json")
    a = ap.parse_args()
    res = {}
    for text in a.variant:
        name, attrs = parse_variant(text)
        r = run_variant(a.model, attrs, a)
        res[name] = r
        print(f"{name:12s} {attrs}: pp{a.prompt} {r['pp_tps']:9.1f} t/s  tg{a.gen} {r['tg_tps']:7.1f} t/s  "
              f"(tg runs {', '.join(f'{x:.1f}' for x in r['tg_runs'])}; GPU pool {r['gpu_mem_bytes'] / 1e9:.2f} GB)",
              flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
