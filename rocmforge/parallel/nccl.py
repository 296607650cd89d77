"""Collectives between GPUs through NCCL (RCCL on ROCm: same API), by ``cupy.cuda.nccl``.

One process drives all N devices: ``NcclCommunicator.initAll(devices)`` makes the N
communicators at once, and each rank runs in its own host thread with its device current,
issuing its collectives on that device's current stream. Why one process rather than one per GPU:

- the model is opened, mapped and sharded once: each rank takes its slices of the same
  memory-mapped file, with no second copy and no process start-up per GPU;
- the sampler, tokenizer, Session and KV bookkeeping stay exactly those of one-GPU rocmforge:
  only the forward pass fans out, so there is no token broadcast or logits transfer between
  processes to write, and the CPU test of the sharding (the same threads over
  rocmforge.parallel.comm.InProcessGroup) exercises the very runner that drives the GPUs;
- NCCL calls release the GIL while they enqueue, and each thread sets its own current device.

The price is that the ranks' Python op dispatch shares one interpreter lock: kernel launches of
different ranks do not overlap on the host. Decode steps of a large model are bound by weight
reads on the device, which do overlap; a captured graph per rank (not done yet) would remove
the host share altogether.

NVLink SHARP / multicast (NVLS) stays off: ``NCCL_NVLS_ENABLE=0`` is set before the
communicators are made unless the environment already says otherwise, and nothing here calls a
multicast API.
"""

from __future__ import annotations

import os
from typing import Any

from .comm import CommError, Communicator


class NcclGroup:
    """One NCCL communicator per device of ``devices`` (ids as CuPy numbers them), made in one call."""

    def __init__(self, devices: list[int]):
        os.environ.setdefault("NCCL_NVLS_ENABLE", "0")    # before NCCL reads its environment
        import cupy as cp
        from cupy.cuda import nccl

        if not nccl.available:
            raise CommError("CuPy cannot load NCCL (RCCL on ROCm), which tensor parallelism on GPUs needs: "
                            "on CUDA 'pip install nvidia-nccl-cu12' next to cupy-cuda12x; on ROCm install the "
                            "rccl package of your ROCm release")
        self.cp, self.nccl = cp, nccl
        self.devices = list(devices)
        self._comms = nccl.NcclCommunicator.initAll(self.devices)
        self.aborted = False

    def communicators(self) -> list[NcclCommunicator]:
        return [NcclCommunicator(self, r, c) for r, c in enumerate(self._comms)]

    def abort(self) -> None:
        """Tear the communicators down so ranks blocked in a collective return (the group is then spent)."""
        if self.aborted:
            return
        self.aborted = True
        for c in self._comms:
            try:
                c.abort()
            except Exception:  # noqa: BLE001 - best effort: the error being reported is the rank's
                pass


class NcclCommunicator(Communicator):
    def __init__(self, group: NcclGroup, rank: int, comm: Any):
        self.group, self.rank, self.size, self._comm = group, rank, len(group.devices), comm
        self.cp = group.cp
        self._seconds = 0.0
        self.timing = False            # tp_bench: time each collective with device events
        self._events: list[tuple[Any, Any]] = []

    def _check(self) -> None:
        if self.group.aborted:
            raise CommError("the NCCL group was aborted after a rank failed; load the model again")

    def _begin(self):
        self.n_calls += 1
        if not self.timing:
            return None
        start = self.cp.cuda.Event()
        start.record()
        return start

    def _end(self, start) -> None:
        if start is not None:
            end = self.cp.cuda.Event()
            end.record()
            self._events.append((start, end))

    def all_reduce(self, x):
        self._check()
        cp, nccl = self.cp, self.group.nccl
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        y = cp.empty_like(x)
        start = self._begin()
        self._comm.allReduce(x.data.ptr, y.data.ptr, x.size, nccl.NCCL_FLOAT32, nccl.NCCL_SUM,
                             cp.cuda.get_current_stream().ptr)
        self._end(start)
        return y

    def all_gather(self, x):
        self._check()
        cp, nccl = self.cp, self.group.nccl
        x = cp.ascontiguousarray(x, dtype=cp.float32)
        out = cp.empty((self.size, *x.shape), dtype=cp.float32)     # rank-major
        start = self._begin()
        self._comm.allGather(x.data.ptr, out.data.ptr, x.size, nccl.NCCL_FLOAT32,
                             cp.cuda.get_current_stream().ptr)
        self._end(start)
        return cp.ascontiguousarray(cp.moveaxis(out, 0, -2).reshape(*x.shape[:-1], self.size * x.shape[-1]))

    def comm_seconds(self, reset: bool = True) -> float:
        """Device time between each collective's start and end events (waiting for peers included);
        synchronises on the last event. 0 unless ``timing`` is on."""
        total = 0.0
        if self._events:
            self._events[-1][1].synchronize()
            total = sum(self.cp.cuda.get_elapsed_time(a, b) for a, b in self._events) / 1e3
        if reset:
            self._events = []
        return total

    def abort(self) -> None:
        self.group.abort()
