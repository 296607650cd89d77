"""The GPU backend's attention (a mixin of CupyBackend): the KV cache (fp16, or FP8 codes with a
scale per layer and tensor) and the kernels of kernels/attention.hip.

Up to ``DECODE_MAX_T`` queries run the split-K decode kernel (flash-decoding: the visible keys cut
into chunks, merged by attn_combine); more run the tiled prefill kernel. GQA is native: one block
reads each K/V row once for the ATT_G query heads it serves. In a captured decode step the position
comes from a device buffer and the split-K grid is sized for the longest step the cache allows.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..errors import DeviceError, RocmforgeError
from .numpy_backend import check_kv_layer

DECODE_MAX_T = 4          # attention: decode kernel up to this many queries, tiled prefill beyond


def _null():
    return np.uint64(0)


# FP8 KV flavours: the kernels' ATT_KV code and the E4M3 exponent bias
FP8_KV = {"fp8_e4m3fn": (1, 7), "fp8_e4m3fnuz": (2, 8)}


class GpuKVCache:
    """K and V of every layer, (n_layer, max_tokens, n_kv_head, head_dim), allocated up front: fp16, or
    FP8 codes of ``flavour`` (fp8_e4m3fn / fp8_e4m3fnuz) with one scale per layer and tensor, the
    file's ({layer: (k_scale, v_scale)}, calibrated for e4m3fn) or taken from the layer's first store.

    ``layers`` {layer: (n_kv_head, head_dim, head_dim_v)}: only those layers hold K/V, at exactly those
    shapes (the others hold None), as in the NumPy reference's NumpyKVCache."""

    def __init__(self, cp, n_layer, n_kv_head, dk, dv, max_tokens, flavour=None, scales=None, layers=None):
        from ..quant.act import kv_scale_for

        self.cp = cp
        self.flavour = flavour
        self.elem = cp.uint8 if flavour else cp.float16
        self.max_tokens = int(max_tokens)
        self.n_kv_head, self.dk, self.dv = int(n_kv_head), int(dk), int(dv)
        self.fixed = layers is not None
        shapes = layers if layers is not None else {i: (n_kv_head, dk, dv) for i in range(n_layer)}
        self.k, self.v = [None] * n_layer, [None] * n_layer
        groups: dict[tuple, list[int]] = {}
        for i, shape in shapes.items():
            groups.setdefault(tuple(int(d) for d in shape), []).append(i)
        for (h, d, e), ids in groups.items():      # layers of one shape share one allocation
            k = cp.empty((len(ids), max_tokens, h, d), self.elem)
            v = cp.empty((len(ids), max_tokens, h, e), self.elem)
            for j, i in enumerate(ids):               # per-layer views
                self.k[i], self.v[i] = k[j], v[j]
        self.length = [0] * n_layer
        scales = scales or {}
        self.k_scale = [kv_scale_for(flavour, scales[i][0]) if flavour and i in scales else None
                        for i in range(n_layer)]
        self.v_scale = [kv_scale_for(flavour, scales[i][1]) if flavour and i in scales else None
                        for i in range(n_layer)]
        self.graph: Any = None      # decode-graph state of this sequence (cupy_graph.decode_step)

    @property
    def defines(self) -> tuple[tuple[str, int], ...]:
        """The attention kernels' ATT_KV for this cache's element (none for fp16)."""
        return (("ATT_KV", FP8_KV[self.flavour][0]),) if self.flavour else ()

    def factors(self, layer: int) -> tuple[float, float]:
        """What the kernels multiply a read K / V element by: 1 for fp16; for FP8 the layer's scale
        times 2^(15 - bias) (kernels/attention.hip reads a code through its f16 bit pattern)."""
        if not self.flavour:
            return 1.0, 1.0
        f = 2.0 ** (15 - FP8_KV[self.flavour][1])
        return self.k_scale[layer] * f, self.v_scale[layer] * f

    def ensure_scales(self, layer: int, k, v) -> None:
        """A layer without a file scale takes one from its first store (rocmforge.quant.act.kv_dynamic_scale:
        the rows' amax at max / 2), as the NumPy reference does."""
        if not self.flavour or self.k_scale[layer] is not None:
            return
        from ..quant.act import kv_dynamic_scale

        for name, x in (("k_scale", k), ("v_scale", v)):
            amax = float(self.cp.abs(x).max()) if x.size else 0.0
            getattr(self, name)[layer] = kv_dynamic_scale(np.float32([amax]), self.flavour)

    def buffers(self, layer: int, k_shape: tuple, v_shape: tuple):
        """Layer ``layer``'s K and V; an empty layer whose K/V shape (n_kv_head, head_dim) differs from
        the model default (Gemma 4 global layers) gets buffers of its own shape."""
        check_kv_layer(self, layer, k_shape, v_shape)
        if self.length[layer] == 0 and (tuple(self.k[layer].shape[1:]) != tuple(k_shape)
                                        or tuple(self.v[layer].shape[1:]) != tuple(v_shape)):
            self.k[layer] = self.cp.empty((self.max_tokens, *k_shape), self.elem)
            self.v[layer] = self.cp.empty((self.max_tokens, *v_shape), self.elem)
        return self.k[layer], self.v[layer]

    def read(self, layer: int, pos0: int, n: int):
        """K and V of positions pos0 .. pos0 + n as float32 (FP8 codes decoded with the layer's scales)."""
        cp = self.cp
        check_kv_layer(self, layer)
        k, v = self.k[layer][pos0:pos0 + n], self.v[layer][pos0:pos0 + n]
        if not self.flavour:
            return cp.ascontiguousarray(k, dtype=cp.float32), cp.ascontiguousarray(v, dtype=cp.float32)
        from ..quant.act import kv_decode, kv_flavour

        elem = kv_flavour(self.flavour)[0]
        # decoded on the host: only layers that share another layer's KV read it back (Gemma 3n)
        k = kv_decode(cp.asnumpy(k).view(elem), self.k_scale[layer])
        v = kv_decode(cp.asnumpy(v).view(elem), self.v_scale[layer])
        return cp.asarray(k), cp.asarray(v)

    @property
    def nbytes(self) -> int:
        """Bytes the K/V of ``max_tokens`` positions take in this cache's storage type."""
        return int(sum(a.nbytes for a in (*self.k, *self.v) if a is not None))


