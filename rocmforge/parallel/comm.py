"""Collectives between the ranks of a tensor-parallel model: the interface and the in-process one.

A :class:`Communicator` is one rank's handle on its group. The sharded forward pass needs two
collectives: ``all_reduce`` (sum of the ranks' partial outputs of a row-parallel projection)
and ``all_gather`` (the vocabulary slices of the output head's logits, concatenated in rank
order). Each communicator also adds up the time its rank spends in collectives
(:meth:`Communicator.comm_seconds`), which tp_bench reports per step, and counts them (``n_calls``).

:class:`InProcessGroup` runs the ranks as threads of one process on the CPU (the NumPy backend,
CI): each rank puts its array in a slot, a barrier waits for all of them, and every rank sums
the slots in rank order 0, 1, ..., N-1 itself, so all ranks hold bit-identical results and the
same inputs always give the same sums. A rank that fails aborts the barrier, so the others stop
with an error instead of waiting forever. rocmforge.parallel.nccl holds the GPU group.
"""

from __future__ import annotations

import threading
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from ..errors import RocmforgeError

DEFAULT_TIMEOUT_S = 600.0      # longest a rank waits for the others at one collective


class CommError(RocmforgeError):
    """A collective could not complete: another rank failed, or the group timed out."""


class Communicator(ABC):
    rank: int
    size: int

    @abstractmethod
    def all_reduce(self, x: Any) -> Any:
        """The sum over ranks of ``x`` (same shape on every rank), as a new array of the rank's kind."""

    @abstractmethod
    def all_gather(self, x: Any) -> Any:
        """The ranks' ``x`` (T, n_i) concatenated along the last axis in rank order: (T, sum n_i)."""

    def abort(self) -> None:  # noqa: B027 - optional: a group that can wake its waiting ranks does
        """Make the other ranks' pending and future collectives fail (after a rank's error)."""

    def reset(self) -> None:  # noqa: B027 - optional
        """Make the group usable again after an abort, once every rank has stopped."""

    def comm_seconds(self, reset: bool = True) -> float:
        """Seconds this rank spent in collectives since the last reset (waiting for the others included)."""
        total = self._seconds
        if reset:
            self._seconds = 0.0
        return total

    _seconds: float = 0.0
    n_calls: int = 0              # collectives this rank has entered (tests count them per forward)


class InProcessGroup:
    """N ranks that are threads of this process; :meth:`communicators` gives one handle per rank."""

    def __init__(self, size: int, timeout: float = DEFAULT_TIMEOUT_S):
        if size < 1:
            raise ValueError("a group needs at least one rank")
        self.size = size
        self.timeout = timeout
        self._barrier = threading.Barrier(size, timeout=timeout)
        self._slots: list[Any] = [None] * size

    def communicators(self) -> list[InProcessCommunicator]:
        return [InProcessCommunicator(self, r) for r in range(self.size)]

    def _wait(self, rank: int) -> None:
        try:
            self._barrier.wait()
        except threading.BrokenBarrierError:
            raise CommError(f"tensor-parallel rank {rank}: the collective was abandoned (another rank failed, "
                            f"or did not arrive within {self.timeout:.0f} s)") from None

    def exchange(self, rank: int, x: Any, combine) -> Any:
        """Every rank's ``x`` in rank order, reduced by ``combine`` on each rank."""
        self._slots[rank] = x
        self._wait(rank)                 # all slots are filled
        out = combine(list(self._slots))
        self._wait(rank)                 # everyone has read them: the next collective may refill them
        return out

    def abort(self) -> None:
        self._barrier.abort()

    def reset(self) -> None:
        self._barrier.reset()
        self._slots = [None] * self.size


def _sum_in_order(parts: list[np.ndarray]) -> np.ndarray:
    total = np.array(parts[0], dtype=np.float32, copy=True)
    for p in parts[1:]:
        total += p
    return total


class InProcessCommunicator(Communicator):
    def __init__(self, group: InProcessGroup, rank: int):
        self.group, self.rank, self.size = group, rank, group.size
        self._seconds = 0.0

    def _timed(self, x, combine):
        self.n_calls += 1
        t0 = time.perf_counter()
        try:
            return self.group.exchange(self.rank, x, combine)
        finally:
            self._seconds += time.perf_counter() - t0

    def all_reduce(self, x):
        return self._timed(np.asarray(x), _sum_in_order)

    def all_gather(self, x):
        return self._timed(np.asarray(x), lambda parts: np.ascontiguousarray(np.concatenate(parts, axis=-1)))

    def abort(self) -> None:
        self.group.abort()

    def reset(self) -> None:
        self.group.reset()
