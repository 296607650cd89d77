"""``rocmforge chat MODEL``: an interactive chat that uses the model's chat template."""

from __future__ import annotations

import sys

from .common import add_model_args, add_parallel_args, add_sampling_args, load, sampling_kwargs


def add_parser(sub) -> None:
    p = sub.add_parser("chat", help="chat interactively (uses the model's chat template)",
                       description="Interactive chat. Type a message and press Enter; '/reset' forgets the "
                                   "conversation, '/exit' or Ctrl-D quits.")
    add_model_args(p)
    add_parallel_args(p)
    p.add_argument("--system", help="a system message")
    add_sampling_args(p)
    p.set_defaults(func=run, max_tokens=256)


def run(args) -> int:
    model = load(args)
    tok = model.tokenizer
    if tok is None:
        print("rocmforge: this model has no tokenizer, so it cannot chat", file=sys.stderr)
        return 2
    base = [{"role": "system", "content": args.system}] if args.system else []
    messages = list(base)
    interactive = sys.stdin.isatty()
    while True:
        try:
            line = input("> " if interactive else "")
        except EOFError:
            break
        cmd = line.strip()
        if cmd in ("/exit", "/quit"):
            break
        if cmd == "/reset":
            messages = list(base)
            continue
        if not cmd:
            continue
        messages.append({"role": "user", "content": line})
        prompt = tok.apply_chat_template(messages, add_generation_prompt=True)
        reply = []
        for piece in model.generate(prompt, max_tokens=args.max_tokens, **sampling_kwargs(args)):
            reply.append(piece)
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        messages.append({"role": "assistant", "content": "".join(reply).strip()})
    return 0