class CupyAttention:
    def new_kv_cache(self, n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens, dtype="auto", scales=None,
                     layers=None):
        if dtype == "fp8":
            dtype = self.fp8_kv_flavour
        if dtype not in ("auto", "f16", *FP8_KV):
            raise ValueError(f"unknown KV cache dtype {dtype!r}; expected auto, f16, fp8, "
                             f"{', '.join(FP8_KV)}")
        flavour = dtype if dtype in FP8_KV else None
        try:
            return GpuKVCache(self.cp, n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens, flavour, scales,
                              layers)
        except self.cp.cuda.memory.OutOfMemoryError as exc:
            raise DeviceError(f"out of GPU memory for a KV cache of {max_tokens} tokens ({exc}); "
                              "ask for a shorter context") from None

    @property
    def fp8_kv_flavour(self) -> str:
        """The FP8 flavour "fp8" means on this device: E4M3FNUZ on MI300 (gfx94x), OCP E4M3FN elsewhere."""
        if not self.is_hip:
            return "fp8_e4m3fn"
        props = self.cp.cuda.runtime.getDeviceProperties(self.cp.cuda.Device().id)
        arch = props.get("gcnArchName", b"")
        arch = arch.decode(errors="replace") if isinstance(arch, bytes) else str(arch)
        return "fp8_e4m3fnuz" if arch.startswith("gfx94") else "fp8_e4m3fn"

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
        if cache.flavour and cache.k_scale[layer] is None:
            self._needs_host("FP8 KV dynamic scale")     # the layer's first store reads its amax back
            cache.ensure_scales(layer, k, v)
        kf, vf = cache.factors(layer)
        kvdefs = cache.defines
        # step mode (captured decode): the position is read from the device, and the split-K
        # grid is sized for the longest step this cache allows (the kernels pick the same
        # split as an eager launch from the position, spare blocks exit)
        step = self._step
        pos_dev = _null() if step is None else step.pos
        self._launch("attention.hip", "kv_store", (self._grid1d(max(nk, nv)),), (256,),
                     (k, v, kc, vc, np.int64(nk), np.int64(nv), np.int64(pos0), np.int64(Hkv * Dk),
                      np.int64(Hkv * Dv), pos_dev,
                      np.float32(cache.k_scale[layer] or 1.0), np.float32(cache.v_scale[layer] or 1.0)), kvdefs)
        cache.length[layer] = end
        slopes = self._head_vector(alibi, H, "alibi slopes")
        sink = self._head_vector(sinks, H, "attention sinks")
        chunk = int(chunk or 0)
        g, defs = self._att_defines(H, Hkv, Dk, Dv)
        defs += kvdefs
        hblocks = Hkv * ((H // Hkv) // g)
        out = self._out((T, H, Dv))
        common = (np.int32(T), np.int32(H), np.int32(Hkv), np.int32(Dk), np.int32(Dv), np.int32(pos0),
                  np.int32(window or 0), np.float32(scale * kf), np.float32(softcap or 0.0))
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
                                                              slopes, sink, np.float32(vf)), defs)
            if nsplit > 1:
                self._launch("attention.hip", "attn_combine", (T * H,), (min(256, max(self.warp, Dv)),),
                             (pa, pm, out, np.int32(T), np.int32(H), np.int32(Dv), np.int32(nsplit_cap),
                              np.int32(pos0), np.int32(window or 0), pos_dev, np.int32(chunk), sink,
                              np.float32(vf)), defs)
        else:
            self._launch("attention.hip", "attn_prefill", (hblocks, -(-T // 8)), (8 * self.warp,),
                         (q, kc, vc, out) + common + (np.int32(chunk), slopes, sink, np.float32(vf)), defs)
        return out

    def kv_read(self, cache, layer, pos0, n):
        self._needs_host("kv_read")      # host positions: a step that reads shared KV stays eager
        if pos0 + n > cache.length[layer]:
            raise RocmforgeError(f"layer {layer} of the KV cache holds {cache.length[layer]} positions, "
                                 f"not {pos0 + n}: a sharing layer must run after the layer it shares")
        return cache.read(layer, pos0, n)
