"""GET /v1/models, /health, /metrics; POST /tokenize, /detokenize (vLLM's bodies)."""

from __future__ import annotations

from fastapi import APIRouter, Depends, Request
from fastapi.responses import Response

from .errors import APIError
from .requests import chat_prompt
from .routes_generate import require_json
from .schemas import (
    ChatCompletionRequest,
    DetokenizeRequest,
    DetokenizeResponse,
    ErrorResponse,
    ModelList,
    TokenizeRequest,
    TokenizeResponse,
)
from .state import get_state

router = APIRouter()
_ERRORS = {code: {"model": ErrorResponse} for code in (400, 404, 413, 415)}


@router.get("/v1/models", response_model=ModelList)
async def models(request: Request):
    st = get_state(request)
    return {"object": "list", "data": [{"id": st.model_name, "object": "model", "created": st.created,
                                        "owned_by": "rocmforge", "max_model_len": st.max_model_len}]}


@router.get("/health")
async def health(request: Request) -> dict:
    s = get_state(request).engine.stats()
    return {"status": "ok", "running": s.running, "waiting": s.waiting, "kv_cache_usage": s.kv_usage}


@router.get("/metrics", response_class=Response, responses={200: {"content": {"text/plain": {}}}})
async def metrics(request: Request):
    from prometheus_client import CONTENT_TYPE_LATEST

    return Response(get_state(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


@router.post("/tokenize", response_model=TokenizeResponse, dependencies=[Depends(require_json)],
             responses=_ERRORS)
async def tokenize(body: TokenizeRequest, request: Request):
    st = get_state(request)
    st.check_model(body.model)
    if (body.prompt is None) == (body.messages is None):
        raise APIError("give exactly one of prompt or messages", param="prompt")
    if body.messages is not None:
        if not body.messages:
            raise APIError("messages is empty", param="messages")
        ids = chat_prompt(ChatCompletionRequest(messages=body.messages,
                                                add_generation_prompt=body.add_generation_prompt), st.tokenizer)
    else:
        ids = st.tokenizer.encode(body.prompt, add_special=body.add_special_tokens, parse_special=False)
    out = {"count": len(ids), "max_model_len": st.max_model_len, "tokens": ids}
    if body.return_token_strs:
        out["token_strs"] = [st.tokenizer.id_to_token(i) for i in ids]
    return out


@router.post("/detokenize", response_model=DetokenizeResponse, dependencies=[Depends(require_json)],
             responses=_ERRORS)
async def detokenize(body: DetokenizeRequest, request: Request):
    st = get_state(request)
    st.check_model(body.model)
    bad = [t for t in body.tokens if t >= st.vocab_size]
    if bad:
        raise APIError(f"token id {bad[0]} is outside the vocabulary (0..{st.vocab_size - 1})", param="tokens")
    return {"prompt": st.tokenizer.decode(body.tokens, skip_special=False)}
