"""``rocmforge serve MODEL``: the OpenAI-compatible HTTP API (FastAPI on uvicorn) over the serving engine."""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import RocmforgeError
from .common import add_model_args, load

log = logging.getLogger(__name__)

EPILOG = """\
examples:
  rocmforge serve smollm2                                  # http://127.0.0.1:8000/v1
  rocmforge serve model.gguf --device gpu --max-num-seqs 64 --kv-cache-gb 8
  rocmforge serve smollm2 --port 9000 --served-model-name smol --max-model-len 4096

then, from any OpenAI client:
  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\
       -d '{"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 32}'
  python -c "import openai; c = openai.OpenAI(base_url='http://127.0.0.1:8000/v1', api_key='-'); \\
print(c.completions.create(model='smol', prompt='Once', max_tokens=16).choices[0].text)"

endpoints: /v1/models, /v1/completions, /v1/chat/completions (SSE with "stream": true),
/tokenize, /detokenize, /health, /metrics (Prometheus, vLLM's names), /docs, /openapi.json
needs the serve extra: pip install "rocmforge[serve]"

on the CPU the server runs the float reference (--device numpy, its default here): a request's greedy
tokens are then the same whatever else shares its steps. --device cpu-kernels decodes faster with int8
activations, where a row's arithmetic depends on how many rows its step holds (up to 8: int8, more: float).

replicas (Ray Serve; pip install "rocmforge[ray]"): N engines, each in its own process, behind the same
endpoint and API; Ray routes each request to a replica and around one that dies while it starts another.
Each response names its replica in the x-rocmforge-replica header (x-rocmforge-replica-pid: its process).
  rocmforge serve smollm2 --replicas 2 --replica-cpus 1        # a local Ray instance, 1 CPU per replica
  rocmforge serve model.gguf --device gpu --replicas 8         # one GPU per replica
  ray start --head   # then, on each other host: ray start --address HEAD:6379
  rocmforge serve model.gguf --device gpu --replicas 16 --ray-address HEAD:6379 --host 0.0.0.0
On a cluster, MODEL must resolve on every node and rocmforge be installed there; Ray Serve's proxy
listens on --host/--port on every node that holds a replica (put a load balancer in front of them).
/metrics is the answering replica's own. docs/scale-out.md: routing, prefix-cache locality.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("serve", help="serve an OpenAI-compatible HTTP API",
                       description="Serve MODEL over HTTP with the OpenAI API: completions and chat completions "
                                   "(streamed as server-sent events), structured outputs (JSON schema, regex, "
                                   "grammar), continuous batching over a paged KV cache with prefix caching.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_args(p)
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--served-model-name", metavar="NAME",
                   help="the model name clients send and /v1/models lists (default: MODEL as given, e.g. "
                        "'smollm2' or the path)")
    g = p.add_argument_group("engine")
    g.add_argument("--max-num-seqs", type=_positive, metavar="N", help="requests in one running batch")
    g.add_argument("--max-model-len", type=_positive, metavar="L",
                   help="longest prompt + completion, in tokens (default: the model's context)")
    g.add_argument("--kv-cache-gb", type=_positive_float, metavar="G", help="memory for the paged KV cache")
    g.add_argument("--block-size", type=_positive, metavar="B", help="tokens per KV block (default 16)")
    g.add_argument("--max-num-batched-tokens", type=_positive, metavar="T",
                   help="tokens in one step: a long prompt's prefill is chunked to fit beside running decodes "
                        "(default 512 on the CPU; on a GPU 8192, or 2048 below 40 GB of memory)")
    p.add_argument("--max-body-mb", type=_positive_float, default=4.0,
                   help="largest request body, in MB (default 4); larger ones get a 413 before they are read")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"],
                   help="uvicorn's log level, or Ray Serve's with --replicas (default warning)")
    r = p.add_argument_group("replicas (Ray Serve, the ray extra)")
    r.add_argument("--replicas", type=_positive, default=1, metavar="N",
                   help="engine replicas behind the one endpoint (default 1: a single engine on uvicorn, no Ray)")
    r.add_argument("--ray-address", metavar="ADDR",
                   help="join the Ray cluster at ADDR (e.g. HEAD:6379, or 'auto' for the one `ray start` "
                        "began here) instead of starting a local instance; implies Ray even with --replicas 1")
    r.add_argument("--replica-cpus", type=_positive_float, default=1.0, metavar="C",
                   help="CPUs Ray reserves for each replica, also its BLAS/Numba thread count (default 1; "
                        "fractions share cores); with --device gpu each replica also takes one whole GPU")
    p.set_defaults(func=run, device="numpy")     # batched == alone on the CPU (see the epilog)


def _positive(text: str) -> int:
    v = int(text)
    if v <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def _positive_float(text: str) -> float:
    v = float(text)
    if not v > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {v}")
    return v


def engine_kwargs(args) -> dict:
    """Only what the user set: everything else is the engine's own default."""
    names = ("max_num_seqs", "max_model_len", "kv_cache_gb", "block_size", "max_num_batched_tokens")
    return {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}


