"""Deltas become OpenAI JSON: whole responses, stream chunks, both logprobs formats, usage."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from .generation import Delta, Token


def sse(obj: dict | str) -> str:
    return f"data: {obj if isinstance(obj, str) else json.dumps(obj, ensure_ascii=False)}\n\n"


class TokenText:
    """Token strings for logprobs (cached: the same ids come back all the time)."""

    def __init__(self, tokenizer):
        self._tok, self._cache = tokenizer, {}

    def __call__(self, token_id: int) -> str:
        s = self._cache.get(token_id)
        if s is None:
            s = self._cache[token_id] = self._tok.decode([token_id], skip_special=False)
        return s


def chat_logprobs(tokens: list[Token], text: TokenText) -> list[dict]:
    def entry(tid: int, lp: float) -> dict:
        s = text(tid)
        return {"token": s, "logprob": lp, "bytes": list(s.encode("utf-8"))}

    return [{**entry(t.id, t.logprob if t.logprob is not None else 0.0),
             "top_logprobs": [entry(i, lp) for i, lp in (t.top or [])]} for t in tokens]


def completion_logprobs(tokens: list[Token], text: TokenText, offset: int, prompt_ids: list[int] | None = None,
                        prompt_lps: list[float | None] | None = None) -> dict:
    out = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    rows = [(i, lp, None) for i, lp in zip(prompt_ids or [], prompt_lps or [None] * len(prompt_ids or []))]
    rows += [(t.id, t.logprob, t.top) for t in tokens]
    for tid, lp, top in rows:
        s = text(tid)
        out["tokens"].append(s)
        out["token_logprobs"].append(lp)
        out["top_logprobs"].append({text(i): v for i, v in top} if top is not None else None)
        out["text_offset"].append(offset)
        offset += len(s)
    return out


@dataclass
class Usage:
    """Prompt tokens count once per prompt (n choices share it), completion tokens per choice."""

    prompt: dict[int, int] = field(default_factory=dict)
    completion: dict[int, int] = field(default_factory=dict)
    cached: dict[int, int] = field(default_factory=dict)

    def add(self, d: Delta, n: int) -> None:
        p = d.index // n
        self.prompt[p] = max(self.prompt.get(p, 0), d.prompt_tokens)
        self.cached[p] = max(self.cached.get(p, 0), d.cached_tokens)
        self.completion[d.index] = max(self.completion.get(d.index, 0), d.completion_tokens)

    def body(self) -> dict:
        p, c = sum(self.prompt.values()), sum(self.completion.values())
        return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c,
                "prompt_tokens_details": {"cached_tokens": sum(self.cached.values())}}


def envelope(rid: str, obj: str, model: str, created: int | None = None) -> dict:
    return {"id": rid, "object": obj, "created": created or int(time.time()), "model": model}
