"""Decode cost over context: recurrent layers stay flat, attention grows.

Three random-weight models of about the same size are built as Hugging Face folders by transformers
itself (rocmforge.testing.tiny.make_hf_model: its own init, N(0, 0.02) matrices, norms widened around
1, biases small, so every weight is finite and of a trained model's scale):

  llama    LlamaForCausalLM          every layer attention (GQA): K/V grow with the context
  qwen3_5  Qwen3_5ForCausalLM        3 Gated DeltaNet layers to 1 attention layer (Qwen3.5's layout)
  mamba2   Mamba2ForCausalLM         every layer a Mamba-2 mixer: a fixed state, no K/V at all

One session per model goes through the contexts in order (default 128, 2048, 16384): it prefills
random tokens in chunks of --chunk up to the next context (timed, reported as prefill), then takes
--warmup greedy decode steps (untimed: they absorb a KV buffer growing past a power of two, a decode
graph's capture on a GPU) and times the next --decode steps one by one: tokens/s is 1 / the median
step (robust to a busy machine; the JSON also has every step and the mean). The context a figure is
given at is the prompt length before those steps. Weights are prepared (dequantised/uploaded) before
any timing; building the models needs transformers and torch (CPU is enough).

  python benchmarks/context_bench.py --clock cpu      # ~30M-parameter models: ~6.5 CPU minutes on 2 cores
  python benchmarks/context_bench.py --device gpu --json ctx.json    # ~0.9B models (fp16) on one GPU

Models are written once under --workdir and reused. The table gives decode tokens/s per context and
the ratio of the longest context's rate to the shortest's (1.00 = flat), next to the K/V bytes a
sequence holds at the longest context (Model.kv_cache_bytes: attention layers only) and the recurrent
state's bytes (fixed).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# (hf_class, config) per family and size; "small" ~30M parameters (CPU), "large" ~0.9B (GPU)
_LLAMA = {"small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                        num_key_value_heads=4, vocab_size=4096),
          "large": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                        num_key_value_heads=8, vocab_size=32000)}
_QWEN = {"small": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8,
                       num_key_value_heads=2, head_dim=64, linear_num_key_heads=4, linear_num_value_heads=8,
                       linear_key_head_dim=64, linear_value_head_dim=64, vocab_size=4096, mrope=[3, 3, 2]),
         "large": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=16,
                       num_key_value_heads=4, head_dim=128, linear_num_key_heads=8, linear_num_value_heads=16,
                       linear_key_head_dim=128, linear_value_head_dim=128, vocab_size=32000, mrope=[6, 5, 5])}
_MAMBA2 = {"small": dict(hidden_size=512, num_hidden_layers=16, num_heads=16, head_dim=64, state_size=128,
                         n_groups=1, vocab_size=4096),
           "large": dict(hidden_size=2048, num_hidden_layers=28, num_heads=64, head_dim=64, state_size=128,
                         n_groups=1, vocab_size=32000)}
FAMILIES = ("llama", "qwen3_5", "mamba2")


def model_config(family: str, size: str, max_ctx: int) -> tuple[str, dict]:
    ctx = 1 << max(12, int(max_ctx - 1).bit_length())        # max_position_embeddings past the longest run
    if family == "llama":
        return "LlamaForCausalLM", {"model_type": "llama", **_LLAMA[size], "max_position_embeddings": ctx,
                                    "rms_norm_eps": 1e-5, "rope_theta": 500000.0, "tie_word_embeddings": False}
    if family == "qwen3_5":
        c = dict(_QWEN[size])
        mrope = c.pop("mrope")
        n = c["num_hidden_layers"]
        return "Qwen3_5ForCausalLM", {
            "model_type": "qwen3_5_text", **c, "max_position_embeddings": ctx, "rms_norm_eps": 1e-6,
            "linear_conv_kernel_dim": 4,
            "layer_types": ["full_attention" if (i + 1) % 4 == 0 else "linear_attention" for i in range(n)],
            "rope_parameters": {"rope_type": "default", "rope_theta": 10000000.0, "partial_rotary_factor": 0.25,
                                "mrope_section": mrope, "mrope_interleaved": True},
            "tie_word_embeddings": False}
    if family == "mamba2":
        c = dict(_MAMBA2[size])
        return "Mamba2ForCausalLM", {"model_type": "mamba2", **c, "expand": c["num_heads"] * c["head_dim"]
                                     // c["hidden_size"], "conv_kernel": 4, "chunk_size": 256,
                                     "layer_norm_epsilon": 1e-5, "tie_word_embeddings": False}
    raise SystemExit(f"unknown family {family!r}; expected one of {', '.join(FAMILIES)}")


def build(family: str, size: str, max_ctx: int, workdir: Path, dtype: str) -> Path:
    """The family's HF folder under ``workdir`` (written once; a .done marker says it is complete)."""
    from rocmforge.testing.tiny import make_hf_model

    hf_class, cfg = model_config(family, size, max_ctx)
    folder = workdir / f"{family}-{size}-{dtype}"
    done = folder / ".done"
    if done.exists() and json.loads(done.read_text()) == cfg:
        return folder
    t0 = time.perf_counter()
    make_hf_model(hf_class, cfg, folder, seed=7, dtype=dtype)
    done.write_text(json.dumps(cfg))
    log(f"[build] {family}: {hf_class} in {folder} ({time.perf_counter() - t0:.1f} s)")
    return folder


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_model(path: Path, device: str, contexts: list[int], chunk: int, n_decode: int, warmup: int,
              seed: int, clock=time.perf_counter) -> dict:
    import rocmforge

    t0 = time.perf_counter()
    model = rocmforge.load_model(str(path), device=device, tokenizer=False)
    model.prepare()
    be = model.backend
    be.synchronize()
    load_s = time.perf_counter() - t0
    n_layer = int(model.hparams["n_layer"])
    kv_layers = model.executor.cache_layers()
    params = int(sum(int(np.prod(t.raw.shape)) for t in model.tensors.values()))
    rng = np.random.default_rng(seed)
    vocab = int(model.hparams["vocab_size"])
    total = contexts[-1] + (warmup + n_decode) * len(contexts) + 1
    prompt = rng.integers(10, vocab, size=total).tolist()
    s = model.new_session(total)
    res = {"arch": model.arch, "params": params, "n_layer": n_layer, "kv_layers": sorted(kv_layers),
           "load_s": load_s, "kv_bytes_per_token": model.kv_cache_bytes(1),
           "state_bytes": int(s.state.nbytes) if s.state is not None else 0, "points": []}
    logits = None
    for ctx in contexts:
        be.synchronize()
        t0 = clock()
        n0 = s.n_past
        while s.n_past < ctx:
            logits = s.feed(prompt[s.n_past:min(ctx, s.n_past + chunk)])
        be.synchronize()
        prefill_s = clock() - t0
        for _ in range(warmup):
            logits = s.feed([int(np.argmax(logits))])
        steps = []
        for _ in range(n_decode):
            be.synchronize()
            t0 = clock()
            logits = s.feed([int(np.argmax(logits))])
            be.synchronize()
            steps.append(clock() - t0)
        dt = sum(steps)
        med = float(np.median(steps))
        if not np.isfinite(logits).all():
            raise SystemExit(f"{path}: non-finite logits at context {ctx}")
        point = {"context": ctx, "prefill_tokens": ctx - n0, "prefill_s": prefill_s,
                 "prefill_tps": (ctx - n0) / prefill_s if prefill_s > 0 else None,
                 "decode_tokens": n_decode, "decode_s": dt, "decode_tps": 1.0 / med, "decode_tps_mean": n_decode / dt,
                 "ms_per_token": 1e3 * med, "step_ms": [1e3 * x for x in steps], "kv_bytes": model.kv_cache_bytes(ctx),
                 "logit_absmax": float(np.abs(logits).max())}
        res["points"].append(point)
        log(f"  {model.arch:8s} ctx {ctx:6d}: prefill {ctx - n0:6d} tok {prefill_s:7.1f} s   "
            f"decode {point['decode_tps']:8.1f} tok/s ({point['ms_per_token']:.2f} ms/tok)")
    s.close()
    return res


