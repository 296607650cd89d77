"""Per-kernel profile tables: timed launch samples aggregated by kernel name, and their text form.

Pure Python (no GPU): the profiler (rocmforge.backends.cupy_profile) fills them,
``rocmforge bench --profile`` prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

GRAPHS_OFF_NOTE = "decode graphs off for the profiled step (eager launches, each one timed)"


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
