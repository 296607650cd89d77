"""prompt -> tokens -> model steps -> sampler -> text pieces.

Text is streamed as it becomes final: a piece never splits a UTF-8 character,
and text that might be the start of a stop string is held back until it is
known not to be.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .errors import RocmforgeError
from .sampler import SamplingParams, sample


def generate_ids(model, prompt_ids: list[int], max_tokens: int, params: SamplingParams,
                 stop_ids: set[int] | None = None) -> Iterator[int]:
    """Token ids of the continuation; stops at ``max_tokens`` or at a token in ``stop_ids`` (not yielded)."""
    if not prompt_ids:
        raise RocmforgeError("the prompt encodes to no tokens; give some text (or a BOS token)")
    budget = len(prompt_ids) + max_tokens
    if len(prompt_ids) >= model.context_length:
        raise RocmforgeError(f"prompt of {len(prompt_ids)} tokens does not fit the context of {model.context_length}")
    session = model.new_session(min(budget, model.context_length))
    rng = np.random.default_rng(params.seed)
    logits = session.feed(list(prompt_ids))
    history = list(prompt_ids)
    for _ in range(min(max_tokens, model.context_length - len(prompt_ids))):
        tok = sample(logits, params, rng, history)
        if stop_ids and tok in stop_ids:
            return
        yield tok
        history.append(tok)
        logits = session.feed([tok])


def generate(model, prompt: str | list[int], max_tokens: int = 64, temperature: float = 0.7, top_k: int = 40,
             top_p: float = 0.9, min_p: float = 0.0, repetition_penalty: float = 1.0, seed: int | None = None,
             stop: list[str] | None = None, ignore_eos: bool = False) -> Iterator[str]:
    """Stream the text pieces that continue ``prompt`` (a string, or token ids)."""
    tok = model.tokenizer
    if tok is None:
        raise RocmforgeError(f"{model.path} has no tokenizer; pass token ids to model.logits() instead")
    from .tokenizer import StreamDecoder

    params = SamplingParams(temperature, top_k, top_p, min_p, repetition_penalty, seed)
    ids = tok.encode(prompt) if isinstance(prompt, str) else [int(i) for i in prompt]
    stops = [s for s in (stop or []) if s]
    decoder = StreamDecoder(tok)
    pending = ""
    for t in generate_ids(model, ids, max_tokens, params, None if ignore_eos else set(tok.eos_ids)):
        pending += decoder.put(t)
        if stops:
            hit = min((pending.find(s) for s in stops if s in pending), default=-1)
            if hit >= 0:
                if pending[:hit]:
                    yield pending[:hit]
                return
            hold = max((k for s in stops for k in range(1, len(s)) if pending.endswith(s[:k])), default=0)
            out, pending = pending[: len(pending) - hold], pending[len(pending) - hold:]
        else:
            out, pending = pending, ""
        if out:
            yield out
    pending += decoder.flush()
    if pending:
        yield pending
