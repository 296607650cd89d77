"""The Numba CPU kernels (rocmforge.backends.cpu_kernels) against their integer-exact NumPy
reference (bit for bit) and the float oracle, and whole tiny models through CpuBackend.

The kernels compile once for every format (~40 s on 2 cores the first time; numba's disk cache
makes a rerun load them in about a second)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("numba")

from rocmforge.backends import cpu_kernels as ck  # noqa: E402
from rocmforge.backends import cpu_reference as ref  # noqa: E402
from rocmforge.quant import dequantize, get_format  # noqa: E402
from rocmforge.quant.samples import random_blocks  # noqa: E402


@pytest.fixture(scope="module")
def kernels():
    return ck.kernels()


def _shape(name: str) -> tuple[int, int]:
    # odd row counts (chunks of unequal length), two super-blocks or a few 32-blocks per row
    return (37, 512) if get_format(name).block_size == 256 else (37, 96)


def _codes(name: str, W: np.ndarray, K: int):
    q = np.empty((W.shape[0], K), np.int8)
    d = np.empty((W.shape[0], K // 16), np.float32)
    m = np.empty_like(d)
    ck.decode_rows_int(ck.FORMATS[name], W, q, d, m)
    return q, d, m


@pytest.mark.parametrize("name", list(ck.FORMATS))
def test_rows_equal_the_float_oracle(kernels, name):
    N, K = _shape(name)
    raw = random_blocks(name, (N, K), seed=3)
    W = raw.reshape(N, -1)
    want = dequantize(raw, name, (N, K))
    rows = np.array([5, 0, 36, 5, 17], np.int64)
    out = np.empty((len(rows), K), np.float32)
    kernels.rows(ck.FORMATS[name], W, rows, out)
    np.testing.assert_array_equal(out, want[rows])
    if name in ck.INT_FORMATS:        # the codes the reference reads stand for the same weights
        np.testing.assert_array_equal(ref.dequantize(*_codes(name, W, K)), want)


@pytest.mark.parametrize("name", list(ck.FLOAT_FORMATS))
def test_float_format_matvec_equals_the_reference(kernels, name):
    N, K = _shape(name)
    raw = random_blocks(name, (N, K), seed=4)
    W = raw.reshape(N, -1)
    fid = ck.FORMATS[name]
    rng = np.random.default_rng(5)
    bias = rng.standard_normal(N).astype(np.float32)
    wf = dequantize(raw, name, (N, K))
    for T in range(1, 9):
        x = (rng.standard_normal((T, K)) * rng.uniform(0.01, 10)).astype(np.float32)
        x[:, :32] = 0.0 if T == 2 else x[:, :32]              # an all-zero activation block
        for parts, b in (((W, W[:0], W[:0]), None), ((W[:10], W[10:11], W[11:]), bias)):
            y = np.empty((T, N), np.float32)
            kernels.matvec(fid, parts, x, ck_bias(b), y)
            want = ref.matvec_float(wf, x, b)
            np.testing.assert_array_equal(y, want, err_msg=f"{name} T={T} parts={[p.shape[0] for p in parts]}")
        # and near the float product
        fl = x @ wf.T
        y = np.empty((T, N), np.float32)
        kernels.matvec(fid, (W, W[:0], W[:0]), x, ck_bias(None), y)
        assert ((y - fl) ** 2).sum() <= 1e-3 * (fl**2).sum()


def ck_bias(b):
    return np.zeros(0, np.float32) if b is None else b


def test_activation_quantisation_matches_reference():
    x = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32) * 3
    x[1, 32:] = 0.0
    from rocmforge.backends import cpu_matvec

    xq = np.empty((3, 64), np.int8)
    xd = np.empty((3, 2), np.float32)
    xs = np.empty((3, 4), np.float32)
    isum32 = np.empty((3, 2), np.int32)
    xs32 = np.empty((3, 2), np.float32)
    cpu_matvec.quantize(x, xq, xd, xs, isum32, xs32)
    rq, rd, rs = ref.quantize_act(x)
    np.testing.assert_array_equal(xq, rq)
    np.testing.assert_array_equal(xd, rd)
    np.testing.assert_array_equal(xs, rs)
    np.testing.assert_array_equal(isum32, rq.reshape(3, 2, 32).sum(-1))
    np.testing.assert_array_equal(xs32, rd * rq.reshape(3, 2, 32).sum(-1).astype(np.float32))
    assert np.abs(xq.astype(np.int32)).max() <= 127


# ---- whole tiny models through CpuBackend ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    pytest.importorskip("transformers")
    pytest.importorskip("torch")
    from rocmforge.registry import get
    from rocmforge.testing.conformance import _Tiny

    spec = get("llama")
    return _Tiny("llama", spec.recipe_obj.tiny[0], tmp_path_factory.mktemp("cpu-tiny"))


def test_cpu_backend_keeps_weights_quantised(tiny_llama):
    from rocmforge.backends.cpu_backend import QuantWeight
    from rocmforge.model import load_model

    m = load_model(str(tiny_llama.gguf("Q4_0")), device="cpu-kernels", tokenizer=False)
    assert m.backend.name == "cpu"
    w = m.executor.weight("blk.0.attn_output")
    assert isinstance(w, QuantWeight) and w.qtype == "Q4_0"
    assert w.nbytes == m.tensors["blk.0.attn_output"].raw.nbytes         # the file's bytes, no float copy


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0"])
def test_tiny_model_decode_within_quantised_bounds(tiny_llama, qtype):
    """Decode steps (T = 1, the int8 kernels) and prefill (BLAS) near the float reference of the
    same file, and near the F32 model within the conformance suite's Q8_0 bound."""
    from rocmforge.model import load_model
    from rocmforge.testing.conformance import NMSE_Q8_PER_LAYER, nmse

    path = str(tiny_llama.gguf(qtype))
    ours = load_model(path, device="cpu-kernels", tokenizer=False)
    refm = load_model(path, device="numpy", tokenizer=False)
    prompt = tiny_llama.prompt
    full = refm.logits(prompt)
    s = ours.new_session(len(prompt))
    split = len(prompt) // 2
    rows = [s.feed(prompt[:split], all_logits=True)]
    rows += [s.feed([tok], all_logits=True) for tok in prompt[split:]]
    got = np.concatenate(rows)
    np.testing.assert_allclose(got[:split], full[:split], rtol=1e-4, atol=1e-4)   # prefill: same floats
    e = nmse(got, full)
    assert e <= 1e-3, f"{qtype}: int8-activation decode vs float decode NMSE {e:.3g}"
    f32 = load_model(str(tiny_llama.gguf("F32")), device="numpy", tokenizer=False).logits(prompt)
    n_layer = int(refm.hparams["n_layer"])
    if qtype == "Q8_0":
        assert nmse(got, f32) <= NMSE_Q8_PER_LAYER * n_layer
    assert np.array_equal(got.argmax(-1)[: split], full.argmax(-1)[: split])


