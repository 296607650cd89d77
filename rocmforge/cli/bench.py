"""``rocmforge bench MODEL``: prefill and decode tokens per second (llama-bench's pp/tg)."""

from __future__ import annotations

import json
import platform
import statistics
import sys
import time

import numpy as np

from ..errors import RocmforgeError
from .common import add_model_args, add_parallel_args, load


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill and decode tokens/s",
                       description="Time a prefill of --prompt random tokens (pp) and --gen greedy decode steps "
                                   "after it (tg), like llama-bench. Weights are prepared before timing; each "
                                   "figure is the median of --repeat runs. On the GPU it also reports the graph "
                                   "mode and the decode step's weight bandwidth against the card's copy rate; "
                                   "--profile adds a per-kernel breakdown of one decode step and one prefill.")
    add_model_args(p)
    add_parallel_args(p)
    p.add_argument("--prompt", type=int, default=512, help="prompt tokens for the prefill test (default 512)")
    p.add_argument("--gen", type=int, default=128, help="decode steps for the generation test (default 128)")
    p.add_argument("--repeat", type=int, default=3, help="runs per test; the median is reported (default 3)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.add_argument("--profile", action="store_true",
                   help="GPU only: time every kernel of one decode step (after a prefill of --prompt tokens "
                        "and a few warm-up steps) and of one prefill of --prompt tokens, with CUDA/HIP events; "
                        "decode graphs are off for the profiled steps")
    p.set_defaults(func=run)


def random_prompt(model, n_prompt: int, seed: int = 0) -> list[int]:
    rng = np.random.default_rng(seed)
    vocab = int(model.hparams["vocab_size"])
    return rng.integers(10, vocab, size=n_prompt).tolist()


def measure(model, n_prompt: int, n_gen: int, repeat: int, seed: int = 0) -> dict:
    prompt = random_prompt(model, n_prompt, seed)
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


def _needs_gpu(where: str) -> RocmforgeError:
    return RocmforgeError(f"--profile times GPU kernels and needs the GPU backend: {where}. "
                          "Run 'rocmforge bench MODEL --device gpu --profile' on a machine with a GPU.")


def gpu_figures(model, prompt: list[int], tg_tps: float) -> dict:
    """Graph mode, the decode step's weight bytes and bandwidth, and the card's copy rate.

    Weight bytes are counted over one eager decode step (matvec and embedding rows read, as
    cupy_profile.decode_bytes does); if none were seen (weights kept as plain arrays), the
    model file's size stands in, an over-estimate by its metadata and unused tensors."""
    from ..backends.cupy_profile import copy_bandwidth, decode_bytes

    be = model.backend
    counted = decode_bytes(model, prompt)
    wbytes, source = counted["weight_bytes"], "counted over one eager decode step"
    if not wbytes:
        wbytes, source = int(model.file_size), "model file size (approximation)"
    copy = copy_bandwidth(be.cp)
    gbps = wbytes * tg_tps / 1e9
    return {"graphs": bool(be.graphs), "decode_weight_bytes": wbytes, "decode_weight_bytes_source": source,
            "decode_bytes_all": counted["bytes"], "decode_gbps": gbps, "copy_gbps": copy["gbps"],
            "copy_bytes": copy["bytes"], "decode_bw_fraction": gbps / copy["gbps"] if copy["gbps"] else None}


def run(args) -> int:
    if args.profile and args.device == "cpu":
        raise _needs_gpu("--device is cpu (the default)")
    if args.profile and args.tensor_parallel > 1:
        raise RocmforgeError("--profile times one GPU's kernels; it does not run with --tensor-parallel")
    model = load(args, tokenizer=False)
    gpu = model.backend.device == "gpu"
    if args.profile and not gpu:
        raise _needs_gpu(f"this model runs on the {model.backend.name} backend (--device {args.device} found no GPU)")
    res = measure(model, args.prompt, args.gen, args.repeat, args.seed)
    res.update({"model": model.path, "arch": model.arch, "quant_mix": model.quant_mix(),
                "tensor_parallel": model.tensor_parallel,
                "backend": model.backend.name, "device": model.backend.device, "machine": platform.machine(),
                "python": platform.python_version(), "kv_cache_dtype": model.kv_cache_dtype,
                "kv_cache_bytes": model.kv_cache_bytes(args.prompt + args.gen)})
    if hasattr(model.backend, "describe"):      # the CPU kernels say which kernels run
        res["kernels"] = model.backend.describe()
    profiles = []
    if gpu and model.tensor_parallel == 1:      # the bandwidth figures read one GPU's profile
        prompt = random_prompt(model, args.prompt, args.seed)
        res.update(gpu_figures(model, prompt, res["tg_tps"]))
        if args.profile:
            from ..backends.cupy_profile import profile_decode, profile_prefill

            profiles = [profile_decode(model, prompt), profile_prefill(model, prompt)]
            res["profile"] = {p.what: p.to_dict() for p in profiles}
    if args.json:
        print(json.dumps(res, indent=2))
        return 0
    print(f"{model.arch} {model.path} on {model.backend.name}", file=sys.stderr)
    print(f"pp{args.prompt}: {res['pp_tps']:8.1f} t/s")
    print(f"tg{args.gen}: {res['tg_tps']:8.1f} t/s")
    print(f"KV cache: {res['kv_cache_bytes']:,} bytes ({res['kv_cache_bytes'] / 2**20:.2f} MiB) for "
          f"{args.prompt + args.gen} tokens ({res['kv_cache_dtype']})")
    if "kernels" in res:
        print(f"kernels: {res['kernels']}")
    if gpu and "graphs" in res:
        print(f"graphs: {'on' if res['graphs'] else 'off'} (decode steps "
              f"{'replay a captured graph' if res['graphs'] else 'launch eagerly'})")
        frac = res["decode_bw_fraction"]
        print(f"decode weights: {res['decode_weight_bytes'] / 1e9:.3f} GB/token ({res['decode_weight_bytes_source']})"
              f" -> {res['decode_gbps']:.1f} GB/s at tg"
              + (f", {100 * frac:.1f}% of the copy ceiling" if frac is not None else ""))
        print(f"copy ceiling: {res['copy_gbps']:.1f} GB/s (device-to-device copy of "
              f"{res['copy_bytes'] / 2**30:.2f} GiB, read + write counted, best of repeats)")
    if profiles:
        from ..backends.cupy_profile import format_table

        for p in profiles:
            print()
            print(format_table(p))
            if p.what == "decode" and res["tg_tps"] > 0:
                print(f"measured tg{args.gen} (graphs {'on' if res['graphs'] else 'off'}): "
                      f"{1e3 / res['tg_tps']:.3f} ms per token")
    return 0
