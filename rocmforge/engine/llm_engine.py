"""The synchronous engine: scheduler + cache manager + model step + per-request sampling, one step at a time.

``add_request`` / ``abort`` / ``step`` are all a test or a benchmark needs; rocmforge.engine.async_engine
runs the same loop in a background thread for the server. Not thread-safe: one thread drives it.

A failure inside one request (its constraint raises, its forward fails, e.g. out of memory) finishes
that request with finish_reason "error"; the others go on. When the batched forward fails, each
sequence is run alone once to find which one it was.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Iterable

import numpy as np

from ..sampler import Draw, SamplingParams, draw, log_softmax
from .block_pool import BlockPool
from .kv_cache_manager import KVCacheManager, blocks_for
from .model_step import ModelStep, StepItem, blocks_for_memory
from .protocol import EngineRequest, EngineStats, SamplingOptions, TokenEvent
from .request import Request
from .scheduler import Scheduler
from .step_trace import StepTrace

log = logging.getLogger(__name__)

DEFAULT_POOL_TOKENS = 2048     # per seat, when neither kv_cache_gb nor num_blocks is given


def sampling_params(s: SamplingOptions) -> SamplingParams:
    """The sampler's parameters for a request (ValueError for values out of range)."""
    for name in ("presence_penalty", "frequency_penalty"):
        if not -2.0 <= float(getattr(s, name)) <= 2.0:
            raise ValueError(f"{name} must be in [-2, 2], got {getattr(s, name)}")
    if s.logprobs is not None and s.logprobs < 0:
        raise ValueError(f"logprobs must be >= 0, got {s.logprobs}")
    return SamplingParams(temperature=float(s.temperature), top_k=int(s.top_k), top_p=float(s.top_p),
                          min_p=float(s.min_p), repetition_penalty=float(s.repetition_penalty), seed=s.seed,
                          presence_penalty=float(s.presence_penalty), frequency_penalty=float(s.frequency_penalty))


