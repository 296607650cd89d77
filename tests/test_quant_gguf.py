"""GGUF tensor types: registry facts and CPU dequantize against gguf.quants (the oracle)."""

import gguf.quants
import ml_dtypes
import numpy as np
import pytest
from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

from rocmforge.errors import QuantFormatError
from rocmforge.quant import dequantize, formats, from_gguf_type, get_format, nbytes, quantize
from rocmforge.quant.samples import random_blocks

GGUF_BLOCK = sorted(n for n, f in formats().items() if f.gguf_type is not None and f.kind == "block")
USER_TYPES = ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K",
              "Q4_K", "Q5_K", "Q6_K", "IQ4_NL", "IQ4_XS", "MXFP4"]


def oracle(raw: np.ndarray, name: str, shape: tuple[int, ...]) -> np.ndarray:
    qtype = GGMLQuantizationType[name]
    rows = np.asarray(raw, np.uint8).reshape(-1, nbytes(name, shape[-1:]))
    with np.errstate(all="ignore"):
        return gguf.quants.dequantize(rows, qtype).reshape(shape)


# ---- registry ------------------------------------------------------------------

def test_user_facing_types_are_registered_with_gguf_sizes():
    for name in USER_TYPES:
        fmt = get_format(name)
        qtype = GGMLQuantizationType[name]
        assert fmt.gguf_type == int(qtype)
        assert (fmt.block_size, fmt.type_size) == GGML_QUANT_SIZES[qtype]
        assert fmt.kind == ("float" if fmt.block_size == 1 else "block")
        assert fmt.description


def test_every_type_gguf_can_dequantize_is_registered():
    missing = []
    for qtype, (_block_size, type_size) in GGML_QUANT_SIZES.items():
        try:
            with np.errstate(all="ignore"):
                gguf.quants.dequantize(np.zeros((1, type_size), np.uint8), qtype)
        except NotImplementedError:
            continue
        if qtype.name not in formats():
            missing.append(qtype.name)
    assert missing == []
    assert {"IQ2_XXS", "IQ1_M", "TQ1_0", "TQ2_0"} <= set(formats())


def test_from_gguf_type_round_trips_and_rejects_unknown_ids():
    for fmt in formats().values():
        if fmt.gguf_type is not None:
            assert from_gguf_type(fmt.gguf_type) is get_format(fmt.name)
    with pytest.raises(QuantFormatError, match="unknown GGUF tensor type id 9999.*Q4_K"):
        from_gguf_type(9999)
    with pytest.raises(QuantFormatError, match="Q8_K .*not supported"):
        from_gguf_type(int(GGMLQuantizationType.Q8_K))


def test_get_format_is_case_insensitive_and_lists_known_names():
    assert get_format("q4_k") is get_format("Q4_K")
    with pytest.raises(QuantFormatError, match="unknown quant type 'Q9_Z'.*MXFP8_E4M3.*Q4_0"):
        get_format("Q9_Z")


def test_formats_returns_a_copy():
    fmts = formats()
    fmts.pop("Q4_0")
    assert "Q4_0" in formats()


def test_nbytes():
    assert nbytes("Q4_0", (4096, 4096)) == 4096 * 128 * 18
    assert nbytes("Q4_K", (2, 3, 512)) == 6 * 2 * 144
    assert nbytes("F16", (3, 5)) == 30
    assert nbytes("MXFP6_E2M3", (64,)) == 50
    with pytest.raises(QuantFormatError, match=r"last axis \(100\).*Q4_K block size \(256\)"):
        nbytes("Q4_K", (4, 100))


# ---- dequantize against the oracle -------------------------------------------------

@pytest.mark.parametrize("name", GGUF_BLOCK)
def test_block_types_bit_exact_against_gguf(name):
    bs = get_format(name).block_size
    for i, shape in enumerate([(bs,), (9, 3 * bs), (2, 3, 2 * bs)]):
        raw = random_blocks(name, shape, seed=i)
        out = dequantize(raw, name, shape)
        assert out.dtype == np.float32 and out.shape == shape
        assert np.isfinite(out).all()
        np.testing.assert_array_equal(out, oracle(raw, name, shape))


