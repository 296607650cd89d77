"""Per-kernel GPU timing of one step (``rocmforge bench --profile``) and the copy-bandwidth probe.

While :func:`profiling` is active, ``CupyBackend._launch`` (every RawKernel
launch) and ``CupyBackend._op`` (cuBLAS matmuls and the CuPy array ops of the
backend: casts, bias adds, concatenate) hand each launch to a
:class:`Profiler`. It records a CUDA/HIP event on the current stream before
and after the launch and notes what the launch moves and computes (see
*Costs*). Off, the backend pays one attribute test per launch
(``self._prof is None``). Decode graphs are off while profiling: the steps
are eager, every launch visible.

Launch gaps. An event is timestamped when the GPU reaches it. When the GPU has
drained its queue and waits for the host (a decode step usually does), the
"before" event of the next launch is stamped at once and the host's time to
launch the kernel lands inside the measurement. So a profiled step starts with
a spin kernel that keeps the GPU busy for longer than the host takes to queue
the step (``Profiler.arm``): launches pile up behind it and run back to back.
A launch queued after the GPU had caught up (the previous launch's end event
already done: a host sync inside the step, e.g. MoE routing, or a spin too
short) is counted in ``gap_calls``; its time may include host time.

The tables live in :mod:`rocmforge.backends.profile_table`, what each launch moves
and computes in :mod:`rocmforge.backends.launch_costs`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ..errors import RocmforgeError
from .launch_costs import Cost, launch_cost, op_cost  # noqa: F401 - part of this module's interface
from .profile_table import GRAPHS_OFF_NOTE, KernelRow, Sample, StepProfile, aggregate, format_table  # noqa: F401

# ------------------------------------------------------------------ the profiler
# spins until `ticks` of the timer have passed: NVIDIA's %globaltimer (ns), AMD's clock64 (shader cycles)
_SPIN_SRC = r"""
extern "C" __global__ void rf_spin(long long ticks) {
#if defined(__HIP_PLATFORM_AMD__) || defined(__HIPCC_RTC__)
    long long t0 = clock64();
    while (clock64() - t0 < ticks) { }
#else
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do { asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); } while ((long long)(t - t0) < ticks);
#endif
}
"""
_spin_kernel: dict[str, Any] = {}


def _spin(cp, ms: float) -> bool:
    """Keep the GPU busy for about ``ms`` (one thread spinning on a timer); False if it cannot."""
    try:
        k = _spin_kernel.get("k")
        if k is None:
            k = _spin_kernel["k"] = cp.RawKernel(_SPIN_SRC, "rf_spin")
        if getattr(cp.cuda.runtime, "is_hip", False):
            per_ms = int(cp.cuda.Device().attributes.get("ClockRate") or 2_000_000)   # kHz
        else:
            per_ms = 1_000_000                                                       # ns
        k((1,), (1,), (np.int64(ms * per_ms),))
        return True
    except Exception:  # noqa: BLE001 - no spin only means: gaps may show up in the times
        return False


class Profiler:
    """Events around each launch while active (``events=False``: only the costs are noted)."""

    def __init__(self, cp, events: bool = True):
        self.cp = cp
        self.events = events
        self.start: Any = None           # event before the step's first launch (arm)
        self._last: Any = None           # end event of the previous launch
        self._pending: list[tuple] = []  # (name, ev0, ev1, cost, gap)
        self.spun = False

    def arm(self, spin_ms: float) -> None:
        """Start of the step: a spin of ``spin_ms`` so the step's launches queue behind it, then a mark."""
        if self.events:
            self.spun = spin_ms > 0 and _spin(self.cp, spin_ms)
            self.start = self._last = self._event()

    def _event(self):
        ev = self.cp.cuda.Event()
        ev.record()                      # on the current stream
        return ev

    def _begin(self) -> tuple[Any, bool]:
        if not self.events:
            return None, False
        gap = self._last is None or bool(self._last.done)
        return self._event(), gap

    def _stop(self) -> Any:
        if not self.events:
            return None
        self._last = self._event()
        return self._last

    def launch(self, name: str, kernel: Any, grid, block, args, shared: int = 0) -> None:
        """Called by CupyBackend._launch instead of ``kernel(grid, block, args, shared_mem=shared)``."""
        cost = launch_cost(name, args)
        ev0, gap = self._begin()
        kernel(grid, block, args, shared_mem=shared)
        self._pending.append((name, ev0, self._stop(), cost, gap))

    def op(self, name: str, fn: Any, args: tuple, kw: dict) -> Any:
        """Called by CupyBackend._op instead of ``fn(*args, **kw)``."""
        ev0, gap = self._begin()
        out = fn(*args, **kw)
        ev1 = self._stop()
        self._pending.append((name, ev0, ev1, op_cost(fn, args, out, fn is self.cp.matmul or getattr(fn, 'is_matmul', False)), gap))
        return out

    def samples(self) -> list[Sample]:
        """Wait for the GPU; one Sample per launch, in launch order."""
        if self.events:
            self.cp.cuda.get_current_stream().synchronize()
        out = []
        for name, ev0, ev1, cost, gap in self._pending:
            ms = float(self.cp.cuda.get_elapsed_time(ev0, ev1)) if self.events else 0.0
            c = cost or Cost(None)
            out.append(Sample(name, ms, c.nbytes, c.flops, c.weight_bytes, gap))
        return out

    def span_ms(self) -> float | None:
        """GPU time from the mark of ``arm`` to the end of the last launch (call after samples())."""
        if not self.events or self.start is None or not self._pending:
            return None
        return float(self.cp.cuda.get_elapsed_time(self.start, self._pending[-1][2]))