class LLMEngine:
    """Continuous batching over a paged KV cache.

    ``model``: a rocmforge Model (its tokenizer's EOS ids stop requests unless ``ignore_eos``).
    The pool holds ``num_blocks`` blocks of ``block_size`` tokens, or as many as ``kv_cache_gb`` GiB
    hold, or by default ``max_num_seqs`` x min(max_model_len, 2048) tokens. ``model_step``: a stand-in
    for the model (tests drive the scheduler with a fake one; ``model`` may then be None).
    ``max_num_batched_tokens``: token rows per step, by default the backend's ``step_tokens`` (512 on
    the CPU, 2048 or 8192 on a GPU by its memory).
    ``capture_graphs``: capture the GPU's batched decode graphs for every batch size now (the server
    does), not at each size's first steps, and compile the prefill kernels with dummy prompts.

    A recurrent model's requests each own a recurrent state in the model step (freed on the paths
    that free their blocks); prefix caching is off for such a model."""

    def __init__(self, model, max_num_seqs: int = 16, max_model_len: int | None = None,
                 kv_cache_gb: float | None = None, num_blocks: int | None = None, block_size: int = 16,
                 max_num_batched_tokens: int | None = None, enable_prefix_caching: bool = True,
                 model_step=None, eos_ids: Iterable[int] | None = None, capture_graphs: bool = False):
        if max_model_len is None:
            if model is None:
                raise ValueError("max_model_len is needed without a model")
            max_model_len = model.context_length
        if num_blocks is None and kv_cache_gb is not None:
            num_blocks = blocks_for_memory(model, kv_cache_gb, block_size)
            if num_blocks is None:
                log.info("%s keeps no KV cache: --kv-cache-gb does not size its block pool", model.arch)
        if num_blocks is None:
            num_blocks = max_num_seqs * blocks_for(min(max_model_len, DEFAULT_POOL_TOKENS), block_size)
            num_blocks = max(num_blocks, blocks_for(max_model_len, block_size))
        self.model = model
        self.max_model_len = int(max_model_len)
        self.runner = model_step if model_step is not None else ModelStep(model, int(num_blocks), block_size)
        if capture_graphs and hasattr(self.runner, "capture_graphs"):
            n = self.runner.capture_graphs(max_num_seqs, self.max_model_len)
            if n:
                log.info("captured the decode graphs of %d batch shapes (up to %d sequences)", n, max_num_seqs)
            if hasattr(self.runner, "warm_up") and self.runner.warm_up():
                log.info("warmed up the prefill kernels")
        if enable_prefix_caching and getattr(self.runner, "has_state", False):
            # a recurrent layer's state after a prefix is not kept per block: a cached prefix's KV alone
            # cannot continue the sequence, so every prompt is computed from its first token
            log.info("prefix caching is off: %s keeps a recurrent state per sequence, which KV blocks do not hold",
                     getattr(model, "arch", "the model"))
            enable_prefix_caching = False
        self.pool = BlockPool(int(num_blocks), block_size, enable_caching=enable_prefix_caching)
        self.kv = KVCacheManager(self.pool)
        if max_num_batched_tokens is None:     # the backend's default (rocmforge.backends.base.Backend.step_tokens)
            max_num_batched_tokens = int(getattr(getattr(model, "backend", None), "step_tokens", 512))
        self.scheduler = Scheduler(self.kv, max_num_seqs, max_num_batched_tokens, self.max_model_len)
        self.vocab_size = int(self.runner.vocab_size)
        if eos_ids is None:
            tok = getattr(model, "tokenizer", None) if model is not None else None
            eos_ids = tok.eos_ids if tok is not None else ()
        self.eos_ids = frozenset(int(i) for i in eos_ids)
        self.requests: dict[Hashable, Request] = {}
        self._arrivals = 0
        self.prompt_tokens_total = 0
        self.generation_tokens_total = 0
        self.trace = StepTrace.from_env()      # ROCMFORGE_STEP_TRACE=FILE: each step's phases (step_trace)

    # ---- requests
    def validate(self, request: EngineRequest) -> None:
        """ValueError if ``request`` could never run here. Reads only the engine's fixed settings, so
        another thread may call it while this one steps."""
        bad = [t for t in request.prompt_ids if not 0 <= int(t) < self.vocab_size]
        if bad:
            raise ValueError(f"token id {bad[0]} is outside the vocabulary (0..{self.vocab_size - 1})")
        self.scheduler.check(Request(request, -1))
        sampling_params(request.sampling)

    def add_request(self, request: EngineRequest) -> None:
        """Queue ``request``; ValueError if it can never run (or its id is in use)."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.validate(request)
        req = Request(request, self._arrivals, self.eos_ids)
        req.params = sampling_params(request.sampling)
        self.scheduler.add(req)
        self._arrivals += 1
        self.requests[req.request_id] = req
        self.prompt_tokens_total += len(req.prompt_ids)

    def abort(self, request_id: Hashable) -> TokenEvent | None:
        """End ``request_id`` now and free its blocks; its last event, or None if it is not here."""
        req = self.requests.get(request_id)
        if req is None:
            return None
        return self._finish(req, "abort")

    def fail(self, request_id: Hashable, message: str) -> TokenEvent | None:
        """End ``request_id`` with finish_reason "error" and ``message``; None if it is not here."""
        req = self.requests.get(request_id)
        return self._finish(req, "error", message) if req is not None else None

    def has_unfinished(self) -> bool:
        return self.scheduler.num_unfinished > 0

    # ---- one step
    def step(self, while_running: Callable[[], None] | None = None) -> list[TokenEvent]:
        """Schedule, run one batched forward, sample: the events this step made. ``while_running``:
        called once the forward is queued (ModelStep.run), e.g. to hand the last step's events on."""
        tr = self.trace
        if tr is not None:
            tr.start()
        batch = self.scheduler.schedule()
        for req in batch.preempted:
            self.runner.release(req.request_id)
        if not batch:
            return []
        if self.kv.pending_copies:
            self.runner.copy_blocks(self.kv.pending_copies)
            self.kv.pending_copies = []
        items = [StepItem(req.request_id, req.tokens[req.num_computed:req.num_computed + n], req.num_computed,
                          self.kv.block_table(req.request_id), all_rows=self._wants_rows(req),
                          greedy=_plain_greedy(req))
                 for req, n in batch.items]
        if tr is not None:
            tr.mark()
        results = self._forward(items, while_running)
        if tr is not None:
            tr.mark()
        events, due = [], []
        for (req, n), it, out in zip(batch.items, items, results):
            if isinstance(out, Exception):
                events.append(self._finish(req, "error", f"the model step failed: {_describe(out)}"))
                continue
            if it.all_rows:
                self._prompt_logprobs(req, it.pos0, out)
                out = out[-1]
            self.scheduler.advance(req, n)
            if req.num_computed < req.num_tokens:     # a prompt chunk: nothing to sample yet
                continue
            due.append((req, out))
        greedy = _greedy_tokens(due)
        events += [self._sample(req, out, greedy.get(i)) for i, (req, out) in enumerate(due)]
        if tr is not None:
            tr.mark()
            tr.end_step(len(items), sum(len(it.token_ids) for it in items),
                        sum(len(it.token_ids) for it in items if len(it.token_ids) > 1))
        return events

    def _forward(self, items: list[StepItem], while_running=None) -> list:
        try:
            return self.runner.run(items, while_running)
        except Exception as exc:     # noqa: BLE001 - one bad sequence must not take the batch down
            if len(items) == 1:
                log.warning("model step failed for %s: %s", items[0].seq_id, _describe(exc))
                return [exc]
            log.warning("batched model step failed (%s); running its %d sequences alone", _describe(exc), len(items))
        if while_running is not None:     # the batched forward failed before it could call it
            while_running()
        out = []
        for it in items:
            try:
                out.append(self.runner.run([it])[0])
            except Exception as exc:     # noqa: BLE001
                log.warning("model step failed for %s: %s", it.seq_id, _describe(exc))
                out.append(exc)
        return out

    def _wants_rows(self, req: Request) -> bool:
        return req.prompt_logprobs is not None and len(req.prompt_logprobs) < len(req.prompt_ids)

    def _prompt_logprobs(self, req: Request, pos0: int, rows: np.ndarray) -> None:
        # row j predicts position pos0 + j + 1
        for j in range(rows.shape[0]):
            p = pos0 + j + 1
            if p == len(req.prompt_logprobs) and p < len(req.prompt_ids):
                req.prompt_logprobs.append(float(log_softmax(rows[j])[req.prompt_ids[p]]))

    def _sample(self, req: Request, logits: np.ndarray, greedy: int | None = None) -> TokenEvent:
        """The request's next token from its logits (``greedy``: already drawn, see _greedy_tokens)."""
        if greedy is not None:
            d = Draw(greedy)
        else:
            try:
                mask = req.constraint.allowed() if req.constraint is not None else None
                d = draw(logits, req.params, req.rng, req.tokens, req.output_ids, mask, req.sampling.logprobs)
            except Exception as exc:     # noqa: BLE001 - a constraint's failure is its request's alone
                return self._finish(req, "error", f"sampling failed: {_describe(exc)}")
        if d.token in req.stop_ids:
            return self._finish(req, "stop")
        req.append(d.token)
        self.generation_tokens_total += 1
        reason = None
        try:
            if req.constraint is not None:
                req.constraint.accept(d.token)
                if req.constraint.is_finished():
                    reason = "stop"
        except Exception as exc:     # noqa: BLE001
            return self._finish(req, "error", f"the constraint failed: {_describe(exc)}", d.token)
        if reason is None and (len(req.output_ids) >= req.sampling.max_tokens or req.num_tokens >= self.max_model_len):
            reason = "length"
        if reason is not None:
            return self._finish(req, reason, token=d.token, logprob=d.logprob, top=d.top_logprobs)
        return self._event(req, d.token, d.logprob, d.top_logprobs)

    def _finish(self, req: Request, reason: str, error: str | None = None, token: int | None = None,
                logprob: float | None = None, top=None) -> TokenEvent:
        self.scheduler.finish(req, reason, error)
        self.runner.release(req.request_id)
        self.requests.pop(req.request_id, None)
        return self._event(req, token, logprob, top, reason, error)

    def _event(self, req: Request, token, logprob=None, top=None, reason=None, error=None) -> TokenEvent:
        plp = None
        if req.prompt_logprobs is not None and not req.prompt_logprobs_sent:
            plp, req.prompt_logprobs_sent = list(req.prompt_logprobs), True
        return TokenEvent(req.request_id, token, logprob, top, plp, reason, error, len(req.prompt_ids),
                          len(req.output_ids), req.num_cached_prompt)

    # ---- reports
    def stats(self) -> EngineStats:
        return EngineStats(
            running=len(self.scheduler.running), waiting=len(self.scheduler.waiting),
            preempted_total=self.scheduler.preempted_total, kv_blocks_total=self.pool.num_blocks,
            kv_blocks_used=self.pool.num_used, prefix_queries_total=self.kv.prefix_queries,
            prefix_hits_total=self.kv.prefix_hits, prompt_tokens_total=self.prompt_tokens_total,
            generation_tokens_total=self.generation_tokens_total,
            extra={"kv_blocks_cached": float(self.pool.num_cached), "kv_block_evictions": float(self.pool.evictions),
                   "block_size": float(self.pool.block_size),
                   "prefix_caching": float(self.pool.enable_caching),
                   "kv_cache_bytes": float(getattr(getattr(self.runner, "store", None), "nbytes", 0)),   # the pool
                   # recurrent models: one state per running sequence, freed with its KV blocks
                   "recurrent_states": float(getattr(self.runner, "num_states", 0)),
                   "recurrent_state_bytes": float(getattr(self.runner, "state_bytes", 0))})

    def run_to_completion(self, requests: Iterable[EngineRequest]) -> dict[Hashable, list[TokenEvent]]:
        """Add ``requests`` and step until all are done: every request's events (tests, benchmarks)."""
        out: dict[Hashable, list[TokenEvent]] = {}
        for r in requests:
            self.add_request(r)
            out[r.request_id] = []
        while self.has_unfinished():
            for ev in self.step():
                out.setdefault(ev.request_id, []).append(ev)
        return out


