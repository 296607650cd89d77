"""``rocmforge bench MODEL``: prefill and decode tokens per second (llama-bench's pp/tg)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import numpy as np

from .common import add_model_args, load


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill and decode tokens/s",
                       description="Time a prefill of --prompt random tokens (pp) and --gen greedy decode steps "
                                   "after it (tg), like llama-bench. Weights are prepared before timing; each "
                                   "figure is the median of --repeat runs.")
    add_model_args(p)
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens for the prefill test (default 512)")
    p.add_argument("--gen", type=int, default=128, help="decode steps for the generation test (default 128)")
    p.add_argument("--repeat", type=int, default=3, help="runs per test; the median is reported (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=run)


def measure(model, n_prompt: int, n_gen: int, repeat: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    vocab = int(model.hparams["vocab_size"])
    prompt = rng.integers(10, vocab, size=n_prompt).tolist()
    pp, tg = [], []
    for _ in range(repeat):
        s = model.new_session(n_prompt + n_gen + 1)
        model.backend.synchronize()
        t0 = time.perf_counter()
        logits = s.feed(prompt)
        model.backend.synchronize()
        t1 = time.perf_counter()
        for _ in range(n_gen):
            logits = s.feed([int(np.argmax(logits))])
        model.backend.synchronize()
        t2 = time.perf_counter()
        pp.append(n_prompt / (t1 - t0))
        tg.append(n_gen / (t2 - t1) if n_gen else 0.0)
    return {"pp_tokens": n_prompt, "tg_tokens": n_gen, "pp_tps": statistics.median(pp),
            "tg_tps": statistics.median(tg), "pp_runs": pp, "tg_runs": tg}


def run(args) -> int:
    model = load(args, tokenizer=False)
    res = measure(model, args.prompt, args.gen, args.repeat, args.seed)
    res.update({"model": model.path, "arch": model.arch, "quant_mix": model.quant_mix(),
                "backend": model.backend.name, "device": model.backend.device, "machine": platform.machine(),
                "python": platform.python_version()})
    if args.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"{model.arch} {model.path} on {model.backend.name}", file=sys.stderr)
        print(f"pp{args.prompt}: {res['pp_tps']:8.1f} t/s")
        print(f"tg{args.gen}: {res['tg_tps']:8.1f} t/s")
    return 0
