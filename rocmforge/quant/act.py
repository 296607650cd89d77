"""Activation and KV-cache quantisation: the NumPy reference of "quantise-dequantise x".

A quantised checkpoint (AMD Quark) may say that a linear layer's input is
quantised before the matmul. That is a property of the layer's weight: the
loader attaches an :class:`ActQuant` to the weight's RawTensor (``raw.act``),
the executor hands it to the backend with the prepared weight, and the
backend's ``linear`` runs ``act.qdq(x) @ w.T``. Arch code never asks "is this
Quark": the scheme is data.

Schemes (``kind``):

* ``fp8_e4m3`` / ``fp8_e5m2`` per tensor: ``q = fp8(clip(x / s, -max, max))``
  (round to nearest even), ``x' = q * s``. ``s`` is the exported static
  ``input_scale``, or, dynamic, ``amax(|x|) / max`` of the whole input.
* ``mxfp4`` / ``mxfp6_e2m3`` / ``mxfp6_e3m2`` / ``mxfp8_e4m3`` / ``mxfp8_e5m2``
  (OCP MX): per 32 consecutive inputs one power-of-two scale from the block's
  amax with Quark's rule (``scale_rule``): "even" rounds the amax's mantissa
  to nearest at the element type's mantissa width before taking its exponent
  (``quark.torch.quantization.utils.even_round``), "floor" is the OCP spec's
  floor(log2(amax)). Then ``scale = 2**(e - emax)``; elements round to
  nearest even and saturate at the element type's max.

The FP8 KV cache stores ``fp8(clip(k / k_scale))`` codes in one of the two
FP8 flavours: OCP ``float8_e4m3fn`` (max 448; NVIDIA, MI350/MI355) or
``float8_e4m3fnuz`` (max 240, no negative zero, NaN = 0x80; MI300). A scale
calibrated for e4m3fn is doubled for e4m3fnuz (as vLLM does on MI300), so the
same values fit.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

MX_BLOCK = 32
# element dtype, its max finite value, mantissa bits, emax (Quark's get_dtype_params)
ELEMENTS: dict[str, tuple[np.dtype, float, int, int]] = {
    "fp4": (np.dtype(ml_dtypes.float4_e2m1fn), 6.0, 1, 2),
    "fp6_e2m3": (np.dtype(ml_dtypes.float6_e2m3fn), 7.5, 3, 2),
    "fp6_e3m2": (np.dtype(ml_dtypes.float6_e3m2fn), 28.0, 2, 4),
    "fp8_e4m3": (np.dtype(ml_dtypes.float8_e4m3fn), 448.0, 3, 8),
    "fp8_e5m2": (np.dtype(ml_dtypes.float8_e5m2), 57344.0, 2, 15),
}
FP8_KV: dict[str, tuple[np.dtype, float]] = {
    "fp8_e4m3fn": (np.dtype(ml_dtypes.float8_e4m3fn), 448.0),
    "fp8_e4m3fnuz": (np.dtype(ml_dtypes.float8_e4m3fnuz), 240.0),
}
MX_KINDS = {"mxfp4": "fp4", "mxfp6_e2m3": "fp6_e2m3", "mxfp6_e3m2": "fp6_e3m2", "mxfp8_e4m3": "fp8_e4m3",
            "mxfp8_e5m2": "fp8_e5m2"}
FP8_KINDS = ("fp8_e4m3", "fp8_e5m2")


@dataclass(frozen=True)
class ActQuant:
    """How a linear layer's input is quantised: ``kind``, a static per-tensor ``scale`` (None: dynamic),
    per expert for stacked expert weights (``scales``), and the MX ``scale_rule``."""

    kind: str
    scale: float | None = None
    scales: tuple[float, ...] | None = None      # stacked experts: one static scale each
    scale_rule: str = "even"

    def __post_init__(self):
        if self.kind not in MX_KINDS and self.kind not in FP8_KINDS:
            raise ValueError(f"unknown activation quantisation {self.kind!r}; "
                             f"known: {', '.join([*MX_KINDS, *FP8_KINDS])}")
        if self.scale_rule not in ("even", "floor", "ceil"):
            raise ValueError(f"unknown MX scale rule {self.scale_rule!r}; expected even, floor or ceil")

    @property
    def dynamic(self) -> bool:
        return self.scale is None and self.scales is None

    def describe(self) -> str:
        if self.kind in MX_KINDS:
            return f"{self.kind} (dynamic, e8m0 per 32, {self.scale_rule} rounding)"
        return f"{self.kind} per tensor ({'dynamic' if self.dynamic else 'static'})"

    def expert(self, e: int) -> ActQuant:
        """The scheme of expert ``e`` of a stacked weight."""
        if self.scales is None:
            return self
        return ActQuant(self.kind, float(self.scales[e]), None, self.scale_rule)

    def qdq(self, x: np.ndarray) -> np.ndarray:
        """x quantised to the scheme and back, float32 of x's shape."""
        if self.kind in MX_KINDS:
            return mx_qdq(x, MX_KINDS[self.kind], self.scale_rule)
        if self.scales is not None:
            raise ValueError("a stacked expert weight's input scheme needs .expert(e) first")
        return fp8_qdq(x, self.kind, self.scale)


