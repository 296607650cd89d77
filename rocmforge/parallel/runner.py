"""The tensor-parallel model runner: N rank executors driven by one thread each, behind the Executor API.

:func:`shard_model` turns a loaded Model into a tensor-parallel one in place: it builds the plan
(rocmforge.parallel.plan), one backend per rank (NumPy backends on the CPU; a CuPy backend per
GPU, devices 0..N-1) with its communicator (rocmforge.parallel.comm / .nccl), and one
:class:`RankExecutor` per rank: the recipe executor unchanged, reading the rank's shards of the
weights and running the steps with the rank's options. :class:`TensorParallelExecutor` then
stands where the model's executor stood: ``forward_batch`` runs every rank's forward at once
(one thread each, the rank's GPU current) and returns rank 0's logits, which every rank holds
whole after the head's all-gather. Session, generate and bench work on it unchanged.

Decode steps run eagerly by default: every rank launches its kernels from Python, and the
ranks' threads share the interpreter lock. On GPUs, ``graphs=True`` (or ROCMFORGE_TP_GRAPHS=1)
lets each rank capture its decode step, NCCL calls included, into its own CUDA/HIP graph
(rocmforge/backends/cupy_graph.py) and replay it; the embedding is then replicated (a captured
step reads the token id on the device, where the vocabulary-parallel lookup's host-side
masking cannot run). That path is opt-in until it has been measured on several GPUs.

What is not sharded yet is refused, not run wrong: ops without a rule (rocmforge.parallel.rules),
the paged KV pool of the batched engine (serve), and Session.fork.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ..errors import DeviceError, RocmforgeError
from ..recipe import Executor
from .comm import CommError, InProcessGroup
from .plan import ShardPlan, build_plan
from .rank_backend import RankBackend
from .rules import local_kv_heads
from .shards import take

log = logging.getLogger(__name__)


class RankExecutor(Executor):
    """One rank's recipe executor: its KV cache holds the rank's KV heads only."""

    def __init__(self, plan: ShardPlan, *args, **kw):
        super().__init__(*args, **kw)
        self.plan = plan

    def cache_layers(self):
        if "_rank_cache_layers" not in self._cache:
            self._cache["_rank_cache_layers"] = {
                layer: (local_kv_heads(h, self.plan.n), dk, dv) for layer, (h, dk, dv) in super().cache_layers().items()}
        return self._cache["_rank_cache_layers"]


def _with_rank_options(fn, plan: ShardPlan):
    """The op as a rank runs it: the step with the rank's options (head counts, expert shards)."""
    def run(ctx, step):
        return fn(ctx, plan.rank_step(step, ctx.layer))

    run.__name__ = getattr(fn, "__name__", "op")
    return run


class ShardedCache:
    """One sequence's cache: each rank's own (its KV heads), kept in step."""

    state = None          # recurrent layers are refused under tensor parallelism

    def __init__(self, ranks: list[Any], max_tokens: int):
        self.ranks, self.max_tokens = ranks, max_tokens

    @property
    def length(self) -> list[int]:
        return self.ranks[0].length

    @length.setter
    def length(self, value: list[int]) -> None:
        for c in self.ranks:
            c.length = list(value)

    def __getattr__(self, name: str):
        if name in ("k", "v", "k_scale", "v_scale"):
            raise RocmforgeError("Session.fork of a tensor-parallel model is not supported yet (its KV cache "
                                 "lives on every rank)")
        raise AttributeError(name)


class TensorParallelBackend:
    """What the Model and its callers see as the backend: rank 0's, with eager decode steps."""

    def __init__(self, ranks: list[RankBackend], graphs: bool = False):
        self.ranks = ranks
        inner = ranks[0].inner
        self.inner = inner
        self.graphs = graphs
        self.name = f"{inner.name} x{len(ranks)} (tensor parallel)"
        self.device = inner.device

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def decode_step(self, executor, ids, cache, pos0):
        return executor.decode_step(ids, cache, pos0) if self.graphs else None

    def to_numpy(self, a):
        with self.ranks[0].scope():
            return self.inner.to_numpy(a)

    def synchronize(self) -> None:
        for r in self.ranks:
            with r.scope():
                r.inner.synchronize()


