"""The GPU backend's paged KV cache (a mixin of CupyBackend, ahead of CupyAttention): fp16 block pools,
or FP8 codes (uint8) with one scale per layer and tensor, and the kernels of kernels/paged_attention.hip.

``attention`` and ``kv_read`` take a paged view (rocmforge.backends.paged.PagedKVView) where they
take a contiguous cache, and hand anything else to CupyAttention. Decode (up to DECODE_MAX_T
queries) walks the block table in the kernel, no copy; a longer prefill gathers the sequence's
rows into one contiguous buffer (fp16 or codes, as stored) and runs attention.hip's tiled prefill
kernel on it, built for the same element. FP8 pools encode exactly as the contiguous GpuKVCache
(att_enc of kernels/rf_fp8.h) with the scales of rocmforge.quant.act.kv_pool_scales (the file's, else
a fixed 1.0 per layer, as the NumPy paged store: never a first store's). Every
attention option of the contiguous path works (window, chunk, softcap, ALiBi, sinks, GQA, Dv !=
Dk). A decode step of many sequences (one token each) runs each layer's KV append and attention
as one launch over all of them (``attention_batch``: positions and block tables in one device
buffer), and the engine replays such steps from captured graphs (cupy_paged_graph.py), which is why
the pool holds one block more than asked for: the scratch block that a graph's padding rows write.
"""

from __future__ import annotations

import numpy as np

from ..errors import DeviceError, RocmforgeError
from .cupy_attention import DECODE_MAX_T, FP8_KV, GpuKVCache
from .paged import PagedKVView, layer_shapes

PA_NW = 8      # warps per paged_attn_decode block (kernels/paged_attention.hip)


class GpuPagedKV:
    """K and V pools of every layer, (num_blocks, block_size, n_kv_head, head_dim), allocated up front:
    fp16, or FP8 codes of ``flavour`` (fp8_e4m3fn / fp8_e4m3fnuz) with the per-layer scales of
    rocmforge.quant.act.kv_pool_scales (``scales``: the file's, calibrated for e4m3fn; else 1.0).

    A layer whose K/V differ from the model default (per-layer head sizes) gets pools of its own
    shape at its first store."""

    # the kernels' ATT_KV and the scale factors of a read code, as the contiguous cache has them
    defines = GpuKVCache.defines
    factors = GpuKVCache.factors

    def __init__(self, cp, n_layer, n_kv_head, dk, dv, num_blocks, block_size, flavour=None, scales=None,
                 layers=None):
        from ..quant.act import kv_pool_scales

        self.cp = cp
        self.n_layer, self.num_blocks, self.block_size = int(n_layer), int(num_blocks), int(block_size)
        self.flavour = flavour
        self.elem = cp.uint8 if flavour else cp.float16
        self.k_scale, self.v_scale = kv_pool_scales(flavour, self.n_layer, scales) if flavour else (None, None)
        # + 1: the scratch block (never handed out by the engine) that padding rows of a graph write
        self.scratch = self.num_blocks
        shapes = layer_shapes(self.n_layer, n_kv_head, dk, dv, layers)     # per layer: a hybrid's attention only
        self.k = [cp.empty((num_blocks + 1, block_size, h, a), self.elem) for h, a, _ in shapes]
        self.v = [cp.empty((num_blocks + 1, block_size, h, b), self.elem) for h, _, b in shapes]
        self._written = [False] * self.n_layer
        self.graphs: dict = {}      # captured batched decode steps (cupy_paged_graph.py)
        self.graph_width = 16       # their least table width, in blocks (ModelStep.capture_graphs widens it)

    def layer(self, layer: int, k_shape: tuple, v_shape: tuple):
        if not self._written[layer]:
            if tuple(self.k[layer].shape[2:]) != tuple(k_shape) or tuple(self.v[layer].shape[2:]) != tuple(v_shape):
                self.k[layer] = self.cp.empty((self.num_blocks + 1, self.block_size, *k_shape), self.elem)
                self.v[layer] = self.cp.empty((self.num_blocks + 1, self.block_size, *v_shape), self.elem)
            self._written[layer] = True
        return self.k[layer], self.v[layer]

    def store_args(self, layer: int, k_shape: tuple, v_shape: tuple):
        """(kc, vc, k_scale, v_scale): the layer's pools and the scales a KV store encodes with (1.0 for f16)."""
        kc, vc = self.layer(layer, k_shape, v_shape)
        ks, vs = (self.k_scale[layer], self.v_scale[layer]) if self.flavour else (1.0, 1.0)
        return kc, vc, ks, vs

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

    @property
    def nbytes(self) -> int:
        """Bytes the K and V pools take."""
        return int(sum(a.nbytes for a in (*self.k, *self.v)))

    def decode(self, layer: int, k, v):
        """Stored K/V rows (as gathered) as float32: f16 widened, FP8 codes read through their f16 bit
        pattern (exact, as the kernels' att_ld) times the layer's scale and 2^(15 - bias)."""
        cp = self.cp
        if not self.flavour:
            return cp.ascontiguousarray(k, dtype=cp.float32), cp.ascontiguousarray(v, dtype=cp.float32)
        kf, vf = self.factors(layer)

        def f16_bits(c):
            c = c.astype(cp.uint16)
            bits = (((c & 0x7F) << 7) | ((c & 0x80) << 8)).astype(cp.uint16, copy=False)
            return bits.view(cp.float16).astype(cp.float32)

        return f16_bits(k) * np.float32(kf), f16_bits(v) * np.float32(vf)