def machine(device: str) -> dict:
    info = {"python": platform.python_version(), "platform": platform.platform(), "device": device}
    try:
        import os

        info["cpus"] = os.cpu_count()
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    if device == "gpu":
        try:
            import cupy as cp

            props = cp.cuda.runtime.getDeviceProperties(0)
            name = props["name"]
            info["gpu"] = name.decode() if isinstance(name, bytes) else str(name)
        except Exception:  # noqa: BLE001 - the figure is informational
            pass
    return info


def _fmt_bytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} B"


def table(results: dict, contexts: list[int]) -> str:
    def ctx_name(c):
        return f"{c // 1024}k" if c >= 1024 and c % 1024 == 0 else str(c)

    head = (["model", "params", "attn layers"] + [f"tok/s @{ctx_name(c)}" for c in contexts]
            + [f"{ctx_name(contexts[-1])}/{ctx_name(contexts[0])}", f"KV @{ctx_name(contexts[-1])}", "state"])
    rows = []
    for name, r in results.items():
        pts = {p["context"]: p for p in r["points"]}
        rows.append([name, f"{r['params'] / 1e6:.1f}M", f"{len(r['kv_layers'])}/{r['n_layer']}"]
                    + [f"{pts[c]['decode_tps']:.1f}" for c in contexts]
                    + [f"{pts[contexts[-1]]['decode_tps'] / pts[contexts[0]]['decode_tps']:.2f}",
                       _fmt_bytes(pts[contexts[-1]]["kv_bytes"]), _fmt_bytes(r["state_bytes"])])
    prefill = ["", "prefill (tokens, s, tok/s):"]
    for name, r in results.items():
        prefill.append(f"  {name:8s} " + "   ".join(
            f"to {ctx_name(p['context'])}: {p['prefill_tokens']} in {p['prefill_s']:.1f} s"
            f" ({p['prefill_tps']:.0f})" for p in r["points"]))
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = lambda cells: "| " + " | ".join(str(c).rjust(w) for c, w in zip(cells, widths)) + " |"   # noqa: E731
    out = [line(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"] + [line(r) for r in rows]
    return "\n".join(out + prefill)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("\n\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu", choices=["cpu", "gpu"], help="backend (default cpu: the NumPy one)")
    ap.add_argument("--size", default=None, choices=["small", "large"],
                    help="model size: small ~30M parameters (default on cpu), large ~0.9B (default on gpu)")
    ap.add_argument("--contexts", default="128,2048,16384", help="contexts to decode at, ascending "
                    "(default 128,2048,16384)")
    ap.add_argument("--decode", type=int, default=32, help="timed decode steps per context (default 32)")
    ap.add_argument("--warmup", type=int, default=4, help="untimed decode steps before them (default 4)")
    ap.add_argument("--chunk", type=int, default=None,
                    help="prefill chunk in tokens (default 512 on cpu, 2048 on gpu)")
    ap.add_argument("--families", default=",".join(FAMILIES), help=f"which models (default {','.join(FAMILIES)})")
    ap.add_argument("--workdir", default="/tmp/rocmforge-context-bench", help="where the models are written")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random prompt tokens")
    ap.add_argument("--clock", default="wall", choices=["wall", "cpu"],
                    help="wall: elapsed seconds (default); cpu (--device cpu only): this process's CPU seconds, "
                         "with one BLAS thread (ROCMFORGE_BLAS_THREADS=1), the cost of the work itself on a "
                         "machine that other jobs keep busy")
    ap.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH ('-': stdout)")
    a = ap.parse_args(argv)
    size = a.size or ("large" if a.device == "gpu" else "small")
    chunk = a.chunk or (2048 if a.device == "gpu" else 512)
    contexts = [int(c) for c in a.contexts.split(",")]
    if contexts != sorted(contexts) or contexts[0] < 1:
        raise SystemExit(f"--contexts {a.contexts}: expected ascending positive numbers")
    dtype = "float16" if a.device == "gpu" else "float32"
    clock = time.perf_counter
    if a.clock == "cpu":
        if a.device != "cpu":
            raise SystemExit("--clock cpu counts host CPU seconds: it needs --device cpu")
        import os

        os.environ["ROCMFORGE_BLAS_THREADS"] = "1"
        clock = time.process_time
    workdir = Path(a.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    results = {}
    for fam in a.families.split(","):
        path = build(fam, size, contexts[-1] + (a.warmup + a.decode) * len(contexts) + 1, workdir, dtype)
        log(f"[run] {fam} ({size}, {a.device})")
        results[fam] = run_model(path, a.device, contexts, chunk, a.decode, a.warmup, a.seed, clock)
    out = {"machine": machine(a.device), "size": size, "dtype": dtype, "contexts": contexts, "chunk": chunk,
           "decode_steps": a.decode, "warmup_steps": a.warmup, "clock": a.clock, "command": " ".join(sys.argv),
           "wall_s": time.perf_counter() - t_all, "models": results}
    print(table(results, contexts))
    print(f"\n{out['machine'].get('gpu') or out['machine'].get('cpu', '?')} ({out['machine'].get('cpus')} CPUs), "
          f"{a.device}, {size} models ({dtype} weights), {a.clock} clock, wall {out['wall_s']:.0f} s")
    if a.json == "-":
        print(json.dumps(out, indent=2))
    elif a.json:
        Path(a.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