class TensorParallelExecutor:
    """The Executor API over N ranks (forward, caches, the recipe's facts)."""

    def __init__(self, base: Executor, ranks: list[RankExecutor], backends: list[RankBackend], plan: ShardPlan):
        self.base, self.ranks, self.backends, self.plan = base, ranks, backends, plan
        self.recipe, self.hparams, self.ops = base.recipe, base.hparams, base.ops
        self.n = len(ranks)
        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="rocmforge-tp")
        self._lock = threading.Lock()       # one forward at a time: the ranks' collectives pair up in order
        self.broken: str | None = None

    # -- attributes the Model sets and reads
    @property
    def on_layer(self):
        return self.ranks[0].on_layer

    @on_layer.setter
    def on_layer(self, fn) -> None:
        self.ranks[0].on_layer = fn

    @property
    def kv_cache_dtype(self) -> str:
        return self.ranks[0].kv_cache_dtype

    @kv_cache_dtype.setter
    def kv_cache_dtype(self, value: str) -> None:
        for e in (self.base, *self.ranks):
            e.kv_cache_dtype = value

    @property
    def kv_scales(self):
        return self.ranks[0].kv_scales

    @kv_scales.setter
    def kv_scales(self, value) -> None:
        for e in (self.base, *self.ranks):
            e.kv_scales = value

    @property
    def backend(self) -> RankBackend:
        return self.backends[0]

    # -- the recipe's facts: those of the whole (unsharded) model
    def missing_tensors(self, has):
        return self.base.missing_tensors(has)

    def cache_layers(self):
        return self.base.cache_layers()

    def cache_dims(self):
        return self.base.cache_dims()

    def cache_per_layer(self) -> bool:
        return self.base.cache_per_layer()

    def state_shapes(self):
        return self.base.state_shapes()

    def new_state(self):
        return None

    # -- running
    def on_ranks(self, fn) -> list[Any]:
        """``fn(rank)`` on every rank at once, each in its own thread with its device current.

        A rank that raises aborts the group, so the others leave their collectives; the first
        real error is raised once every rank has stopped."""
        if self.broken:
            raise CommError(f"this tensor-parallel model is unusable after an earlier failure ({self.broken}); "
                            "load it again")

        def task(r: int):
            with self.backends[r].scope():
                try:
                    return fn(r)
                except BaseException:
                    self.backends[r].comm.abort()
                    raise

        with self._lock:
            futures = [self._pool.submit(task, r) for r in range(self.n)]
            errors = []
            for f in futures:
                exc = f.exception()
                if exc is not None:
                    errors.append(exc)
            if errors:
                first = next((e for e in errors if not isinstance(e, CommError)), errors[0])
                comm = self.backends[0].comm
                if getattr(getattr(comm, "group", None), "aborted", False):
                    self.broken = f"{type(first).__name__}: {first}"
                else:
                    comm.reset()
                raise first
            return [f.result() for f in futures]

    def decode_step(self, ids, cache: ShardedCache, pos0: int):
        """Every rank's captured decode step (rocmforge.backends.cupy_graph), or None: run it eagerly.

        The ranks decide alike, having seen the same steps; if they ever do not (a capture that
        failed on one GPU only), their collectives no longer pair up and the model is given up."""
        results = self.on_ranks(lambda r: self.backends[r].inner.decode_step(self.ranks[r], ids, cache.ranks[r], pos0))
        replayed = [x is not None for x in results]
        if all(replayed):
            return results[0]
        if not any(replayed):
            return None
        self.broken = f"ranks {[r for r, ok in enumerate(replayed) if not ok]} did not replay a decode graph"
        raise CommError(f"tensor parallel decode: {self.broken}; set ROCMFORGE_TP_GRAPHS=0 and load the model again")

    def new_cache(self, max_tokens: int) -> ShardedCache:
        return ShardedCache(self.on_ranks(lambda r: self.ranks[r].new_cache(max_tokens)), max_tokens)

    def new_paged_cache(self, num_blocks: int, block_size: int):
        raise RocmforgeError("the batched engine (rocmforge serve) does not run tensor-parallel models yet: "
                             "load the model with tensor_parallel=1 to serve it")

    def forward(self, ids, cache, pos0: int, out: str = "logits", last_only: bool = False):
        return self.forward_batch([(ids, cache, pos0)], out, last_only)

    def forward_batch(self, items, out: str = "logits", last_only: bool = False):
        def rank_forward(r: int):
            mine = [(ids, cache.ranks[r], pos0) for ids, cache, pos0 in items]
            return self.ranks[r].forward_batch(mine, out, last_only)

        return self.on_ranks(rank_forward)[0]

    def comm_seconds(self, reset: bool = True) -> list[float]:
        """Each rank's seconds in collectives since the last reset (rocmforge.parallel.comm)."""
        return [b.comm.comm_seconds(reset) for b in self.backends]


