"""Engine events become text deltas, one choice at a time or many merged.

Each choice reads its engine iterator inside ``aclosing``: however the choice
ends (a stop string, the client gone, a cancelled task), the iterator is
closed at once and the engine frees the request's blocks. Latency histograms
are observed here, where the client's view of time is.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from rocmforge.engine.protocol import EngineRequest

from .errors import APIError
from .textstream import TextStream


class EngineFailure(Exception):
    """The engine failed one request (finish_reason "error"); only that request fails."""


@dataclass
class Token:
    id: int
    logprob: float | None
    top: list[tuple[int, float]] | None


@dataclass
class Delta:
    index: int
    text: str = ""
    tokens: list[Token] = field(default_factory=list)
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    prompt_logprobs: list[float | None] | None = None


def start(engine, request: EngineRequest) -> AsyncIterator:
    """The engine's iterator; a request it says can never run is the client's error."""
    try:
        return engine.generate(request)
    except ValueError as exc:
        raise APIError(str(exc), param="max_tokens") from None


async def run_choice(engine, events: AsyncIterator, index: int, stream: TextStream, metrics,
                     arrival: float) -> AsyncIterator[Delta]:
    last = None
    async with aclosing(events) as evs:
        try:
            async for ev in evs:
                if ev.finish_reason == "error":
                    metrics.finished("error")
                    raise EngineFailure(ev.error or "the engine failed this request")
                d = Delta(index, prompt_tokens=ev.prompt_tokens, completion_tokens=ev.completion_tokens,
                          cached_tokens=ev.cached_prompt_tokens, prompt_logprobs=ev.prompt_logprobs)
                if ev.token_id is not None:
                    now = time.perf_counter()
                    if last is None:
                        metrics.ttft.observe(now - arrival)
                    else:
                        metrics.itl.observe(now - last)
                    last = now
                    d.text = stream.put(ev.token_id)
                    d.tokens.append(Token(ev.token_id, ev.logprob, ev.top_logprobs))
                if stream.stopped:
                    d.finish_reason = "stop"    # leaving the loop closes the iterator: the engine aborts it
                elif ev.finish_reason is not None:
                    d.text += stream.finish()
                    d.finish_reason = ev.finish_reason
                yield d
                if d.finish_reason is not None:
                    metrics.finished(d.finish_reason)
                    metrics.e2e.observe(time.perf_counter() - arrival)
                    return
        except ValueError as exc:     # raised on the first step instead of at generate()
            raise APIError(str(exc)) from None
    raise EngineFailure("the engine ended the request without a finish reason")


async def merge(choices: list[AsyncIterator[Delta]]) -> AsyncIterator[Delta]:
    """Deltas of all choices as they come; the first failure ends them all."""
    if len(choices) == 1:
        async with aclosing(choices[0]) as only:
            async for d in only:
                yield d
        return
    queue: asyncio.Queue = asyncio.Queue()
    done = object()

    async def pump(choice):
        try:
            async with aclosing(choice) as c:
                async for d in c:
                    await queue.put(d)
            await queue.put(done)
        except Exception as exc:
            await queue.put(exc)

    tasks = [asyncio.create_task(pump(c)) for c in choices]
    try:
        remaining = len(tasks)
        while remaining:
            item = await queue.get()
            if item is done:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield item
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
