"""What one GPU launch moves and computes, for the profile's GB/s and TFLOP/s columns.

Costs (bytes a launch must move at least, FLOPs where the work is known),
read from the launch arguments in the order cupy_backend.py passes them; a
launch whose arguments do not look as expected gets no figure, never a wrong one:

* ``matvec_*``: the weight rows it reads (all N rows; in MoE mode N rows of
  one expert per column) plus its activation, output and id arrays;
  FLOPs 2 * N * K per column;
* ``mmq_<format>``: the weight rows once for all its columns, plus activation and output;
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

from dataclasses import dataclass
from typing import Any

import numpy as np


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


def _mmq_cost(name: str, a: tuple) -> Cost | None:
    reduce = name in ("mmq_reduce", "mmq_frag_reduce")
    if reduce or len(a) != 11:     # (w, rb, xq, xd, xs, y, b, N, K, T, groups per split)
        return Cost(_nb(a)) if reduce else None
    N, K, T = int(a[7]), int(a[8]), int(a[9])
    weight = N * int(a[1])
    return Cost(weight + _nb(a[2:]), 2 * N * K * T, weight)


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


_COSTS = (("matvec_", _matvec_cost), ("mmq_", _mmq_cost), ("dequant_", _dequant_cost), ("kv_store", _kv_store_cost),
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
