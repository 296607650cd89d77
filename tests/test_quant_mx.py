"""OCP Microscaling v1.0 formats: value tables from the spec, layout, encode/decode."""

import gguf.quants
import ml_dtypes
import numpy as np
import pytest
from gguf.constants import GGMLQuantizationType

from rocmforge.errors import QuantFormatError
from rocmforge.quant import dequantize, get_format, nbytes, quantize
from rocmforge.quant.samples import random_blocks

# name: (exponent bits, mantissa bits, special encodings, ml_dtypes dtype)
FLOATS = {
    "MXFP8_E4M3": (4, 3, "e4m3", ml_dtypes.float8_e4m3fn),
    "MXFP8_E5M2": (5, 2, "ieee", ml_dtypes.float8_e5m2),
    "MXFP6_E3M2": (3, 2, None, ml_dtypes.float6_e3m2fn),
    "MXFP6_E2M3": (2, 3, None, ml_dtypes.float6_e2m3fn),
    "MXFP4_E2M1": (2, 1, None, ml_dtypes.float4_e2m1fn),
}
MX = [*FLOATS, "MXINT8"]
SPEC_MAX = {"MXFP8_E4M3": 448.0, "MXFP8_E5M2": 57344.0, "MXFP6_E3M2": 28.0,
            "MXFP6_E2M3": 7.5, "MXFP4_E2M1": 6.0, "MXINT8": 127 / 64}


def spec_value(code: int, ebits: int, mbits: int, special: str | None) -> float:
    """Decode one element code from the spec's definition (sign, biased exponent, mantissa)."""
    sign = -1.0 if code >> (ebits + mbits) else 1.0
    e = (code >> mbits) & ((1 << ebits) - 1)
    m = code & ((1 << mbits) - 1)
    bias = (1 << (ebits - 1)) - 1
    if special == "ieee" and e == (1 << ebits) - 1:
        return sign * np.inf if m == 0 else np.nan
    if special == "e4m3" and e == 15 and m == 7:
        return np.nan
    if e == 0:
        return sign * m / (1 << mbits) * 2.0 ** (1 - bias)
    return sign * (1 + m / (1 << mbits)) * 2.0 ** (e - bias)


def spec_table(name: str) -> np.ndarray:
    """Element value of every code, in code order."""
    if name == "MXINT8":
        return np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64) / 64
    ebits, mbits, special, _ = FLOATS[name]
    return np.array([spec_value(c, ebits, mbits, special) for c in range(1 << (1 + ebits + mbits))])


