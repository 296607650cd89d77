"""Where a serving step's time goes: the paged engine (no HTTP) next to the bench's session decode.

    python3 benchmarks/engine_profile.py MODEL.gguf --device gpu [--streams 1,16,64] [--json out.json]

For one loaded model, in one process:

* ``session``: the bench's decode (one sequence, contiguous KV; graphs on and off) in tokens/s;
* ``engine xN``: LLMEngine with N greedy requests of --prompt random tokens and --gen tokens each,
  all arriving at once: decode-only steps per second, generated tokens/s over those steps, and how a
  step splits into the model step (``runner.run``: forward + logits to the host) and the rest
  (scheduling, sampling); ``wave xN``: the whole wave's wall time, time to first token, and the steps
  that held prompt rows (--budget rows each, by default the backend's);
* ``cprofile xN``: the host functions that take a decode step's time (cumulative), top --top;
* ``kernels xN``: with --device gpu, every launch of one decode step of N sequences timed on the GPU
  (rocmforge.backends.cupy_profile), so a slow step can be told apart into GPU work and host gaps.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import pstats
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _requests(n: int, prompt: int, gen: int, vocab: int, seed: int):
    from rocmforge.engine.protocol import EngineRequest, SamplingOptions

    rng = np.random.default_rng(seed)
    return [EngineRequest(f"r{seed}-{i}", [int(t) for t in rng.integers(3, vocab, prompt)],
                          SamplingOptions(max_tokens=gen, temperature=0.0, ignore_eos=True)) for i in range(n)]


def session_rate(model, prompt: int, gen: int, graphs: bool) -> float:
    be = model.backend
    old = getattr(be, "graphs", None)
    if old is not None:
        be.graphs = graphs
    try:
        s = model.new_session(prompt + gen + 2)
        logits = s.feed(list(range(3, 3 + prompt)))
        t0 = time.perf_counter()
        for _ in range(gen):
            logits = s.feed([int(np.argmax(logits))])
        return gen / (time.perf_counter() - t0)
    finally:
        if old is not None:
            be.graphs = old


class _Timed:
    """Wraps the engine's runner: wall time of every run() call."""

    def __init__(self, runner):
        self.runner, self.walls = runner, []

    def __getattr__(self, name):
        return getattr(self.runner, name)

    def run(self, items, while_running=None):
        t0 = time.perf_counter()
        out = self.runner.run(items, while_running)
        self.walls.append((len(items), sum(len(i.token_ids) for i in items), time.perf_counter() - t0))
        return out


