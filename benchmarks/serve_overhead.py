"""The server's own cost per token: the real HTTP face, AsyncEngine and scheduler over a model step
that only waits (as a GPU step does, the GIL free) and returns logits of the model's vocabulary.

    python3 benchmarks/serve_overhead.py [--model smollm2] [--step-ms 3] [--streams 1,16,64] [--json out.json]

The server runs in a child process (`python benchmarks/serve_overhead.py --serve PORT ...`) and the
streams come from benchmarks/serve_bench.py's client, so the figures are what serve_bench would
measure against a model whose every step takes --step-ms: ITL p50 minus --step-ms is the host's
share (scheduling, sampling, the engine thread's handoff to the event loop, SSE), and aggregate
tokens/s is the ceiling the host puts on serving at that step time. Client and server share this
machine's cores, as they do in serve_bench.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


class WaitingStep:
    """A model step that sleeps ``step_s`` (the GIL released, as while a GPU runs) and returns logits
    that make a fixed, non-EOS greedy token for each sequence."""

    def __init__(self, vocab_size: int, step_s: float):
        self.vocab_size, self.step_s = vocab_size, step_s

    def run(self, items, while_running=None):
        if while_running is not None:      # the GPU's step has been launched: the host works meanwhile
            while_running()
        time.sleep(self.step_s)
        out = []
        for it in items:
            lg = np.zeros(self.vocab_size, np.float32)
            lg[300 + (it.token_ids[-1] * 7 + 11) % 1000] = 5.0
            out.append(lg)
        return out

    def copy_blocks(self, pairs) -> None:
        pass

    def release(self, seq_id) -> None:
        pass


def serve(port: int, model: str, step_ms: float, max_num_seqs: int) -> None:
    import uvicorn

    import rocmforge
    from rocmforge.engine.async_engine import AsyncEngine
    from rocmforge.server.app import create_app

    m = rocmforge.load_model(model)          # its tokenizer and vocabulary; its weights are not used
    step = WaitingStep(int(m.hparams["vocab_size"]), step_ms / 1e3)
    eng = AsyncEngine(None, max_num_seqs=max_num_seqs, max_model_len=2048, num_blocks=max_num_seqs * 40,
                      model_step=step, eos_ids=())
    app = create_app(eng, m, served_model_name="bench")
    sys.setswitchinterval(0.0005)            # as rocmforge serve sets it
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2", help="whose tokenizer and vocabulary (default smollm2)")
    ap.add_argument("--step-ms", type=float, default=3.0, help="how long each model step waits (default 3)")
    ap.add_argument("--streams", type=lambda t: [int(v) for v in t.split(",")], default=[1, 16, 64])
    ap.add_argument("--tokens", type=int, default=64, help="tokens generated per request")
    ap.add_argument("--json", help="write the rows here")
    ap.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)   # the child process
    a = ap.parse_args(argv)
    if a.serve:
        serve(a.serve, a.model, a.step_ms, max(a.streams))
        return 0
    import serve_bench as sb

    port = sb.free_port()
    cmd = [sys.executable, __file__, "--serve", str(port), "--model", a.model, "--step-ms", str(a.step_ms),
           "--streams", ",".join(map(str, a.streams))]
    waves = argparse.Namespace(streams=a.streams, tokens=a.tokens, shared_prefix=0, words=24, logdir="/tmp")
    rows = sb.run_engine("overhead", cmd, port, "bench", waves)     # serve_bench's own waves and client
    for r in rows:
        r["host_ms_per_step"] = None if r["itl_p50"] is None else 1e3 * r["itl_p50"] - a.step_ms
        if r["host_ms_per_step"] is not None:
            print(f"x{r['streams']:<3d} host ~{r['host_ms_per_step']:.1f} ms per step over a {a.step_ms:g} ms step")
    if a.json:
        Path(a.json).write_text(json.dumps({"rows": rows, "args": vars(a)}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
