"""The NumPy reference of Gated DeltaNet (Yang, Kautz & Hatamizadeh 2024, "Gated Delta Networks:
Improving Mamba2 with Delta Rule"), a mixin of NumpyBackend.

Per value head the state S (d_k, d_v) is a fast-weight memory read by a query, S^T q. Each token
first decays the memory by alpha_t = exp(g_t), then writes with the delta rule: it reads what the
memory predicts for its key, S^T k_t, and moves that prediction toward its value by beta_t,

    S_t = alpha_t S_{t-1} + k_t (beta_t (v_t - alpha_t S_{t-1}^T k_t))^T
        = alpha_t (I - beta_t k_t k_t^T) S_{t-1} + beta_t k_t v_t^T,        o_t = S_t^T q_t.

:func:`gated_delta_rule_ref` is that loop over time (decode runs it, one step per token);
:func:`gated_delta_rule_chunked` is the paper's chunked form (the WY / UT transform inside a
chunk, the recurrence between chunks), which the NumPy backend runs for long prompts and which
tests/test_gated_delta.py holds to the loop. Both take q and k already L2-normalised, q scaled
by d_k^-1/2, and one q/k head per value head (:func:`prepare` makes them so). The GPU backend runs
the same ``prepare`` and ``gated_delta_rule_chunked`` on CuPy arrays for long prompts (``xp``: the
array module), and its own kernel for short inputs and decode.
"""

from __future__ import annotations

import numpy as np

from .numpy_ssm import softplus

GDN_CHUNK = 64       # rows per chunk of gated_delta_rule_chunked; shorter inputs run the loop


def l2norm(x: np.ndarray, eps: float = 1e-6, xp=np) -> np.ndarray:
    """x / sqrt(sum(x^2) + eps) over the last axis (the FLA / transformers form)."""
    return (x / xp.sqrt(xp.sum(x * x, axis=-1, keepdims=True) + np.float32(eps))).astype(np.float32, copy=False)


def expand_heads(x: np.ndarray, n_v_head: int, tiled: bool = False, xp=np) -> np.ndarray:
    """(T, Hk, d) -> (T, Hv, d): value head j reads key head j // (Hv / Hk) (grouped, transformers'
    repeat_interleave), or j % Hk (tiled: llama.cpp's qwen35 GGUF reorders the value heads so)."""
    r = n_v_head // x.shape[1]
    if r == 1:
        return x
    return xp.tile(x, (1, r, 1)) if tiled else xp.repeat(x, r, axis=1)


def gated_delta_rule_ref(q, k, v, g, beta, S):
    """The recurrence: for each t and head h, S_h = exp(g_t) S_h; S_h += k_t (beta_t (v_t - S_h^T k_t))^T;
    o_t = S_h^T q_t. q, k (T, H, dk), v (T, H, dv), g, beta (T, H); S (H, dk, dv) in place."""
    T = q.shape[0]
    o = np.empty_like(v)
    for t in range(T):
        S *= np.exp(g[t])[:, None, None]                                      # decay: alpha_t S
        predicted = np.einsum("hkv,hk->hv", S, k[t])                          # S^T k_t
        delta = beta[t][:, None] * (v[t] - predicted)                         # (H, dv)
        S += k[t][:, :, None] * delta[:, None, :]                             # the delta-rule write
        o[t] = np.einsum("hkv,hk->hv", S, q[t])                               # read: S^T q_t
    return o


def gated_delta_rule_chunked(q, k, v, g, beta, S, chunk: int = GDN_CHUNK, xp=np):
    """The same as :func:`gated_delta_rule_ref`, ``chunk`` rows at a time.

    Inside a chunk, with c_t = cumsum(g) from its start and the decay mask D[i, j] = exp(c_i - c_j)
    (j <= i), the chunk's writes are folded into one unit lower-triangular solve (the UT transform):
      L = I + strictly_lower(diag(beta) K K^T * D),  U = L^-1 diag(beta) V,  W = L^-1 diag(beta) exp(c) K,
    so that the new values each row writes, given the state S the chunk starts from, are
      V' = U - W S,
    its outputs O = (Q exp(c)) S + (Q K^T * D) V' and the state it hands on
      S <- exp(c_last) S + (K exp(c_last - c))^T V'. ``xp``: NumPy, or CuPy on the GPU."""
    T, H, _ = q.shape
    o = xp.empty_like(v)
    for t0 in range(0, T, chunk):
        r = slice(t0, min(t0 + chunk, T))
        qs, ks, vs = (xp.swapaxes(a[r], 0, 1) for a in (q, k, v))                # (H, n, d)
        bs, c = beta[r].T[:, :, None], xp.cumsum(g[r], axis=0).T                  # (H, n, 1), (H, n)
        n = qs.shape[1]
        lower = xp.tril(xp.ones((n, n), bool))
        D = xp.exp(xp.where(lower, c[:, :, None] - c[:, None, :], -np.inf))      # (H, n, n)
        L = xp.eye(n, dtype=np.float32) + xp.where(xp.tril(lower, -1), (bs * ks) @ xp.swapaxes(ks, 1, 2) * D, 0)
        U = xp.linalg.solve(L, bs * vs)                                           # (H, n, dv)
        W = xp.linalg.solve(L, bs * xp.exp(c)[:, :, None] * ks)                   # (H, n, dk)
        Vn = U - W @ S                                                            # the corrected values
        o[r] = xp.swapaxes((qs * xp.exp(c)[:, :, None]) @ S + (qs @ xp.swapaxes(ks, 1, 2) * D) @ Vn, 0, 1)
        to_end = xp.exp(c[:, -1:] - c)[:, :, None]                                # (H, n, 1)
        S[...] = xp.exp(c[:, -1])[:, None, None] * S + xp.swapaxes(ks * to_end, 1, 2) @ Vn
    return o.astype(np.float32, copy=False)


def prepare(q, k, v, a, b, A, dt_bias, v_tiled: bool = False, xp=np):
    """The rule's inputs from the layer's: q, k L2-normalised and expanded to one head per value head
    (q scaled by dk^-1/2), beta = sigmoid(b) and the log decay g = A * softplus(a + dt_bias), (T, Hv)."""
    beta = (0.5 * (1.0 + xp.tanh(0.5 * b))).astype(np.float32)                # sigmoid(b), (T, Hv)
    g = (A.reshape(-1) * softplus(a + dt_bias.reshape(-1), xp)).astype(np.float32)   # log decay, A < 0
    Hv, dk = v.shape[1], q.shape[-1]
    q = expand_heads(l2norm(q, xp=xp), Hv, v_tiled, xp) * np.float32(dk ** -0.5)
    k = expand_heads(l2norm(k, xp=xp), Hv, v_tiled, xp)
    return q, k, v.astype(np.float32, copy=False), g, beta


class NumpyDelta:
    def gated_delta_net(self, q, k, v, a, b, A, dt_bias, state, v_tiled=False):
        q, k, v, g, beta = prepare(q, k, np.asarray(v, np.float32), a, b, A, dt_bias, v_tiled)
        rule = gated_delta_rule_chunked if q.shape[0] > GDN_CHUNK else gated_delta_rule_ref
        return rule(q, k, v, g, beta, state)
