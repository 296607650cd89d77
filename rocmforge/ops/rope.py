"""Rotary-embedding frequencies, with linear / llama3 / YaRN scaling.

Follows the formulas of HF transformers' ``modeling_rope_utils`` so logits
match it; GGUF files may carry per-dimension divisors in ``rope_freqs``.
"""

from __future__ import annotations

import math

import numpy as np


def inv_freq(rot_dim: int, base: float, hp: dict, freq_factors: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """(inv_freq of length rot_dim/2, attention mscale) for one attention layer."""
    inv = 1.0 / (base ** (np.arange(0, rot_dim, 2, dtype=np.float64) / rot_dim))
    kind = (hp.get("rope_scaling_type") or "none").lower()
    factor = float(hp.get("rope_scaling_factor") or 1.0)
    mscale = 1.0
    if freq_factors is not None:
        inv = inv / np.asarray(freq_factors, np.float64)[: len(inv)]
    elif kind == "linear":
        inv = inv / factor
    elif kind == "llama3":
        old_ctx = float(hp["rope_scaling_orig_ctx"])
        low, high = float(hp["rope_scaling_low_freq"]), float(hp["rope_scaling_high_freq"])
        low_wl, high_wl = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv
        scaled = np.where(wavelen > low_wl, inv / factor, inv)
        smooth = (old_ctx / wavelen - low) / (high - low)
        mid = (1 - smooth) * scaled / factor + smooth * scaled
        is_mid = (wavelen >= high_wl) & (wavelen <= low_wl)
        inv = np.where(is_mid, mid, scaled)
    elif kind == "yarn":
        old_ctx = float(hp["rope_scaling_orig_ctx"])
        beta_fast = float(hp.get("rope_yarn_beta_fast") or 32.0)
        beta_slow = float(hp.get("rope_yarn_beta_slow") or 1.0)

        def corr_dim(n_rot):
            return (rot_dim * math.log(old_ctx / (n_rot * 2 * math.pi))) / (2 * math.log(base))

        # transformers rounds the correction range outwards unless rope_parameters.truncate is false (gpt-oss)
        truncate = hp.get("rope_yarn_truncate", True)
        lo, hi = corr_dim(beta_fast), corr_dim(beta_slow)
        if truncate:
            lo, hi = math.floor(lo), math.ceil(hi)
        lo, hi = max(lo, 0), min(hi, rot_dim - 1)
        if lo == hi:
            hi += 0.001
        ramp = np.clip((np.arange(rot_dim // 2, dtype=np.float64) - lo) / (hi - lo), 0, 1)
        extrap = 1 - ramp
        inv = (inv / factor) * (1 - extrap) + inv * extrap
        mscale = float(hp.get("rope_yarn_attn_factor") or (0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0))
    elif kind == "proportional":
        # Gemma 4 global layers: the first partial_rotary_factor of the pairs rotate (exponents over the
        # whole head), the rest get frequency 0; the rotation still spans the head (NeoX halves)
        n_rot = int(float(hp.get("rope_partial_factor") or 1.0) * rot_dim // 2)
        inv[n_rot:] = 0.0
        inv = inv / factor
    elif kind not in ("none", "", "default"):
        from ..errors import RocmforgeError

        raise RocmforgeError(f"unsupported rope scaling '{kind}'; supported: none, linear, llama3, yarn, proportional")
    return inv.astype(np.float32), mscale