def pack(codes: np.ndarray, bits: int) -> bytes:
    """Our documented layout, written independently: a little-endian bit stream."""
    acc = 0
    for k, c in enumerate(codes):
        acc |= int(c) << (bits * k)
    return acc.to_bytes(len(codes) * bits // 8, "little")


def block(scale: int, codes, bits: int) -> bytes:
    return bytes([scale]) + pack(np.asarray(codes), bits)


BITS = {"MXFP8_E4M3": 8, "MXFP8_E5M2": 8, "MXFP6_E3M2": 6, "MXFP6_E2M3": 6, "MXFP4_E2M1": 4, "MXINT8": 8}


# ---- the spec's value tables ------------------------------------------------------

def test_e2m1_has_exactly_the_spec_values():
    pos = [0, 0.5, 1, 1.5, 2, 3, 4, 6]
    np.testing.assert_array_equal(spec_table("MXFP4_E2M1"), pos + [-v for v in pos])
    codes = np.arange(16, dtype=np.uint8).view(ml_dtypes.float4_e2m1fn)
    np.testing.assert_array_equal(codes.astype(np.float64), pos + [-v for v in pos])


@pytest.mark.parametrize("name", list(FLOATS))
def test_ml_dtypes_agrees_with_the_spec_table(name):
    ebits, mbits, _, dtype = FLOATS[name]
    n = 1 << (1 + ebits + mbits)
    got = np.arange(n, dtype=np.uint8).view(dtype).astype(np.float64)
    np.testing.assert_array_equal(got, spec_table(name))
    assert np.nanmax(spec_table(name)[np.isfinite(spec_table(name))]) == SPEC_MAX[name]


def test_special_value_counts():
    e4m3, e5m2 = spec_table("MXFP8_E4M3"), spec_table("MXFP8_E5M2")
    assert np.isnan(e4m3).sum() == 2 and not np.isinf(e4m3).any()          # S.1111.111 only
    assert np.isnan(e5m2).sum() == 6 and np.isinf(e5m2).sum() == 2
    for name in ("MXFP6_E3M2", "MXFP6_E2M3", "MXFP4_E2M1", "MXINT8"):
        assert np.isfinite(spec_table(name)).all()


@pytest.mark.parametrize("name", MX)
def test_decode_every_code_with_unit_scale(name):
    bits = BITS[name]
    table = spec_table(name)
    codes = np.resize(np.arange(len(table)), ((len(table) + 31) // 32) * 32)
    raw = b"".join(block(127, codes[i:i + 32], bits) for i in range(0, len(codes), 32))
    got = dequantize(raw, name, (len(codes),))
    np.testing.assert_array_equal(got, table[codes].astype(np.float32))


@pytest.mark.parametrize("name", MX)
def test_scale_is_e8m0_and_0xff_is_a_nan_block(name):
    bits = BITS[name]
    codes = np.full(32, 1 if name != "MXINT8" else 64)        # a small positive element
    unit = dequantize(block(127, codes, bits), name, (32,))[0]
    for byte, factor in [(0, 2.0**-127), (100, 2.0**-27), (130, 8.0), (254, 2.0**127)]:
        got = dequantize(block(byte, codes, bits), name, (32,))
        np.testing.assert_array_equal(got, np.float32(np.float64(unit) * factor))
    two = block(255, codes, bits) + block(127, codes, bits)
    got = dequantize(two, name, (2, 32))
    assert np.isnan(got[0]).all() and (got[1] == unit).all()


def test_mxint8_is_twos_complement_with_implicit_2_pow_minus_6():
    codes = np.array([0x80, 0xFF, 0, 1, 64, 127] + [0] * 26, np.uint8)
    got = dequantize(block(128, codes, 8), "MXINT8", (32,))
    np.testing.assert_array_equal(got[:6], np.array([-2, -1 / 64, 0, 1 / 64, 1, 127 / 64]) * 2)


def test_packing_order_fp4_and_fp6():
    x = np.zeros(32, np.float32)
    x[:4] = [0.5, 1.0, 6.0, -1.5]                   # E2M1 codes 1, 2, 7, 11
    raw = quantize(x, "MXFP4_E2M1")
    assert raw[0] == 127 and raw[1] == 0x21 and raw[2] == 0xB7
    y = np.zeros(32, np.float32)
    y[:4] = [0.125, 0.25, 7.5, -0.125]              # E2M3 codes 1, 2, 31, 33
    raw = quantize(y, "MXFP6_E2M3")
    w = 1 | 2 << 6 | 31 << 12 | 33 << 18
    assert raw[0] == 127 and bytes(raw[1:4]) == w.to_bytes(3, "little")


def test_gguf_mxfp4_decodes_like_ours_after_reordering_nibbles():
    """GGUF's MXFP4 is the same math with elements 0-15 in the low nibbles."""
    g = random_blocks("MXFP4", (8, 64), seed=5).reshape(-1, 17)
    lo, hi = g[:, 1:] & 0x0F, g[:, 1:] >> 4
    codes = np.concatenate([lo, hi], axis=1)                         # element order
    ours = np.concatenate([g[:, :1], codes[:, 0::2] | (codes[:, 1::2] << 4)], axis=1)
    want = gguf.quants.dequantize(g.reshape(8, -1), GGMLQuantizationType.MXFP4)
    np.testing.assert_array_equal(dequantize(ours, "MXFP4_E2M1", (8, 64)), want)


# ---- encoding -------------------------------------------------------------------

def test_shared_exponent_is_floor_log2_amax_minus_emax():
    x = np.zeros((4, 32), np.float32)
    x[0, 3] = 6.0          # E2M1 emax 2: floor(log2 6) - 2 = 0
    x[1, 0] = 1.0          # 0 - 2 = -2
    x[2, 5] = -1000.0      # 9 - 2 = 7
    raw = quantize(x, "MXFP4_E2M1")
    assert list(raw[:, 0]) == [127, 125, 134, 0]          # all-zero block: 2**-127
    np.testing.assert_array_equal(dequantize(raw, "MXFP4_E2M1", x.shape)[3], 0)
    assert quantize(np.full(32, 1000.0, np.float32), "MXFP8_E4M3")[0] == 127 + 9 - 8
    assert quantize(np.full(32, 1000.0, np.float32), "MXINT8")[0] == 127 + 9


def test_e2m1_rounds_to_nearest_even():
    x = np.zeros(32, np.float32)
    x[0] = 6.0                                        # pins the scale to 1
    ties = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, -0.75, -5.0]
    x[1:1 + len(ties)] = ties
    got = dequantize(quantize(x, "MXFP4_E2M1"), "MXFP4_E2M1", (32,))
    np.testing.assert_array_equal(got[1:1 + len(ties)], [0, 1, 1, 2, 2, 4, 4, -1, -4])


@pytest.mark.parametrize("name", MX)
def test_round_trip_is_exact_for_representable_values(name):
    raw = random_blocks(name, (16, 64), seed=7).reshape(-1, get_format(name).type_size)
    table = spec_table(name)
    top = int(np.flatnonzero(table == SPEC_MAX[name])[0])
    mask = np.uint8(0xFF ^ ((1 << BITS[name]) - 1))          # element 0 sits in the low bits
    raw[:, 1] = (raw[:, 1] & mask) | np.uint8(top)
    if name == "MXINT8":
        # -2 (0x80) lies outside the symmetric range the encoder uses (|x| <= 127/64):
        # a block holding it gets the next scale up, as in the spec's reference code.
        raw[:, 1:][raw[:, 1:] == 0x80] = 0x81
    x = dequantize(raw, name, (16, 64))                  # every block reaches the top binade
    back = quantize(x, name)
    np.testing.assert_array_equal(dequantize(back, name, x.shape), x)


@pytest.mark.parametrize("name", MX)
def test_encoding_picks_the_nearest_representable_value(name):
    rng = np.random.default_rng(11)
    x = (rng.standard_normal((64, 32)) * 2.0 ** rng.integers(-20, 20, (64, 1))).astype(np.float32)
    raw = quantize(x, name)
    got = dequantize(raw, name, x.shape).astype(np.float64)
    table = spec_table(name)
    table = table[np.isfinite(table)]
    scale = 2.0 ** (raw[:, :1].astype(np.float64) - 127)
    cand = table[None, None, :] * scale[:, :, None]                  # (blocks, 1, codes)
    best = np.abs(x[:, :, None] - cand).min(axis=-1)
    np.testing.assert_allclose(np.abs(got - x), best, rtol=0, atol=0)
    # and the spec's bound: half an ulp of the top binade, or the saturation gap
    emax = np.floor(np.log2(SPEC_MAX[name]))
    mbits = 6 if name == "MXINT8" else FLOATS[name][1]
    amax = np.abs(x).max(axis=1, keepdims=True)
    bound = np.maximum(scale * 2.0 ** (emax - mbits - 1), amax - SPEC_MAX[name] * scale)
    assert (np.abs(got - x) <= bound).all()


def test_saturation_never_produces_inf_or_nan():
    x = np.zeros(32, np.float32)
    x[0] = 480.0              # E4M3: 1.875 * 2**8 > 448; scale stays 1
    x[1] = -470.0
    raw = quantize(x, "MXFP8_E4M3")
    assert raw[0] == 127 and raw[1] == 0x7E and raw[2] == 0xFE
    np.testing.assert_array_equal(dequantize(raw, "MXFP8_E4M3", (32,))[:2], [448, -448])
    x[0], x[1] = 61440.0, 0.0  # E5M2: 1.875 * 2**15 > 57344
    raw = quantize(x, "MXFP8_E5M2")
    assert dequantize(raw, "MXFP8_E5M2", (32,))[0] == 57344
    for name in ("MXFP6_E3M2", "MXFP6_E2M3", "MXFP4_E2M1", "MXINT8"):
        y = np.zeros(32, np.float32)
        y[0] = 1.99 * 2.0 ** np.floor(np.log2(SPEC_MAX[name]))
        got = dequantize(quantize(y, name), name, (32,))
        assert got[0] == SPEC_MAX[name]


def test_e4m3_has_no_inf_and_e5m2_decodes_inf():
    e4m3 = dequantize(b"".join(block(127, range(i, i + 32), 8) for i in range(0, 256, 32)), "MXFP8_E4M3", (256,))
    assert not np.isinf(e4m3).any() and np.isnan(e4m3).sum() == 2
    e5m2 = dequantize(block(127, [0x7C, 0xFC] + [0] * 30, 8), "MXFP8_E5M2", (32,))
    assert e5m2[0] == np.inf and e5m2[1] == -np.inf


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_input_gives_a_nan_block(bad):
    x = np.ones((2, 32), np.float32)
    x[0, 7] = bad
    for name in MX:
        raw = quantize(x, name)
        assert raw[0, 0] == 0xFF and raw[1, 0] != 0xFF
        got = dequantize(raw, name, x.shape)
        assert np.isnan(got[0]).all() and (got[1] == 1).all()


def test_tiny_and_huge_blocks_clamp_the_scale():
    tiny = np.full(32, 2.0**-140, np.float32)
    raw = quantize(tiny, "MXFP8_E5M2")
    assert raw[0] == 0                                       # 2**-127, the smallest scale
    np.testing.assert_array_equal(dequantize(raw, "MXFP8_E5M2", (32,)), tiny)
    huge = np.full(32, 3.0e38, np.float32)
    for name in MX:
        got = dequantize(quantize(huge, name), name, (32,))
        assert np.isfinite(got).all() and np.abs(got - huge).max() <= 0.5 * 3.0e38


def test_mx_shapes_and_errors():
    x = np.random.default_rng(3).standard_normal((2, 3, 64)).astype(np.float32)
    raw = quantize(x, "MXFP6_E3M2")
    assert raw.shape == (2, 3, 50) and nbytes("MXFP6_E3M2", x.shape) == raw.size
    assert dequantize(raw, "MXFP6_E3M2", x.shape).shape == x.shape
    with pytest.raises(QuantFormatError, match=r"MXFP6_E3M2 tensor of shape \(2, 3, 64\): got 299 bytes, "
                                               r"expected 300"):
        dequantize(raw.reshape(-1)[:-1], "MXFP6_E3M2", x.shape)
    with pytest.raises(QuantFormatError, match="block size"):
        quantize(np.zeros(48, np.float32), "MXFP4_E2M1")
    assert get_format("MXFP4_E2M1").gguf_type is None and get_format("MXFP4_E2M1").type_size == 17
