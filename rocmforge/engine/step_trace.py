"""Where a serving step's time goes: one JSON line per engine step, when ROCMFORGE_STEP_TRACE names a file.

Client-side latencies (benchmarks/serve_bench.py) say how long a token took, not why; this says what
the engine thread did meanwhile. Each line holds the step's start (``t``, seconds on the process's
perf_counter clock), and how long it spent scheduling (``sched``), in the model step (``fwd``: the
launches, the GPU's time and the logits' copy to the host), sampling (``sample``) and handing the
events to the event loop (``deliver``), all in ms, with the step's sequences (``seqs``), token rows
(``rows``) and the rows of its chunks of more than one token, the prompts' (``prompt``). A gap
between one step's end and the next one's ``t`` is time the thread spent elsewhere: the inbox, the
GIL, nothing to do.

``python3 -m rocmforge.engine.step_trace FILE`` summarises a trace (``--json`` for scripts).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ENV = "ROCMFORGE_STEP_TRACE"


class StepTrace:
    """Times one step's phases; ``write`` appends the step's line. Cheap: a perf_counter per phase."""

    def __init__(self, path: str):
        self._f = open(path, "a", buffering=1 << 16)     # noqa: SIM115 - open for the engine's life
        self._t: list[float] = []
        self._shape: tuple[int, int, int] | None = None

    @classmethod
    def from_env(cls) -> StepTrace | None:
        path = os.environ.get(ENV)
        return cls(path) if path else None

    def start(self) -> None:
        """A step begins: the previous step's line is written now, with every mark it got."""
        self._flush()
        self._t = [time.perf_counter()]

    def mark(self) -> None:
        """The end of a phase (scheduling, forward, sampling, delivery: in that order). The driver of
        the engine (rocmforge.engine.async_engine) marks the delivery after the step has returned."""
        if self._t:
            self._t.append(time.perf_counter())

    def end_step(self, seqs: int, rows: int, prompt: int) -> None:
        """The step's shape; its line waits for the next start (or close) so later marks still count."""
        self._shape = (seqs, rows, prompt)

    def _flush(self) -> None:
        t, shape = self._t, self._shape
        self._t, self._shape = [], None
        if shape is None or len(t) < 2:
            return
        ms = [round((b - a) * 1e3, 3) for a, b in zip(t, t[1:])]
        ms += [0.0] * (4 - len(ms))
        seqs, rows, prompt = shape
        line = {"t": round(t[0], 6), "sched": ms[0], "fwd": ms[1], "sample": ms[2], "deliver": ms[3],
                "seqs": seqs, "rows": rows, "prompt": prompt}
        self._f.write(json.dumps(line) + "\n")

    def close(self) -> None:
        self._flush()
        self._f.close()


def _pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q / 100 * (len(xs) - 1))))] if xs else 0.0


def summarise(lines: list[dict]) -> dict:
    """Per kind of step (decode only / with prompt rows): count, p50/p99/max of each phase and of
    the whole step, and the gaps between steps (the thread away from the engine)."""
    out: dict = {}
    for kind, keep in (("decode", lambda s: s["prompt"] == 0), ("mixed", lambda s: s["prompt"] > 0)):
        steps = [s for s in lines if keep(s)]
        if not steps:
            continue
        row = {"steps": len(steps), "seqs_p50": _pct([s["seqs"] for s in steps], 50)}
        for ph in ("sched", "fwd", "sample", "deliver", "total"):
            xs = [s["sched"] + s["fwd"] + s["sample"] + s["deliver"] if ph == "total" else s[ph] for s in steps]
            row[ph] = {"p50": _pct(xs, 50), "p99": _pct(xs, 99), "max": max(xs)}
        out[kind] = row
    gaps = []
    for a, b in zip(lines, lines[1:]):
        end = a["t"] + (a["sched"] + a["fwd"] + a["sample"] + a["deliver"]) / 1e3
        gap = (b["t"] - end) * 1e3
        if gap < 100:          # longer: the engine was idle between waves, not slow
            gaps.append(gap)
    if gaps:
        out["gap_ms"] = {"p50": _pct(gaps, 50), "p99": _pct(gaps, 99), "max": max(gaps), "n": len(gaps)}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python3 -m rocmforge.engine.step_trace",
        description="Summarise an engine step trace: p50 / p99 / max of each step's scheduling, model step "
                    "(fwd), sampling and hand-off to the server, for decode-only steps and for steps with "
                    "prompt rows (mixed).",
        epilog="example:\n  ROCMFORGE_STEP_TRACE=/tmp/steps.jsonl rocmforge serve smollm2   # then send requests\n"
               "  python3 -m rocmforge.engine.step_trace /tmp/steps.jsonl",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("file", help="the JSON-lines file ROCMFORGE_STEP_TRACE wrote (one line per engine step)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    a = ap.parse_args(argv)
    with open(a.file) as f:
        lines = [json.loads(x) for x in f if x.strip()]
    s = summarise(lines)
    if a.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{len(lines)} steps")
    for kind in ("decode", "mixed"):
        if kind not in s:
            continue
        r = s[kind]
        print(f"{kind}: {r['steps']} steps, {r['seqs_p50']} sequences (p50)")
        for ph in ("sched", "fwd", "sample", "deliver", "total"):
            v = r[ph]
            print(f"  {ph:8s} p50 {v['p50']:8.3f}  p99 {v['p99']:8.3f}  max {v['max']:8.3f} ms")
    if "gap_ms" in s:
        g = s["gap_ms"]
        print(f"between steps: p50 {g['p50']:.3f}  p99 {g['p99']:.3f}  max {g['max']:.3f} ms ({g['n']} gaps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
