"""A request inside the engine: its tokens, how far its KV is computed, and its state."""

from __future__ import annotations

import enum

import numpy as np

from .protocol import EngineRequest


class RequestState(enum.Enum):
    WAITING = "waiting"        # not admitted yet: holds no KV blocks
    RUNNING = "running"        # holds blocks; each step computes its next chunk or decode token
    PREEMPTED = "preempted"    # lost its blocks to an older request; waits to be recomputed
    FINISHED = "finished"


class Request:
    def __init__(self, req: EngineRequest, arrival: int, eos_ids: frozenset[int] = frozenset()):
        self.request_id = req.request_id
        self.prompt_ids = [int(t) for t in req.prompt_ids]
        self.sampling = req.sampling
        self.constraint = req.constraint
        self.arrival = arrival                     # admission order: the newest is preempted first
        self.tokens = list(self.prompt_ids)        # prompt + output: what the KV must hold
        self.output_ids: list[int] = []
        self.num_computed = 0                      # positions whose KV is written
        self.num_cached_prompt = 0                 # prompt tokens whose KV came from the prefix cache
        self.state = RequestState.WAITING
        self.finish_reason: str | None = None
        self.error: str | None = None
        self.admitted_once = False
        self.stop_ids = set(req.sampling.stop_token_ids)
        if not req.sampling.ignore_eos:
            self.stop_ids |= set(eos_ids)
        self.rng = np.random.default_rng(req.sampling.seed)
        self.params = None                         # the sampler's SamplingParams, set by the engine
        # prompt logprobs need every prompt row's logits: such a request skips the prefix cache
        self.prompt_logprobs: list[float | None] | None = [None] if req.sampling.prompt_logprobs else None
        self.prompt_logprobs_sent = False

    @property
    def num_tokens(self) -> int:
        return len(self.tokens)

    @property
    def is_finished(self) -> bool:
        return self.state is RequestState.FINISHED

    def append(self, token: int) -> None:
        self.tokens.append(token)
        self.output_ids.append(token)

    def __repr__(self) -> str:
        return (f"Request({self.request_id!r}, {self.state.value}, computed {self.num_computed}/"
                f"{self.num_tokens}, out {len(self.output_ids)})")
