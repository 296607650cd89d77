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

Costs (bytes a launch must move at least, FLOPs where the work is known),
read from the launch arguments in the order cupy_backend.py passes them; a
launch whose arguments do not look as expected gets no figure, never a wrong one:

* ``matvec_*``: the weight rows it reads (all N rows; in MoE mode N rows of
  one expert per column) plus its activation, output and id arrays;
  FLOPs 2 * N * K per column;
* ``dequant_*``: the rows it decodes (embedding lookups: one row per token)
  plus the output;
* ``kv_store``: new K/V read (fp32) and written (fp16);
* ``attn_decode`` / ``attn_prefill``: the visible K/V rows read once, q, out
  and partials; FLOPs 2 * H * (Dk + Dv) per visible (query, key) pair
  (prefill: causal, window-capped, chunking ignored);
* ``cublas_*`` matmuls: 2 * M * N * K FLOPs per batch, inputs + output bytes;
* anything else (norms, rope, elementwise, casts, ...): the sum of its array
  arguments and output, each read or written once.

``weight_bytes`` (the matvec and dequant rows) is what decode bandwidth is
made of: ``rocmforge bench`` multiplies one eager step's sum by the decode
rate and compares it with :func:`copy_bandwidth`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import RocmforgeError

GRAPHS_OFF_NOTE = "decode graphs off for the profiled step (eager launches, each one timed)"


# ------------------------------------------------------------------ samples and tables
@dataclass(frozen=True)
class Sample:
    """One timed launch."""

    name: str
    ms: float                        # GPU time between its events
    nbytes: int | None = None        # bytes moved (None: unknown)
    flops: int | None = None
    weight_bytes: int = 0            # of nbytes, model weights read (matvec / dequant rows)
    gap: bool = False                # queued after the GPU had caught up: ms may include host time


@dataclass
class KernelRow:
    """All launches of one kernel name in a step."""

    name: str
    calls: int = 0
    ms: float = 0.0
    nbytes: int | None = 0           # None once any launch had no byte figure
    flops: int | None = 0
    weight_bytes: int = 0
    gap_calls: int = 0

    @property
    def avg_us(self) -> float:
        return 1e3 * self.ms / self.calls if self.calls else 0.0

    @property
    def gbps(self) -> float | None:
        return self.nbytes / (self.ms * 1e6) if self.nbytes and self.ms > 0 else None

    @property
    def tflops(self) -> float | None:
        return self.flops / (self.ms * 1e9) if self.flops and self.ms > 0 else None

    def to_dict(self, total_ms: float) -> dict:
        return {"name": self.name, "calls": self.calls, "ms": self.ms,
                "pct": 100.0 * self.ms / total_ms if total_ms > 0 else 0.0, "avg_us": self.avg_us,
                "bytes": self.nbytes, "flops": self.flops, "weight_bytes": self.weight_bytes,
                "gbps": self.gbps, "tflops": self.tflops, "gap_calls": self.gap_calls}


def aggregate(samples: list[Sample]) -> list[KernelRow]:
    """Launches summed per kernel name, the most time first (ties: by name)."""
    rows: dict[str, KernelRow] = {}
    for s in samples:
        r = rows.get(s.name)
        if r is None:
            r = rows[s.name] = KernelRow(s.name)
        r.calls += 1
        r.ms += s.ms
        r.nbytes = None if r.nbytes is None or s.nbytes is None else r.nbytes + s.nbytes
        r.flops = None if r.flops is None or s.flops is None else r.flops + s.flops
        r.weight_bytes += s.weight_bytes
        r.gap_calls += bool(s.gap)
    return sorted(rows.values(), key=lambda r: (-r.ms, r.name))


