"""The GPU backend's activation quantisation (a mixin of CupyBackend): a linear layer's input
quantised and dequantised as an AMD Quark export says (rocmforge.quant.act), by the kernels of
kernels/act_quant.hip, value for value the NumPy reference's.

The quantised input is a float32 array again, so every matvec and GEMM path reads it unchanged;
the matvecs' own int8 activation blocks are then taken from the quantised values.
"""

from __future__ import annotations

import numpy as np

from ..errors import RocmforgeError
from ..quant.act import FP8_KINDS, MX_BLOCK, MX_KINDS, InputQuantized

# element -> (exponent bias, mantissa bits, max finite, emax) of rocmforge.quant.act.ELEMENTS
_MINIFLOATS = {
    "fp4": (1, 1, 6.0, 2),
    "fp6_e2m3": (1, 3, 7.5, 2),
    "fp6_e3m2": (3, 2, 28.0, 4),
    "fp8_e4m3": (7, 3, 448.0, 8),
    "fp8_e5m2": (15, 2, 57344.0, 15),
}
_RULES = {"even": 0, "floor": 1, "ceil": 2}


class CupyActQuant:
    def quantized_input(self, w, act):
        return InputQuantized(w, act)

    def act_qdq(self, x, act):
        """x quantised to ``act``'s scheme and back (rocmforge.quant.act.ActQuant.qdq), on the device."""
        x = self.cp.ascontiguousarray(self._f32(x))
        y = self._out(x.shape)
        if act.kind in MX_KINDS:
            if x.shape[-1] % MX_BLOCK:
                raise RocmforgeError(f"MX activation quantisation needs the input width ({x.shape[-1]}) to be a "
                                     f"multiple of {MX_BLOCK}")
            bias, mbits, fmax, emax = _MINIFLOATS[MX_KINDS[act.kind]]
            nb = x.size // MX_BLOCK
            self._launch("act_quant.hip", "act_qdq_mx", (self._grid1d(nb),), (256,),
                         (x, y, np.int64(nb), np.int32(bias), np.int32(mbits), np.float32(fmax), np.int32(emax),
                          np.int32(_RULES[act.scale_rule])))
            return y
        if act.kind not in FP8_KINDS:
            raise RocmforgeError(f"activation quantisation {act.kind!r} has no GPU kernel")
        if act.scales is not None:
            raise RocmforgeError("a stacked expert weight's input scheme needs .expert(e) first")
        bias, mbits, fmax, _ = _MINIFLOATS[act.kind]
        amax = self.cp.abs(x).max() if act.scale is None else None     # dynamic: stays on the device
        self._launch("act_quant.hip", "act_qdq_fp8", (self._grid1d(x.size),), (256,),
                     (x, y, np.int64(x.size), np.int32(bias), np.int32(mbits), np.float32(fmax),
                      np.float32(act.scale or 0.0), np.uint64(0) if amax is None else amax))
        return y

    def _expert_weight(self, w, e: int):
        """Expert ``e`` of a stacked weight, its input scheme kept (InputQuantized of a GpuWeight)."""
        if isinstance(w, InputQuantized):
            return InputQuantized(self._expert_weight(w.w, e), w.act.expert(e))
        return w.expert(e) if hasattr(w, "expert") else w[e]