def stack(schemes: list[ActQuant | None]) -> ActQuant | None:
    """One scheme for a stack of expert weights (each of its own static scale)."""
    if all(s is None for s in schemes):
        return None
    if any(s is None for s in schemes) or len({(s.kind, s.scale_rule, s.dynamic) for s in schemes}) != 1:
        raise ValueError("the experts of one stacked tensor quantise their inputs differently: "
                         + ", ".join(s.describe() if s else "none" for s in schemes))
    first = schemes[0]
    if first.dynamic:
        return first
    return ActQuant(first.kind, None, tuple(float(s.scale) for s in schemes), first.scale_rule)


def fp8_qdq(x: np.ndarray, kind: str, scale: float | None) -> np.ndarray:
    elem, fmax, _, _ = ELEMENTS[kind]
    x = np.asarray(x, np.float32)
    if scale is None:       # dynamic per tensor: the whole input's amax
        amax = float(np.max(np.abs(x))) if x.size else 0.0
        scale = amax / fmax if amax > 0 else float(np.finfo(np.float32).eps)
    s = np.float32(scale)
    q = np.clip(x / s, -fmax, fmax).astype(elem)
    return (q.astype(np.float32) * s).astype(np.float32)


def _even_round(amax: np.ndarray, mbits: int) -> np.ndarray:
    """Quark's even_round without the final exponent shift: amax with its mantissa rounded at
    ``mbits`` bits (carry into the exponent), as a float32 power of two's exponent."""
    a = np.where(amax == 0, np.float32(2.0 ** -126), amax).astype(np.float32)
    bits = a.view(np.uint32) + np.uint32(1 << (23 - mbits - 1))
    bits &= np.uint32(((1 << 9) - 1) << 23)        # sign and exponent: the rounded power of two
    return np.floor(np.log2(bits.view(np.float32)))


def mx_scales(x: np.ndarray, element: str, rule: str = "even") -> np.ndarray:
    """The power-of-two scale of each 32-block along the last axis: (..., n/32) float32."""
    _, _, mbits, emax = ELEMENTS[element]
    blocks = np.asarray(x, np.float32).reshape(*x.shape[:-1], -1, MX_BLOCK)
    amax = np.max(np.abs(blocks), axis=-1)
    with np.errstate(divide="ignore"):
        if rule == "even":
            e = _even_round(amax, mbits)
        elif rule == "floor":
            e = np.floor(np.log2(amax))
        else:
            e = np.ceil(np.log2(amax))
    e = np.clip(e - emax, -127, 127)
    scale = np.exp2(e).astype(np.float32)
    return np.where(scale == 0, np.finfo(np.float32).eps, scale).astype(np.float32)