@pytest.mark.parametrize("name", list(ck.INT_FORMATS))
def test_packed_matvec_equals_the_integer_reference(name, monkeypatch):
    """The decode layouts (rocmforge.backends.cpu_packed: the file's blocks for Q4_0 / Q4_1 / Q5_0 /
    Q5_1 / Q8_0, nibbles per 32 for Q4_K, int8 codes per 16 for the rest) give the lane arithmetic's
    reference y bit for bit, on whichever instruction path this machine compiles (VNNI, AVX2 or
    generic), joined parts, bias and the two-thread kernels included, at every T the decode path
    takes."""
    from rocmforge.backends import cpu_packed as cpk
    from rocmforge.backends import cpu_simd as simd

    N, K = _shape(name)
    raw = random_blocks(name, (N, K), seed=4)
    W = raw.reshape(N, -1)
    codes = _codes(name, W, K)
    wf = dequantize(raw, name, (N, K))
    rng = np.random.default_rng(5)
    bias = rng.standard_normal(N).astype(np.float32)
    for parts in ((W,), (W[:10], W[10:11], W[11:])):
        pw = cpk.pack(name, ck.FORMATS[name], parts, K)
        assert pw.kind == ("raw" if name in cpk.RAW_FORMATS else "nib32" if name in cpk.NIB32_FORMATS
                           else "i8_16")
        for T in range(1, 9):
            x = (rng.standard_normal((T, K)) * rng.uniform(0.01, 10)).astype(np.float32)
            x[:, :32] = 0.0 if T == 2 else x[:, :32]
            for b in (None, bias):
                y = np.empty((T, N), np.float32)
                monkeypatch.setattr(cpk, "PARALLEL_MIN_MACS", 0 if T % 2 else 10**12)   # both kernels
                cpk.matvec(pw, x, ck_bias(b), y, 2)
                want = ref.matvec_lanes(*cpk.lane_reference_codes(name, *codes, pw.off), x, b)
                np.testing.assert_array_equal(y, want, err_msg=f"{name} T={T} ({simd.isa()})")
                fl = x @ wf.T + (0 if b is None else b)           # and near the float product
                assert ((y - fl) ** 2).sum() <= 1e-3 * (fl ** 2).sum()
    assert pw.nbytes / (N * K) <= {"raw": 0.0, "nib32": 0.75, "i8_16": 1.5}[pw.kind]