def engine_rate(model, n: int, prompt: int, gen: int, seed: int, profile_top: int = 0,
                budget: int | None = None) -> dict:
    """n requests arriving at once, as a serving wave: the wave's wall time and each request's time to
    first token, the steps that held prompt rows (prefill, mixed with decodes) and the decode steps."""
    from rocmforge.engine.llm_engine import LLMEngine

    eng = LLMEngine(model, max_num_seqs=max(n, 1), num_blocks=n * (-(-(prompt + gen + 16) // 16)) + 8,
                    max_num_batched_tokens=budget)
    timed = _Timed(eng.runner)
    eng.runner = timed
    for r in _requests(n, prompt, gen, int(model.hparams["vocab_size"]), seed):
        eng.add_request(r)
    steps, prof = [], cProfile.Profile() if profile_top else None
    first: dict = {}
    t_wave = time.perf_counter()
    while eng.has_unfinished():
        decode = all(r.num_computed >= r.num_tokens - 1 for r in eng.scheduler.running) and not eng.scheduler.waiting
        t0 = time.perf_counter()
        if prof is not None and decode and len(steps) >= 2:
            prof.enable()
        events = eng.step()
        if prof is not None:
            prof.disable()
        t1 = time.perf_counter()
        steps.append((decode, t1 - t0, len([e for e in events if e.token_id is not None])))
        for e in events:
            first.setdefault(e.request_id, t1 - t_wave)
    wave = time.perf_counter() - t_wave
    dec = [(w, k) for d, w, k in steps if d][1:]        # the first decode step may still compile kernels
    pre = [w for d, w, _ in steps if not d]
    run_walls = [w for (s, t, w) in timed.walls if t == s][1:]
    ttft = sorted(first.values())
    out = {"streams": n, "steps": len(steps), "decode_steps": len(dec), "budget": eng.scheduler.max_num_batched_tokens,
           "wave_s": wave, "wave_tps": n * gen / wave, "ttft_p50_ms": 1e3 * ttft[len(ttft) // 2],
           "ttft_max_ms": 1e3 * ttft[-1], "prompt_steps": len(pre), "prompt_step_ms": 1e3 * statistics.median(pre)}
    if dec:
        wall = sum(w for w, _ in dec)
        out.update(decode_step_ms=1e3 * statistics.median(w for w, _ in dec),
                   decode_tps=sum(k for _, k in dec) / wall,
                   runner_ms=1e3 * statistics.median(run_walls) if run_walls else None)
        out["host_ms"] = out["decode_step_ms"] - (out["runner_ms"] or 0.0)
    if prof is not None:
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(profile_top)
        out["cprofile"] = buf.getvalue()
    return out


def kernel_profile(model, n: int, prompt: int, seed: int) -> str:
    """Every launch of one decode step of n sequences (after their prefill), timed on the GPU."""
    from rocmforge.backends.cupy_profile import profiling
    from rocmforge.backends.profile_table import StepProfile, format_table
    from rocmforge.engine.model_step import ModelStep, StepItem

    bs = 16
    per = -(-(prompt + 8) // bs)
    step = ModelStep(model, n * per + 4, bs)
    vocab = int(model.hparams["vocab_size"])
    reqs = _requests(n, prompt, 4, vocab, seed)
    tables = [list(range(i * per, (i + 1) * per)) for i in range(n)]
    logits = step.run([StepItem(r.request_id, r.prompt_ids, 0, t) for r, t in zip(reqs, tables)])
    toks = [int(np.argmax(x)) for x in logits]
    for k in range(2):     # warm: compile every decode kernel
        logits = step.run([StepItem(r.request_id, [t], prompt + k, tb) for r, t, tb in zip(reqs, toks, tables)])
        toks = [int(np.argmax(x)) for x in logits]
    be = model.backend
    be.synchronize()
    t0 = time.perf_counter()
    step.run([StepItem(r.request_id, [t], prompt + 2, tb) for r, t, tb in zip(reqs, toks, tables)])
    eager = 1e3 * (time.perf_counter() - t0)
    with profiling(be) as prof:
        prof.arm(min(2000.0, 4 * eager + 20))
        t0 = time.perf_counter()
        step.run([StepItem(r.request_id, [t], prompt + 3, tb) for r, t, tb in zip(reqs, toks, tables)])
        wall = 1e3 * (time.perf_counter() - t0)
        samples, span = prof.samples(), prof.span_ms()
    return format_table(StepProfile(f"engine decode x{n}", n, prompt + 3, samples, span, wall, eager))


def prompt_profile(model, n: int, prompt: int, seed: int, top: int) -> str:
    """One step that prefills n prompts at once, as a serving wave's first step: host functions
    (cProfile, the step's cumulative time) and every launch timed on the GPU."""
    from rocmforge.backends.cupy_profile import profiling
    from rocmforge.backends.profile_table import StepProfile, format_table
    from rocmforge.engine.model_step import ModelStep, StepItem

    bs = 16
    per = -(-(prompt + 8) // bs)
    step = ModelStep(model, 2 * n * per + 4, bs)
    vocab = int(model.hparams["vocab_size"])
    be = model.backend

    def items(k):
        reqs = _requests(n, prompt, 4, vocab, seed + k)
        return [StepItem(f"{r.request_id}-{k}", r.prompt_ids, 0, list(range((k * n + i) * per, (k * n + i + 1) * per)))
                for i, r in enumerate(reqs)]

    step.run(items(0))            # warm: compiles, allocations
    be.synchronize()
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    step.run(items(1))
    be.synchronize()
    prof.disable()
    wall = 1e3 * (time.perf_counter() - t0)
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(top)
    for k in (0, 1):
        for it in items(k):
            step.release(it.seq_id)
    with profiling(be) as gp:
        gp.arm(min(4000.0, 2 * wall + 20))
        step.run(items(0))
        samples, span = gp.samples(), gp.span_ms()
    table = format_table(StepProfile(f"prefill x{n} of {prompt}", n * prompt, 0, samples, span, None, wall))
    return f"prefill step x{n} of {prompt} tokens: {wall:.1f} ms\n" + "\n".join(buf.getvalue().splitlines()[:top + 12]) \
        + "\n" + table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--streams", type=lambda t: [int(v) for v in t.split(",")], default=[1, 16, 64])
    ap.add_argument("--prompt", type=int, default=32, help="random prompt tokens per request")
    ap.add_argument("--gen", type=int, default=32, help="tokens generated per request")
    ap.add_argument("--budget", type=int, help="token rows per step (default: the backend's step_tokens)")
    ap.add_argument("--top", type=int, default=25, help="host functions shown per cProfile (0: none)")
    ap.add_argument("--kernels", type=lambda t: [int(v) for v in t.split(",")] if t else [], default=[1, 16],
                    help="stream counts whose decode step is timed launch by launch (GPU only; '' for none)")
    ap.add_argument("--prefill", type=lambda t: [int(v) for v in t.split(",")] if t else [], default=[],
                    help="also profile one step that prefills this many prompts at once (host and kernels)")
    ap.add_argument("--json", help="write the figures here")
    a = ap.parse_args(argv)

    import rocmforge

    t0 = time.perf_counter()
    model = rocmforge.load_model(a.model, device=a.device)
    print(f"loaded {a.model} ({model.arch} on {model.backend.name}) in {time.perf_counter() - t0:.1f} s", flush=True)
    res: dict = {"model": a.model, "device": a.device, "engine": []}
    for graphs in (False, True):
        try:
            tps = session_rate(model, a.prompt, a.gen, graphs)
            res[f"session_tps_graphs_{'on' if graphs else 'off'}"] = tps
            print(f"session decode, graphs {'on ' if graphs else 'off'}: {tps:8.1f} t/s", flush=True)
        except Exception as exc:   # noqa: BLE001 - a benchmark reports and goes on
            print(f"session decode (graphs {graphs}) failed: {type(exc).__name__}: {exc}", flush=True)
    for n in a.streams:
        try:
            r = engine_rate(model, n, a.prompt, a.gen, seed=n, profile_top=a.top, budget=a.budget)
        except Exception as exc:   # noqa: BLE001
            print(f"engine x{n} failed: {type(exc).__name__}: {exc}", flush=True)
            continue
        text = r.pop("cprofile", "")
        res["engine"].append(r)
        print(f"engine x{n:<3d} decode step {r.get('decode_step_ms', 0):7.2f} ms (model step "
              f"{r.get('runner_ms') or 0:7.2f} ms, rest {r.get('host_ms', 0):6.2f} ms)  "
              f"{r.get('decode_tps', 0):8.1f} t/s", flush=True)
        print(f"  wave x{n}: {r['wave_s']:.2f} s, {r['wave_tps']:.1f} generated t/s; TTFT p50 / max "
              f"{r['ttft_p50_ms']:.0f} / {r['ttft_max_ms']:.0f} ms; {r['prompt_steps']} steps with prompt rows "
              f"(budget {r['budget']}), median {r['prompt_step_ms']:.1f} ms", flush=True)
        if text:
            print(f"--- cprofile x{n} (decode steps)\n" + "\n".join(text.splitlines()[:a.top + 12]), flush=True)
    if a.device != "cpu":
        for n in a.kernels:
            try:
                print(f"--- kernels x{n}\n" + kernel_profile(model, n, a.prompt, seed=100 + n), flush=True)
            except Exception as exc:   # noqa: BLE001
                print(f"kernel profile x{n} failed: {type(exc).__name__}: {exc}", flush=True)
    for n in a.prefill:
        try:
            print("--- " + prompt_profile(model, n, a.prompt, seed=200 + n, top=a.top or 25), flush=True)
        except Exception as exc:   # noqa: BLE001
            print(f"prefill profile x{n} failed: {type(exc).__name__}: {exc}", flush=True)
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