def mx_qdq(x: np.ndarray, element: str, rule: str = "even") -> np.ndarray:
    x = np.asarray(x, np.float32)
    if x.shape[-1] % MX_BLOCK:
        raise ValueError(f"MX activation quantisation needs the input width ({x.shape[-1]}) to be a multiple "
                         f"of {MX_BLOCK}")
    elem, fmax, _, _ = ELEMENTS[element]
    blocks = x.reshape(*x.shape[:-1], -1, MX_BLOCK)
    s = mx_scales(x, element, rule)[..., None]
    q = np.clip(blocks / s, -fmax, fmax).astype(elem).astype(np.float32)
    return (q * s).reshape(x.shape).astype(np.float32)


# ---- FP8 KV cache -------------------------------------------------------------------------

def kv_flavour(name: str) -> tuple[np.dtype, float]:
    try:
        return FP8_KV[name]
    except KeyError:
        raise ValueError(f"unknown FP8 KV flavour {name!r}; expected one of {', '.join(FP8_KV)}") from None


def kv_scale_for(flavour: str, scale_fn: float) -> float:
    """A KV scale calibrated for OCP e4m3fn (max 448), for ``flavour`` (doubled for e4m3fnuz's max 240)."""
    return float(scale_fn) * (2.0 if flavour == "fp8_e4m3fnuz" else 1.0)


KV_POOL_SCALE = 1.0       # a shared (paged) FP8 KV pool's scale for a layer the file gives none


def kv_pool_scales(flavour: str, n_layer: int, scales: dict | None = None) -> tuple[list[float], list[float]]:
    """Per-layer (k_scales, v_scales) of a paged FP8 KV pool, one store shared by many requests.

    The file's scales ({layer: (k_scale, v_scale)}, calibrated for e4m3fn) where it has them, else a
    fixed KV_POOL_SCALE = 1.0, as vLLM does without calibrated scales: never a dynamic scale from a
    first store, which would make one request's output depend on which request came first. Both
    are e4m3fn scales, so e4m3fnuz doubles them (kv_scale_for): its codes then cover the same range.
    The NumPy and GPU paged stores both take their scales from here."""
    scales = scales or {}
    k = [kv_scale_for(flavour, scales[i][0] if i in scales else KV_POOL_SCALE) for i in range(n_layer)]
    v = [kv_scale_for(flavour, scales[i][1] if i in scales else KV_POOL_SCALE) for i in range(n_layer)]
    return k, v


def kv_encode(x: np.ndarray, scale: float, flavour: str) -> np.ndarray:
    """fp8 codes (ml_dtypes array) of x / scale, saturated at the flavour's max."""
    elem, fmax = kv_flavour(flavour)
    return np.clip(np.asarray(x, np.float32) / np.float32(scale), -fmax, fmax).astype(elem)


def kv_decode(codes: np.ndarray, scale: float) -> np.ndarray:
    return codes.astype(np.float32) * np.float32(scale)


def kv_dynamic_scale(x: np.ndarray, flavour: str, headroom: float = 2.0) -> float:
    """A layer's KV scale when the file has none: its first stored rows' amax maps to max / headroom.

    FP8 is floating point, so headroom for later, larger values costs no relative precision
    (only the smallest subnormals); values beyond the max saturate."""
    _, fmax = kv_flavour(flavour)
    amax = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return max(amax, 1e-6) * headroom / fmax


class InputQuantized:
    """A backend's prepared weight ``w`` whose input is quantised first as ``act`` says.

    Backends unwrap it in ``linear`` / the expert FFNs; ops see the weight's shape and may index
    experts (``w[e]`` keeps expert e's scheme)."""

    __slots__ = ("w", "act")

    def __init__(self, w, act: ActQuant):
        self.w, self.act = w, act

    @property
    def shape(self):
        return self.w.shape

    @property
    def ndim(self):
        return len(self.w.shape)

    def __getitem__(self, e):
        return InputQuantized(self.w[e], self.act.expert(int(e)))

    def __repr__(self) -> str:
        return f"InputQuantized({self.act.describe()}, shape={tuple(self.shape)})"


def split_input(w, x, qdq=None):
    """(x quantised as w's scheme says, the plain weight); ``qdq(x, act)`` is the backend's own."""
    if not isinstance(w, InputQuantized):
        return x, w
    return (w.act.qdq(x) if qdq is None else qdq(x, w.act)), w.w
