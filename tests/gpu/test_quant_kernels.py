"""Every quant format's GPU dequant and fused matvec against rocmforge.quant.dequantize on the CPU."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, quant_case, rand

pytestmark = pytest.mark.gpu

# OCP MX formats (rocmforge.quant.mx): MX_INT decode to int8 groups (dp4a matvec with int8
# activations), MX_FLOAT to floats (float matvec against float32 x)
MX_INT = ["MXINT8", "MXFP4_E2M1", "MXFP6_E2M3"]
MX_FLOAT = ["MXFP8_E4M3", "MXFP8_E5M2", "MXFP6_E3M2"]
MX = MX_INT + MX_FLOAT
FORMATS = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K",
           "IQ4_NL", "IQ4_XS", "MXFP4", "F32", "F16", "BF16"] + MX
FLOAT_X = ("F32", "F16", "BF16", *MX_FLOAT)     # matvecs that read x in float32


@pytest.fixture(scope="module")
def gb():
    from rocmforge.backends.cupy_backend import CupyBackend

    return CupyBackend(poison=True)


_case = quant_case


@pytest.mark.parametrize("qtype", FORMATS)
def test_dequant(gb, qtype):
    raw, ref = _case(qtype, 37, 512, 1)
    w = gb.weight_from_array(qtype, (37, 512), raw)
    got = gb.to_numpy(gb.dequant(w))
    check(got, ref, 1e-12, f"{qtype} dequant f32")
    if qtype in MX:
        assert w.qtype == qtype, f"{qtype} was not kept quantised on the GPU ({w.qtype})"
        assert np.array_equal(got, ref), f"{qtype} dequant f32 not bit-exact"
    if np.abs(ref).max() < 60000:      # random MXFP4 scales can exceed the fp16 range
        check(gb.to_numpy(gb.dequant(w, dtype="f16")).astype(np.float32), ref, 1e-6, f"{qtype} dequant f16")
    rows = np.array([36, 0, 5, 5], np.int64)
    check(gb.to_numpy(gb.dequant(w, rows=gb.upload(rows))), ref[rows], 1e-12, f"{qtype} rows")


@pytest.mark.parametrize("qtype", FORMATS)
@pytest.mark.parametrize("N,K,T", [(1, 256, 1), (333, 1024, 1), (67, 2816, 3), (130, 512, 8), (64, 768, 21)])
def test_matvec(gb, qtype, N, K, T):
    raw, wref = _case(qtype, N, K, N * 7 + K)
    rng = np.random.default_rng(K + T)
    x = rand(rng, T, K)
    bias = rand(rng, N)
    w = gb.weight_from_array(qtype, (N, K), raw)
    got = gb.to_numpy(gb.linear(gb.upload(x), w, gb.upload(bias)))
    ref = x.astype(np.float64) @ wref.T.astype(np.float64) + bias
    if T <= 8 and qtype not in FLOAT_X:
        # the kernel's own arithmetic, exactly: activations quantised to int8 blocks of 32 as on the GPU
        xb = x.reshape(T, -1, 32)
        d = np.abs(xb).max(-1, keepdims=True) / 127
        xq = np.rint(xb * np.where(d > 0, 1 / np.where(d > 0, d, 1), 0)) * d
        ref_q = xq.reshape(T, K).astype(np.float64) @ wref.T.astype(np.float64) + bias
        check(got, ref_q, 1e-6, f"{qtype} matvec vs int8-activation reference N={N} K={K} T={T}")
    if N >= 64:   # one dot product alone says little about the activation-quantisation error
        check(got, ref, 5e-4, f"{qtype} matvec N={N} K={K} T={T}")
    if qtype in MX_FLOAT:   # float weights x float activations: only float32 rounding
        check(got, ref, 1e-9 if T <= 8 else 5e-4, f"{qtype} float matvec N={N} K={K} T={T}")


@pytest.mark.parametrize("qtype", MX)
def test_mx_every_code(gb, qtype):
    """Fully random bytes: every element code (E4M3 NaN, E5M2 inf/NaN) and every scale, 0xFF too."""
    from rocmforge.quant import dequantize, nbytes

    N, K = 40, 1024
    raw = np.random.default_rng(11).integers(0, 256, nbytes(qtype, (N, K)), dtype=np.uint8)
    ref = dequantize(raw, qtype, (N, K))
    w = gb.weight_from_array(qtype, (N, K), raw)
    got = gb.to_numpy(gb.dequant(w))
    same = (got == ref) | (np.isnan(got) & np.isnan(ref))
    bad = np.nonzero(~same.reshape(-1))[0]
    assert bad.size == 0, (f"{qtype}: {bad.size} values differ, e.g. GPU {got.reshape(-1)[bad[:4]]} "
                           f"CPU {ref.reshape(-1)[bad[:4]]}")


@pytest.mark.parametrize("qtype", MX)
def test_mx_nan_scale(gb, qtype):
    """A block whose E8M0 scale is 0xFF decodes to 32 NaNs; a row holding one gets a NaN dot product."""
    from rocmforge.quant import get_format

    N, K = 70, 512
    raw, ref = _case(qtype, N, K, 5)
    blocks = raw.reshape(N, K // 32, get_format(qtype).type_size)
    nan_rows = [3, 17, 69]
    for r in nan_rows:
        blocks[r, r % (K // 32), 0] = 0xFF
    w = gb.weight_from_array(qtype, (N, K), raw)
    got = gb.to_numpy(gb.dequant(w))
    want = np.zeros((N, K), bool)
    for r in nan_rows:
        g = r % (K // 32)
        want[r, g * 32:(g + 1) * 32] = True
    assert np.array_equal(np.isnan(got), want)
    assert np.array_equal(got[~want], ref[~want])
    for T in (1, 3, 20):   # matvec (T <= 8) and the prefill GEMM
        x = rand(np.random.default_rng(T), T, K)
        y = gb.to_numpy(gb.linear(gb.upload(x), w))
        bad = np.isnan(y).any(axis=0)
        assert np.array_equal(np.nonzero(bad)[0], nan_rows), f"{qtype} T={T}: NaN rows {np.nonzero(bad)[0]}"
        ok = [r for r in range(N) if r not in nan_rows]
        assert np.isfinite(y[:, ok]).all()


@pytest.mark.parametrize("qtype", MX)
def test_mx_prefill_fp16_and_f32(gb, qtype):
    """Moderate scales take the fp16 GEMM, scales past the fp16 range the float32 one; both right."""
    from rocmforge.quant import dequantize, get_format

    N, K, T = 96, 512, 24
    x = rand(np.random.default_rng(2), T, K)
    for lo, want_f32 in ((120, False), (150, True)):
        raw, _ = _case(qtype, N, K, lo)
        blocks = raw.reshape(-1, get_format(qtype).type_size)
        blocks[:, 0] = np.random.default_rng(lo).integers(lo, lo + 4, len(blocks), dtype=np.uint8)
        wref = dequantize(raw, qtype, (N, K))
        w = gb.weight_from_array(qtype, (N, K), raw)
        assert w.f32_gemm == want_f32
        got = gb.to_numpy(gb.linear(gb.upload(x), w))
        check(got, x.astype(np.float64) @ wref.T.astype(np.float64), 5e-4, f"{qtype} prefill scale {lo}")


@pytest.mark.parametrize("cfg", [dict(mv_rpw=1, mv_unroll=1), dict(mv_rpw=2, mv_unroll=2), dict(mv_rpw=4, mv_unroll=1),
                                 dict(mv_rpw=1, mv_unroll=4, mv_rows=8),
                                 dict(mv_t1=False, act_cache=False, mv_rpw=1)])
@pytest.mark.parametrize("qtype", ["Q4_0", "Q8_0", "Q4_K", "Q6_K", "MXFP4_E2M1", "MXFP8_E4M3"])
def test_matvec_launch_shapes(qtype, cfg):
    """Other rows-per-warp / unroll / block shapes give the same products (odd N, K past one warp's groups)."""
    from rocmforge.backends.cupy_backend import CupyBackend

    be = CupyBackend(poison=True)
    for k, v in cfg.items():
        setattr(be, k, v)
    ref_be = CupyBackend(poison=True)
    for N, K, T in [(333, 4352, 1), (67, 2816, 3), (5, 256, 1)]:
        raw, _ = _case(qtype, N, K, N + K)
        rng = np.random.default_rng(N)
        x = rand(rng, T, K)
        got = be.to_numpy(be.linear(be.upload(x), be.weight_from_array(qtype, (N, K), raw)))
        want = ref_be.to_numpy(ref_be.linear(ref_be.upload(x), ref_be.weight_from_array(qtype, (N, K), raw)))
        check(got, want, 1e-10, f"{qtype} {cfg} N={N} K={K} T={T}")


def test_act_cache_follows_the_array(gb):
    """The quantised-activation cache is keyed by the array object: a new x is quantised again."""
    N, K = 64, 512
    raw, wref = _case("Q4_0", N, K, 3)
    w = gb.weight_from_array("Q4_0", (N, K), raw)
    rng = np.random.default_rng(9)
    x1, x2 = rand(rng, 1, K), rand(rng, 1, K)
    d1, d2 = gb.upload(x1), gb.upload(x2)
    y1 = gb.to_numpy(gb.linear(d1, w))
    y1b = gb.to_numpy(gb.linear(d1, w))       # cache hit
    y2 = gb.to_numpy(gb.linear(d2, w))
    assert np.array_equal(y1, y1b)
    check(y1, x1 @ wref.T, 5e-4, "x1")
    check(y2, x2 @ wref.T, 5e-4, "x2")


TILED = ["Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "IQ4_NL", "MXFP4", "Q6_K"]


@pytest.mark.parametrize("qtype", TILED)
def test_tiled_layout_equals_the_file_layout(qtype):
    """Rows regrouped into 16-byte aligned tiles decode and multiply bit-identically to the file layout."""
    from rocmforge.backends.cupy_backend import CupyBackend
    from rocmforge.backends.gpu_layouts import TILES

    tiled, flat = CupyBackend(poison=True), CupyBackend(poison=True)
    flat.tiles = False
    N, K = 77, 2 * TILES[qtype].weights
    raw, ref = _case(qtype, N, K, 13)
    wt, wf = tiled.weight_from_array(qtype, (N, K), raw), flat.weight_from_array(qtype, (N, K), raw)
    assert wt.tiled == TILES[qtype].suffix and wf.tiled is None
    assert np.array_equal(tiled.to_numpy(tiled.dequant(wt)), flat.to_numpy(flat.dequant(wf)))
    assert np.array_equal(tiled.to_numpy(tiled.dequant(wt)), ref)
    rows = np.array([76, 0, 3, 3], np.int64)
    assert np.array_equal(tiled.to_numpy(tiled.dequant(wt, rows=tiled.upload(rows))), ref[rows])
    for T in (1, 5, 40):       # matvec (T <= 8) and the prefill GEMM
        x = rand(np.random.default_rng(T), T, K)
        yt = tiled.to_numpy(tiled.linear(tiled.upload(x), wt))
        yf = flat.to_numpy(flat.linear(flat.upload(x), wf))
        if T <= 8:    # the same int8 dot products and sums, only the association of the scale terms differs
            check(yt, yf, 1e-12, f"{qtype} tiled vs file layout T={T}")
        check(yt, x.astype(np.float64) @ ref.T.astype(np.float64), 5e-4, f"{qtype} tiled T={T}")


def test_fused_rows_equal_the_separate_matvecs(gb):
    """q|k|v (and gate|up) joined on the GPU: the same rows as three matvecs; different formats stay apart."""
    K = 1024
    rng = np.random.default_rng(4)
    shapes = [(256, K), (64, K), (64, K)]
    raws = [_raw("Q4_0", sh, i) for i, sh in enumerate(shapes)]
    joined = gb.fuse_weights(raws)
    assert joined is not None and joined.shape == (384, K)
    x = gb.upload(rand(rng, 1, K))
    parts = [gb.to_numpy(gb.linear(x, gb.weight(r))) for r in raws]
    assert np.array_equal(gb.to_numpy(gb.linear(x, joined)), np.concatenate(parts, axis=1))
    biases = [_raw("F32", (n,), 9 + i) for i, (n, _) in enumerate(shapes)]
    jb = gb.to_numpy(gb.fuse_weights(biases))
    assert np.array_equal(jb, np.concatenate([b.dequantize() for b in biases]))
    assert gb.fuse_weights([raws[0], _raw("Q8_0", (64, K), 7)]) is None
    assert gb.fuse_weights([raws[0], _raw("Q4_0", (64, 512), 8)]) is None


def _raw(qtype, shape, seed):
    """A RawTensor-like object of random blocks (what fuse_weights receives from the executor)."""
    from types import SimpleNamespace

    from rocmforge.quant import dequantize
    from rocmforge.quant.samples import random_blocks

    if qtype == "F32":
        data = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        return SimpleNamespace(name=f"t{seed}", qtype="F32", shape=shape, data=data, dequantize=lambda: data)
    data = random_blocks(qtype, shape, seed)
    return SimpleNamespace(name=f"t{seed}", qtype=qtype, shape=shape, data=data,
                           dequantize=lambda: dequantize(data, qtype, shape))
