"""A one-request-at-a-time engine over ``model.new_session()`` and rocmforge.sampler: a TEST FAKE.

It exists so the real-process tests can run before (or without) the batching
engine; ``rocmforge serve`` never uses it. Steps are serialised under one lock
and run in a worker thread so the event loop keeps streaming.
"""

from __future__ import annotations

import asyncio

import numpy as np

from rocmforge.engine.protocol import EngineRequest, EngineStats, TokenEvent
from rocmforge.sampler import SamplingParams, sample

BLOCK = 16


class ReferenceEngine:
    def __init__(self, model, max_model_len: int = 2048):
        self.model = model
        self.vocab_size = int(model.hparams["vocab_size"])
        self.max_model_len = min(max_model_len, model.context_length)
        self._lock = asyncio.Lock()
        self._tokens: dict[str, int] = {}      # request id -> tokens held
        self._waiting = 0
        self._stats = EngineStats(kv_blocks_total=4096)

    def generate(self, request: EngineRequest):
        if not request.prompt_ids or len(request.prompt_ids) + request.sampling.max_tokens > self.max_model_len:
            raise ValueError("prompt + max_tokens beyond max_model_len")
        return self._run(request)

    async def _run(self, req: EngineRequest):
        o, n = req.sampling, len(req.prompt_ids)
        params = SamplingParams(o.temperature, o.top_k, o.top_p, o.min_p, o.repetition_penalty, o.seed)
        stops = set(o.stop_token_ids) | (set() if o.ignore_eos else set(self.model.tokenizer.eos_ids))
        rng = np.random.default_rng(o.seed)
        session = self.model.new_session(n + o.max_tokens)
        out: list[int] = []
        self._waiting += 1
        try:
            logits = await self._step(req.request_id, session, list(req.prompt_ids), waiting=True)
            self._stats.prompt_tokens_total += n
            for k in range(o.max_tokens):
                z = logits.astype(np.float32)
                for t in set(out):
                    z[t] -= o.presence_penalty + o.frequency_penalty * out.count(t)
                if req.constraint is not None:
                    mask = req.constraint.allowed()
                    if mask is not None:
                        z = np.where(mask[: z.size], z, -np.inf)
                tok = sample(z, params, rng, list(req.prompt_ids) + out)
                if req.constraint is not None:
                    req.constraint.accept(tok)
                if tok in stops:
                    yield TokenEvent(req.request_id, None, finish_reason="stop", prompt_tokens=n,
                                     completion_tokens=k)
                    return
                out.append(tok)
                self._stats.generation_tokens_total += 1
                lp = logits - np.logaddexp.reduce(logits.astype(np.float64))
                top = [(int(i), float(lp[i])) for i in np.argsort(-lp)[: o.logprobs]] if o.logprobs else None
                done = req.constraint is not None and req.constraint.is_finished()
                last = done or k + 1 == o.max_tokens
                yield TokenEvent(req.request_id, tok, logprob=float(lp[tok]) if o.logprobs is not None else None,
                                 top_logprobs=top, finish_reason=("stop" if done else "length") if last else None,
                                 prompt_tokens=n, completion_tokens=k + 1)
                if last:
                    return
                logits = await self._step(req.request_id, session, [tok])
        finally:
            self._tokens.pop(req.request_id, None)

    async def _step(self, rid: str, session, ids: list[int], waiting: bool = False):
        async with self._lock:
            if waiting:
                self._waiting -= 1
            self._tokens[rid] = self._tokens.get(rid, 0) + len(ids)
            return await asyncio.to_thread(session.feed, ids)

    def abort(self, request_id: str) -> None:
        pass    # closing the iterator is what ends a request here

    def stats(self) -> EngineStats:
        s = self._stats
        s.running, s.waiting = len(self._tokens), self._waiting
        s.kv_blocks_used = sum(-(-t // BLOCK) for t in self._tokens.values())
        return s

    async def shutdown(self) -> None:
        pass
