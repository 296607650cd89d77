"""POST /v1/completions and /v1/chat/completions: plan, run, answer whole or as SSE."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from . import requests as plans
from .errors import APIError, error_body
from .formatting import Usage, chat_logprobs, completion_logprobs, envelope, sse
from .generation import Delta, EngineFailure, merge, run_choice, start
from .schemas import (
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    ErrorResponse,
)
from .state import ServerState, get_state
from .textstream import TextStream


def require_json(request: Request) -> None:
    ctype = request.headers.get("content-type", "")
    if ctype.split(";")[0].strip().lower() != "application/json":
        raise APIError(f"Content-Type must be application/json, got {ctype or 'none'!r}", status=415)


_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415, 500)}
_SSE = {200: {"content": {"text/event-stream": {}}, "description": "JSON, or SSE chunks when stream is true"}}
router = APIRouter(dependencies=[Depends(require_json)], responses={**_ERRORS, **_SSE})


def _choices(st: ServerState, plan: plans.Plan, arrival: float) -> AsyncIterator[Delta]:
    events = [start(st.engine, r) for r in plan.requests]   # a request that can never run fails here, as a 400
    return merge([run_choice(st.engine, ev, i, TextStream(st.tokenizer, plan.stop), st.metrics, arrival)
                  for i, ev in enumerate(events)])


async def _collect(deltas: AsyncIterator[Delta], plan: plans.Plan) -> tuple[dict[int, dict], Usage]:
    out = {i: {"text": [], "tokens": [], "finish": None, "prompt_lps": None} for i in range(len(plan.requests))}
    usage = Usage()
    try:
        async for d in deltas:
            c = out[d.index]
            c["text"].append(d.text)
            c["tokens"] += d.tokens
            c["finish"] = d.finish_reason or c["finish"]
            c["prompt_lps"] = c["prompt_lps"] or d.prompt_logprobs
            usage.add(d, plan.n)
    except EngineFailure as exc:
        raise APIError(f"generation failed: {exc}", status=500) from None
    return out, usage


_DISCONNECT_POLL_S = 0.25    # how often a non-streaming request checks that its client is still there


async def _collect_while_connected(request: Request, deltas: AsyncIterator[Delta], plan: plans.Plan):
    """_collect, given up the moment the client goes away: cancelling it aborts its engine requests,
    whose blocks (and recurrent state) are freed at once. Without this a non-streaming request whose
    client timed out or died would generate all its max_tokens for nobody."""
    work = asyncio.ensure_future(_collect(deltas, plan))
    watch = asyncio.ensure_future(_client_gone(request))
    try:
        done, _ = await asyncio.wait({work, watch}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watch.cancel()
    if work in done:
        return work.result()
    work.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await work
    raise APIError("the client disconnected before the completion was ready", status=499)


async def _client_gone(request: Request) -> None:
    while not await request.is_disconnected():
        await asyncio.sleep(_DISCONNECT_POLL_S)


async def _stream(deltas: AsyncIterator[Delta], plan: plans.Plan, chunk, include_usage: bool, tail):
    usage = Usage()
    try:
        async for d in deltas:
            usage.add(d, plan.n)
            c = chunk(d)
            if c is not None:
                yield sse(c)
        if include_usage:
            yield sse(tail(usage))
    except (EngineFailure, APIError) as exc:    # headers are gone: the failure travels as a chunk
        status = exc.status if isinstance(exc, APIError) else 500
        yield sse(error_body(f"generation failed: {exc}", status))
    yield sse("[DONE]")


@router.post("/v1/completions", response_model=CompletionResponse)
async def completions(body: CompletionRequest, request: Request):
    arrival = time.perf_counter()
    st = get_state(request)
    st.check_model(body.model)
    prompts = plans.completion_prompts(body, st.tokenizer, st.vocab_size)
    echo_lps = body.echo and body.logprobs is not None
    plan = plans.plan(body, prompts, st.max_model_len, st.compiler, body.logprobs, prompt_logprobs=echo_lps)
    head = envelope(plan.id, "text_completion", st.model_name)
    echo = {}
    if body.echo:
        echo = {p: st.tokenizer.decode(ids, skip_special=False) for p, ids in enumerate(prompts)}

    def lps(i: int, tokens, prompt_lps, offset: int, with_prompt: bool):
        if body.logprobs is None:
            return None
        ids = prompts[i // plan.n] if with_prompt else None
        return completion_logprobs(tokens, st.token_text, offset, ids, prompt_lps)

    deltas = _choices(st, plan, arrival)
    if body.stream:
        sent: set[int] = set()
        offsets: dict[int, int] = {}

        def chunk(d: Delta):
            first = d.index not in sent
            sent.add(d.index)
            text = (echo.get(d.index // plan.n, "") if first else "") + d.text
            if not text and d.finish_reason is None and not (d.tokens and body.logprobs is not None):
                return None
            off = offsets.get(d.index, 0)
            offsets[d.index] = off + len(text)
            choice = {"index": d.index, "text": text, "logprobs": lps(d.index, d.tokens, d.prompt_logprobs, off,
                                                                      first and echo_lps),
                      "finish_reason": d.finish_reason}
            return {**head, "choices": [choice]}

        return StreamingResponse(_stream(deltas, plan, chunk, _include_usage(body),
                                         lambda u: {**head, "choices": [], "usage": u.body()}),
                                 media_type="text/event-stream")
    out, usage = await _collect_while_connected(request, deltas, plan)
    choices = []
    for i, c in out.items():
        prefix = echo.get(i // plan.n, "")
        choices.append({"index": i, "text": prefix + "".join(c["text"]),
                        "logprobs": lps(i, c["tokens"], c["prompt_lps"], 0, echo_lps),
                        "finish_reason": c["finish"]})
    return JSONResponse({**head, "choices": choices, "usage": usage.body()})


def _include_usage(body) -> bool:
    return bool(body.stream_options and body.stream_options.include_usage)


@router.post("/v1/chat/completions", response_model=ChatCompletionResponse)
async def chat_completions(body: ChatCompletionRequest, request: Request):
    arrival = time.perf_counter()
    st = get_state(request)
    st.check_model(body.model)
    prompt = plans.chat_prompt(body, st.tokenizer)
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError("top_logprobs needs logprobs: true", param="top_logprobs")
    k = (body.top_logprobs or 0) if body.logprobs else None
    plan = plans.plan(body, [prompt], st.max_model_len, st.compiler, k)
    head = envelope(plan.id, "chat.completion.chunk" if body.stream else "chat.completion", st.model_name)
    deltas = _choices(st, plan, arrival)
    if body.stream:
        sent: set[int] = set()

        def chunk(d: Delta):
            delta = {} if d.index in sent else {"role": "assistant", "content": ""}
            sent.add(d.index)
            if d.text:
                delta["content"] = delta.get("content", "") + d.text
            logprobs = {"content": chat_logprobs(d.tokens, st.token_text)} if k is not None and d.tokens else None
            if not delta and d.finish_reason is None and logprobs is None:
                return None
            return {**head, "choices": [{"index": d.index, "delta": delta, "logprobs": logprobs,
                                         "finish_reason": d.finish_reason}]}

        return StreamingResponse(_stream(deltas, plan, chunk, _include_usage(body),
                                         lambda u: {**head, "choices": [], "usage": u.body()}),
                                 media_type="text/event-stream")
    out, usage = await _collect_while_connected(request, deltas, plan)
    choices = [{"index": i, "message": {"role": "assistant", "content": "".join(c["text"])},
                "logprobs": {"content": chat_logprobs(c["tokens"], st.token_text)} if k is not None else None,
                "finish_reason": c["finish"]} for i, c in out.items()]
    return JSONResponse({**head, "choices": choices, "usage": usage.body()})
