"""The GPU backend's row-wise ops on a layer's activations (a mixin of CupyBackend): RMS and layer
norms (kernels/norms.hip; for decode they also write the int8 blocks the next matvec reads, see
kernels/rf_q8.h) and rope (kernels/rope.hip; q and k in one launch), plus how a row view is handed to
the row kernels without a copy.
"""

from __future__ import annotations

import numpy as np

from .cupy_weights import MATVEC_MAX_T, GpuWeight, _null


class CupyRowOps:
    def _norm_param(self, a):
        """A norm weight/bias as a float32 device array: (n_head, head_dim) QK-norm weights arrive as
        2-D prepared weights, decoded once."""
        if not isinstance(a, GpuWeight):
            return a
        key = ("norm", id(a))
        if key not in self._small:
            self._small[key] = (a, self.dequant(a).reshape(a.shape))   # keep a alive: the id stays unique
        return self._small[key][1]

    @staticmethod
    def _per_row(a, D: int) -> bool:
        """A norm weight/bias that is not one vector of D (Command-R+'s (n_head, head_dim) QK-norm)."""
        return a is not None and a.size != D

    def _q8_buffers(self, rows: int, K: int):
        """Empty int8 blocks (xq, xd, xs) of a (rows, K) activation, or None when no matvec will read
        them (too many rows for the matvecs, K not whole blocks, activation cache off)."""
        if not self.act_cache or rows > MATVEC_MAX_T or K % 32:
            return None
        cp = self.cp
        ng = rows * K // 32
        return cp.empty(ng * 8, cp.int32), cp.empty(ng, cp.float32), cp.empty(2 * ng, cp.float32)

    def _made_q8(self, y, q8) -> None:
        """``y``'s kernel also wrote its int8 blocks: the next matvec of y reads them (no quantize launch)."""
        if q8 is not None:
            self._act_q8 = (y, q8)

    def _norm_threads(self, n: int) -> int:
        """Threads of a one-row-per-block norm over n items: one item each up to 1024 (a decode step's
        norm is one row: the whole row in flight at once, not 256 threads walking it)."""
        return min(1024, max(self.warp, -(-n // self.warp) * self.warp))

    def rms_norm(self, x, w, eps):
        x, w = self._f32(x), self._norm_param(w)
        D = x.shape[-1]
        y = self._out(x.shape)
        wide = self._per_row(w, D)       # the kernel scales by one D-vector: broadcast wider weights after
        q8 = None if wide or x.ndim != 2 else self._q8_buffers(x.shape[0], D)
        wp = _null() if w is None or wide else self._f32(w)
        if q8 is not None:    # decode: the norm's output goes to matvecs, write their int8 blocks too
            self._launch("norms.hip", "rms_norm_q8_f32", (x.shape[0],), (self._norm_threads(D // 4),),
                         (x, wp, y, *q8, np.int32(D), np.float32(eps)))
            self._made_q8(y, q8)
            return y
        self._launch("norms.hip", "rms_norm_f32", (x.size // D,), (self._norm_threads(D),),
                     (x, wp, y, np.int32(D), np.float32(eps)))
        return y * self._f32(w) if wide else y

    def add_rms_norm(self, a, b, w, eps):
        a, b, w = self._f32(a), self._f32(b), self._norm_param(w)
        D = a.shape[-1]
        q8 = (None if a.shape != b.shape or a.ndim != 2 or self._per_row(w, D)
              else self._q8_buffers(a.shape[0], D))
        if q8 is None:
            s = self.add(a, b)
            return s, self.rms_norm(s, w, eps)
        s, y = self._out(a.shape), self._out(a.shape)
        self._launch("norms.hip", "add_rms_norm_q8_f32", (a.shape[0],), (self._norm_threads(D // 4),),
                     (a, b, s, _null() if w is None else self._f32(w), y, *q8, np.int32(D), np.float32(eps)))
        self._made_q8(y, q8)
        return s, y

    def layer_norm(self, x, w, b, eps):
        x, w, b = self._f32(x), self._norm_param(w), self._norm_param(b)
        D = x.shape[-1]
        y = self._out(x.shape)
        wide = self._per_row(w, D) or self._per_row(b, D)
        self._launch("norms.hip", "layer_norm_f32", (x.size // D,), (256,),
                     (x, _null() if w is None or wide else self._f32(w),
                      _null() if b is None or wide else self._f32(b), y, np.int32(D), np.float32(eps)))
        if wide:
            y = y * self._f32(w) if w is not None else y
            y = y + self._f32(b) if b is not None else y
        return y

    def _rope_tables(self, positions, inv_freq):
        """Device positions and inverse frequencies of a rope call."""
        cp = self.cp
        # positions may already live on the GPU (a static buffer of a captured decode step)
        if self._step is not None:
            pos = self._step.pos
        elif isinstance(positions, cp.ndarray):
            pos = positions
        elif positions is self._pos_host:
            pos = self._pos_dev
        else:
            # one upload per forward pass, not per rope call: a copy from pageable host memory waits
            # for the stream to drain, which kept the host from running ahead of the GPU (two per layer)
            pos = cp.asarray(np.asarray(positions, np.int64))
            self._pos_host, self._pos_dev = positions, pos
        key = ("inv_freq", np.asarray(inv_freq, np.float32).tobytes())
        f = self._small.get(key)
        if f is None:
            self._needs_host("rope table upload")
            f = self._small[key] = cp.asarray(np.asarray(inv_freq, np.float32))
        return pos, f

    def _rows(self, a):
        """(a, row stride in floats) for a float32 (T, ...) array whose rows are contiguous and start on
        16 bytes (a view of a joined projection qualifies), else (a contiguous copy, its row length).
        The row kernels read float4s: a row stride that is not a multiple of 4 floats (Falcon-H1's
        z | xBC | dt of 100 columns) misaligns every other row."""
        cp = self.cp
        inner = int(np.prod(a.shape[1:], dtype=np.int64))
        if a.dtype == cp.float32 and a.ndim >= 2 and a.data.ptr % 16 == 0:
            want = np.cumprod((4,) + a.shape[:0:-1])[:-1][::-1]     # C strides of the trailing dims
            if tuple(a.strides[1:]) == tuple(int(v) for v in want) and (a.strides[0] % 16 == 0 or a.shape[0] == 1):
                return a, a.strides[0] // 4 if a.shape[0] > 1 else inner
        a = self._f32(a)
        return a, inner

    def rope(self, x, positions, inv_freq, style, rot_dim, mscale=1.0):
        if style not in ("normal", "neox"):
            raise ValueError(f"unknown rope style {style!r}")
        x = self._f32(x)
        T, H, D = x.shape
        pos, f = self._rope_tables(positions, inv_freq)
        y = self._out(x.shape)
        self._launch("rope.hip", "rope_f32", (self._grid1d(x.size),), (256,),
                     (x, y, pos, f, np.int32(T), np.int32(H), np.int32(D), np.int32(rot_dim),
                      np.int32(style == "neox"), np.float32(mscale)))
        return y

    def rope_qk(self, q, k, positions, inv_freq, style, rot_dim, mscale=1.0):
        if style not in ("normal", "neox"):
            raise ValueError(f"unknown rope style {style!r}")
        (T, H, D), Hk = q.shape, k.shape[1]
        if k.shape[0] != T or k.shape[2] != D:
            return super().rope_qk(q, k, positions, inv_freq, style, rot_dim, mscale)
        q, qs = self._rows(q)
        k, ks = self._rows(k)
        pos, f = self._rope_tables(positions, inv_freq)
        yq, yk = self._out((T, H, D)), self._out((T, Hk, D))
        self._launch("rope.hip", "rope_qk_f32", (self._grid1d(T * (H + Hk) * D),), (256,),
                     (q, k, yq, yk, np.int64(qs), np.int64(ks), pos, f, np.int32(T), np.int32(H), np.int32(Hk),
                      np.int32(D), np.int32(rot_dim), np.int32(style == "neox"), np.float32(mscale)))
        return yq, yk