def kv_cache_summary(engine) -> str:
    """The paged KV pool in one line: storage type, blocks, bytes (also /metrics rocmforge:kv_cache_bytes)."""
    store, pool = engine.runner.store, engine.pool
    flavour = getattr(store, "flavour", None)
    elem = flavour or str(next((a.dtype for a in store.k if a is not None), "none"))
    scales = ""
    if flavour:
        scales = (", the file's scales" if engine.model.kv_scales
                  else ", a fixed scale of 1.0 per layer (the file has none)")
    return (f"KV cache {elem}{scales}: {pool.num_blocks} blocks of {pool.block_size} tokens, "
            f"{store.nbytes / (1 << 20):.1f} MiB ({store.nbytes} bytes)")


def serve_app(app, host: str, port: int, log_level: str = "warning") -> None:
    import uvicorn

    # the engine's thread and the event loop share the GIL: at Python's default 5 ms switch interval
    # either may wait that long for the other to let go, longer than a GPU decode step
    sys.setswitchinterval(0.0005)
    # one worker: the engine lives in this process and owns the device
    uvicorn.run(app, host=host, port=port, log_level=log_level, workers=1, timeout_graceful_shutdown=5)


def run(args) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn  # noqa: F401
    except ImportError as exc:
        raise RocmforgeError(f"rocmforge serve needs the serve extra ({exc.name} is missing): "
                             f"pip install 'rocmforge[serve]'") from None
    try:
        from ..engine.async_engine import AsyncEngine
    except ImportError as exc:
        raise RocmforgeError(f"the serving engine is not available in this install: {exc}") from None
    if args.replicas > 1 or args.ray_address:
        return _serve_replicas(args)
    from ..server import create_app

    model = load(args)
    if model.tokenizer is None:
        raise RocmforgeError(f"{args.model} has no tokenizer; rocmforge serve needs one")
    engine = AsyncEngine(model, **engine_kwargs(args))
    name = args.served_model_name or str(args.model)    # what the user typed is what clients will send
    app = create_app(engine, model, served_model_name=name, max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    print(f"rocmforge: serving {model.path} as {name!r} ({model.arch} on {model.backend.name}) "
          f"at http://{args.host}:{args.port}/v1", flush=True)
    print(f"rocmforge: {kv_cache_summary(engine.engine)}", flush=True)
    serve_app(app, args.host, args.port, args.log_level)
    return 0


def _serve_replicas(args) -> int:
    import os

    from ..server.replica import ReplicaOptions
    from ..server.replicas import import_ray, serve_replicas

    import_ray()      # the missing extra is an error now, not after a cluster has started
    # replicas may start in another working directory (or on another host): a path goes absolute
    model = os.path.abspath(args.model) if os.path.exists(args.model) else str(args.model)
    options = ReplicaOptions(model=model, device=args.device, kv_cache_dtype=args.kv_cache_dtype,
                             engine_kwargs=engine_kwargs(args), served_model_name=args.served_model_name or str(args.model),
                             max_body_bytes=int(args.max_body_mb * 1024 * 1024))
    return serve_replicas(options, replicas=args.replicas, host=args.host, port=args.port,
                          ray_address=args.ray_address, replica_cpus=args.replica_cpus, log_level=args.log_level)
