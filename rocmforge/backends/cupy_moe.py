"""The GPU backend's mixture-of-experts ops (a mixin of CupyBackend): routing, and the experts'
gated FFNs, plain (SwiGLU/GeGLU) or gpt-oss's biased, clamped form.

Few tokens (T * k <= 64, decode): every (token, expert) pair is one column of the MoE-mode matvec
(kernels/matvec.hip reads each column's expert), then moe_combine sums the k columns of a token
with their router weights. Many tokens (prefill): the rows routed to each expert go through the
dense path together. Routing returns host arrays, so MoE steps run eagerly (no decode graph).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np


class CupyMoe:
    def moe_route(self, logits, k, gating, norm_topk):
        cp = self.cp
        if gating not in ("softmax", "sigmoid"):
            raise ValueError(f"unknown gating {gating!r}")
        self._needs_host("moe_route")       # returns host arrays: MoE steps stay eager
        logits = self._f32(logits)
        T, E = logits.shape
        probs = cp.empty((T, E), cp.float32)
        w = self._out((T, k))
        ids = self._out((T, k), cp.int32)
        self._launch("moe.hip", "moe_route", (T,), (self.warp,),
                     (logits, probs, w, ids, np.int32(E), np.int32(k), np.int32(gating == "sigmoid"),
                      np.int32(bool(norm_topk))))
        return cp.asnumpy(w), cp.asnumpy(ids).astype(np.int64)

    def moe_ffn(self, x, gate, up, down, weights, ids, act):
        return self._experts(x, gate, up, down, weights, ids, "moe_ffn",
                             glu=lambda g, u, eid: self.act_mul(g, u, act))

    def moe_ffn_oai(self, x, gate, up, down, gate_b, up_b, down_b, weights, ids, alpha, limit):
        cp = self.cp
        gb, ub, db = (cp.ascontiguousarray(self._dense(b), dtype=cp.float32) for b in (gate_b, up_b, down_b))
        return self._experts(x, gate, up, down, weights, ids, "moe_ffn_oai",
                             glu=lambda g, u, eid: self._oss_glu(g, u, gb, ub, eid, alpha, limit),
                             post=lambda y, eid: self._oss_bias_rows(y, db, eid))

    def _experts(self, x, gate, up, down, weights, ids, what: str, glu: Callable, post: Callable | None = None):
        """sum_j w[t, j] * post(down_e(glu(gate_e(x_t), up_e(x_t)))), e = ids[t, j].

        ``glu(g, u, eid)`` and ``post(y, eid)`` get each row's expert id on the device (biases per expert)."""
        from .cupy_backend import GpuWeight

        cp = self.cp
        self._needs_host(what)
        x = self._f32(x)
        T = x.shape[0]
        ids = np.asarray(ids)
        k = ids.shape[1]
        d_out = down.shape[-2]
        if T * k <= 64 and all(isinstance(w, GpuWeight) for w in (gate, up, down)):
            idg = cp.asarray(ids.reshape(-1).astype(np.int32))
            g = self._matvec(x, gate, ids=idg, x_div=k)                 # (T*k, ff)
            u = self._matvec(x, up, ids=idg, x_div=k)
            y = self._matvec(glu(g, u, idg), down, ids=idg, x_div=1)    # (T*k, d)
            if post is not None:
                y = post(y, idg)
            out = self._out((T, d_out))
            wts = cp.asarray(np.asarray(weights, np.float32).reshape(-1))
            self._launch("moe.hip", "moe_combine", (self._grid1d(T * d_out),), (256,),
                         (y, wts, out, np.int32(T), np.int32(k), np.int32(d_out)))
            return out
        out = cp.zeros((T, d_out), cp.float32)
        for e in np.unique(ids):
            rows, slot = np.nonzero(ids == e)
            xe = x[cp.asarray(rows)]
            ge, ue, de = (self._expert_weight(w, int(e)) for w in (gate, up, down))
            eid = cp.full((len(rows),), int(e), cp.int32)
            h = glu(cp.ascontiguousarray(self.linear(xe, ge)), cp.ascontiguousarray(self.linear(xe, ue)), eid)
            ye = cp.ascontiguousarray(self.linear(h, de))
            if post is not None:
                ye = post(ye, eid)
            wr = cp.asarray(np.asarray(weights, np.float32)[rows, slot])[:, None]
            out[cp.asarray(rows)] += wr * ye
        return out

    def _dense(self, w):
        """A small prepared tensor (expert biases) as a float32 array of its shape."""
        from .cupy_backend import GpuWeight

        if isinstance(w, GpuWeight):
            return w.typed(self.cp) if w.qtype == "F32" else self.dequant(w).reshape(w.shape)
        return self._f32(w)

    def _oss_glu(self, g, u, gb, ub, rows_ids, alpha, limit):
        h = self._out(g.shape)
        self._launch("moe_oss.hip", "moe_oss_glu", (self._grid1d(g.size),), (256,),
                     (g, u, gb, ub, rows_ids, h, np.int64(g.size), np.int32(g.shape[1]), np.float32(alpha),
                      np.float32(limit)))
        return h

    def _oss_bias_rows(self, y, b, rows_ids):
        self._launch("moe_oss.hip", "moe_oss_bias_rows", (self._grid1d(y.size),), (256,),
                     (y, b, rows_ids, np.int64(y.size), np.int32(y.shape[1])))
        return y
