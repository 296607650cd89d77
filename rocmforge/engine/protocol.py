"""What the server's HTTP face and the engine say to each other: nothing else crosses the seam.

The face validates a request, turns text into token ids and an ``EngineRequest``,
and reads ``TokenEvent`` objects back; stop strings, detokenisation and the
OpenAI wire format stay on its side. The engine owns scheduling, KV blocks and
sampling. A test can drive either side with a fake of the other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass
class SamplingOptions:
    """Per-request sampling, in the order the engine applies it: penalties -> temperature -> top-k ->
    top-p -> min-p -> constraint mask -> draw (temperature 0 is greedy)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0                      # 0 = off
    min_p: float = 0.0
    presence_penalty: float = 0.0       # OpenAI: -2..2, subtracted once from every token already generated
    frequency_penalty: float = 0.0      # OpenAI: -2..2, times the number of times it was generated
    repetition_penalty: float = 1.0     # CTRL-style over prompt + output (llama.cpp / vLLM extension)
    seed: int | None = None             # per request: the same seed gives the same tokens
    stop_token_ids: frozenset[int] = frozenset()   # end the request (finish_reason "stop"), not emitted
    ignore_eos: bool = False            # False: the tokenizer's EOS ids join stop_token_ids
    logprobs: int | None = None         # None: no logprobs; k >= 0: the chosen token's + the k most likely
    prompt_logprobs: bool = False       # logprobs of the prompt tokens, in the first event (echo + logprobs)


@runtime_checkable
class Constraint(Protocol):
    """Structured output: which tokens may come next (a compiled grammar / JSON schema)."""

    def allowed(self) -> np.ndarray | None:
        """Bool mask (vocab,) of the tokens allowed next, or None when any token is."""

    def accept(self, token_id: int) -> None:
        """The engine sampled ``token_id`` (always one that ``allowed`` permitted)."""

    def is_finished(self) -> bool:
        """The grammar is complete: the engine ends the request with finish_reason "stop"."""


@dataclass
class EngineRequest:
    request_id: str
    prompt_ids: list[int]
    sampling: SamplingOptions
    constraint: Constraint | None = None


@dataclass
class TokenEvent:
    """One step of one request. The last event of a request has ``finish_reason`` set."""

    request_id: str
    token_id: int | None                       # None on an event that only finishes (or fails) the request
    logprob: float | None = None               # of token_id, when logprobs was asked for
    top_logprobs: list[tuple[int, float]] | None = None
    prompt_logprobs: list[float | None] | None = None   # first event only, when asked (None for token 0)
    finish_reason: str | None = None           # "stop" | "length" | "abort" | "error"
    error: str | None = None                   # finish_reason "error": what went wrong, for the client
    prompt_tokens: int = 0
    completion_tokens: int = 0                 # tokens generated so far, this one included
    cached_prompt_tokens: int = 0              # prompt tokens whose KV came from the prefix cache


@dataclass
class EngineStats:
    """A snapshot for /metrics and /health (vLLM's metric names map onto these)."""

    running: int = 0
    waiting: int = 0
    preempted_total: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    prefix_queries_total: int = 0              # prompt tokens looked up in the prefix cache
    prefix_hits_total: int = 0                 # of those, tokens found
    prompt_tokens_total: int = 0
    generation_tokens_total: int = 0
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_used / self.kv_blocks_total if self.kv_blocks_total else 0.0


class Engine(Protocol):
    """The engine as the HTTP face sees it (rocmforge.engine.async_engine.AsyncEngine implements it)."""

    vocab_size: int
    max_model_len: int

    def generate(self, request: EngineRequest) -> AsyncIterator[TokenEvent]:
        """Events of ``request`` as they are made. Closing the iterator early (client gone) aborts
        the request and frees its KV blocks at once. Raises ValueError for a request that can
        never run (prompt + max_tokens beyond max_model_len, empty prompt)."""

    def abort(self, request_id: str) -> None:
        """End a request now (its iterator yields a last event with finish_reason "abort")."""

    def stats(self) -> EngineStats: ...

    async def shutdown(self) -> None: ...