def _require_gpu(backend) -> None:
    if getattr(backend, "device", None) != "gpu" or not hasattr(backend, "_prof"):
        raise RocmforgeError(f"profiling times GPU kernels and needs the GPU backend (--device gpu); "
                             f"this model runs on {getattr(backend, 'name', backend)!s}")


@contextmanager
def profiling(backend, events: bool = True) -> Iterator[Profiler]:
    """While active, ``backend`` (a CupyBackend) records every launch on the yielded Profiler.

    Decode graphs are off meanwhile (restored after): a replayed graph would hide its launches."""
    _require_gpu(backend)
    if backend._prof is not None:
        raise RocmforgeError("a profile of this backend is already running")
    prof = Profiler(backend.cp, events)
    graphs = backend.graphs
    backend.graphs = False
    backend._prof = prof
    try:
        yield prof
    finally:
        backend._prof = None
        backend.graphs = graphs


# ------------------------------------------------------------------ profiled steps
def _greedy(logits) -> int:
    return int(np.argmax(logits))


def _spin_for(eager_ms: float) -> float:
    """A spin longer than the host needs to queue a profiled step (events double its launch cost)."""
    return min(2000.0, 4.0 * eager_ms + 20.0)


def _timed_feed(backend, session, ids: list[int]):
    backend.synchronize()
    t0 = time.perf_counter()
    logits = session.feed(ids)            # returns host logits: synchronised
    return logits, 1e3 * (time.perf_counter() - t0)


def profile_decode(model, prompt: list[int], warmup: int = 3) -> StepProfile:
    """One eager decode step after a prefill of ``prompt``, each launch timed.

    ``warmup`` eager steps first (their median wall time is the unprofiled figure); if
    launches showed host gaps, one more step with a spin four times longer."""
    be = model.backend
    _require_gpu(be)
    warmup = max(1, int(warmup))
    s = model.new_session(len(prompt) + warmup + 3)
    graphs = be.graphs
    be.graphs = False
    try:
        logits = s.feed(list(prompt))
        walls = []
        for _ in range(warmup):
            logits, ms = _timed_feed(be, s, [_greedy(logits)])
            walls.append(ms)
        eager = statistics.median(walls)
        spin = _spin_for(eager)
        for attempt in range(2):
            pos0 = s.n_past
            tok = _greedy(logits)
            be.synchronize()
            with profiling(be) as prof:
                prof.arm(spin)
                t0 = time.perf_counter()
                logits = s.feed([tok])
                wall = 1e3 * (time.perf_counter() - t0)
                samples = prof.samples()
                span = prof.span_ms()
            p = StepProfile("decode", 1, pos0, samples, span, wall, eager)
            if not p.gap_calls or attempt:
                break
            spin *= 4
        if not prof.spun:
            p.notes.append("no spin kernel: launch times may include host time")
        return p
    finally:
        be.graphs = graphs


def profile_prefill(model, prompt: list[int], spin_ms: float | None = None) -> StepProfile:
    """One prefill of ``prompt`` in a fresh sequence, each launch timed (after an unprofiled one)."""
    be = model.backend
    _require_gpu(be)
    _, eager = _timed_feed(be, model.new_session(len(prompt) + 1), list(prompt))
    spin = _spin_for(eager) if spin_ms is None else spin_ms
    for attempt in range(2):
        s = model.new_session(len(prompt) + 1)
        be.synchronize()
        with profiling(be) as prof:
            prof.arm(spin)
            t0 = time.perf_counter()
            s.feed(list(prompt))
            wall = 1e3 * (time.perf_counter() - t0)
            samples = prof.samples()
            span = prof.span_ms()
        p = StepProfile("prefill", len(prompt), 0, samples, span, wall, eager)
        if not p.gap_calls or attempt:
            break
        spin *= 4
    return p


def decode_bytes(model, prompt: list[int]) -> dict:
    """Bytes one eager decode step after ``prompt`` moves: ``weight_bytes`` (weight rows read by
    the matvecs and embedding) and ``bytes`` (everything with a figure); launches counted, not timed."""
    be = model.backend
    _require_gpu(be)
    s = model.new_session(len(prompt) + 2)
    logits = s.feed(list(prompt))
    with profiling(be, events=False) as prof:
        s.feed([_greedy(logits)])
        samples = prof.samples()
    return {"weight_bytes": sum(x.weight_bytes for x in samples),
            "bytes": sum(x.nbytes or 0 for x in samples), "launches": len(samples)}


def copy_bandwidth(cp, nbytes: int = 1 << 30, repeats: int = 5) -> dict:
    """The card's device-to-device copy rate: best of ``repeats`` memcpys of ``nbytes`` (at most a
    quarter of free memory), read + write counted, in GB/s (1e9 bytes)."""
    free = int(cp.cuda.runtime.memGetInfo()[0])
    n = max(1 << 20, min(int(nbytes), free // 4) >> 20 << 20)
    a = cp.empty(n, cp.uint8)
    b = cp.empty(n, cp.uint8)
    try:
        a.fill(1)
        b.data.copy_from_device_async(a.data, n)          # warm-up
        times = []
        for _ in range(max(1, repeats)):
            e0, e1 = cp.cuda.Event(), cp.cuda.Event()
            e0.record()
            b.data.copy_from_device_async(a.data, n)
            e1.record()
            e1.synchronize()
            times.append(float(cp.cuda.get_elapsed_time(e0, e1)))
    finally:
        del a, b
        cp.get_default_memory_pool().free_all_blocks()
    best = min(times)
    return {"bytes": n, "repeats": len(times), "best_ms": best, "gbps": 2.0 * n / (best * 1e6)}
