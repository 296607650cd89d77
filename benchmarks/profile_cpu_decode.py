"""Where one CPU decode step's time goes: every backend method wrapped with a timer.

    python benchmarks/profile_cpu_decode.py smollm2 [--device cpu-kernels] [--prompt 64] [--steps 30]

Loads MODEL, feeds --prompt random tokens, times --steps plain decode steps (tokens/s, best of 3
blocks), then wraps every public method of the backend with ``perf_counter`` and runs --steps more:
per op the ms per token, calls per token and µs per call. The wrapping itself adds about 1 µs per
call; the line "outside the backend" is the step's wall time minus the ops' (executor, recipe
dispatch, sampling's argmax). Nested calls (a backend method calling another) count in both.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _linear_key(args) -> str:
    w = args[1]
    shape = getattr(w, "shape", ())
    return f"linear {'x'.join(map(str, shape))} {getattr(w, 'qtype', w.dtype if hasattr(w, 'dtype') else '')}"


def _wrap(be, acc):
    """acc[name] = [seconds, calls, calls inside another]; a call made inside another wrapped call is
    marked so and left out of the returned top-level total (its time is in its caller's)."""
    names = [n for n in dir(type(be)) if not n.startswith("_") and callable(getattr(be, n, None))]
    depth, top = [0], [0.0]
    for name in names:
        fn = getattr(be, name)

        def timed(*a, _fn=fn, _name=name, **k):
            depth[0] += 1
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                depth[0] -= 1
                dt = time.perf_counter() - t0
                rec = acc[_name if _name != "linear" else _linear_key(a)]
                rec[0] += dt
                rec[1] += 1
                rec[2] += depth[0] > 0
                top[0] += dt if depth[0] == 0 else 0.0

        setattr(be, name, timed)
    return top


def _steps(s, logits, n):
    t0 = time.perf_counter()
    for _ in range(n):
        logits = s.feed([int(np.argmax(logits))])
    return time.perf_counter() - t0, logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model")
    ap.add_argument("--device", default="cpu-kernels")
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    args = ap.parse_args()
    from rocmforge.model import load_model

    model = load_model(args.model, device=args.device, tokenizer=False).prepare(progress=False)
    rng = np.random.default_rng(0)
    prompt = rng.integers(10, int(model.hparams["vocab_size"]), args.prompt).tolist()
    s = model.new_session(args.prompt + 5 * args.steps + 8)
    logits = s.feed(prompt)
    _, logits = _steps(s, logits, 4)                       # warm-up (first-use repacks, buffers)
    plain = []
    for _ in range(3):
        dt, logits = _steps(s, logits, args.steps)
        plain.append(dt / args.steps)
    acc = collections.defaultdict(lambda: [0.0, 0, 0])
    top = _wrap(model.backend, acc)
    wall, logits = _steps(s, logits, args.steps)
    n = args.steps
    print(f"{args.model} on {model.backend.name}: plain decode {1e3 * min(plain):.2f} ms/token "
          f"(best of 3 blocks of {n}; {1 / min(plain):.1f} t/s), profiled {1e3 * wall / n:.2f} ms/token")
    if hasattr(model.backend, "describe"):
        print(model.backend.describe())
    print("\n| op | ms / token | calls / token | µs / call |\n|---|---:|---:|---:|")
    for name, (t, c, nested) in sorted(acc.items(), key=lambda kv: -kv[1][0]):
        if name in ("synchronize", "forward_scope", "describe"):
            continue
        if nested:
            name += f" ({nested / n:.0f} of them inside another op)"
        print(f"| {name} | {1e3 * t / n:.2f} | {c / n:.0f} | {1e6 * t / c:.0f} |")
    print(f"| outside the backend | {1e3 * (wall - top[0]) / n:.2f} | — | — |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
