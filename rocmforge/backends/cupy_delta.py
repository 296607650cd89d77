"""The GPU backend's Gated DeltaNet (a mixin of CupyBackend): kernels/gated_delta.hip.

A decode step and a prefill of up to GDN_CHUNK rows run the recurrent form token after token inside
one kernel launch (every state column is independent, so each thread block walks the rows for its
columns). A longer prompt runs the chunked form (numpy_delta.prepare and gated_delta_rule_chunked on
CuPy arrays: per chunk of 64 rows a few batched matmuls and one batched triangular solve on the
device, the recurrence only between chunks), as the NumPy backend does. The state is read and written in place, so
a step marks itself as needing the host (see cupy_state.py on graph capture).
"""

from __future__ import annotations

import numpy as np

from ..errors import DeviceError
from .numpy_delta import GDN_CHUNK, gated_delta_rule_chunked, prepare


def _slice(dk: int) -> tuple[int, int]:
    """(threads per state column, rows per thread) for a key size dk: 16 threads (fewer for a small dk)."""
    ks = 1
    while ks < min(dk, 16):
        ks *= 2
    rows = -(-dk // ks)
    if rows > 64:
        raise DeviceError(f"gated_delta_net: a key head size of {dk} is more than the kernel's registers hold")
    return ks, rows


class CupyDelta:
    def gated_delta_net(self, q, k, v, a, b, A, dt_bias, state, v_tiled=False):
        self._needs_host("recurrent state")
        q, k, v, a, b = (self._f32(x) for x in (q, k, v, a, b))
        if q.shape[0] > GDN_CHUNK:
            cp = self.cp
            qe, ke, ve, g, beta = prepare(q, k, v, a, b, self._f32(A), self._f32(dt_bias), v_tiled, cp)
            return gated_delta_rule_chunked(qe, ke, ve, g, beta, state, xp=cp)
        T, Hk, dk = q.shape
        Hv, dv = v.shape[1], v.shape[2]
        ks, rows = _slice(dk)
        cpb = max(1, 256 // ks)
        o = self._out((T, Hv, dv))
        self._launch("gated_delta.hip", "gdn_recurrent", (Hv, -(-dv // cpb)), (cpb * ks,),
                     (q, k, v, a, b, self._f32(A).reshape(-1), self._f32(dt_bias).reshape(-1), state, o,
                      np.int32(T), np.int32(Hk), np.int32(Hv), np.int32(dk), np.int32(dv), np.int32(bool(v_tiled))),
                     (("GDN_KS", ks), ("GDN_R", rows)))
        return o
