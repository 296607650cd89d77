"""The GPU backend's paged KV cache (a mixin of CupyBackend, ahead of CupyAttention): fp16 block pools
and the kernels of kernels/paged_attention.hip.

``attention`` and ``kv_read`` take a paged view (rocmforge.backends.paged.PagedKVView) where they
take a contiguous cache, and hand anything else to CupyAttention. Decode (up to DECODE_MAX_T
queries) walks the block table in the kernel, no copy; a longer prefill gathers the sequence's
rows into one contiguous fp16 buffer and runs attention.hip's tiled prefill kernel on it. Every
attention option of the contiguous path works (window, chunk, softcap, ALiBi, sinks, GQA, Dv !=
Dk). Captured decode graphs are not used with paged caches (the engine runs eager steps).
"""

from __future__ import annotations

import numpy as np

from ..errors import DeviceError, RocmforgeError
from .cupy_attention import DECODE_MAX_T
from .paged import PagedKVView

PA_NW = 4      # warps per paged_attn_decode block (kernels/paged_attention.hip)


class GpuPagedKV:
    """K and V pools of every layer, (num_blocks, block_size, n_kv_head, head_dim) fp16, allocated up front.

    A layer whose K/V differ from the model default (per-layer head sizes) gets pools of its own
    shape at its first store."""

    def __init__(self, cp, n_layer, n_kv_head, dk, dv, num_blocks, block_size):
        self.cp = cp
        self.n_layer, self.num_blocks, self.block_size = int(n_layer), int(num_blocks), int(block_size)
        self.k = [cp.empty((num_blocks, block_size, n_kv_head, dk), cp.float16) for _ in range(n_layer)]
        self.v = [cp.empty((num_blocks, block_size, n_kv_head, dv), cp.float16) for _ in range(n_layer)]
        self._written = [False] * self.n_layer

    def layer(self, layer: int, k_shape: tuple, v_shape: tuple):
        if not self._written[layer]:
            if tuple(self.k[layer].shape[2:]) != tuple(k_shape) or tuple(self.v[layer].shape[2:]) != tuple(v_shape):
                self.k[layer] = self.cp.empty((self.num_blocks, self.block_size, *k_shape), self.cp.float16)
                self.v[layer] = self.cp.empty((self.num_blocks, self.block_size, *v_shape), self.cp.float16)
            self._written[layer] = True
        return self.k[layer], self.v[layer]

    def copy_blocks(self, pairs) -> None:
        if not pairs:
            return
        cp = self.cp
        src = cp.asarray(np.array([s for s, _ in pairs], np.int64))
        dst = cp.asarray(np.array([d for _, d in pairs], np.int64))
        for layer in range(self.n_layer):
            self.k[layer][dst] = self.k[layer][src]
            self.v[layer][dst] = self.v[layer][src]

    def view(self, table=(), max_tokens=None) -> PagedKVView:
        return PagedKVView(self, table, max_tokens)


class CupyPaged:
    kv_bytes = 2

    def new_paged_kv(self, n_layer, n_kv_head, head_dim_k, head_dim_v, num_blocks, block_size):
        try:
            return GpuPagedKV(self.cp, n_layer, n_kv_head, head_dim_k, head_dim_v, num_blocks, block_size)
        except self.cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceError(f"out of GPU memory for a paged KV pool of {num_blocks} blocks of {block_size} "
                              f"tokens ({exc}); ask for a smaller --kv-cache-gb") from None

    def _table(self, view: PagedKVView):
        if view.dev_table is None:     # the table changes every block_size tokens, not every step
            view.dev_table = self.cp.asarray(view.table)
        return view.dev_table

    def attention(self, q, k, v, cache, layer, pos0, scale, window=0, softcap=0.0, alibi=None, sinks=None,
                  chunk=0):
        if not isinstance(cache, PagedKVView):
            return super().attention(q, k, v, cache, layer, pos0, scale, window=window, softcap=softcap,
                                     alibi=alibi, sinks=sinks, chunk=chunk)
        if self._step is not None:
            raise RocmforgeError("a paged KV cache cannot run inside a captured decode step")
        q, k, v = self._f32(q), self._f32(k), self._f32(v)
        T, H, Dk = q.shape
        Hkv, Dv = k.shape[1], v.shape[2]
        end = pos0 + T
        cache.check(layer, end)
        if H % Hkv:
            raise RocmforgeError(f"attention: {H} query heads do not group over {Hkv} kv heads")
        kc, vc = cache.pool.layer(layer, k.shape[1:], v.shape[1:])
        table = self._table(cache)
        bs = cache.block_size
        self._launch("paged_attention.hip", "paged_kv_store", (self._grid1d(max(k.size, v.size)),), (256,),
                     (k, v, kc, vc, table, np.int64(T), np.int64(pos0), np.int64(Hkv * Dk), np.int64(Hkv * Dv),
                      np.int32(bs)))
        cache.length[layer] = end
        slopes = self._head_vector(alibi, H, "alibi slopes")
        sink = self._head_vector(sinks, H, "attention sinks")
        g, defs = self._att_defines(H, Hkv, Dk, Dv)
        out = self._out((T, H, Dv))
        common = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(Dk), np.int32(Dv), np.int32(pos0),
                  np.int32(window or 0), np.float32(scale), np.float32(softcap or 0.0))
        if T <= DECODE_MAX_T:
            pdefs = tuple(d for d in defs if d[0] != "ATT_G")
            self._launch("paged_attention.hip", "paged_attn_decode", (H, T), (PA_NW * self.warp,),
                         (q, kc, vc, table, out) + common + (np.int32(chunk or 0), np.int32(bs), slopes, sink), pdefs)
            return out
        kg, vg = self._gather(kc, vc, table, end, Hkv * Dk, Hkv * Dv, bs)
        hblocks = Hkv * ((H // Hkv) // g)
        self._launch("attention.hip", "attn_prefill", (hblocks, -(-T // 8)), (8 * self.warp,),
                     (q, kg, vg, out) + common + (np.int32(chunk or 0), slopes, sink, np.float32(1.0)), defs)
        return out

    def _gather(self, kc, vc, table, n, kstride, vstride, bs):
        cp = self.cp
        kg = cp.empty((n, *kc.shape[2:]), cp.float16)
        vg = cp.empty((n, *vc.shape[2:]), cp.float16)
        self._launch("paged_attention.hip", "paged_kv_gather", (self._grid1d(n * max(kstride, vstride)),), (256,),
                     (kc, vc, table, kg, vg, np.int64(n), np.int64(kstride), np.int64(vstride), np.int32(bs)))
        return kg, vg

    def kv_read(self, cache, layer, pos0, n):
        if not isinstance(cache, PagedKVView):
            return super().kv_read(cache, layer, pos0, n)
        if pos0 + n > cache.length[layer]:
            raise RocmforgeError(f"layer {layer} of the KV cache holds {cache.length[layer]} positions, "
                                 f"not {pos0 + n}: a sharing layer must run after the layer it shares")
        kc, vc = cache.pool.k[layer], cache.pool.v[layer]
        kg, vg = self._gather(kc, vc, self._table(cache), pos0 + n, int(np.prod(kc.shape[2:])),
                              int(np.prod(vc.shape[2:])), cache.block_size)
        cp = self.cp
        return cp.ascontiguousarray(kg[pos0:], dtype=cp.float32), cp.ascontiguousarray(vg[pos0:], dtype=cp.float32)