def _plain_greedy(req: Request) -> bool:
    """Whether the request's next token is the argmax of its logits as they are (what draw returns
    for it: no temperature, penalty, constraint or logprobs)."""
    p = req.params
    return (req.constraint is None and req.sampling.logprobs is None and p.temperature == 0
            and p.repetition_penalty == 1.0 and p.presence_penalty == 0 and p.frequency_penalty == 0)


def _greedy_tokens(due: list) -> dict[int, int]:
    """Argmax tokens of the plain-greedy requests among ``due`` [(request, logits row, or the token
    id the model step took where the logits were)], by index. The rows' argmax is one NumPy call
    for a step instead of one per sequence (64 draw calls cost ~2 ms a step); rows that are
    consecutive rows of one array (the model step's logits) are read in place."""
    got = {i: out for i, (_, out) in enumerate(due) if isinstance(out, int)}    # taken by the model step
    idx = [i for i, (req, out) in enumerate(due) if not isinstance(out, int) and _plain_greedy(req)]
    if len(idx) < 2:
        return got
    rows = [due[i][1] for i in idx]
    block = _row_block(rows)
    if block is None:
        block = np.stack(rows)
    # draw takes the argmax of the float32 logits: the same values here, so the same first maximum
    got.update(zip(idx, (int(t) for t in np.argmax(block.astype(np.float32, copy=False), axis=1))))
    return got


def _row_block(rows: list[np.ndarray]) -> np.ndarray | None:
    """``rows`` as one (n, V) view when they are consecutive rows of one C-contiguous array, else None."""
    base = rows[0].base
    if not isinstance(base, np.ndarray) or base.ndim != 2 or not base.flags.c_contiguous:
        return None
    first = rows[0].__array_interface__["data"][0] - base.__array_interface__["data"][0]
    step = base.strides[0]
    if first % step:
        return None
    j0 = first // step
    for k, r in enumerate(rows):
        if (r.base is not base or r.shape != base.shape[1:]
                or r.__array_interface__["data"][0] != base.__array_interface__["data"][0] + (j0 + k) * step):
            return None
    return base[j0:j0 + len(rows)]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
