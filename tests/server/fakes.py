"""A scripted engine for the face's in-process tests: it answers with the tokens of a fixed text.

It keeps what the face sent (``requests``) and which iterators are still open
(``open``), so a test can see that a stop string, a cancelled stream or a
vanished client closed the engine's iterator.
"""

from __future__ import annotations

import asyncio

from rocmforge.engine.protocol import EngineRequest, EngineStats, TokenEvent


class FakeEngine:
    def __init__(self, tokenizer, vocab_size: int, max_model_len: int = 256, reply: str = "Hello there, world!",
                 delay: float = 0.0, fail_after: int | None = None):
        self.tokenizer, self.vocab_size, self.max_model_len = tokenizer, vocab_size, max_model_len
        self.reply_ids = tokenizer.encode(reply, add_special=False)
        self.delay, self.fail_after = delay, fail_after
        self.requests: list[EngineRequest] = []
        self.open: set[str] = set()
        self.aborted: list[str] = []
        self.generated = 0
        self.shut = False

    def generate(self, request: EngineRequest):
        if len(request.prompt_ids) + request.sampling.max_tokens > self.max_model_len:
            raise ValueError("prompt + max_tokens beyond max_model_len")
        self.requests.append(request)
        return self._events(request)

    async def _events(self, req: EngineRequest):
        self.open.add(req.request_id)
        try:
            n = len(req.prompt_ids)
            first = True
            for k in range(req.sampling.max_tokens):
                if self.delay:
                    await asyncio.sleep(self.delay)
                else:
                    await asyncio.sleep(0)
                if self.fail_after is not None and k >= self.fail_after:
                    yield TokenEvent(req.request_id, None, finish_reason="error", error="out of KV blocks",
                                     prompt_tokens=n, completion_tokens=k)
                    return
                if req.constraint is not None:
                    mask = req.constraint.allowed()
                    assert mask.shape == (self.vocab_size,), mask.shape
                    tid = self._constrained(req, mask, k)
                    req.constraint.accept(tid)
                elif k < len(self.reply_ids):
                    tid = self.reply_ids[k]
                else:
                    yield TokenEvent(req.request_id, None, finish_reason="stop", prompt_tokens=n,
                                     completion_tokens=k)
                    return
                self.generated += 1
                done = req.constraint is not None and req.constraint.is_finished()
                last = done or k + 1 == req.sampling.max_tokens
                yield TokenEvent(
                    req.request_id, tid,
                    logprob=-0.25 if req.sampling.logprobs is not None else None,
                    top_logprobs=[(tid, -0.25), (0, -3.0)][: req.sampling.logprobs]
                    if req.sampling.logprobs else None,
                    prompt_logprobs=[None] + [-1.0] * (n - 1) if first and req.sampling.prompt_logprobs else None,
                    finish_reason=("stop" if done else "length") if last else None,
                    prompt_tokens=n, completion_tokens=k + 1)
                first = False
                if last:
                    return
        finally:
            self.open.discard(req.request_id)

    def _constrained(self, req, mask, k: int) -> int:
        # prefer the scripted token, else the lowest allowed id that is not EOS (EOS once nothing else is)
        eos = self.tokenizer.eos_ids
        allowed = [int(i) for i in mask.nonzero()[0]]
        assert allowed, "the constraint allowed nothing"
        non_eos = [i for i in allowed if i not in eos]
        return non_eos[0] if non_eos else allowed[0]

    def abort(self, request_id: str) -> None:
        self.aborted.append(request_id)

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self.open), kv_blocks_total=100, kv_blocks_used=len(self.open),
                           generation_tokens_total=self.generated, extra={"steps": float(self.generated)})

    async def shutdown(self) -> None:
        self.shut = True