def _rank_backends(backend, n: int, graphs: bool) -> tuple[list[Any], list[int | None]]:
    """One backend per rank like ``backend``: fresh CPU backends, or a CuPy backend on each of GPUs 0..n-1."""
    if backend.device != "gpu":
        return [backend] + [type(backend)() for _ in range(n - 1)], [None] * n
    cp = backend.cp
    count = cp.cuda.runtime.getDeviceCount()
    if count < n:
        raise DeviceError(f"tensor_parallel={n} needs {n} GPUs, but CuPy sees {count}")
    backends = []
    for dev in range(n):
        with cp.cuda.Device(dev):
            backends.append(type(backend)(graphs=graphs))
    return backends, list(range(n))


def _group(backends: list[Any], devices: list[int | None]):
    if devices[0] is None:
        return InProcessGroup(len(backends))
    from .nccl import NcclGroup

    return NcclGroup(devices)


def shard_model(model, n: int, moe: str = "auto", graphs: bool | None = None):
    """Make ``model`` run over ``n`` ranks (in place; returns it). See the module docstring.

    ``moe``: "auto", "experts" or "slices" (rocmforge.parallel.plan.build_plan). ``graphs``: replay
    each rank's captured decode step (GPU only; default: ROCMFORGE_TP_GRAPHS=1, else off)."""
    if not isinstance(n, int) or n < 1:
        raise RocmforgeError(f"tensor_parallel must be a positive integer, not {n!r}")
    if n == 1:
        return model
    if graphs is None:
        graphs = os.environ.get("ROCMFORGE_TP_GRAPHS", "0").strip().lower() in ("1", "true", "yes", "on")
    graphs = bool(graphs) and model.backend.device == "gpu"
    base = model.executor
    plan = build_plan(base, model.tensors, n, moe, "replicated" if graphs else "vocab")
    inners, devices = _rank_backends(model.backend, n, graphs)
    comms = _group(inners, devices).communicators()
    backends = [RankBackend(b, c, d) for b, c, d in zip(inners, comms, devices)]
    lock = threading.Lock()          # the ranks ask for their shards at once; the model's tensor cache is shared
    shards: dict[tuple, Any] = {}    # (id of the whole tensor, cut, rank) -> the rank's part, kept alive

    def rank_raw(r: int):
        def get(name: str):
            with lock:
                raw = model.raw_tensor(name)
                cut = plan.tensors.get(name)
                if raw is None or cut is None:
                    return raw
                key = (id(raw), cut, r)       # tied tensors (output = token_embd) share one part
                if key not in shards:
                    shards[key] = (take(raw, cut, r), raw)
                return shards[key][0]
        return get

    ops_wrapped = plan.ops_with_options()
    ranks = []
    for r, be in enumerate(backends):
        ops = {name: (_with_rank_options(fn, plan) if name in ops_wrapped else fn) for name, fn in base.ops.items()}
        ranks.append(RankExecutor(plan, base.recipe, base.hparams, rank_raw(r), be, ops))
    tp = TensorParallelExecutor(base, ranks, backends, plan)
    tp.kv_cache_dtype, tp.kv_scales = base.kv_cache_dtype, base.kv_scales
    model.executor = tp
    model.backend = TensorParallelBackend(backends, graphs)
    model.tensor_parallel = n
    log.info("%s: tensor parallel over %d ranks on %s (%d tensors cut)", model.path, n, inners[0].name,
             len(plan.tensors))
    return model
