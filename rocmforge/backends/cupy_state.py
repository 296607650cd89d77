"""The GPU backend's recurrent layers (a mixin of CupyBackend): device-resident recurrent state and
the kernels of kernels/ssm.hip (causal depthwise conv1d, the Mamba / Mamba-2 scan, gated RMSNorm).

Every sequence's state (rocmforge.backends.state.RecurrentState) is a set of float32 device
arrays, updated in place by the kernels. A decode step and a short prefill run the scan kernel
(the time loop inside it); a Mamba-2 prompt longer than SSD_CHUNK runs the SSD paper's chunked form
(numpy_ssm.ssd_chunked on CuPy arrays: per chunk a few batched matmuls on the device, the
recurrence only between chunks). Mamba-1's S6 has no such form (its decay is per channel and
state): its prefill stays the in-kernel scan over time, as mamba_ssm's own kernel is. A captured decode graph would replay the state update
once more than the eager capture pass ran it, so a step that touches recurrent state marks itself
as needing the host and runs eagerly (cupy_graph.py's fallback).
"""

from __future__ import annotations

import numpy as np

from ..errors import DeviceError
from .numpy_ssm import SSD_CHUNK, ssd_chunked, ssd_delta


def _npad(n: int) -> int:
    """Threads per channel of ssm_scan: the power of two >= the state size N."""
    p = 1
    while p < n:
        p *= 2
    if p > 1024:
        raise DeviceError(f"ssm_scan: a state size of {n} is more than one block of 1024 threads holds")
    return p


class CupyState:
    def new_state(self, shapes):
        from .state import RecurrentState

        cp = self.cp
        try:
            return RecurrentState({key: cp.zeros(shape, cp.float32) for key, shape in shapes.items()})
        except cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceError(f"out of GPU memory for a sequence's recurrent state ({exc})") from None

    def _opt(self, a):
        """A float32 device array, or a null pointer for None."""
        return np.uint64(0) if a is None else self._f32(a).reshape(-1)

    def conv1d_causal(self, x, w, b, state):
        self._needs_host("recurrent state")
        x, w = self._f32(x), self._f32(w)
        T, C = x.shape
        K = w.shape[1]
        y = self._out((T, C))
        self._launch("ssm.hip", "ssm_conv1d", (self._grid1d(C),), (256,),
                     (x, w, self._opt(b), state, y, np.int32(T), np.int32(C), np.int32(K)))
        return y

    def _scan(self, x, dt, A, B, C, D, state, dt_bias, div, a_row, a_col, G, N, dt_min, dt_max):
        self._needs_host("recurrent state")
        x, dt, B, C = (self._f32(a) for a in (x, dt, B, C))
        T, Cn = x.shape[0], int(np.prod(x.shape[1:]))
        npad = _npad(N)
        cpb = max(1, 256 // npad)
        y = self._out(x.shape)
        self._launch("ssm.hip", "ssm_scan", (-(-Cn // cpb),), (cpb * npad,),
                     (x, dt, self._f32(A).reshape(-1), B, C, self._opt(D), self._opt(dt_bias), state, y, np.int32(T),
                      np.int32(Cn), np.int32(N), np.int32(div), np.int32(a_row), np.int32(a_col), np.int32(G),
                      np.float32(dt_min), np.float32(dt_max)), (("SSM_NPAD", npad),))
        return y

    def selective_scan(self, x, dt, A, B, C, D, state, dt_bias=None):
        N = A.shape[1]
        return self._scan(x, dt, A, B, C, D, state, dt_bias, 1, N, 1, 1, N, 0.0, float("inf"))

    def ssd_scan(self, x, dt, A, B, C, D, state, dt_bias=None, dt_min=0.0, dt_max=float("inf")):
        if x.shape[0] > SSD_CHUNK:
            self._needs_host("recurrent state")
            cp = self.cp
            x, dt, B, C = (self._f32(a) for a in (x, dt, B, C))
            delta = ssd_delta(dt, None if dt_bias is None else self._f32(dt_bias), dt_min, dt_max, cp)
            return ssd_chunked(x, delta, self._f32(A).reshape(-1), B, C, None if D is None else self._f32(D).reshape(-1),
                               state, xp=cp)
        _, H, P = x.shape
        G, N = B.shape[1], B.shape[2]
        return self._scan(x, dt, A, B, C, D, state, dt_bias, P, 1, 0, G, N, dt_min, dt_max)

    def rms_norm_gated(self, x, z, w, group, eps):
        x, z = self._f32(x), self._f32(z)
        T, C = x.shape
        y = self._out((T, C))
        self._launch("ssm.hip", "ssm_rms_norm_gated", (T, C // group), (128,),
                     (x, z, self._f32(w).reshape(-1), y, np.int32(C), np.int32(group), np.float32(eps)))
        return y
