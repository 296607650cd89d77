"""One tensor's shard: which slices of which axis each rank holds, and cutting a RawTensor to them.

A :class:`Shard` says, for every rank, the ``(start, stop)`` ranges of one axis that rank holds
(concatenated in order: a fused q|k|v matrix gives each rank three row ranges), and the
``role`` the cut gives the weight in a linear layer (rocmforge.parallel.rank_backend acts on it):

  column   the rank computes its own output rows; no communication (Megatron's ColumnParallelLinear)
  row      the rank holds a slice of the input dimension and computes partial sums: one all-reduce
           after the matmul, the bias added once (RowParallelLinear)
  vocab    the rows are a slice of the vocabulary: an embedding looks up the ids it holds (zeros for
           the others) and all-reduces; an output head all-gathers its logits (VocabParallelEmbedding)
  experts  the leading axis is a range of whole experts: the rank runs the tokens routed to them

Quantised weights are cut along whole blocks, straight from the file's bytes (nothing is
dequantised): rows are always whole, and a cut of the last (contiguous, blocked) axis must
fall on block boundaries, or :func:`check` refuses with the numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import RocmforgeError
from ..loaders.base import RawTensor

ROLES = ("column", "row", "vocab", "experts")


class ShardError(RocmforgeError):
    """A model (or one of its tensors or ops) cannot be split over the asked number of ranks."""


@dataclass(frozen=True)
class Shard:
    axis: int                                       # axis of the canonical tensor that is cut (may be negative)
    ranks: tuple[tuple[tuple[int, int], ...], ...]   # per rank: the (start, stop) ranges it holds, in order
    role: str = "column"

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"shard role {self.role!r}: expected one of {', '.join(ROLES)}")

    @property
    def n(self) -> int:
        return len(self.ranks)

    def size(self, rank: int) -> int:
        return sum(b - a for a, b in self.ranks[rank])

    def first(self, rank: int) -> tuple[int, int]:
        """The one range of ``rank`` (vocab and expert shards hold one)."""
        return self.ranks[rank][0]


def even(total: int, n: int, unit: int = 1, offset: int = 0) -> list[tuple[int, int]]:
    """``total`` units of ``unit`` elements split into ``n`` equal consecutive ranges (from ``offset``)."""
    if total % n:
        raise ShardError(f"{total} cannot be split evenly into {n} parts")
    per = total // n
    return [(offset + r * per * unit, offset + (r + 1) * per * unit) for r in range(n)]


def split(axis: int, parts: list[list[tuple[int, int]]] | list[tuple[int, int]], role: str = "column") -> Shard:
    """A Shard from per-rank ranges (one (start, stop) per rank, or a list of them)."""
    ranks = tuple(tuple(p) if isinstance(p, list) else (tuple(p),) for p in parts)
    return Shard(axis, tuple(tuple((int(a), int(b)) for a, b in r) for r in ranks), role)


def check(name: str, qtype: str, shape: tuple[int, ...], shard: Shard) -> None:
    """Refuse a shard that does not fit the tensor: ranges past the axis, or a cut inside a block."""
    from ..quant import get_format

    ndim = len(shape)
    if not -ndim <= shard.axis < ndim:
        raise ShardError(f"tensor parallelism: {name} of shape {shape} has no axis {shard.axis}")
    axis = shard.axis % ndim
    length = shape[axis]
    for r, ranges in enumerate(shard.ranks):
        for a, b in ranges:
            if not 0 <= a <= b <= length:
                raise ShardError(f"tensor parallelism: rank {r}'s slice {a}:{b} of {name} lies outside its "
                                 f"axis {axis} of length {length} (shape {shape})")
    bs = get_format(qtype).block_size
    if axis != ndim - 1 or bs == 1:
        return
    for a, b in (ab for ranges in shard.ranks for ab in ranges):
        if a % bs or b % bs:
            raise ShardError(
                f"tensor parallelism over {shard.n} ranks: {name} ({qtype}, shape {shape}) would be cut at "
                f"columns {a}:{b}, inside its {bs}-element {qtype} blocks; a row-parallel weight is split along "
                f"its input dimension at block boundaries only, so each part must be a multiple of {bs} "
                f"({length} columns = {length // bs} blocks here). Use a tensor_parallel that splits the blocks "
                "evenly, or a file with a finer quantisation")


def take(raw: RawTensor, shard: Shard, rank: int) -> RawTensor:
    """Rank ``rank``'s part of ``raw``: the same format, its bytes copied out (quantised blocks stay quantised)."""
    from ..quant import get_format

    check(raw.name, raw.qtype, tuple(raw.shape), shard)
    if getattr(raw, "act", None) is not None:
        raise ShardError(f"tensor parallelism: {raw.name} quantises its input ({raw.act.describe()}); sharding "
                         "activation-quantised weights is not implemented yet")
    shape = tuple(int(s) for s in raw.shape)
    axis = shard.axis % len(shape)
    fmt = get_format(raw.qtype)
    data = raw.data
    typed = isinstance(data, np.ndarray) and data.dtype != np.uint8 and data.dtype.itemsize == fmt.type_size \
        and fmt.block_size == 1
    if typed:        # F32 / F16 / BF16 arrays: cut in elements
        arr, scale = np.asarray(data).reshape(shape), 1
    else:            # raw block bytes, one row of blocks per leading index: cut the last axis in bytes
        row_bytes = shape[-1] // fmt.block_size * fmt.type_size
        arr = np.asarray(data).reshape(-1).view(np.uint8).reshape(*shape[:-1], row_bytes)
        scale = fmt.type_size / fmt.block_size if axis == len(shape) - 1 else 1
    lead = (slice(None),) * axis
    pieces = [arr[(*lead, slice(int(a * scale), int(b * scale)))] for a, b in shard.ranks[rank]]
    out = np.ascontiguousarray(pieces[0] if len(pieces) == 1 else np.concatenate(pieces, axis=axis))
    new_shape = tuple(shard.size(rank) if i == axis else s for i, s in enumerate(shape))
    part = RawTensor(raw.name, raw.qtype, new_shape, out if typed else out.reshape(-1))
    part.tp_shard = shard          # read by RankBackend.weight: how this weight's linear communicates
    return part
