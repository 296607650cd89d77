"""An OpenAI request becomes engine requests: prompt ids, sampling options, a constraint.

Everything a client can get wrong is checked here, before the engine sees it,
and answered with a 400 that names the field: the prompt against the context,
``max_tokens`` against what is left of it, token ids against the vocabulary,
fields we cannot honour, grammars that do not compile.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, replace

from rocmforge.chat_template import ChatTemplateError
from rocmforge.engine.protocol import EngineRequest, SamplingOptions

from .errors import APIError
from .schemas import ChatCompletionRequest, CompletionRequest, SamplingFields


@dataclass
class Plan:
    """What one HTTP request asks of the engine: ``len(prompts) * n`` engine requests."""

    id: str
    prompts: list[list[int]]
    requests: list[EngineRequest]     # choice index i -> requests[i]; prompt i // n
    stop: list[str]
    n: int


def refuse_unsupported(body: SamplingFields) -> None:
    if body.logit_bias:
        raise APIError("logit_bias is not supported", param="logit_bias")
    if isinstance(body, CompletionRequest):
        if body.suffix:
            raise APIError("suffix is not supported", param="suffix")
        if body.best_of is not None and body.best_of != body.n:
            raise APIError("best_of other than n is not supported", param="best_of")
    if isinstance(body, ChatCompletionRequest) and body.tools and body.tool_choice != "none":
        raise APIError("tools are not supported by this server", param="tools")


def completion_prompts(body: CompletionRequest, tokenizer, vocab_size: int) -> list[list[int]]:
    p = body.prompt
    if isinstance(p, str):
        prompts = [tokenizer.encode(p, parse_special=False)]
    elif not p:
        raise APIError("prompt is empty", param="prompt")
    elif all(isinstance(x, str) for x in p):
        prompts = [tokenizer.encode(x, parse_special=False) for x in p]
    elif all(isinstance(x, int) for x in p):
        prompts = [list(p)]
    else:
        prompts = [list(x) for x in p]
    for ids in prompts:
        bad = [t for t in ids if not 0 <= t < vocab_size]
        if bad:
            raise APIError(f"token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})", param="prompt")
    if len(prompts) * body.n > 64:
        raise APIError("at most 64 choices per request (prompts x n)", param="n")
    return prompts


def chat_prompt(body: ChatCompletionRequest, tokenizer) -> list[int]:
    messages = []
    for m in body.messages:
        content = m.content if isinstance(m.content, str) or m.content is None else \
            "".join(part.text for part in m.content)
        messages.append({"role": m.role, "content": content or "", **({"name": m.name} if m.name else {})})
    try:
        return tokenizer.encode_chat(messages, add_generation_prompt=body.add_generation_prompt,
                                     **(body.chat_template_kwargs or {}))
    except ChatTemplateError as exc:
        raise APIError(str(exc), param="messages") from None


def grammar_source(body: SamplingFields) -> tuple[str, object, str] | None:
    """(kind, spec, param) of the structured output asked for, or None."""
    asked = []
    rf = body.response_format
    if rf is not None and rf.type == "json_object":
        asked.append(("json_schema", {"type": "object"}, "response_format"))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None:
            raise APIError("response_format.json_schema is required for type json_schema",
                           param="response_format.json_schema")
        asked.append(("json_schema", rf.json_schema.schema_ or {}, "response_format.json_schema.schema"))
    for kind, value, param in (("json_schema", body.guided_json, "guided_json"),
                               ("regex", body.guided_regex, "guided_regex"),
                               ("lark", body.guided_grammar, "guided_grammar"),
                               ("choice", body.guided_choice, "guided_choice")):
        if value is not None:
            asked.append((kind, value, param))
    if len(asked) > 1:
        raise APIError(f"give one structured-output field, not {', '.join(a[2] for a in asked)}",
                       param=asked[1][2])
    return asked[0] if asked else None


def _max_tokens(body: SamplingFields, prompt_len: int, max_model_len: int) -> int:
    requested = getattr(body, "max_completion_tokens", None) or body.max_tokens
    room = max_model_len - prompt_len
    if room <= 0:
        raise APIError(f"this model's maximum context length is {max_model_len} tokens; the prompt has "
                       f"{prompt_len}", param="messages" if isinstance(body, ChatCompletionRequest) else "prompt",
                       code="context_length_exceeded")
    if requested is None:
        return room
    if requested > room:
        raise APIError(f"this model's maximum context length is {max_model_len} tokens; you asked for "
                       f"{prompt_len + requested} ({prompt_len} in the prompt, {requested} to generate)",
                       param="max_tokens", code="context_length_exceeded")
    return requested


def sampling_options(body: SamplingFields, prompt_len: int, max_model_len: int, logprobs: int | None,
                     prompt_logprobs: bool = False) -> SamplingOptions:
    return SamplingOptions(
        max_tokens=_max_tokens(body, prompt_len, max_model_len),
        # as vLLM: a temperature this small is greedy (dividing logits by it would overflow to inf/NaN)
        temperature=1.0 if body.temperature is None else (0.0 if body.temperature < 1e-5 else body.temperature),
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=max(0, body.top_k or 0),
        min_p=body.min_p or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        frequency_penalty=body.frequency_penalty or 0.0,
        repetition_penalty=body.repetition_penalty or 1.0,
        seed=body.seed,
        stop_token_ids=frozenset(body.stop_token_ids or ()),
        ignore_eos=body.ignore_eos,
        logprobs=logprobs,
        prompt_logprobs=prompt_logprobs,
    )


def plan(body: SamplingFields, prompts: list[list[int]], max_model_len: int, compiler, logprobs: int | None,
         prompt_logprobs: bool = False) -> Plan:
    refuse_unsupported(body)
    source = grammar_source(body)
    grammar = None
    if source is not None:
        grammar = compiler.grammar(*source)
        compiler.check(grammar, source[2])
    rid = ("chatcmpl-" if isinstance(body, ChatCompletionRequest) else "cmpl-") + uuid.uuid4().hex
    requests = []
    for p, ids in enumerate(prompts):
        if not ids:
            raise APIError("the prompt encodes to no tokens", param="prompt")
        base = sampling_options(body, len(ids), max_model_len, logprobs, prompt_logprobs)
        for i in range(body.n):
            # n choices with one seed would be n copies of one answer
            opts = replace(base, seed=None if base.seed is None else base.seed + i)
            requests.append(EngineRequest(f"{rid}-{p * body.n + i}", list(ids), opts,
                                          compiler.constraint(grammar) if grammar is not None else None))
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    return Plan(rid, prompts, requests, stop, body.n)
