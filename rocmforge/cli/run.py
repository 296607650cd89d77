"""``rocmforge run MODEL -p TEXT``: stream a continuation to stdout."""

from __future__ import annotations

import json
import sys
import time

from .common import add_model_args, add_parallel_args, add_sampling_args, load, sampling_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="generate text from a prompt",
                       description="Continue a prompt and stream the text to stdout as it is generated.",
                       epilog="example: rocmforge run smollm2 -p 'The capital of France is' -n 32 --temperature 0")
    add_model_args(p)
    add_parallel_args(p)
    p.add_argument("-p", "--prompt", required=True, help="the text to continue ('-' reads standard input)")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")
    add_sampling_args(p)
    p.add_argument("--stats", action="store_true", help="print timing to stderr at the end")
    p.add_argument("--json", action="store_true", help="print one JSON object with the text and timings instead")
    p.set_defaults(func=run)


def run(args) -> int:
    sampling = sampling_kwargs(args)   # bad options fail before the model is loaded
    prompt = sys.stdin.read() if args.prompt == "-" else args.prompt
    t0 = time.perf_counter()
    model = load(args)
    if args.chat:
        if model.tokenizer is None:
            print("rocmforge: --chat needs a tokenizer; this model has none", file=sys.stderr)
            return 2
        prompt = model.tokenizer.apply_chat_template([{"role": "user", "content": prompt}])
    t1 = time.perf_counter()
    pieces = []
    for piece in model.generate(prompt, max_tokens=args.max_tokens, **sampling):
        pieces.append(piece)
        if not args.json:
            sys.stdout.write(piece)
            sys.stdout.flush()
    t2 = time.perf_counter()
    text = "".join(pieces)
    n = len(model.tokenizer.encode(text, add_special=False)) if text else 0
    if args.json:
        print(json.dumps({"model": model.path, "arch": model.arch, "device": model.backend.device,
                          "prompt": prompt, "text": text, "load_s": round(t1 - t0, 3),
                          "generate_s": round(t2 - t1, 3)}))
    else:
        sys.stdout.write("\n")
    if args.stats:
        print(f"[{model.arch} on {model.backend.name}: load {t1 - t0:.2f}s, ~{n} tokens in {t2 - t1:.2f}s]",
              file=sys.stderr)
    return 0
