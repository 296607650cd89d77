"""The scheduler room: which requests run each step, and how many of their tokens.

Continuous batching with chunked prefill (vLLM v1's scheduler is the model). Each step has a budget
of ``max_num_batched_tokens`` token rows. Running requests go first, oldest first: a decode takes
one row, a prompt still being prefilled takes what is left of the budget, so a long prompt is cut
into chunks and never stalls the decodes for more than one chunk. Then waiting requests are admitted
in arrival order while seats (``max_num_seqs``), budget and blocks last; an admission looks up its
prompt in the prefix cache first.

When a running request needs a block and the pool has none, the newest running request is
preempted: its blocks go back to the pool and it waits, first in line, to be recomputed from its
tokens (prompt + what it generated so far). Since a request whose whole length cannot fit the pool
is refused at ``add``, the oldest request always fits alone and every request finishes.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from .kv_cache_manager import KVCacheManager, blocks_for
from .request import Request, RequestState


@dataclass
class ScheduledBatch:
    items: list[tuple[Request, int]] = field(default_factory=list)   # (request, rows from req.num_computed)
    preempted: list[Request] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.items)

    def __bool__(self) -> bool:
        return bool(self.items)


class Scheduler:
    def __init__(self, kv: KVCacheManager, max_num_seqs: int = 16, max_num_batched_tokens: int = 512,
                 max_model_len: int = 4096):
        if max_num_seqs < 1 or max_num_batched_tokens < 1 or max_model_len < 1:
            raise ValueError("max_num_seqs, max_num_batched_tokens and max_model_len must be >= 1, got "
                             f"{max_num_seqs}, {max_num_batched_tokens}, {max_model_len}")
        self.kv = kv
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []     # admission order, oldest first
        self.preempted_total = 0

    # ---- requests in and out
    def check(self, req: Request) -> None:
        """ValueError for a request that could never run, whatever else is running."""
        n_prompt, max_tokens = len(req.prompt_ids), req.sampling.max_tokens
        if n_prompt == 0:
            raise ValueError("the prompt has no tokens")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise ValueError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        total = n_prompt + max_tokens
        if total > self.max_model_len:
            raise ValueError(f"the prompt ({n_prompt} tokens) plus max_tokens ({max_tokens}) is {total} tokens, "
                             f"more than the model's maximum length of {self.max_model_len}")
        need = blocks_for(total, self.kv.block_size)
        if need > self.kv.pool.num_blocks:
            raise ValueError(f"the request needs {need} KV blocks of {self.kv.block_size} tokens "
                             f"({total} tokens), more than the pool's {self.kv.pool.num_blocks}")

    def add(self, req: Request) -> None:
        self.check(req)
        req.state = RequestState.WAITING
        self.waiting.append(req)

    def finish(self, req: Request, reason: str, error: str | None = None) -> None:
        """``req`` leaves now (done, aborted or failed): its blocks go back to the pool."""
        if req.state is RequestState.FINISHED:
            return
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)
        self.kv.free(req.request_id)
        req.state = RequestState.FINISHED
        req.finish_reason, req.error = reason, error

    @property
    def num_unfinished(self) -> int:
        return len(self.running) + len(self.waiting)

    # ---- one step
    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self.max_num_batched_tokens
        for req in list(self.running):
            if req.state is not RequestState.RUNNING:      # preempted earlier in this loop
                continue
            n = min(req.num_tokens - req.num_computed, budget)
            if n <= 0:
                continue
            while not self.kv.grow(req.request_id, req.num_computed, n):
                victim = self.running[-1]
                self._preempt(victim)
                batch.preempted.append(victim)
                if victim is req:
                    break
            else:
                batch.items.append((req, n))
                budget -= n
        if batch.preempted:     # memory is short: admitting more would preempt again next step
            return batch
        while self.waiting and len(self.running) < self.max_num_seqs and budget > 0:
            req = self.waiting[0]
            hits = self.kv.find_prefix(req.tokens) if req.prompt_logprobs is None else []
            n_cached = len(hits) * self.kv.block_size
            n = min(req.num_tokens - n_cached, budget)
            if not self.kv.admit(req.request_id, req.tokens, hits, n):
                break
            self.waiting.popleft()
            req.num_computed = n_cached
            if not req.admitted_once:
                req.num_cached_prompt = n_cached
                req.admitted_once = True
            req.state = RequestState.RUNNING
            self.running.append(req)
            batch.items.append((req, n))
            budget -= n
        return batch

    def _preempt(self, req: Request) -> None:
        self.running.remove(req)
        self.kv.free(req.request_id)
        req.num_computed = 0
        req.state = RequestState.PREEMPTED
        self.waiting.appendleft(req)
        self.preempted_total += 1

    def advance(self, req: Request, n: int) -> None:
        """The step wrote ``n`` more positions of ``req``: its newly full blocks join the prefix cache."""
        req.num_computed += n
        self.kv.commit(req.request_id, req.tokens, req.num_computed)