@dataclass
class StepProfile:
    """The per-kernel breakdown of one step (a decode token or a prefill)."""

    what: str                        # "decode" | "prefill"
    tokens: int                      # tokens in the step
    pos0: int                        # position of its first token
    samples: list[Sample]
    span_ms: float | None = None     # GPU time from the step's first launch to its last (None: unknown)
    wall_ms: float | None = None     # host wall time of the profiled step (includes the spin wait)
    eager_wall_ms: float | None = None   # host wall time of the same step unprofiled (eager)
    notes: list[str] = field(default_factory=list)

    @property
    def rows(self) -> list[KernelRow]:
        return aggregate(self.samples)

    @property
    def kernel_ms(self) -> float:
        return sum(s.ms for s in self.samples)

    @property
    def total_ms(self) -> float:
        """The step's GPU time: the span when known, at least the kernels' sum."""
        return max(self.span_ms or 0.0, self.kernel_ms)

    @property
    def untracked_ms(self) -> float:
        """GPU time inside the span not in any timed launch: host-to-device copies (token ids, rope
        positions), untimed CuPy ops, and the events' own cost between launches (~2 us each on an H200)."""
        return max(0.0, (self.span_ms or 0.0) - self.kernel_ms)

    @property
    def host_ms(self) -> float | None:
        """Unprofiled eager wall time minus the GPU time: launch overhead and Python between launches."""
        if self.eager_wall_ms is None:
            return None
        return max(0.0, self.eager_wall_ms - self.total_ms)

    @property
    def gap_calls(self) -> int:
        return sum(bool(s.gap) for s in self.samples)

    @property
    def weight_bytes(self) -> int:
        return sum(s.weight_bytes for s in self.samples)

    def to_dict(self) -> dict:
        total = self.total_ms
        return {"what": self.what, "tokens": self.tokens, "pos0": self.pos0, "graphs": False,
                "launches": len(self.samples), "kernel_ms": self.kernel_ms, "span_ms": self.span_ms,
                "untracked_ms": self.untracked_ms, "wall_ms": self.wall_ms, "eager_wall_ms": self.eager_wall_ms,
                "host_ms": self.host_ms, "gap_calls": self.gap_calls, "weight_bytes": self.weight_bytes,
                "notes": list(self.notes), "kernels": [r.to_dict(total) for r in self.rows]}