def test_integer_formats_have_no_generic_matvec(kernels):
    """The integer formats' decode matvecs are cpu_packed's: the generic entry refuses them."""
    W = random_blocks("Q4_0", (4, 32), seed=1).reshape(4, -1)
    with pytest.raises(ValueError, match="cpu_packed"):
        kernels.matvec(ck.FORMATS["Q4_0"], (W, W[:0], W[:0]), np.ones((1, 32), np.float32), ck_bias(None),
                       np.empty((1, 4), np.float32))


_OTHER_PATH_CHECK = """
import numpy as np
from rocmforge.backends import cpu_kernels as ck, cpu_packed as cpk, cpu_reference as ref, cpu_simd
from rocmforge.quant.samples import random_blocks
print(cpu_simd.isa())
for name, K in (("Q4_1", 96), ("Q4_0", 96), ("Q5_0", 96), ("Q5_1", 96), ("Q8_0", 96), ("Q4_K", 512), ("Q6_K", 512)):
    W = random_blocks(name, (37, K), seed=4).reshape(37, -1)
    q = np.empty((37, K), np.int8); d = np.empty((37, K // 16), np.float32); m = np.empty_like(d)
    ck.decode_rows_int(ck.FORMATS[name], W, q, d, m)
    pw = cpk.pack(name, ck.FORMATS[name], (W,), K)
    for T in (1, 3):
        x = np.random.default_rng(T).standard_normal((T, K)).astype(np.float32)
        y = np.empty((T, 37), np.float32)
        cpk.matvec(pw, x, np.zeros(0, np.float32), y, 1)
        assert np.array_equal(y, ref.matvec_lanes(*cpk.lane_reference_codes(name, q, d, m, pw.off), x)), (name, T)
"""


@pytest.mark.slow
@pytest.mark.parametrize("path", ["avx2", "generic"])
def test_the_other_instruction_paths_equal_the_reference(path, tmp_path):
    """The paths this machine does not take by default (AVX2 without VNNI, plain LLVM vectors), forced
    with ROCMFORGE_CPU_SIMD in a fresh process with its own numba cache: the same lanes, the same y."""
    import os
    import subprocess
    import sys

    from rocmforge.backends import cpu_simd

    if path == "avx2" and not cpu_simd._FEATURES.get("avx2", False):
        pytest.skip("no AVX2 on this machine")
    env = {**os.environ, "ROCMFORGE_CPU_SIMD": path, "NUMBA_CACHE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", _OTHER_PATH_CHECK], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split("\n")[0] == ("AVX2 vpmaddubsw/vpmaddwd" if path == "avx2" else "generic LLVM vectors")
