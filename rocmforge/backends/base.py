"""The Backend interface: the primitive ops the recipe ops are written in.

Activations are 2-D ``(T, d)`` float32 arrays of the backend's own kind
(NumPy or CuPy); head-shaped tensors are ``(T, n_head, head_dim)``. Weights
are prepared once with :meth:`Backend.weight` and may stay quantised.
The NumPy backend is the reference; every other backend is tested against it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class Backend(ABC):
    name: str = "?"
    device: str = "cpu"
    kv_bytes: int = 4          # bytes per K/V element of its KV caches (sizes the paged pool)
    # the serving engine's default token rows per step: a prompt chunk beside the running decodes
    # costs them this much wait, and a larger one amortises each prefill pass over the weights
    step_tokens: int = 512
    # a forward returns once its work is queued on the device, before the results exist (a GPU
    # stream): host work done then overlaps it. On the CPU a forward returns when it is done.
    queues_work: bool = False

    # -- data movement
    @abstractmethod
    def upload(self, a: np.ndarray) -> Any:
        """Host array -> backend array (float32 unless integer)."""

    @abstractmethod
    def to_numpy(self, a: Any) -> np.ndarray:
        """Backend array -> host NumPy array."""

    def argmax(self, x: Any) -> np.ndarray:
        """Row-wise argmax of (T, V) logits, int64 on the host, by NumPy's rule (the first maximum; a
        NaN counts as the maximum): greedy tokens without the logits' copy to the host on a GPU."""
        h = np.asarray(self.to_numpy(x), np.float32)
        return np.argmax(h.reshape(-1, h.shape[-1]), axis=-1).astype(np.int64)

    @abstractmethod
    def weight(self, raw) -> Any:
        """Prepare a RawTensor for use in the ops below (may keep it quantised)."""

    # -- ops
    @abstractmethod
    def embedding(self, w: Any, ids: np.ndarray) -> Any:
        """Rows ``ids`` of the (vocab, d) table -> (T, d)."""

    @abstractmethod
    def linear(self, x: Any, w: Any, bias: Any = None) -> Any:
        """x (T, in) @ w.T, w being (out, in) -> (T, out); plus bias."""

    @abstractmethod
    def rms_norm(self, x: Any, w: Any | None, eps: float) -> Any:
        """x / sqrt(mean(x^2) + eps) * w over the last axis (w None: no scale)."""

    @abstractmethod
    def layer_norm(self, x: Any, w: Any | None, b: Any | None, eps: float) -> Any:
        """(x - mean) / sqrt(var + eps) * w + b over the last axis."""

    @abstractmethod
    def rope(self, x: Any, positions: np.ndarray, inv_freq: np.ndarray, style: str, rot_dim: int,
             mscale: float = 1.0) -> Any:
        """Rotary embedding of the first ``rot_dim`` dims of each head of x (T, H, D).

        style "normal" rotates adjacent pairs (2i, 2i+1) (GGUF llama layout);
        "neox" rotates (i, i + rot_dim/2). angle = position * inv_freq[i];
        cos/sin are multiplied by ``mscale`` (YaRN attention factor)."""

    def rope_qk(self, q: Any, k: Any, positions: np.ndarray, inv_freq: np.ndarray, style: str, rot_dim: int,
                mscale: float = 1.0) -> tuple[Any, Any]:
        """:meth:`rope` of the queries and the keys with the same table (a backend may do both at once)."""
        return (self.rope(q, positions, inv_freq, style, rot_dim, mscale),
                self.rope(k, positions, inv_freq, style, rot_dim, mscale))

    def add_rms_norm(self, a: Any, b: Any, w: Any | None, eps: float) -> tuple[Any, Any]:
        """(s, rms_norm(s)) for s = a + b: a residual add and the norm that reads it (one pass on a GPU)."""
        s = self.add(a, b)
        return s, self.rms_norm(s, w, eps)

    def quantized_input(self, w: Any, act: Any) -> Any:
        """The prepared weight ``w`` whose :meth:`linear` (and expert FFNs) first quantise-dequantise
        their input as ``act`` (rocmforge.quant.act.ActQuant) says (activation quantisation)."""
        raise NotImplementedError(f"the {self.name} backend cannot quantise activations ({act.describe()})")

    @abstractmethod
    def new_kv_cache(self, n_layer: int, n_kv_head: int, head_dim_k: int, head_dim_v: int, max_tokens: int) -> Any:
        """An empty KV cache for one sequence.

        Backends with KV storage options take ``dtype`` ("auto" float, "f16", "fp8" = the device's
        FP8 flavour, "fp8_e4m3fn", "fp8_e4m3fnuz") and ``scales`` {layer: (k_scale, v_scale)}
        (calibrated for e4m3fn) as keywords; the executor passes them only when not the default.
        ``layers`` {layer: (n_kv_head, head_dim_k, head_dim_v)} (a keyword, passed when the recipe
        declares its cache per layer): only those layers hold K/V, at exactly those shapes."""

    def new_paged_kv(self, n_layer: int, n_kv_head: int, head_dim_k: int, head_dim_v: int, num_blocks: int,
                     block_size: int) -> Any:
        """A paged KV store shared by many sequences (rocmforge.backends.paged); ``store.view(table)``
        is one sequence's cache, accepted by :meth:`attention` and :meth:`kv_read` like a contiguous one.

        Backends with an FP8 pool take ``dtype`` and ``scales`` as :meth:`new_kv_cache` does (passed only
        for fp8); a layer without a file scale gets a fixed one (rocmforge.quant.act.kv_pool_scales).
        ``layers`` (passed when the recipe declares its cache per layer): only those layers get pools,
        at exactly those shapes, as for :meth:`new_kv_cache`."""
        raise NotImplementedError(f"the {self.name} backend has no paged KV cache")

    @abstractmethod
    def attention(self, q: Any, k: Any, v: Any, cache: Any, layer: int, pos0: int, scale: float,
                  window: int = 0, softcap: float = 0.0, alibi: np.ndarray | None = None,
                  sinks: Any = None, chunk: int = 0) -> Any:
        """Append k, v (T, Hkv, D) at positions pos0.. to ``cache`` then causal attention for q (T, H, D).

        GQA: query head h reads kv head h // (H // Hkv). ``window`` > 0 lets a
        query at position p see keys at positions > p - window only; ``chunk``
        > 0 lets it see only keys of its own chunk (p // chunk, Llama 4).
        ``softcap`` > 0 applies cap * tanh(score / cap) before the softmax.
        ``alibi`` (H,) host slopes add slope_h * (j - p) to the score of key j (BLOOM, MPT).
        ``sinks`` (H,) per-head logits join every softmax's denominator but
        carry no value (gpt-oss attention sinks)."""

    def attention_batch(self, q: Any, k: Any, v: Any, segments: list, layer: int, scale: float, **opts) -> Any:
        """:meth:`attention` of every sequence of a batch against its own cache: the rows of segment s
        (rocmforge.recipe.Segment: start, length, cache, pos0) of q, k, v go to ``s.cache`` at positions
        s.pos0.. and attend there; returns the (T, H, Dv) rows in the same order. ``opts`` are
        :meth:`attention`'s. This runs one call per segment; a backend may run a batch in one launch."""
        if len(segments) == 1:
            s = segments[0]
            return self.attention(q, k, v, s.cache, layer, s.pos0, scale, **opts)
        parts = [self.attention(q[s.start:s.start + s.length], k[s.start:s.start + s.length],
                                v[s.start:s.start + s.length], s.cache, layer, s.pos0, scale, **opts)
                 for s in segments]
        return self.concat(parts)

    @abstractmethod
    def act(self, x: Any, kind: str) -> Any:
        """Elementwise activation: silu, gelu (erf), gelu_tanh, relu, relu2 (relu(x)^2), sigmoid, tanh."""

    def act_mul(self, g: Any, u: Any, kind: str) -> Any:
        """act(g) * u, the middle of a gated FFN (a backend may do it in one pass)."""
        return self.mul(self.act(g, kind), u)

    @abstractmethod
    def mul(self, a: Any, b: Any) -> Any: ...

    @abstractmethod
    def add(self, a: Any, b: Any) -> Any: ...

    @abstractmethod
    def scale(self, a: Any, s: float) -> Any: ...

    @abstractmethod
    def softcap(self, a: Any, cap: float) -> Any:
        """cap * tanh(a / cap)."""

    @abstractmethod
    def moe_route(self, logits: Any, k: int, gating: str, norm_topk: bool) -> tuple[np.ndarray, np.ndarray]:
        """Top-k experts per token from router logits (T, E).

        gating "softmax": softmax over all experts, then top-k; "sigmoid":
        sigmoid scores, then top-k. norm_topk renormalises the k weights to
        sum to 1. Returns (weights (T, k) float32, ids (T, k) int) on the host."""

    @abstractmethod
    def moe_ffn(self, x: Any, gate: Any, up: Any, down: Any, weights: np.ndarray, ids: np.ndarray,
                act: str) -> Any:
        """sum_j weights[t, j] * down_e(act(gate_e(x_t)) * up_e(x_t)), e = ids[t, j].

        gate/up are (E, ff, d) and down (E, d, ff) prepared weights."""

    @abstractmethod
    def head_matmul(self, x: Any, w: Any) -> Any:
        """Per-head matrices: x (T, H, a) and w (H, b, a) -> (T, H, b), out[t, h] = w[h] @ x[t, h].

        Multi-head latent attention folds its up-projections into the query and
        the output this way (absorbed MLA)."""

    @abstractmethod
    def concat(self, parts: list[Any]) -> Any:
        """Stack row blocks (T_i, ...) along the first axis."""

    def fuse_weights(self, raws: list) -> Any | None:
        """One prepared weight holding the rows of ``raws`` in order, or None to keep them apart.

        Lets the q/k/v and gate/up projections run as one matmul where the
        backend can join them (the CPU can; quantised blocks of different
        formats cannot be joined, so the default is None)."""
        return None

    def decode_step(self, executor: Any, ids: list[int], cache: Any, pos0: int) -> Any | None:
        """Run a one-token step the backend's fastest way (the GPU replays a captured graph).

        Returns the logits (1, vocab), or None to let the executor run the step eagerly."""
        return None

    def decode_batch_step(self, executor: Any, runs: list[tuple[list[int], Any, int]]) -> Any | None:
        """Run one decode step of several sequences of a paged store the backend's fastest way (the GPU
        replays a captured graph): ``runs`` [(ids of one token, view, pos0), ...] as for
        ``executor.forward_batch``. Returns host logits (len(runs), vocab), or None to run it eagerly."""
        return None

    def forward_scope(self, n_rows: int):
        """Context manager wrapped around one forward pass of ``n_rows`` token rows."""
        import contextlib

        return contextlib.nullcontext()

    def synchronize(self) -> None:  # noqa: B027 - optional hook, a no-op on the CPU
        """Wait for queued work (a no-op on the CPU)."""

    @abstractmethod
    def moe_ffn_oai(self, x: Any, gate: Any, up: Any, down: Any, gate_b: Any, up_b: Any, down_b: Any,
                    weights: np.ndarray, ids: np.ndarray, alpha: float, limit: float) -> Any:
        """gpt-oss experts: sum_j weights[t, j] * (down_e(h) + down_b[e]), e = ids[t, j], where
        g = min(gate_e(x_t) + gate_b[e], limit), u = clip(up_e(x_t) + up_b[e], -limit, limit),
        h = (u + 1) * g * sigmoid(alpha * g).

        gate/up are (E, ff, d), down (E, d, ff) prepared weights; the biases (E, ff) / (E, d)."""

    @abstractmethod
    def xielu(self, x: Any, alpha_p: float, alpha_n: float, beta: float, eps: float) -> Any:
        """xIELU (Apertus), elementwise: alpha_p * x^2 + beta * x for x > 0, else
        (expm1(min(x, eps)) - x) * alpha_n + beta * x. The coefficients are final (the op has
        applied the softplus to the learned parameters)."""

    @abstractmethod
    def kv_read(self, cache: Any, layer: int, pos0: int, n: int) -> tuple[Any, Any]:
        """K and V (n, n_kv_head, head_dim) float32 that layer ``layer`` of ``cache`` holds at positions pos0..pos0+n.

        Layers that share another layer's KV cache (Gemma 4) attend with these: storing them
        back at the same positions changes nothing."""

    # -- recurrent layers (Mamba, Mamba-2): a fixed-size state per sequence, updated in place
    def new_state(self, shapes: dict[tuple[int, str], tuple[int, ...]]) -> Any:
        """A sequence's recurrent state: a zero float32 array of each shape, {(layer, name): shape}
        (rocmforge.backends.state.RecurrentState)."""
        from .state import RecurrentState

        return RecurrentState({key: self.upload(np.zeros(shape, np.float32)) for key, shape in shapes.items()})

    def conv1d_causal(self, x: Any, w: Any, b: Any | None, state: Any) -> Any:
        """Causal depthwise convolution of x (T, C) with w (C, K) (+ bias b (C,)), continuing ``state``.

        ``state`` (K-1, C) holds the sequence's last K-1 inputs (zeros at its start):
        xin = [state; x], y[t, c] = b[c] + sum_k w[c, k] * xin[t + k, c]; afterwards
        ``state`` holds the last K-1 rows of xin."""
        raise NotImplementedError(f"the {self.name} backend has no conv1d_causal")

    def selective_scan(self, x: Any, dt: Any, A: Any, B: Any, C: Any, D: Any | None, state: Any,
                       dt_bias: Any | None = None) -> Any:
        """Mamba's selective scan (S6) over x (T, Dc), continuing ``state`` h (Dc, N); returns y (T, Dc).

        delta = softplus(dt + dt_bias) (T, Dc); for each t:
        h = exp(delta_t[:, None] * A) * h + (delta_t * x_t)[:, None] * B_t[None, :];
        y_t = h @ C_t + D * x_t. A (Dc, N); B, C (T, N); D (Dc,) or None."""
        raise NotImplementedError(f"the {self.name} backend has no selective_scan")

    def ssd_scan(self, x: Any, dt: Any, A: Any, B: Any, C: Any, D: Any | None, state: Any,
                 dt_bias: Any | None = None, dt_min: float = 0.0, dt_max: float = float("inf")) -> Any:
        """Mamba-2's SSD over x (T, H, P), continuing ``state`` h (H, P, N); returns y (T, H, P).

        One scalar decay per head: delta = clip(softplus(dt + dt_bias), dt_min, dt_max) (T, H);
        head h reads group g = h // (H // G) of B, C (T, G, N); for each t:
        h[h] = exp(delta[t, h] * A[h]) * h[h] + delta[t, h] * outer(x[t, h], B[t, g]);
        y[t, h] = h[h] @ C[t, g] + D[h] * x[t, h]. A, D (H,)."""
        raise NotImplementedError(f"the {self.name} backend has no ssd_scan")

    def rms_norm_gated(self, x: Any, z: Any, w: Any, group: int, eps: float) -> Any:
        """Mamba-2's gated RMSNorm: g = x * silu(z) (T, C), normalised over each group of ``group``
        channels, times w (C,)."""
        raise NotImplementedError(f"the {self.name} backend has no rms_norm_gated")

    def gated_delta_net(self, q: Any, k: Any, v: Any, a: Any, b: Any, A: Any, dt_bias: Any, state: Any,
                        v_tiled: bool = False) -> Any:
        """Gated DeltaNet's gated delta rule over q, k (T, Hk, dk), v (T, Hv, dv), continuing ``state``
        S (Hv, dk, dv); returns o (T, Hv, dv) (rocmforge.backends.numpy_delta states the recurrence).

        beta = sigmoid(b), g = A * softplus(a + dt_bias) (a, b (T, Hv); A < 0, dt_bias (Hv,));
        q and k are L2-normalised, q scaled by dk^-1/2; value head j reads key head j // (Hv / Hk),
        or j % Hk when ``v_tiled``. For each t: S = exp(g_t) S; S += k_t (beta_t (v_t - S^T k_t))^T;
        o_t = S^T q_t."""
        raise NotImplementedError(f"the {self.name} backend has no gated_delta_net")
