"""The NumPy reference of the recurrent ops (a mixin of NumpyBackend): Mamba's causal depthwise
convolution, its selective scan (S6) and Mamba-2's SSD, with their state carried across calls.

The scans are plain loops over time that state the recurrence (the style of mamba_ssm's
``selective_scan_ref``); ``ssd_chunked`` is the chunked form of the SSD paper ("state space
duality": quadratic attention-like form inside a chunk, the recurrence between chunks), which
the NumPy backend runs for long prompts and which tests/test_ssm.py holds to the loop. The GPU
backend runs the same ``ssd_chunked`` on CuPy arrays for long prompts (``xp``: the array module),
its GEMM-shaped einsums on the device, and its own kernel for short inputs and decode.
"""

from __future__ import annotations

import numpy as np

SSD_CHUNK = 64       # rows per chunk of ssd_chunked; shorter inputs run the loop


def softplus(x: np.ndarray, xp=np) -> np.ndarray:
    return xp.logaddexp(np.float32(0), x).astype(np.float32, copy=False)


def ssd_delta(dt, dt_bias, dt_min: float, dt_max: float, xp=np):
    """Mamba-2's step sizes: clip(softplus(dt + dt_bias), dt_min, dt_max), (T, H)."""
    delta = softplus(dt if dt_bias is None else dt + dt_bias.reshape(-1), xp)
    if dt_min > 0.0 or dt_max < float("inf"):
        delta = xp.clip(delta, np.float32(dt_min), np.float32(dt_max))
    return delta


def conv1d_ref(x: np.ndarray, w: np.ndarray, b: np.ndarray | None, state: np.ndarray) -> np.ndarray:
    """y[t] = b + sum_k w[:, k] * xin[t + k] over xin = [state; x]; state <- last K-1 rows of xin."""
    T, K = x.shape[0], w.shape[1]
    xin = np.concatenate([state, x], axis=0)                  # (K-1+T, C)
    y = np.zeros_like(x) if b is None else np.broadcast_to(b, x.shape).astype(np.float32)
    for k in range(K):
        y = y + w[:, k] * xin[k:k + T]
    state[...] = xin[T:]
    return y


def selective_scan_ref(x, delta, A, B, C, D, h):
    """S6: h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t; y_t = h_t C_t + D x_t. h (Dc, N) in place."""
    T = x.shape[0]
    y = np.empty_like(x)
    for t in range(T):
        dA = np.exp(delta[t][:, None] * A)                     # (Dc, N) discretised A
        dBx = (delta[t] * x[t])[:, None] * B[t][None, :]       # (Dc, N) discretised B times the input
        h[...] = dA * h + dBx
        y[t] = h @ C[t]
    if D is not None:
        y += D * x
    return y


def _heads(BC: np.ndarray, H: int, xp=np) -> np.ndarray:
    """(T, G, N) -> (T, H, N): head h reads group h // (H // G)."""
    return xp.repeat(BC, H // BC.shape[1], axis=1)


def ssd_ref(x, delta, A, B, C, D, h):
    """Mamba-2: h_t = exp(delta_t A) h_{t-1} + delta_t x_t B_t^T per head; y_t = h_t C_t + D x_t.

    x (T, H, P), delta (T, H), A (H,), B, C (T, G, N), h (H, P, N) in place."""
    T, H, _ = x.shape
    Bh, Ch = _heads(B, H), _heads(C, H)
    y = np.empty_like(x)
    for t in range(T):
        decay = np.exp(delta[t] * A)[:, None, None]                                  # (H, 1, 1)
        h[...] = decay * h + (delta[t][:, None] * x[t])[:, :, None] * Bh[t][:, None, :]
        y[t] = np.einsum("hpn,hn->hp", h, Ch[t])
    if D is not None:
        y += D[None, :, None] * x
    return y


def ssd_chunked(x, delta, A, B, C, D, h, chunk: int = SSD_CHUNK, xp=np):
    """The same as :func:`ssd_ref`, a chunk of rows at a time.

    Inside a chunk, with a_t = cumsum(delta * A) the log decay from the chunk's start:
      y_t = sum_{s<=t} exp(a_t - a_s) (C_t . B_s) delta_s x_s  +  exp(a_t) h_0 C_t
    and the state carried to the next chunk is
      h = exp(a_last) h_0 + sum_s exp(a_last - a_s) delta_s x_s B_s^T. ``xp``: NumPy, or CuPy on the GPU."""
    T, H, _ = x.shape
    Bh, Ch = _heads(B, H, xp), _heads(C, H, xp)
    y = xp.empty_like(x)
    for t0 in range(0, T, chunk):
        r = slice(t0, min(t0 + chunk, T))
        xs, ds, bs, cs = x[r], delta[r], Bh[r], Ch[r]
        a = xp.cumsum(ds * A, axis=0)                                       # (n, H)
        n = xs.shape[0]
        causal = xp.tril(xp.ones((n, n), bool))
        diff = xp.where(causal[None], a.T[:, :, None] - a.T[:, None, :], -np.inf)   # (H, t, s)
        scores = xp.einsum("thn,shn->hts", cs, bs) * xp.exp(diff)                    # (H, t, s)
        y[r] = xp.einsum("hts,shp->thp", scores, ds[:, :, None] * xs)
        y[r] += xp.exp(a)[:, :, None] * xp.einsum("hpn,thn->thp", h, cs)            # the carried state
        to_end = xp.exp(a[-1][None, :] - a)                                          # (l, H)
        h[...] = (xp.exp(a[-1])[:, None, None] * h
                  + xp.einsum("sh,shp,shn->hpn", to_end * ds, xs, bs))
    if D is not None:
        y += D[None, :, None] * x
    return y.astype(np.float32, copy=False)


class NumpySSM:
    def conv1d_causal(self, x, w, b, state):
        return conv1d_ref(x, w, b, state)

    def selective_scan(self, x, dt, A, B, C, D, state, dt_bias=None):
        delta = softplus(dt if dt_bias is None else dt + dt_bias)
        return selective_scan_ref(x, delta, A, B, C, D, state)

    def ssd_scan(self, x, dt, A, B, C, D, state, dt_bias=None, dt_min=0.0, dt_max=float("inf")):
        delta = ssd_delta(dt, dt_bias, dt_min, dt_max)
        scan = ssd_chunked if x.shape[0] > SSD_CHUNK else ssd_ref
        return scan(x, delta, A.reshape(-1), B, C, None if D is None else D.reshape(-1), state)

    def rms_norm_gated(self, x, z, w, group, eps):
        g = x * (z * (0.5 * (1.0 + np.tanh(0.5 * z))))                              # x * silu(z)
        T, Cn = g.shape
        gg = g.reshape(T, Cn // group, group)
        gg = gg / np.sqrt(np.mean(gg * gg, axis=-1, keepdims=True) + np.float32(eps))
        return (gg.reshape(T, Cn) * w).astype(np.float32, copy=False)