class CupyPaged:
    kv_bytes = 2

    def new_paged_kv(self, n_layer, n_kv_head, head_dim_k, head_dim_v, num_blocks, block_size, dtype="auto",
                     scales=None, layers=None):
        if dtype == "fp8":
            dtype = self.fp8_kv_flavour
        if dtype not in ("auto", "f16", *FP8_KV):
            raise ValueError(f"unknown KV cache dtype {dtype!r}; expected auto, f16, fp8, {', '.join(FP8_KV)}")
        flavour = dtype if dtype in FP8_KV else None
        try:
            return GpuPagedKV(self.cp, n_layer, n_kv_head, head_dim_k, head_dim_v, num_blocks, block_size,
                              flavour, scales, layers)
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
        pool = cache.pool
        kc, vc, ks, vs = pool.store_args(layer, k.shape[1:], v.shape[1:])
        table = self._table(cache)
        bs = cache.block_size
        kvdefs = pool.defines
        self._launch("paged_attention.hip", "paged_kv_store", (self._grid1d(max(k.size, v.size)),), (256,),
                     (k, v, kc, vc, table, np.int64(T), np.int64(pos0), np.int64(Hkv * Dk), np.int64(Hkv * Dv),
                      np.int32(bs), np.float32(ks), np.float32(vs)), kvdefs)
        kf, vf = pool.factors(layer)
        cache.length[layer] = end
        slopes = self._head_vector(alibi, H, "alibi slopes")
        sink = self._head_vector(sinks, H, "attention sinks")
        g, defs = self._att_defines(H, Hkv, Dk, Dv)
        defs += kvdefs
        out = self._out((T, H, Dv))
        common = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(Dk), np.int32(Dv), np.int32(pos0),
                  np.int32(window or 0), np.float32(scale * kf), np.float32(softcap or 0.0))
        if T <= DECODE_MAX_T:
            pdefs = tuple(d for d in defs if d[0] != "ATT_G")
            self._launch("paged_attention.hip", "paged_attn_decode", (H, T), (PA_NW * self.warp,),
                         (q, kc, vc, table, out) + common + (np.int32(chunk or 0), np.int32(bs), slopes, sink,
                                                             np.float32(vf)), pdefs)
            return out
        kg, vg = self._gather(kc, vc, table, end, Hkv * Dk, Hkv * Dv, bs, kvdefs)
        hblocks = Hkv * ((H // Hkv) // g)
        self._launch("attention.hip", "attn_prefill", (hblocks, -(-T // 8)), (8 * self.warp,),
                     (q, kg, vg, out) + common + (np.int32(chunk or 0), slopes, sink, np.float32(vf)), defs)
        return out

    def attention_batch(self, q, k, v, segments, layer, scale, **opts):
        runs = self._attention_runs(segments)
        if runs is None:
            return super().attention_batch(q, k, v, segments, layer, scale, **opts)
        if len(runs) == 1 and runs[0][0]:
            return self._attention_rows(q, k, v, segments, layer, scale, **opts)
        parts = []
        for rows, segs in runs:
            if rows:
                a, b = segs[0].start, segs[-1].start + segs[-1].length
                parts.append(self._attention_rows(q[a:b], k[a:b], v[a:b], segs, layer, scale, **opts))
            else:
                parts += [self.attention(q[s.start:s.start + s.length], k[s.start:s.start + s.length],
                                         v[s.start:s.start + s.length], s.cache, layer, s.pos0, scale, **opts)
                          for s in segs]
        return self.concat(parts)

    def _attention_runs(self, segments):
        """How a batch's attention runs, the same for every layer of one forward: [(rows, segments)]
        in batch order, ``rows`` for a run of one-token segments that take one rows launch; None when
        the batch is not all paged views of one pool. A serving step that mixes prompt chunks with the
        running decodes keeps those decodes in one launch per layer (one call per sequence made a
        64-sequence step with a prompt chunk in it several times slower than a decode step)."""
        got = self._runs_of
        if got is not None and got[0] is segments:
            return got[1]
        views = [s.cache for s in segments]
        runs = None
        if all(isinstance(c, PagedKVView) for c in views) and len({id(c.pool) for c in views}) == 1:
            if all(s.length == 1 for s in segments):
                runs = [(len(segments) > 1 or self._step is not None, list(segments))]
            else:
                runs = []
                for s in segments:
                    one = s.length == 1
                    if runs and runs[-1][0] == one:
                        runs[-1][1].append(s)
                    else:
                        runs.append((one, [s]))
                runs = [(one and len(segs) > 1, segs) for one, segs in runs]
        self._runs_of = (segments, runs)
        return runs

    def _paged_rows(self, segments):
        """(rows, mb): [pos (R) | tables (R, mb)] int32 on the device for one token per segment. A
        captured step's live in its step buffers; an eager forward uploads them once, for every layer."""
        if self._step is not None:
            rows = getattr(self._step, "rows", None)
            if rows is None:
                raise RocmforgeError("a paged KV cache cannot run inside a captured single-sequence decode step")
            return rows, self._step.mb
        got = self._rows_of
        if got is not None and got[0] is segments:
            return got[1], got[2]
        R = len(segments)
        for s in segments:
            s.cache.check(0, s.pos0 + 1)
        mb = max(1, max(len(s.cache.table) for s in segments))
        host = np.zeros(R + R * mb, np.int32)
        host[:R] = [s.pos0 for s in segments]
        for r, s in enumerate(segments):
            host[R + r * mb: R + r * mb + len(s.cache.table)] = s.cache.table
        rows = self.cp.asarray(host)
        self._rows_of = (segments, rows, mb)
        return rows, mb

    def _attention_rows(self, q, k, v, segments, layer, scale, window=0, softcap=0.0, alibi=None, sinks=None,
                        chunk=0):
        """One token of each of R sequences of one pool: one KV append and one attention launch."""
        q, k, v = self._f32(q), self._f32(k), self._f32(v)
        R, H, Dk = q.shape
        Hkv, Dv = k.shape[1], v.shape[2]
        if H % Hkv:
            raise RocmforgeError(f"attention: {H} query heads do not group over {Hkv} kv heads")
        pool = segments[0].cache.pool
        kc, vc, ks, vs = pool.store_args(layer, k.shape[1:], v.shape[1:])
        rows, mb = self._paged_rows(segments)
        bs = pool.block_size
        kvdefs = pool.defines
        self._launch("paged_attention.hip", "paged_kv_store_rows", (self._grid1d(max(k.size, v.size)),), (256,),
                     (k, v, kc, vc, rows, np.int32(R), np.int32(mb), np.int64(Hkv * Dk), np.int64(Hkv * Dv),
                      np.int32(bs), np.float32(ks), np.float32(vs)), kvdefs)
        for s in segments:
            s.cache.length[layer] = s.pos0 + 1
        kf, vf = pool.factors(layer)
        slopes = self._head_vector(alibi, H, "alibi slopes")
        sink = self._head_vector(sinks, H, "attention sinks")
        _, defs = self._att_defines(H, Hkv, Dk, Dv)
        pdefs = tuple(d for d in defs + kvdefs if d[0] != "ATT_G")
        out = self._out((R, H, Dv))
        self._launch("paged_attention.hip", "paged_attn_decode_rows", (H, R), (PA_NW * self.warp,),
                     (q, kc, vc, rows, out, np.int32(R), np.int32(mb), np.int32(H), np.int32(Hkv), np.int32(Dk),
                      np.int32(Dv), np.int32(window or 0), np.float32(scale * kf), np.float32(softcap or 0.0),
                      np.int32(chunk or 0), np.int32(bs), slopes, sink, np.float32(vf)), pdefs)
        return out

    def decode_batch_step(self, executor, runs):
        if not self.graphs:
            return None
        from .cupy_paged_graph import decode_batch

        return decode_batch(self, executor, runs)

    def _gather(self, kc, vc, table, n, kstride, vstride, bs, kvdefs=()):
        """Rows 0..n of a sequence into contiguous buffers of the pool's element (f16, or FP8 codes)."""
        cp = self.cp
        kg = cp.empty((n, *kc.shape[2:]), kc.dtype)
        vg = cp.empty((n, *vc.shape[2:]), vc.dtype)
        self._launch("paged_attention.hip", "paged_kv_gather", (self._grid1d(n * max(kstride, vstride)),), (256,),
                     (kc, vc, table, kg, vg, np.int64(n), np.int64(kstride), np.int64(vstride), np.int32(bs)),
                     kvdefs)
        return kg, vg

    def kv_read(self, cache, layer, pos0, n):
        if not isinstance(cache, PagedKVView):
            return super().kv_read(cache, layer, pos0, n)
        # host positions and this sequence's own table: a captured batched step would replay them for
        # whichever sequences come next, so a step that reads shared KV stays eager
        self._needs_host("kv_read")
        if pos0 + n > cache.length[layer]:
            raise RocmforgeError(f"layer {layer} of the KV cache holds {cache.length[layer]} positions, "
                                 f"not {pos0 + n}: a sharing layer must run after the layer it shares")
        pool = cache.pool
        kc, vc = pool.k[layer], pool.v[layer]
        kg, vg = self._gather(kc, vc, self._table(cache), pos0 + n, int(np.prod(kc.shape[2:])),
                              int(np.prod(vc.shape[2:])), cache.block_size, pool.defines)
        return pool.decode(layer, kg[pos0:], vg[pos0:])