def gguf_can_quantize(name: str) -> bool:
    try:
        gguf.quants.quantize(np.zeros((1, get_format(name).block_size), np.float32), GGMLQuantizationType[name])
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("name", [n for n in GGUF_BLOCK if gguf_can_quantize(n)])
def test_quantize_matches_gguf_and_decodes_close(name):
    bs = get_format(name).block_size
    x = np.random.default_rng(1).standard_normal((6, 2 * bs)).astype(np.float32)
    raw = quantize(x, name)
    assert raw.dtype == np.uint8 and raw.shape == (6, nbytes(name, (2 * bs,)))
    np.testing.assert_array_equal(raw, gguf.quants.quantize(x, GGMLQuantizationType[name]))
    out = dequantize(raw, name, x.shape)
    np.testing.assert_array_equal(out, oracle(raw, name, x.shape))
    # coarse bound: every type here keeps at least ~1.5 bits of relative precision
    assert np.abs(out - x).max() <= 0.5 * np.abs(x).max()


@pytest.mark.parametrize("name,rel_rms", [("Q4_K", 0.10), ("Q5_K", 0.05), ("Q6_K", 0.03)])
def test_our_k_quant_encoders_write_blocks_gguf_reads(name, rel_rms):
    rng = np.random.default_rng(8)
    x = (rng.standard_normal((32, 512)) * rng.uniform(0.01, 10, (32, 1))).astype(np.float32)
    x[0] = 0
    x[1] = 3.0
    raw = quantize(x, name)
    assert raw.shape == (32, nbytes(name, (512,)))
    out = dequantize(raw, name, x.shape)
    np.testing.assert_array_equal(out, oracle(raw, name, x.shape))
    assert (out[0] == 0).all()
    np.testing.assert_allclose(out[1], 3.0, rtol=2e-3)
    rms = np.sqrt(((out - x)[2:] ** 2).mean(axis=1) / (x[2:] ** 2).mean(axis=1))
    assert rms.max() < rel_rms


def test_q8_0_and_q4_0_by_hand():
    """Independent of gguf: decode the documented layouts directly."""
    rng = np.random.default_rng(2)
    d = np.float16(0.0371)
    qs = rng.integers(-128, 128, 32).astype(np.int8)
    q8 = np.concatenate([np.array([d], "<f2").view(np.uint8), qs.view(np.uint8)])
    np.testing.assert_array_equal(dequantize(q8, "Q8_0", (32,)), np.float32(d) * qs.astype(np.float32))

    nib = rng.integers(0, 16, 32).astype(np.uint8)
    q4 = np.concatenate([np.array([d], "<f2").view(np.uint8), nib[:16] | (nib[16:] << 4)])
    want = (nib.astype(np.float32) - 8) * np.float32(d)
    np.testing.assert_array_equal(dequantize(q4, "Q4_0", (32,)), want)


def test_iq4_nl_uses_the_nonlinear_table():
    table = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113]
    idx = np.arange(32, dtype=np.uint8) % 16
    raw = np.concatenate([np.array([1.0], "<f2").view(np.uint8), idx[:16] | (idx[16:] << 4)])
    np.testing.assert_array_equal(dequantize(raw, "IQ4_NL", (32,)), np.array(table * 2, np.float32))


def test_accepts_bytes_memoryview_and_int8():
    shape = (4, 64)
    raw = random_blocks("Q5_1", shape, seed=3)
    want = dequantize(raw, "Q5_1", shape)
    np.testing.assert_array_equal(dequantize(raw.tobytes(), "Q5_1", shape), want)
    np.testing.assert_array_equal(dequantize(memoryview(raw.tobytes()), "Q5_1", shape), want)
    np.testing.assert_array_equal(dequantize(raw.view(np.int8), "Q5_1", shape), want)


# ---- plain types -------------------------------------------------------------

@pytest.mark.parametrize("name,dtype", [("F32", np.float32), ("F16", np.float16),
                                        ("BF16", ml_dtypes.bfloat16)])
