"""The GPU backend's attention (a mixin of CupyBackend): the fp16 KV cache and the kernels of
kernels/attention.hip.

Up to ``DECODE_MAX_T`` queries run the split-K decode kernel (flash-decoding: the visible keys cut
into chunks, merged by attn_combine); more run the tiled prefill kernel. GQA is native: one block
reads each K/V row once for the ATT_G query heads it serves. In a captured decode step the position
comes from a device buffer and the split-K grid is sized for the longest step the cache allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeviceError, RocmforgeError

DECODE_MAX_T = 4          # attention: decode kernel up to this many queries, tiled prefill beyond


def _null():
    return np.uint64(0)


class GpuKVCache:
    """K and V of every layer, (n_layer, max_tokens, n_kv_head, head_dim) fp16, allocated up front."""

    def __init__(self, cp, n_layer, n_kv_head, dk, dv, max_tokens):
        self.cp = cp
        self.max_tokens = int(max_tokens)
        self.n_kv_head, self.dk, self.dv = int(n_kv_head), int(dk), int(dv)
        k = cp.empty((n_layer, max_tokens, n_kv_head, dk), cp.float16)
        v = cp.empty((n_layer, max_tokens, n_kv_head, dv), cp.float16)
        self.k, self.v = [k[i] for i in range(n_layer)], [v[i] for i in range(n_layer)]   # per-layer views
        self.length = [0] * n_layer
        self.graph: Any = None      # decode-graph state of this sequence (cupy_graph.decode_step)

    def buffers(self, layer: int, k_shape: tuple, v_shape: tuple):
        """Layer ``layer``'s K and V; an empty layer whose K/V shape (n_kv_head, head_dim) differs from
        the model default (Gemma 4 global layers) gets buffers of its own shape."""
        if self.length[layer] == 0 and (tuple(self.k[layer].shape[1:]) != tuple(k_shape)
                                        or tuple(self.v[layer].shape[1:]) != tuple(v_shape)):
            self.k[layer] = self.cp.empty((self.max_tokens, *k_shape), self.cp.float16)
            self.v[layer] = self.cp.empty((self.max_tokens, *v_shape), self.cp.float16)
        return self.k[layer], self.v[layer]


class CupyAttention:
    def new_kv_cache(self, n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens, dtype="auto", scales=None):
        if dtype not in ("auto", "f16"):
            raise DeviceError(f"KV cache dtype {dtype!r} is not implemented on the GPU yet (fp16 only); "
                              "use kv_cache_dtype='f16' (--kv-cache-dtype f16) or the CPU")
        try:
            return GpuKVCache(self.cp, n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens)
        except self.cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceError(f"out of GPU memory for a KV cache of {max_tokens} tokens ({exc}); "
                              "ask for a shorter context") from None

    def _att_defines(self, H, Hkv, Dk, Dv):
        gtot = H // Hkv
        g = max(d for d in range(1, min(gtot, 8) + 1) if gtot % d == 0)
        nek = -(-Dk // self.warp)
        nev = -(-Dv // self.warp)
        return g, (("ATT_G", g), ("ATT_NEK", nek), ("ATT_NEV", nev))

    def _head_vector(self, a, H: int, what: str):
        """A per-head float vector (ALiBi slopes, sink logits) on the device, or a null pointer."""
        if a is None:
            return _null()
        if isinstance(a, np.ndarray):
            key = (what, a.tobytes())
            if key not in self._small:      # slopes are fixed per model: upload once
                self._small[key] = self.cp.asarray(np.ascontiguousarray(a, np.float32))
            a = self._small[key]
        a = self._f32(a).reshape(-1)
        if a.size != H:
            raise RocmforgeError(f"attention: {what} has {a.size} values for {H} heads")
        return a

    def attention(self, q, k, v, cache, layer, pos0, scale, window=0, softcap=0.0, alibi=None, sinks=None,
                  chunk=0):
        q, k, v = self._f32(q), self._f32(k), self._f32(v)
        T, H, Dk = q.shape
        Hkv, Dv = k.shape[1], v.shape[2]
        end = pos0 + T
        if end > cache.max_tokens:
            raise RocmforgeError(f"sequence of {end} tokens exceeds the context of {cache.max_tokens}")
        if H % Hkv:
            raise RocmforgeError(f"attention: {H} query heads do not group over {Hkv} kv heads")
        kc, vc = cache.buffers(layer, k.shape[1:], v.shape[1:])
        nk, nv = k.size, v.size
        # step mode (captured decode): the position is read from the device, and the split-K
        # grid is sized for the longest step this cache allows (the kernels pick the same
        # split as an eager launch from the position, spare blocks exit)
        step = self._step
        pos_dev = _null() if step is None else step.pos
        self._launch("attention.hip", "kv_store", (self._grid1d(max(nk, nv)),), (256,),
                     (k, v, kc, vc, np.int64(nk), np.int64(nv), np.int64(pos0), np.int64(Hkv * Dk),
                      np.int64(Hkv * Dv), pos_dev))
        cache.length[layer] = end
        slopes = self._head_vector(alibi, H, "alibi slopes")
        sink = self._head_vector(sinks, H, "attention sinks")
        chunk = int(chunk or 0)
        g, defs = self._att_defines(H, Hkv, Dk, Dv)
        hblocks = Hkv * ((H // Hkv) // g)
        out = self._out((T, H, Dv))
        common = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(Dk), np.int32(Dv), np.int32(pos0),
                  np.int32(window or 0), np.float32(scale), np.float32(softcap or 0.0))
        if T <= DECODE_MAX_T:
            nsplit_cap = max(1, min(-(-2 * self.n_sm // (hblocks * T)), 64))
            last = end if step is None else cache.max_tokens
            n_vis = last if not window else min(last, window)
            n_vis = min(n_vis, chunk) if chunk else n_vis
            nsplit = max(1, min(nsplit_cap, -(-n_vis // 64)))
            if nsplit > 1:
                pa = self._out((nsplit, T, H, Dv))
                pm = self._out((nsplit, T, H, 2))
            else:
                pa = pm = _null()
            self._launch("attention.hip", "attn_decode", (hblocks, T, nsplit), (4 * self.warp,),
                         (q, kc, vc, out, pa, pm) + common + (np.int32(nsplit_cap), pos_dev, np.int32(chunk),
                                                              slopes, sink), defs)
            if nsplit > 1:
                self._launch("attention.hip", "attn_combine", (T * H,), (min(256, max(self.warp, Dv)),),
                             (pa, pm, out, np.int32(T), np.int32(H), np.int32(Dv), np.int32(nsplit_cap),
                              np.int32(pos0), np.int32(window or 0), pos_dev, np.int32(chunk), sink), defs)
        else:
            self._launch("attention.hip", "attn_prefill", (hblocks, -(-T // 8)), (8 * self.warp,),
                         (q, kc, vc, out) + common + (np.int32(chunk), slopes, sink), defs)
        return out

    def kv_read(self, cache, layer, pos0, n):
        self._needs_host("kv_read")      # host positions: a step that reads shared KV stays eager
        if pos0 + n > cache.length[layer]:
            raise RocmforgeError(f"layer {layer} of the KV cache holds {cache.length[layer]} positions, "
                                 f"not {pos0 + n}: a sharing layer must run after the layer it shares")
        cp = self.cp
        k, v = cache.k[layer][pos0:pos0 + n], cache.v[layer][pos0:pos0 + n]
        return cp.ascontiguousarray(k, dtype=cp.float32), cp.ascontiguousarray(v, dtype=cp.float32)
