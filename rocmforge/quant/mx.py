"""OCP Microscaling (MX) v1.0 formats: encode and decode on the CPU.

Every MX block holds 32 elements that share one E8M0 scale ``X = 2**(e - 127)``;
element ``i`` stands for ``X * P_i``.

Our block layout (all formats): byte 0 is the E8M0 scale, then the 32
elements, packed along the tensor's last axis in element order::

    MXFP8_E4M3, MXFP8_E5M2   33 bytes: scale, 32 x 1-byte FP8 codes
    MXINT8                   33 bytes: scale, 32 x int8 (two's complement)
    MXFP6_E3M2, MXFP6_E2M3   25 bytes: scale, 8 groups of 3 bytes; each group
                             b0 b1 b2 holds 4 elements as the little-endian
                             24-bit word w = b0 | b1 << 8 | b2 << 16, element k
                             of the group being (w >> 6k) & 0x3F
    MXFP4_E2M1               17 bytes: scale, 16 bytes; byte j holds element
                             2j in its low nibble and element 2j+1 in its high
                             nibble

Element codes are sign | exponent | mantissa, most significant bit first, as
in the spec and in ml_dtypes. The FP6 and FP4 packings are the ones AMD Quark
exports and CDNA4's f8f6f4 MFMA reads, so a Quark weight becomes one of ours
by interleaving its scale bytes (see ``rocmforge.loaders.quark``). Note that
GGUF's own ``MXFP4`` type (17 bytes too) packs nibbles differently: elements
0-15 in the low nibbles and 16-31 in the high ones, like Q4_0.

Special values, per the spec:

* scale 0xFF is NaN: the whole block decodes to NaN;
* FP8 E4M3 has NaN but no infinity; E5M2 has both; FP6, FP4 and INT8 have
  neither;
* MXINT8 elements carry an implicit scale of 2**-6 (range [-2, 127/64]);
  the encoder saturates to the symmetric range [-127/64, 127/64], so it never
  writes 0x80 (-2), which decoding still accepts.

Encoding follows the spec's reference conversion: the shared exponent is
``floor(log2(amax)) - emax_elem`` (clamped to E8M0's [-127, 127]), then every
element is ``V_i / X`` rounded to nearest-even and saturated to the element
type's largest finite value (so encoding never produces an E4M3 NaN or an
E5M2 infinity from finite input). An all-zero block gets scale 2**-127. A block
that contains NaN or infinity gets the NaN scale, as in the spec's reference
code (the other elements are written as zeros).
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

BLOCK = 32
SCALE_NAN = 0xFF
E8M0_BIAS = 127


@dataclass(frozen=True)
class MXElement:
    """One MX element type: how its codes are stored and what they mean."""

    dtype: np.dtype      # ml_dtypes element dtype (int8 for MXINT8)
    bits: int            # bits per element code
    emax: int            # exponent of the largest normal element value
    max_value: float     # largest finite element value
    description: str

    @property
    def type_size(self) -> int:
        return 1 + BLOCK * self.bits // 8


def _float_element(dtype: type, bits: int, description: str) -> MXElement:
    fi = ml_dtypes.finfo(dtype)
    return MXElement(np.dtype(dtype), bits, int(fi.maxexp) - 1, float(fi.max), description)


INT8_SCALE = 2.0**-6

ELEMENTS: dict[str, MXElement] = {
    "MXFP8_E4M3": _float_element(ml_dtypes.float8_e4m3fn, 8, "OCP MX: FP8 E4M3 elements (no inf, max 448)"),
    "MXFP8_E5M2": _float_element(ml_dtypes.float8_e5m2, 8, "OCP MX: FP8 E5M2 elements (IEEE-like inf/NaN, max 57344)"),
    "MXFP6_E3M2": _float_element(ml_dtypes.float6_e3m2fn, 6, "OCP MX: FP6 E3M2 elements (max 28)"),
    "MXFP6_E2M3": _float_element(ml_dtypes.float6_e2m3fn, 6, "OCP MX: FP6 E2M3 elements (max 7.5)"),
    "MXFP4_E2M1": _float_element(ml_dtypes.float4_e2m1fn, 4, "OCP MX: FP4 E2M1 elements (max 6)"),
    "MXINT8": MXElement(np.dtype(np.int8), 8, 0, 127 * INT8_SCALE,
                        "OCP MX: int8 elements with implicit scale 2^-6"),
}


# ---- bit packing -------------------------------------------------------------

def pack_codes(codes: np.ndarray, bits: int) -> np.ndarray:
    """(n, 32) uint8 element codes -> (n, 32*bits/8) packed bytes (layout above)."""
    n = codes.shape[0]
    if bits == 8:
        return codes
    if bits == 4:
        pairs = codes.reshape(n, BLOCK // 2, 2)
        return (pairs[..., 0] & 0x0F) | (pairs[..., 1] << 4)
    if bits == 6:
        quads = codes.reshape(n, BLOCK // 4, 4).astype(np.uint32) & 0x3F
        w = quads[..., 0] | quads[..., 1] << 6 | quads[..., 2] << 12 | quads[..., 3] << 18
        out = np.stack([w & 0xFF, (w >> 8) & 0xFF, w >> 16], axis=-1)
        return out.astype(np.uint8).reshape(n, BLOCK * 3 // 4)
    raise ValueError(f"no MX packing for {bits}-bit elements")


def unpack_codes(packed: np.ndarray, bits: int) -> np.ndarray:
    """(n, 32*bits/8) packed bytes -> (n, 32) uint8 element codes."""
    n = packed.shape[0]
    if bits == 8:
        return packed
    if bits == 4:
        return np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(n, BLOCK)
    if bits == 6:
        b = packed.reshape(n, BLOCK // 4, 3).astype(np.uint32)
        w = b[..., 0] | b[..., 1] << 8 | b[..., 2] << 16
        codes = np.stack([(w >> s) & 0x3F for s in (0, 6, 12, 18)], axis=-1)
        return codes.astype(np.uint8).reshape(n, BLOCK)
    raise ValueError(f"no MX packing for {bits}-bit elements")


# ---- element values ------------------------------------------------------------

def codes_to_values(codes: np.ndarray, elem: MXElement) -> np.ndarray:
    """uint8 element codes -> float32 element values (before the shared scale)."""
    if elem.dtype == np.int8:
        return codes.view(np.int8).astype(np.float32) * np.float32(INT8_SCALE)
    return codes.view(elem.dtype).astype(np.float32)


def values_to_codes(v: np.ndarray, elem: MXElement) -> np.ndarray:
    """float32 values (already divided by the scale) -> uint8 codes, RNE with saturation."""
    v = np.clip(v, -elem.max_value, elem.max_value)
    if elem.dtype == np.int8:
        return np.rint(v / np.float32(INT8_SCALE)).astype(np.int8).view(np.uint8)
    codes = v.astype(elem.dtype).view(np.uint8)
    if elem.bits < 8:
        # ml_dtypes keeps sub-byte codes in the low bits of a byte; be explicit.
        codes = codes & np.uint8((1 << elem.bits) - 1)
    return codes


def e8m0_to_float(scale: np.ndarray) -> np.ndarray:
    """E8M0 scale bytes -> float32 (0xFF -> NaN, 0 -> 2**-127)."""
    return scale.view(ml_dtypes.float8_e8m0fnu).astype(np.float32)


# ---- block codecs ---------------------------------------------------------------

def decode_blocks(blocks: np.ndarray, name: str) -> np.ndarray:
    """(n, type_size) uint8 blocks -> (n, 32) float32."""
    elem = ELEMENTS[name]
    scale = e8m0_to_float(np.ascontiguousarray(blocks[:, :1]))
    values = codes_to_values(unpack_codes(np.ascontiguousarray(blocks[:, 1:]), elem.bits), elem)
    with np.errstate(over="ignore", invalid="ignore"):
        return values * scale


def encode_blocks(x: np.ndarray, name: str) -> np.ndarray:
    """(n, 32) float values -> (n, type_size) uint8 blocks (see the module docstring)."""
    elem = ELEMENTS[name]
    x = np.asarray(x, dtype=np.float32)
    finite = np.isfinite(x).all(axis=-1, keepdims=True)
    x = np.where(finite, x, np.float32(0))
    amax = np.abs(x).max(axis=-1, keepdims=True)
    # floor(log2(amax)) exactly, from the float32 exponent (frexp: amax = m * 2**e, m in [0.5, 1)).
    _, e = np.frexp(amax)
    shared = np.where(amax > 0, e.astype(np.int32) - 1 - elem.emax, -E8M0_BIAS)
    shared = np.clip(shared, -E8M0_BIAS, E8M0_BIAS)
    scaled = np.ldexp(x, -shared)  # exact: a power-of-two rescale that stays in float32 range
    codes = values_to_codes(scaled.astype(np.float32), elem)
    scale = np.where(finite, shared + E8M0_BIAS, SCALE_NAN).astype(np.uint8)
    return np.concatenate([scale, pack_codes(codes, elem.bits)], axis=-1)


def decoder(name: str):
    def decode(rows: np.ndarray) -> np.ndarray:
        n_rows = rows.shape[0]
        blocks = rows.reshape(-1, ELEMENTS[name].type_size)
        return decode_blocks(blocks, name).reshape(n_rows, -1)

    return decode


def encoder(name: str):
    def encode(rows: np.ndarray) -> np.ndarray:
        n_rows = rows.shape[0]
        return encode_blocks(rows.reshape(-1, BLOCK), name).reshape(n_rows, -1)

    return encode