def test_plain_round_trip_typed_and_bytes(name, dtype):
    x = np.random.default_rng(4).standard_normal((3, 5, 7)).astype(np.float32)
    typed = x.astype(dtype)
    exact = typed.astype(np.float32)
    np.testing.assert_array_equal(dequantize(typed, name, x.shape), exact)
    np.testing.assert_array_equal(dequantize(typed.reshape(-1).view(np.uint8), name, x.shape), exact)
    np.testing.assert_array_equal(dequantize(typed.tobytes(), name, x.shape), exact)
    raw = quantize(x, name)
    assert raw.dtype == np.uint8 and raw.tobytes() == typed.tobytes()
    np.testing.assert_array_equal(dequantize(raw, name, x.shape), exact)
    if name != "F32":
        oracle_out = gguf.quants.dequantize(raw.reshape(-1), GGMLQuantizationType[name])
        np.testing.assert_array_equal(dequantize(raw, name, x.shape).reshape(-1), oracle_out)


def test_bf16_raw_uint16_bits_and_specials():
    x = np.array([1.0, -2.5, np.inf, -np.inf, 0.0, 3.0e38], np.float32)
    bits = x.astype(ml_dtypes.bfloat16).view(np.uint16)
    out = dequantize(bits, "BF16", x.shape)
    np.testing.assert_array_equal(out, x.astype(ml_dtypes.bfloat16).astype(np.float32))
    assert np.isnan(dequantize(np.array([0x7FC0], np.uint16), "BF16", (1,))).all()


def test_scalar_and_empty_shapes():
    assert dequantize(np.float32(2.5).tobytes(), "F32", ()).shape == ()
    assert dequantize(b"", "Q4_0", (0, 32)).shape == (0, 32)


# ---- errors ----------------------------------------------------------------------

def test_wrong_buffer_size_says_what_was_expected():
    raw = random_blocks("Q4_K", (2, 256))
    with pytest.raises(QuantFormatError, match=r"Q4_K tensor 'blk.0.w' of shape \(3, 256\): got 288 bytes, "
                                               r"expected 432 \(3 blocks"):
        dequantize(raw, "Q4_K", (3, 256), name="blk.0.w")
    with pytest.raises(QuantFormatError, match="got 287 bytes"):
        dequantize(raw[:-1], "Q4_K", (2, 256))


def test_rejects_bad_shape_type_and_dtype():
    with pytest.raises(QuantFormatError, match="multiple of the Q4_0 block size"):
        dequantize(bytes(18), "Q4_0", (16,))
    with pytest.raises(QuantFormatError, match="unknown quant type"):
        dequantize(bytes(18), "Q4_Z", (32,))
    with pytest.raises(QuantFormatError, match="dtype float16, expected uint8 bytes or float32"):
        dequantize(np.zeros(4, np.float16), "F32", (2,))
    with pytest.raises(QuantFormatError, match="dtype float32, expected uint8 bytes"):
        dequantize(np.zeros(8, np.float32), "Q8_0", (1, 32))
    with pytest.raises(QuantFormatError, match="data is a list"):
        dequantize([0] * 34, "Q8_0", (32,))


def test_quantize_to_a_decode_only_type_lists_the_encodable_ones():
    with pytest.raises(QuantFormatError, match="cannot quantize to IQ2_XXS.*Q8_0"):
        quantize(np.zeros((1, 256), np.float32), "IQ2_XXS")
    with pytest.raises(QuantFormatError, match="multiple of the Q8_0 block size"):
        quantize(np.zeros((1, 33), np.float32), "Q8_0")


def test_safetensors_fp8_plain_types():
    for name, dtype in [("F8_E4M3", ml_dtypes.float8_e4m3fn), ("F8_E5M2", ml_dtypes.float8_e5m2),
                        ("F8_E4M3FNUZ", ml_dtypes.float8_e4m3fnuz), ("F8_E5M2FNUZ", ml_dtypes.float8_e5m2fnuz)]:
        fmt = get_format(name)
        assert (fmt.kind, fmt.block_size, fmt.type_size, fmt.gguf_type) == ("float", 1, 1, None)
        codes = np.arange(256, dtype=np.uint8)
        np.testing.assert_array_equal(dequantize(codes, name, (16, 16)),
                                      codes.view(dtype).astype(np.float32).reshape(16, 16))
    raw = quantize(np.array([1000.0, -1000.0, 0.3], np.float32), "F8_E4M3")   # saturates, no NaN
    np.testing.assert_array_equal(dequantize(raw, "F8_E4M3", (3,)), [448, -448, np.float32(0.3).astype(
        ml_dtypes.float8_e4m3fn).astype(np.float32)])
