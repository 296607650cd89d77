"""The GPU backend's linear layers (a mixin of CupyBackend): how a (T, K) activation meets a weight.

By rows T of the activation, for a quantised weight:

* T <= MATVEC_MAX_T (8): the fused dequant + matvec of kernels/matvec.hip, int8 activations (dp4a)
  for the block formats, float activations for the float formats;
* 9..``mmq_max`` (64) rows of a block format: the batch kernels (cupy_mmq.py: kernels/mmq_frag.hip
  for Q4_0 tiles, kernels/mmq.hip for the rest), the weights read once for all rows;
* other formats up to ``mv_batch_max``: the matvec once per 8 rows;
* past that (prefill): the weight dequantised to fp16 and one cuBLAS / hipBLAS GEMM (cupy_gemm.py).

The tuning knobs (``mmq``, ``mmq_max``, ``mv_batch_max``, ...) are attributes set in
CupyBackend.__init__, where each says why it has its value.
"""

from __future__ import annotations

import numpy as np

from ..errors import RocmforgeError
from ..quant.act import InputQuantized
from .cupy_gemm import gemm_f16_f32
from .cupy_weights import BLOCK_KERNELS, FGROUP_KERNELS, FLOAT_KERNELS, MATVEC_MAX_T, GpuWeight, _null


