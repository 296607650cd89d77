"""Serving benchmark: concurrent streaming requests against an OpenAI-compatible server.

    # rocmforge alone (starts `python -m rocmforge serve MODEL`, runs, stops it)
    python3 benchmarks/serve_bench.py --ours smollm2 --streams 1,4,16 --tokens 32
    # side by side with llama.cpp's llama-server on the same file
    python3 benchmarks/serve_bench.py --ours FILE.gguf --llama-server /path/llama-server --streams 1,4,16,64 \\
        [--device gpu] [--ngl 99] [--shared-prefix 512] --json serve.json

Each stream sends one `POST /v1/completions` with `"stream": true`, greedy, `ignore_eos` (so every
request generates --tokens tokens on both engines), and reads the SSE chunks as they arrive. Per
request: time to first token (TTFT) and the gaps between later chunks (inter-token latency, ITL).
Per level of concurrency: aggregate generated tokens/s over the wall time of the whole wave, and
p50 / p99 of TTFT and ITL. ``--shared-prefix N`` gives every prompt the same N-word system text
before its own question, and one request with that text runs before the wave (the prefix-cache
workload: the system text has been seen before); otherwise prompts share nothing. llama-server
runs with ``-np`` = the largest stream count and continuous batching (its default).
``--step-trace FILE`` has our server write each engine step's phases there (ROCMFORGE_STEP_TRACE,
rocmforge.engine.step_trace) and prints, per wave, how its steps split into scheduling, the model
step, sampling and the handoff to the event loop, and the gaps between steps.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

WORDS = ("river stone light garden winter paper window music morning silver forest letter city ocean "
         "mountain story bridge candle market orange").split()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prompts(n: int, shared: int, words: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    head = " ".join(rng.choice(WORDS) for _ in range(shared)) + "\n" if shared else ""
    return [head + f"Request {i}: " + " ".join(rng.choice(WORDS) for _ in range(words)) for i in range(n)]


def percentile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))]


async def one_stream(client, url: str, model: str, prompt: str, tokens: int) -> dict:
    body = {"model": model, "prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "ignore_eos": True}
    t0 = time.perf_counter()
    stamps, n_chunks = [], 0
    async with client.stream("POST", url + "/v1/completions", json=body, timeout=600) as r:
        if r.status_code != 200:
            return {"error": f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"}
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if chunk.get("choices") and chunk["choices"][0].get("text"):
                stamps.append(time.perf_counter())
                n_chunks += 1
    if not stamps:
        return {"error": "no tokens"}
    return {"ttft": stamps[0] - t0, "itl": [b - a for a, b in zip(stamps, stamps[1:])], "chunks": n_chunks,
            "end": stamps[-1] - t0}


async def wave(url: str, model: str, n: int, tokens: int, shared: int, words: int) -> dict:
    import httpx

    limits = httpx.Limits(max_connections=n + 4, max_keepalive_connections=n + 4)
    async with httpx.AsyncClient(limits=limits) as client:
        await one_stream(client, url, model, "warm up", 4)
        ps = prompts(n, shared, words, seed=n)
        if shared:
            # the system text has been seen before the wave (as on a live server): an engine that keeps
            # prompt prefixes can serve the wave's shared part from its cache
            head = ps[0][:ps[0].index("\n") + 1]
            await one_stream(client, url, model, head + "Request warm-up: " + " ".join(WORDS[:words]), 4)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(one_stream(client, url, model, p, tokens) for p in ps))
        t1 = time.perf_counter()
        wall = t1 - t0
    errors = [r["error"] for r in res if "error" in r]
    ok = [r for r in res if "error" not in r]
    ttft = [r["ttft"] for r in ok]
    itl = [x for r in ok for x in r["itl"]]
    # a chunk may carry more than one token on some servers; requests were asked for `tokens` each
    generated = tokens * len(ok)
    return {"streams": n, "tokens_per_request": tokens, "wall_s": wall, "agg_tps": generated / wall if wall else 0.0,
            "ttft_p50": percentile(ttft, 50), "ttft_p99": percentile(ttft, 99),
            "itl_p50": percentile(itl, 50), "itl_p99": percentile(itl, 99), "errors": errors[:3],
            "n_errors": len(errors), "t0": t0, "t1": t1}


def start(cmd: list[str], url: str, log: Path, env: dict | None = None, timeout: float = 300) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            env=None if env is None else {**os.environ, **env})
    t0 = time.time()
    while time.time() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"server exited ({proc.returncode}); see {log}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"server did not come up in {timeout:.0f} s; see {log}")


def run_engine(name: str, cmd: list[str], port: int, model_name: str, a, env: dict | None = None) -> list[dict]:
    url = f"http://127.0.0.1:{port}"
    log = Path(a.logdir) / f"{name}-server.log"
    proc = start(cmd, url, log, env)
    rows = []
    try:
        for n in a.streams:
            r = asyncio.run(wave(url, model_name, n, a.tokens, a.shared_prefix, a.words))
            r["engine"] = name
            rows.append(r)
            print(f"[{name:9s}] x{n:<3d} {r['agg_tps']:8.1f} t/s aggregate  TTFT p50/p99 "
                  f"{_ms(r['ttft_p50'])}/{_ms(r['ttft_p99'])} ms  ITL p50/p99 {_ms(r['itl_p50'])}/{_ms(r['itl_p99'])} ms"
                  + (f"  ({r['n_errors']} errors: {r['errors'][0]})" if r["n_errors"] else ""), flush=True)
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
    return rows


def _ms(x: float | None) -> str:
    return "-" if x is None else f"{1e3 * x:.0f}"


def table(rows: list[dict]) -> str:
    out = ["| engine | streams | aggregate t/s | TTFT p50 / p99 ms | ITL p50 / p99 ms |", "| --- | ---: | ---: | ---: | ---: |"]
    for r in rows:
        out.append(f"| {r['engine']} | {r['streams']} | {r['agg_tps']:.1f} | {_ms(r['ttft_p50'])} / {_ms(r['ttft_p99'])} "
                   f"| {_ms(r['itl_p50'])} / {_ms(r['itl_p99'])} |")
    return "\n".join(out)


def trace_waves(path: str, rows: list[dict]) -> None:
    """Each wave's engine steps (the steps that started inside its wall time), summarised into its row."""
    from rocmforge.engine.step_trace import summarise

    with open(path) as f:
        steps = [json.loads(x) for x in f if x.strip()]
    for r in rows:
        s = summarise([st for st in steps if r["t0"] <= st["t"] <= r["t1"]])
        r["steps"] = s
        parts = []
        for kind in ("decode", "mixed"):
            if kind in s:
                k = s[kind]
                parts.append(f"{kind} {k['steps']} steps: total p50/p99 {k['total']['p50']:.2f}/{k['total']['p99']:.2f}"
                             f" (fwd {k['fwd']['p50']:.2f}/{k['fwd']['p99']:.2f}, sched {k['sched']['p50']:.2f}, "
                             f"sample {k['sample']['p50']:.2f}, deliver {k['deliver']['p50']:.2f}) ms")
        if "gap_ms" in s:
            parts.append(f"gaps p50/p99/max {s['gap_ms']['p50']:.2f}/{s['gap_ms']['p99']:.2f}/{s['gap_ms']['max']:.2f} ms")
        print(f"[steps    ] x{r['streams']:<3d} " + "; ".join(parts), flush=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ours", metavar="MODEL", help="serve MODEL with `python -m rocmforge serve`")
    ap.add_argument("--llama-server", metavar="PATH", help="also run llama.cpp's llama-server on the same file")
    ap.add_argument("--device", default="numpy", help="rocmforge's --device (default numpy, what serve runs on the CPU)")
    ap.add_argument("--ngl", type=int, default=0, help="llama-server -ngl (99 for a GPU)")
    ap.add_argument("--streams", type=lambda t: [int(v) for v in t.split(",")], default=[1, 4, 16])
    ap.add_argument("--tokens", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--words", type=int, default=24, help="words of each request's own prompt")
    ap.add_argument("--shared-prefix", type=int, default=0, help="words of a system text every prompt shares")
    ap.add_argument("--logdir", default="/tmp", help="where the servers' logs go")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--step-trace", metavar="FILE", help="our server's engine steps, traced here and summarised per wave")
    a = ap.parse_args(argv)
    if not a.ours:
        ap.error("--ours MODEL is required (the file both engines serve)")
    rows = []
    port = free_port()
    ours = [sys.executable, "-m", "rocmforge", "serve", a.ours, "--port", str(port), "--device", a.device,
            "--max-num-seqs", str(max(a.streams)), "--served-model-name", "bench"]
    env = None
    if a.step_trace:
        Path(a.step_trace).unlink(missing_ok=True)
        env = {"ROCMFORGE_STEP_TRACE": a.step_trace}
    rows += run_engine("rocmforge", ours, port, "bench", a, env)
    if a.step_trace:
        trace_waves(a.step_trace, [r for r in rows if r["engine"] == "rocmforge"])
    if a.llama_server:
        from rocmforge.installed_models import resolve_model

        path = str(resolve_model(a.ours))
        port = free_port()
        np_ = max(a.streams)
        # llama-server splits -c over its -np slots; a word of these prompts can be ~9 tokens with a
        # random-weight model's filler vocabulary, so size each slot for 12 per word
        ctx = np_ * (12 * (a.shared_prefix + a.words + 4) + a.tokens + 64)
        cmd = [a.llama_server, "-m", path, "--port", str(port), "-np", str(np_), "-c", str(ctx), "-ngl",
               str(a.ngl), "--alias", "bench"]
        rows += run_engine("llama.cpp", cmd, port, "bench", a)
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "args": vars(a), "pid": os.getpid()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
