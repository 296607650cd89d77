"""The NumPy reference backend: float32 math, written to be read.

Every GPU kernel is checked against these functions, so clarity wins over
speed here; the only concessions are BLAS matmuls and in-place updates.
"""

from __future__ import annotations

import math
import os

import numpy as np

from ..errors import RocmforgeError
from .base import Backend
from .numpy_delta import NumpyDelta
from .numpy_ssm import NumpySSM


class NumpyKVCache:
    """Per-layer K and V, (capacity, n_kv_head, head_dim), grown by doubling.

    ``layers`` {layer: (n_kv_head, head_dim, head_dim_v)}: only those layers hold K/V, at exactly
    those shapes (the others, a hybrid's recurrent layers, hold None). Without it every layer holds
    the default shape, and a layer whose K/V differ from it (per-layer head sizes) takes the shape
    of the first K/V stored in it."""

    dtype = np.dtype(np.float32)       # what K/V are stored as (float16 for kv_cache_dtype="f16")

    def __init__(self, n_layer: int, n_kv_head: int, dk: int, dv: int, max_tokens: int, dtype=None,
                 layers: dict[int, tuple[int, int, int]] | None = None):
        cap = min(max_tokens, 256)
        self.max_tokens = max_tokens
        if dtype is not None:
            self.dtype = np.dtype(dtype)
        self.fixed = layers is not None
        shapes = layers if layers is not None else {i: (n_kv_head, dk, dv) for i in range(n_layer)}
        self.k: list[np.ndarray | None] = [None] * n_layer
        self.v: list[np.ndarray | None] = [None] * n_layer
        for i, (h, d, e) in shapes.items():
            self.k[i], self.v[i] = np.empty((cap, h, d), self.dtype), np.empty((cap, h, e), self.dtype)
        self.length = [0] * n_layer

    def _encode(self, layer: int, k: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """K/V as stored (the FP8 cache stores scaled codes)."""
        return k, v

    def store(self, layer: int, pos0: int, k: np.ndarray, v: np.ndarray) -> None:
        end = pos0 + k.shape[0]
        if end > self.max_tokens:
            raise RocmforgeError(f"sequence of {end} tokens exceeds the context of {self.max_tokens}")
        check_kv_layer(self, layer, k.shape[1:], v.shape[1:])
        if self.length[layer] == 0 and (self.k[layer].shape[1:] != k.shape[1:] or self.v[layer].shape[1:] != v.shape[1:]):
            # a layer with its own kv heads / head size (Gemma 4 global layers): its first store decides
            cap = self.k[layer].shape[0]
            self.k[layer] = np.empty((cap, *k.shape[1:]), self.dtype)
            self.v[layer] = np.empty((cap, *v.shape[1:]), self.dtype)
        if end > self.k[layer].shape[0]:
            cap = min(self.max_tokens, max(end, 2 * self.k[layer].shape[0]))
            for buf in (self.k, self.v):
                old = buf[layer]
                new = np.empty((cap, *old.shape[1:]), self.dtype)
                new[: self.length[layer]] = old[: self.length[layer]]
                buf[layer] = new
        k, v = self._encode(layer, k, v)
        self.k[layer][pos0:end] = k
        self.v[layer][pos0:end] = v
        self.length[layer] = end

    def read(self, layer: int, n: int) -> tuple[np.ndarray, np.ndarray]:
        """K and V of positions 0..n: (n, n_kv_head, head_dim) float32."""
        check_kv_layer(self, layer)
        if self.dtype == np.float32:
            return self.k[layer][:n], self.v[layer][:n]
        return self.k[layer][:n].astype(np.float32), self.v[layer][:n].astype(np.float32)

    @property
    def nbytes(self) -> int:
        """Bytes the K/V of ``max_tokens`` positions take in this cache's storage type."""
        per_pos = sum(a.shape[1] * a.shape[2] for a in (*self.k, *self.v) if a is not None)
        return per_pos * self.max_tokens * self.dtype.itemsize


def check_kv_layer(cache, layer: int, k_shape: tuple | None = None, v_shape: tuple | None = None) -> None:
    """A clear error for K/V of a layer the cache holds none for, or (declared per-layer caches: the
    recipe's ``cache:`` is what memory planning counts) of another shape than declared. Shared by
    NumpyKVCache and the GPU's GpuKVCache."""
    if cache.k[layer] is None:
        raise RocmforgeError(f"layer {layer} holds no K/V in this cache: the recipe's cache: if: leaves it out, "
                             "but the layer runs attention")
    if cache.fixed and k_shape is not None and (tuple(cache.k[layer].shape[1:]) != tuple(k_shape)
                                                or tuple(cache.v[layer].shape[1:]) != tuple(v_shape)):
        raise RocmforgeError(f"layer {layer} stores K {tuple(k_shape)} / V {tuple(v_shape)} per position, but the "
                             f"recipe's cache: section declares {tuple(cache.k[layer].shape[1:])} / "
                             f"{tuple(cache.v[layer].shape[1:])}")


class NumpyFP8KVCache(NumpyKVCache):
    """K and V stored as FP8 codes (``flavour`` fp8_e4m3fn or fp8_e4m3fnuz) with one float scale per
    layer and tensor: value = code * scale (rocmforge.quant.act). ``scales`` {layer: (k_scale, v_scale)}
    are the file's (calibrated for e4m3fn; doubled for e4m3fnuz); a layer without one takes a
    dynamic scale from its first store (kv_dynamic_scale)."""

    def __init__(self, n_layer, n_kv_head, dk, dv, max_tokens, flavour="fp8_e4m3fn", scales=None, layers=None):
        from ..quant.act import kv_flavour, kv_scale_for

        self.flavour = flavour
        self.dtype = kv_flavour(flavour)[0]
        super().__init__(n_layer, n_kv_head, dk, dv, max_tokens, layers=layers)
        scales = scales or {}
        self.k_scale = [kv_scale_for(flavour, scales[i][0]) if i in scales else None for i in range(n_layer)]
        self.v_scale = [kv_scale_for(flavour, scales[i][1]) if i in scales else None for i in range(n_layer)]

    def _encode(self, layer, k, v):
        from ..quant.act import kv_dynamic_scale, kv_encode

        if self.k_scale[layer] is None:
            self.k_scale[layer] = kv_dynamic_scale(k, self.flavour)
        if self.v_scale[layer] is None:
            self.v_scale[layer] = kv_dynamic_scale(v, self.flavour)
        return kv_encode(k, self.k_scale[layer], self.flavour), kv_encode(v, self.v_scale[layer], self.flavour)

    def read(self, layer, n):
        from ..quant.act import kv_decode

        return kv_decode(self.k[layer][:n], self.k_scale[layer]), kv_decode(self.v[layer][:n], self.v_scale[layer])


class NumpyBackend(NumpySSM, NumpyDelta, Backend):
    name = "numpy"
    device = "cpu"

    def forward_scope(self, n_rows):
        # BLAS uses every core by default, which is fastest on a machine of one's own
        # (SmolLM2 decode on 2 cores: 29 t/s vs 19.5 on one). On a machine shared with
        # other busy processes, spinning BLAS threads get far slower than one thread:
        # ROCMFORGE_BLAS_THREADS=1 (or N) pins the count for every forward pass.
        wanted = os.environ.get("ROCMFORGE_BLAS_THREADS")
        if not wanted:
            return super().forward_scope(n_rows)
        from threadpoolctl import threadpool_limits

        return threadpool_limits(int(wanted), user_api="blas")

    def upload(self, a):
        a = np.asarray(a)
        return a if a.dtype.kind in "iub" else a.astype(np.float32, copy=False)

    def to_numpy(self, a):
        return np.asarray(a)

    def weight(self, raw):
        return np.ascontiguousarray(raw.dequantize(), dtype=np.float32)

    def fuse_weights(self, raws):
        parts = [np.asarray(r.dequantize(), dtype=np.float32) for r in raws]
        if any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            return None
        return np.ascontiguousarray(np.concatenate(parts, axis=0))

    def embedding(self, w, ids):
        return w[np.asarray(ids, dtype=np.int64)].astype(np.float32, copy=True)

    def quantized_input(self, w, act):
        from ..quant.act import InputQuantized

        return InputQuantized(w, act)

    def linear(self, x, w, bias=None):
        if hasattr(w, "act"):     # activation quantisation: qdq x, then the weight's own linear
            from ..quant.act import split_input

            x, w = split_input(w, x)
            return self.linear(x, w, bias)
        y = x @ w.T
        if bias is not None:
            y += bias
        return y

    def rms_norm(self, x, w, eps):
        y = x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps)
        return y * w if w is not None else y

    def layer_norm(self, x, w, b, eps):
        mu = x.mean(axis=-1, keepdims=True)
        var = ((x - mu) ** 2).mean(axis=-1, keepdims=True)
        y = (x - mu) / np.sqrt(var + eps)
        if w is not None:
            y = y * w
        if b is not None:
            y = y + b
        return y

    def rope(self, x, positions, inv_freq, style, rot_dim, mscale=1.0):
        angles = np.asarray(positions, np.float64)[:, None] * np.asarray(inv_freq, np.float64)[None, :]
        cos = (np.cos(angles) * mscale).astype(np.float32)[:, None, :]  # (T, 1, rot/2)
        sin = (np.sin(angles) * mscale).astype(np.float32)[:, None, :]
        out = x.copy()
        if style == "normal":
            a, b = x[..., 0:rot_dim:2], x[..., 1:rot_dim:2]
            out[..., 0:rot_dim:2] = a * cos - b * sin
            out[..., 1:rot_dim:2] = a * sin + b * cos
        elif style == "neox":
            half = rot_dim // 2
            a, b = x[..., :half], x[..., half:rot_dim]
            out[..., :half] = a * cos - b * sin
            out[..., half:rot_dim] = a * sin + b * cos
        else:
            raise ValueError(f"unknown rope style {style!r}")
        return out

    def new_kv_cache(self, n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens, dtype="auto", scales=None,
                     layers=None):
        if dtype in ("fp8", "fp8_e4m3fn", "fp8_e4m3fnuz"):
            flavour = "fp8_e4m3fn" if dtype == "fp8" else dtype
            return NumpyFP8KVCache(n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens, flavour, scales, layers)
        if dtype not in ("auto", "f16", "f32"):
            raise ValueError(f"unknown KV cache dtype {dtype!r}; expected auto, f16, f32, fp8, fp8_e4m3fn "
                             "or fp8_e4m3fnuz")
        store = np.float16 if dtype == "f16" else np.float32
        return NumpyKVCache(n_layer, n_kv_head, head_dim_k, head_dim_v, max_tokens, store, layers)

    def new_paged_kv(self, n_layer, n_kv_head, head_dim_k, head_dim_v, num_blocks, block_size, dtype="auto",
                     scales=None, layers=None):
        from .paged import NumpyPagedKV

        if dtype not in ("auto", "f16", "f32", "fp8", "fp8_e4m3fn", "fp8_e4m3fnuz"):
            raise ValueError(f"unknown KV cache dtype {dtype!r}; expected auto, f16, f32, fp8, fp8_e4m3fn "
                             "or fp8_e4m3fnuz")
        flavour = ("fp8_e4m3fn" if dtype == "fp8" else dtype) if dtype.startswith("fp8") else None
        return NumpyPagedKV(n_layer, n_kv_head, head_dim_k, head_dim_v, num_blocks, block_size, flavour, scales,
                            layers)

    def attention(self, q, k, v, cache, layer, pos0, scale, window=0, softcap=0.0, alibi=None, sinks=None,
                  chunk=0):
        cache.store(layer, pos0, k, v)
        n_kv = pos0 + q.shape[0]
        keys, vals = cache.read(layer, n_kv)    # (S, Hkv, D); a paged cache gathers through its block table
        T, H, D = q.shape
        Hkv = keys.shape[1]
        G = H // Hkv
        qg = q.reshape(T, Hkv, G, D).transpose(1, 2, 0, 3)            # (Hkv, G, T, D): query heads grouped by kv head
        scores = (qg @ keys.transpose(1, 2, 0)[:, None]) * np.float32(scale)   # (Hkv, G, T, S)
        if softcap:
            scores = softcap * np.tanh(scores / softcap)
        qpos = np.arange(pos0, pos0 + T)[:, None]
        kpos = np.arange(n_kv)[None, :]
        if alibi is not None:   # a linear penalty on distance instead of rotary positions
            slopes = np.asarray(alibi, np.float32).reshape(Hkv, G, 1, 1)
            scores = scores + slopes * (kpos - qpos).astype(np.float32)
        visible = kpos <= qpos
        if window:
            visible &= kpos > qpos - window
        if chunk:
            visible &= kpos // chunk == qpos // chunk
        scores = np.where(visible, scores, -np.inf)
        m = scores.max(axis=-1, keepdims=True)
        if sinks is not None:   # the sink is one more logit in the softmax, with no value row
            sink = np.asarray(sinks, np.float32).reshape(Hkv, G, 1, 1)
            m = np.maximum(m, sink)
        p = np.exp(scores - m)
        denom = p.sum(axis=-1, keepdims=True)
        if sinks is not None:
            denom = denom + np.exp(sink - m)
        p /= denom
        out = (p @ vals.transpose(1, 0, 2)[:, None]).transpose(2, 0, 1, 3)   # (T, Hkv, G, Dv)
        return np.ascontiguousarray(out.reshape(T, H, vals.shape[-1]), dtype=np.float32)

    def head_matmul(self, x, w):
        return np.ascontiguousarray(np.einsum("tha,hba->thb", x, w), dtype=np.float32)

    def act(self, x, kind):
        if kind == "silu":
            return x * (0.5 * (1.0 + np.tanh(0.5 * x)))   # x * sigmoid(x), no overflow for large |x|
        if kind == "gelu_tanh":
            return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))
        if kind == "gelu":
            from math import erf

            return (0.5 * x * (1.0 + np.vectorize(erf, otypes=[np.float64])(x / math.sqrt(2.0)))).astype(np.float32)
        if kind == "relu":
            return np.maximum(x, 0)
        if kind == "relu2":
            return np.square(np.maximum(x, 0))
        if kind == "sigmoid":
            return 0.5 * (1.0 + np.tanh(0.5 * x))
        if kind == "tanh":
            return np.tanh(x)
        raise ValueError(f"unknown activation {kind!r}")

    def mul(self, a, b):
        return a * b

    def add(self, a, b):
        return a + b

    def scale(self, a, s):
        return a * np.float32(s)

    def concat(self, parts):
        return np.concatenate(parts, axis=0)

    def softcap(self, a, cap):
        return np.float32(cap) * np.tanh(a / np.float32(cap))

    def moe_route(self, logits, k, gating, norm_topk):
        logits = np.asarray(logits, np.float32)
        if gating == "softmax":
            z = np.exp(logits - logits.max(axis=-1, keepdims=True))
            probs = z / z.sum(axis=-1, keepdims=True)
        elif gating == "sigmoid":
            probs = 1.0 / (1.0 + np.exp(-logits))
        else:
            raise ValueError(f"unknown gating {gating!r}")
        # stable order: highest weight first, lower expert id on ties
        ids = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
        w = np.take_along_axis(probs, ids, axis=-1)
        if norm_topk:
            w = w / w.sum(axis=-1, keepdims=True)
        return w.astype(np.float32), ids

    def moe_ffn(self, x, gate, up, down, weights, ids, act):
        out = np.zeros((x.shape[0], down.shape[1]), np.float32)
        for e in np.unique(ids):
            rows, slot = np.nonzero(ids == e)
            xe = x[rows]
            h = self.act(self._expert_mm(xe, gate, e), act) * self._expert_mm(xe, up, e)
            out[rows] += weights[rows, slot][:, None] * self._expert_mm(h, down, e)
        return out

    @staticmethod
    def _expert_mm(x, w, e):
        """x @ w[e].T, x first quantised as expert e's input scheme says (if any)."""
        from ..quant.act import split_input

        x, we = split_input(w[e], x)
        return x @ we.T

    def moe_ffn_oai(self, x, gate, up, down, gate_b, up_b, down_b, weights, ids, alpha, limit):
        if any(hasattr(t, "act") for t in (gate, up, down)):
            raise NotImplementedError("activation quantisation of gpt-oss experts is not implemented")
        out = np.zeros((x.shape[0], down.shape[1]), np.float32)
        for e in np.unique(ids):
            rows, slot = np.nonzero(ids == e)
            xe = x[rows]
            g = np.minimum(xe @ gate[e].T + gate_b[e], np.float32(limit))               # gate: clamped above
            u = np.clip(xe @ up[e].T + up_b[e], np.float32(-limit), np.float32(limit))  # up: both sides
            h = (u + 1) * g * self.act(np.float32(alpha) * g, "sigmoid")
            out[rows] += weights[rows, slot][:, None] * (h @ down[e].T + down_b[e])
        return out

    def xielu(self, x, alpha_p, alpha_n, beta, eps):
        a_p, a_n, b = np.float32(alpha_p), np.float32(alpha_n), np.float32(beta)
        pos = a_p * x * x + b * x
        neg = (np.expm1(np.minimum(x, np.float32(eps))) - x) * a_n + b * x
        return np.where(x > 0, pos, neg).astype(np.float32, copy=False)

    def kv_read(self, cache, layer, pos0, n):
        if pos0 + n > cache.length[layer]:
            from ..errors import RocmforgeError

            raise RocmforgeError(f"layer {layer} of the KV cache holds {cache.length[layer]} positions, "
                                 f"not {pos0 + n}: a sharing layer must run after the layer it shares")
        k, v = cache.read(layer, pos0 + n)
        return k[pos0:].copy(), v[pos0:].copy()