class CupyLinear:
    def dequant(self, w: GpuWeight, rows=None, dtype="f32"):
        """(rows, K) float32 or float16 of weight ``w`` (all rows, or those indexed by ``rows``)."""
        cp = self.cp
        n_rows = w.rows if rows is None else int(rows.size)
        out = self._out((n_rows, w.K), cp.float32 if dtype == "f32" else cp.float16)
        o32, o16 = (out, _null()) if dtype == "f32" else (_null(), out)
        rows_arg = _null() if rows is None else rows
        suffix = w.kernel
        if suffix is not None:
            n = n_rows * (w.K // 32)
            self._launch("dequant.hip", f"dequant_{suffix}", (self._grid1d(n),), (256,),
                         (w.data, np.int64(w.row_bytes), rows_arg, np.int64(n_rows), np.int32(w.K), o32, o16))
        else:
            kind = FLOAT_KERNELS[w.qtype][1]
            n = n_rows * w.K
            self._launch("dequant.hip", "dequant_plain", (self._grid1d(n),), (256,),
                         (w.data, np.int32(kind), rows_arg, np.int64(n_rows), np.int32(w.K), o32, o16))
        return out

    def _quantize_act(self, x, defines=()):
        """x (R, K) float32 -> int8 blocks of 32 (xq, xd, xs) for the dp4a matvecs.

        The last result is kept with its input array: the matvecs that read the same
        activation object (q/k/v, gate/up) quantise it once."""
        cp = self.cp
        last = self._act_q8
        if self.act_cache and last is not None and last[0] is x:
            return last[1]
        R, K = x.shape
        ng = R * K // 32
        xq = cp.empty(ng * 8, cp.int32)
        xd = cp.empty(ng, cp.float32)
        xs = cp.empty(2 * ng, cp.float32)
        self._launch("matvec.hip", "quantize_act_q8", (self._grid1d(ng * 8),), (256,),
                     (x, xq, xd, xs, np.int64(ng)), defines)
        self._act_q8 = (x, (xq, xd, xs)) if self.act_cache else None
        return xq, xd, xs

    def _mv_defines(self, maxt: int) -> tuple[tuple[str, int], ...]:
        d = []
        if maxt != MATVEC_MAX_T:
            d.append(("RF_MV_MAXT", maxt))
        if self.mv_rpw != 1:
            d.append(("RF_MV_RPW", self.mv_rpw))
        if self.mv_unroll != 1:
            d.append(("RF_MV_UNROLL", self.mv_unroll))
        return tuple(d)

    def _matvec(self, x, w: GpuWeight, bias=None, ids=None, x_div=1, n_cols=None):
        """y (n_cols, N): plain mode x (T <= MATVEC_MAX_T, K); MoE mode one column per entry of ids."""
        N, K = w.shape[-2], w.K
        T = x.shape[0]
        cols = T if ids is None else int(ids.size)
        y = self._out((cols, N))
        rows = self.mv_rows
        gy = 1 if ids is None else cols
        grid = ((N + rows - 1) // rows, gy)
        block = (self.warp, rows)
        b = _null() if bias is None else bias
        idp = _null() if ids is None else ids
        # MoE mode runs one column per (token, expert) pair: the T = 1 module serves it too
        defs = self._mv_defines(1 if self.mv_t1 and (T == 1 or ids is not None) else MATVEC_MAX_T)
        if w.qtype in BLOCK_KERNELS:
            xq, xd, xs = self._quantize_act(x, defs)
            expert_bytes = N * w.row_bytes
            per = rows * self.mv_rpw
            self._launch("matvec.hip", f"matvec_{w.kernel}", ((N + per - 1) // per, gy), block,
                         (w.data, np.int64(w.row_bytes), xq, xd, xs, y, b, np.int32(N), np.int32(K),
                          np.int32(T), idp, np.int32(x_div), np.int64(expert_bytes)), defs)
        elif w.qtype in FGROUP_KERNELS:
            self._launch("matvec.hip", f"matvec_{FGROUP_KERNELS[w.qtype]}", grid, block,
                         (w.data, np.int64(w.row_bytes), x, y, b, np.int32(N), np.int32(K), np.int32(T), idp,
                          np.int32(x_div), np.int64(N * w.row_bytes)), defs)
        else:
            self._launch("matvec.hip", f"matvec_{FLOAT_KERNELS[w.qtype][0]}", grid, block,
                         (w.data, x, y, b, np.int32(N), np.int32(K), np.int32(T), idp, np.int32(x_div),
                          np.int64(N * K)), defs)
        return y

    def _gemm(self, x, w: GpuWeight, bias=None):
        cp = self.cp
        if w.qtype == "F32":
            y = self._op("cublas_gemm_f32", cp.matmul, x, w.typed(cp).reshape(-1, w.K).T)
        elif w.f32_gemm:
            y = self._op("cublas_gemm_f32", cp.matmul, x, self.dequant(w, dtype="f32").T)
        else:
            w16 = w.typed(cp).reshape(-1, w.K) if w.qtype == "F16" else self.dequant(w, dtype="f16")
            x16 = self._op("cupy_cast_f16", x.astype, cp.float16)
            y = self._op("cublas_gemmex_f16_f32", gemm_f16_f32, x16, w16.T) if self.gemm_ex else None
            if y is None:
                y = self._op("cupy_cast_f32", self._op("cublas_gemm_f16", cp.matmul, x16, w16.T).astype, cp.float32)
        if bias is not None:
            y = self._op("cupy_bias_add", cp.add, y, bias, out=y)
        return y

    def linear(self, x, w, bias=None):
        x = self._f32(x)
        if isinstance(w, InputQuantized):     # the file quantises this layer's input (cupy_act.py)
            x, w = self.act_qdq(x, w.act), w.w
        if not isinstance(w, GpuWeight):
            y = x @ self._f32(w).T
            return y + bias if bias is not None else y
        if x.shape[1] != w.K or len(w.shape) != 2:
            raise RocmforgeError(f"linear: x {x.shape} does not match weight {w.shape}")
        T = x.shape[0]
        if T <= MATVEC_MAX_T:
            return self._matvec(x, w, bias)
        batch_kernel = self.mmq and w.qtype in BLOCK_KERNELS
        if batch_kernel and T <= self.mmq_max:
            from .cupy_mmq import mmq

            return mmq(self, x, w, bias, self._mv_defines(MATVEC_MAX_T))
        if T <= self.mv_batch_max and not batch_kernel:
            parts = [self._matvec(x[i:i + MATVEC_MAX_T], w, bias) for i in range(0, T, MATVEC_MAX_T)]
            return self._op("cupy_concat", self.cp.concatenate, parts)
        return self._gemm(x, w, bias)