def _fmt(v: float | None, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def format_table(p: StepProfile) -> str:
    """A text table of ``p``, the most time first, with the step's totals under it."""
    total = p.total_ms
    head = (f"{p.what}: {p.tokens} token(s) at position {p.pos0}, {len(p.samples)} launches; "
            f"{GRAPHS_OFF_NOTE}")
    lines = [head, f"{'kernel':<32} {'calls':>6} {'total ms':>9} {'%':>6} {'avg us':>8} {'GB/s':>8} {'TFLOP/s':>8}"]
    for r in p.rows:
        pct = 100.0 * r.ms / total if total > 0 else 0.0
        lines.append(f"{r.name:<32} {r.calls:>6} {r.ms:>9.3f} {pct:>6.1f} {r.avg_us:>8.1f} "
                     f"{_fmt(r.gbps, '8.1f'):>8} {_fmt(r.tflops, '8.2f'):>8}")
    if p.untracked_ms > 0:
        pct = 100.0 * p.untracked_ms / total if total > 0 else 0.0
        lines.append(f"{'(between timed launches)':<32} {'':>6} {p.untracked_ms:>9.3f} {pct:>6.1f}")
    lines.append(f"{'GPU total':<32} {len(p.samples):>6} {total:>9.3f} {100.0:>6.1f}")
    if p.eager_wall_ms is not None:
        per = " per token" if p.what == "decode" else ""
        lines.append(f"eager wall {p.eager_wall_ms:.3f} ms (unprofiled), GPU {total:.3f} ms -> "
                     f"host overhead {p.host_ms:.3f} ms{per}")
    if p.gap_calls:
        lines.append(f"{p.gap_calls} launch(es) were queued after the GPU had caught up with the host "
                     "(a host sync inside the step, e.g. MoE routing): their times may include host time")
    lines.extend(p.notes)
    return "\n".join(lines)


# ------------------------------------------------------------------ costs of a launch
@dataclass(frozen=True)
class Cost:
    nbytes: int | None
    flops: int | None = None
    weight_bytes: int = 0


def _is_array(a: Any) -> bool:
    """A device array argument (null pointers are NumPy scalars, sizes are NumPy/Python numbers)."""
    return (hasattr(a, "nbytes") and hasattr(a, "shape")
            and not isinstance(a, (type, np.generic, np.dtype, int, float)))


def _arrays(items) -> list:
    out = []
    for a in items:
        if isinstance(a, (list, tuple)):
            out.extend(_arrays(a))
        elif _is_array(a):
            out.append(a)
    return out


def _nb(items) -> int:
    return sum(int(a.nbytes) for a in _arrays(items))


_FLOAT_ITEM = {"f32": 4, "f16": 2, "bf16": 2}
_PLAIN_ITEM = {0: 4, 1: 2, 2: 2}      # dequant_plain's kind argument


def _matvec_cost(name: str, a: tuple) -> Cost | None:
    fmt = name[len("matvec_"):]
    if fmt in _FLOAT_ITEM and len(a) == 10:      # (w, x, y, b, N, K, T, ids, x_div, N*K)
        N, K, T, ids, per = a[4], a[5], a[6], a[7], int(a[9]) * _FLOAT_ITEM[fmt]
    elif len(a) == 13:                           # (w, rb, xq, xd, xs, y, b, N, K, T, ids, x_div, expert_bytes)
        N, K, T, ids, per = a[7], a[8], a[9], a[10], int(a[12])
    elif len(a) == 11:                           # (w, rb, x, y, b, N, K, T, ids, x_div, expert_bytes)
        N, K, T, ids, per = a[5], a[6], a[7], a[8], int(a[10])
    else:
        return None
    cols = int(ids.size) if _is_array(ids) else int(T)
    weight = per * (cols if _is_array(ids) else 1)
    return Cost(weight + _nb(a[1:]), 2 * int(N) * int(K) * cols, weight)


def _dequant_cost(name: str, a: tuple) -> Cost | None:
    if len(a) != 7:                              # (w, rb | kind, rows, n_rows, K, o32, o16)
        return None
    n_rows, K = int(a[3]), int(a[4])
    weight = n_rows * K * _PLAIN_ITEM[int(a[1])] if name == "dequant_plain" else n_rows * int(a[1])
    return Cost(weight + _nb(a[2:]), None, weight)


def _kv_store_cost(name: str, a: tuple) -> Cost | None:
    k, v, kc, nk, nv = a[0], a[1], a[2], int(a[4]), int(a[5])      # (k, v, kc, vc, nk, nv, pos0, ...)
    return Cost(int(k.nbytes) + int(v.nbytes) + (nk + nv) * int(getattr(kc, "itemsize", 2)))


def _visible(pos0: int, T: int, window: int) -> int:
    """(query, key) pairs of a causal block of T queries after pos0 keys, each sees at most ``window``."""
    if not window:
        return T * pos0 + T * (T + 1) // 2
    return sum(min(j, window) for j in range(pos0 + 1, pos0 + T + 1))


def _attn_cost(name: str, a: tuple) -> Cost | None:
    if name == "attn_decode":                    # (q, kc, vc, out, pa, pm, T, H, Hkv, Dk, Dv, pos0, window, ...)
        rest, small = a[6:], a[:1] + a[3:6]
    else:                                        # (q, kc, vc, out, T, H, Hkv, Dk, Dv, pos0, window, ...)
        rest, small = a[4:], a[:1] + a[3:4]
    T, H, Hkv, Dk, Dv, pos0, window = (int(x) for x in rest[:7])
    end = pos0 + T
    keys = min(end, window) if window and name == "attn_decode" else end
    kv = keys * Hkv * (Dk + Dv) * int(getattr(a[1], "itemsize", 2))
    pairs = T * keys if name == "attn_decode" else _visible(pos0, T, window)
    return Cost(kv + _nb(small), 2 * H * (Dk + Dv) * pairs)


_COSTS = (("matvec_", _matvec_cost), ("dequant_", _dequant_cost), ("kv_store", _kv_store_cost),
          ("attn_decode", _attn_cost), ("attn_prefill", _attn_cost))


def launch_cost(name: str, args: tuple) -> Cost | None:
    """What a RawKernel launch of ``name`` with ``args`` moves and computes (None: unknown)."""
    try:
        for prefix, fn in _COSTS:
            if name.startswith(prefix):
                return fn(name, tuple(args))
        return Cost(_nb(args))
    except (IndexError, KeyError, TypeError, ValueError, AttributeError):
        return None


def op_cost(fn: Any, args: tuple, out: Any, matmul: bool) -> Cost | None:
    """Bytes (inputs + output) and, for a matmul, 2*M*N*K FLOPs per batch of a CuPy op."""
    try:
        ins = list(args)
        owner = getattr(fn, "__self__", None)      # x.astype: x is an input
        if _is_array(owner):
            ins.append(owner)
        nbytes = _nb(ins) + _nb([out])
        flops = None
        if matmul:
            x, w = args[0], args[1]
            M, K, N = int(x.shape[-2]), int(x.shape[-1]), int(w.shape[-1])
            batch = max(int(np.prod(x.shape[:-2], dtype=np.int64)), int(np.prod(w.shape[:-2], dtype=np.int64)))
            flops = 2 * batch * M * N * K
        return Cost(nbytes, flops)
    except (IndexError, TypeError, ValueError, AttributeError):
        return None


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
        self._pending.append((name, ev0, ev1, op_cost(fn, args, out, fn is self.cp.matmul), gap))
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
