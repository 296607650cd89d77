"""The GPU backend's elementwise and small array ops (a mixin of CupyBackend): activations,
binary ops with broadcasting, scale, soft-capping (kernels/elementwise.hip), plus the few ops
written with CuPy array calls (per-head matmuls, concatenation, argmax, xIELU).
"""

from __future__ import annotations

import numpy as np

ACT_KINDS = {"silu": 0, "gelu": 1, "gelu_tanh": 2, "relu": 3, "relu2": 4, "sigmoid": 5, "tanh": 6}


def _null():
    return np.uint64(0)


def _gpu_weight():
    from .cupy_backend import GpuWeight  # the backend module imports this one

    return GpuWeight


class CupyElementwise:
    def act(self, x, kind):
        if kind not in ACT_KINDS:
            raise ValueError(f"unknown activation {kind!r}")
        x = self._f32(x)
        y = self._out(x.shape)
        self._launch("elementwise.hip", "act_f32", (self._grid1d(x.size),), (256,),
                     (x, y, np.int64(x.size), np.int32(ACT_KINDS[kind])))
        return y

    def act_mul(self, g, u, kind):
        """act(g) * u in one pass (gated FFNs). Rows may be views of one joined gate|up output (no copy);
        for decode the kernel also writes the int8 blocks the down-projection's matvec reads."""
        if kind not in ACT_KINDS:
            raise ValueError(f"unknown activation {kind!r}")
        if g.ndim == 2 and g.shape == u.shape and g.shape[1] % 4 == 0:
            (g, gs), (u, us) = self._rows(g), self._rows(u)
            T, F = g.shape
            y = self._out((T, F))
            q8 = self._q8_buffers(T, F)
            self._launch("elementwise.hip", "act_mul_rows_f32", (self._grid1d(T * F // 4),), (256,),
                         (g, u, y, np.int64(T), np.int32(F), np.int64(gs), np.int64(us), np.int32(ACT_KINDS[kind]),
                          *(q8 if q8 is not None else (_null(),) * 3)))
            self._made_q8(y, q8)
            return y
        g, u = self._f32(g), self._f32(u)
        y = self._out(g.shape)
        self._launch("elementwise.hip", "act_mul_f32", (self._grid1d(g.size),), (256,),
                     (g, u, y, np.int64(g.size), np.int32(ACT_KINDS[kind])))
        return y

    def _binary(self, a, b, op):
        cp = self.cp
        a, b = self._f32(a), self._f32(b)
        if a.shape == b.shape:
            mode, nb = 0, b.size
        elif b.ndim <= a.ndim and a.shape[a.ndim - b.ndim:] == b.shape:
            mode, nb = 1, b.size
        elif a.ndim == 2 and b.shape == (a.shape[0], 1):
            mode, nb = 2, a.shape[1]
        else:
            shape = np.broadcast_shapes(a.shape, b.shape)
            a = cp.ascontiguousarray(cp.broadcast_to(a, shape))
            b = cp.ascontiguousarray(cp.broadcast_to(b, shape))
            mode, nb = 0, b.size
        y = self._out(a.shape)
        self._launch("elementwise.hip", "binary_f32", (self._grid1d(a.size),), (256,),
                     (a, b, y, np.int64(a.size), np.int32(op), np.int32(mode), np.int64(nb)))
        return y

    def mul(self, a, b):
        return self._binary(a, b, 1)

    def add(self, a, b):
        return self._binary(a, b, 0)

    def scale(self, a, s):
        a = self._f32(a)
        y = self._out(a.shape)
        self._launch("elementwise.hip", "scale_f32", (self._grid1d(a.size),), (256,),
                     (a, y, np.int64(a.size), np.float32(s)))
        return y

    def softcap(self, a, cap):
        a = self._f32(a)
        y = self._out(a.shape)
        self._launch("elementwise.hip", "softcap_f32", (self._grid1d(a.size),), (256,),
                     (a, y, np.int64(a.size), np.float32(cap)))
        return y

    def head_matmul(self, x, w):
        cp = self.cp
        w = w if not isinstance(w, _gpu_weight()) else self.dequant(w).reshape(w.shape)
        y = self._op("cublas_head_matmul", cp.matmul, self._f32(x).transpose(1, 0, 2),
                     self._f32(w).transpose(0, 2, 1))   # (H, T, b)
        return self._op("cupy_contiguous", cp.ascontiguousarray, y.transpose(1, 0, 2))

    def concat(self, parts):
        return self._op("cupy_concatenate", self.cp.concatenate, [self._f32(p) for p in parts], axis=0)

    def argmax(self, x) -> np.ndarray:
        """Row-wise argmax of (T, V) logits on the GPU (greedy sampling); int64 on the host."""
        x = self._f32(x)
        x2 = x.reshape(-1, x.shape[-1])
        self._needs_host("argmax")
        out = self._out((x2.shape[0],), self.cp.int32)
        self._launch("sampling.hip", "argmax_f32", (x2.shape[0],), (256,),
                     (x2, out, np.int32(x2.shape[1])))
        return self.cp.asnumpy(out).astype(np.int64)

    def xielu(self, x, alpha_p, alpha_n, beta, eps):
        cp = self.cp
        x = self._f32(x)
        a_p, a_n, b = np.float32(alpha_p), np.float32(alpha_n), np.float32(beta)
        neg = (cp.expm1(cp.minimum(x, np.float32(eps))) - x) * a_n + b * x
        return cp.ascontiguousarray(cp.where(x > 0, a_p * x * x + b * x, neg), dtype=cp.float32)
