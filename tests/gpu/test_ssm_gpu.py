"""Recurrent ops on the GPU (kernels/ssm.hip through cupy_state.py) against the NumPy reference, and
the recurrent tiny models GPU == CPU: full forward, prefill + decode, batch, fork."""

from __future__ import annotations

import numpy as np
import pytest

from rocmforge.backends.numpy_backend import NumpyBackend

from .helpers import check, rand

pytestmark = pytest.mark.gpu

TOL = 1e-9          # float32 everywhere: only the order of the sums differs
ref = NumpyBackend()


@pytest.fixture(scope="module")
def gpu():
    pytest.importorskip("cupy")
    from rocmforge.backends.cupy_backend import CupyBackend

    return CupyBackend(poison=True)


def _both(gpu, *arrays):
    return [gpu.upload(a) for a in arrays]


@pytest.mark.parametrize("T,C,K,bias", [(1, 40, 4, True), (5, 300, 4, False), (33, 129, 3, True), (2, 8, 4, True)])
def test_conv1d(gpu, T, C, K, bias):
    rng = np.random.default_rng(T * C)
    x, w, b, s0 = rand(rng, T, C), rand(rng, C, K), rand(rng, C), rand(rng, K - 1, C)
    s_cpu, s_gpu = s0.copy(), gpu.upload(s0)
    want = ref.conv1d_causal(x, w, b if bias else None, s_cpu)
    got = gpu.conv1d_causal(*_both(gpu, x, w), gpu.upload(b) if bias else None, s_gpu)
    check(gpu.to_numpy(got), want, TOL, "conv1d")
    check(gpu.to_numpy(s_gpu), s_cpu, TOL, "conv1d state")


@pytest.mark.parametrize("T,Dc,N", [(1, 64, 16), (17, 96, 16), (9, 33, 8), (4, 20, 128)])
def test_selective_scan(gpu, T, Dc, N):
    rng = np.random.default_rng(T + Dc + N)
    x, dt, B, C = rand(rng, T, Dc), rand(rng, T, Dc), rand(rng, T, N), rand(rng, T, N)
    A, D, bias, h0 = -np.exp(rand(rng, Dc, N)), rand(rng, Dc), rand(rng, Dc), rand(rng, Dc, N)
    h_cpu, h_gpu = h0.copy(), gpu.upload(h0)
    want = ref.selective_scan(x, dt, A, B, C, D, h_cpu, bias)
    got = gpu.selective_scan(*_both(gpu, x, dt, A, B, C, D), h_gpu, gpu.upload(bias))
    check(gpu.to_numpy(got), want, TOL, "selective_scan")
    check(gpu.to_numpy(h_gpu), h_cpu, TOL, "selective_scan state")


# T past SSD_CHUNK (64): the GPU runs ssd_chunked on the device, over one and several chunks
@pytest.mark.parametrize("T,H,P,G,N,lim", [(1, 8, 16, 2, 16, None), (21, 8, 16, 1, 64, 0.4), (70, 6, 8, 3, 128, None),
                                           (3, 4, 4, 4, 300, None), (200, 8, 16, 2, 64, 0.6)])
def test_ssd_scan(gpu, T, H, P, G, N, lim):
    rng = np.random.default_rng(T + H + N)
    x, dt, B, C = rand(rng, T, H, P), rand(rng, T, H), rand(rng, T, G, N, scale=0.3), rand(rng, T, G, N, scale=0.3)
    A, D, bias, h0 = -np.exp(rand(rng, H)), rand(rng, H), rand(rng, H), rand(rng, H, P, N)
    hi = lim if lim is not None else float("inf")
    h_cpu, h_gpu = h0.copy(), gpu.upload(h0)
    want = ref.ssd_scan(x, dt, A, B, C, D, h_cpu, bias, 0.0, hi)
    got = gpu.ssd_scan(*_both(gpu, x, dt, A, B, C, D), h_gpu, gpu.upload(bias), 0.0, hi)
    check(gpu.to_numpy(got), want, 1e-8, "ssd_scan")
    check(gpu.to_numpy(h_gpu), h_cpu, 1e-8, "ssd_scan state")


@pytest.mark.parametrize("T,C,group", [(1, 128, 64), (7, 256, 256), (3, 96, 32)])
def test_rms_norm_gated(gpu, T, C, group):
    rng = np.random.default_rng(C)
    x, z, w = rand(rng, T, C), rand(rng, T, C), rand(rng, C)
    want = ref.rms_norm_gated(x, z, w, group, 1e-5)
    check(gpu.to_numpy(gpu.rms_norm_gated(*_both(gpu, x, z, w), group, 1e-5)), want, 1e-10, "rms_norm_gated")


def test_new_state_is_zero_on_the_device(gpu):
    st = gpu.new_state({(0, "conv"): (3, 10), (1, "ssm"): (4, 2, 8)})
    assert st.nbytes == (30 + 64) * 4
    assert float(abs(gpu.to_numpy(st.get(1, "ssm"))).sum()) == 0.0
    f = st.copy()
    f.get(0, "conv")[...] = 1
    assert float(gpu.to_numpy(st.get(0, "conv")).sum()) == 0.0


# ---- the recurrent tiny models, GPU == CPU

MODELS = [("mamba", "mamba-s6"), ("mamba2", "mamba2-groups"),
          ("qwen3_5", "qwen3_5-hybrid"), ("qwen3_next", "qwen3_next-moe"),
          ("qwen3_5_moe", "qwen3_5_moe-hybrid"),     # Gated DeltaNet hybrids
          ("lfm2", "lfm2-hybrid"), ("lfm2moe", "lfm2moe-hybrid")]     # short convolutions + attention


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    pytest.importorskip("transformers")
    from rocmforge.registry import architectures
    from rocmforge.testing.tiny import make_hf_model

    out = {}
    for arch, name in MODELS:
        tiny = next(t for t in architectures()[arch].recipe_obj.tiny if t["name"] == name)
        out[arch] = make_hf_model(tiny["hf_class"], tiny["config"], tmp_path_factory.mktemp(arch) / "hf", seed=1)
    return out


PROMPT = [3, 17, 42, 99, 7, 250, 128, 64, 5, 31, 200, 11, 77, 150, 9, 240, 1, 33, 66, 180]


@pytest.mark.parametrize("arch", [a for a, _ in MODELS])
def test_tiny_model_gpu_equals_cpu(gpu, built, arch):
    from rocmforge import load_model

    cpu_m = load_model(str(built[arch]), device="numpy", tokenizer=False)
    gpu_m = load_model(str(built[arch]), device="gpu", tokenizer=False)
    full = cpu_m.logits(PROMPT)
    check(gpu_m.logits(PROMPT), full, 5e-4, f"{arch} logits")
    # prefill + decode steps (eager: a step touching recurrent state is not captured in a graph)
    s = gpu_m.new_session(64)
    rows = [s.feed(PROMPT[:8], all_logits=True)] + [s.feed([t], all_logits=True) for t in PROMPT[8:]]
    check(np.concatenate(rows), full, 5e-4, f"{arch} prefill + decode")
    # a batch of sequences, each with its own state
    seqs = [PROMPT[:7], PROMPT[3:15], PROMPT[:1], PROMPT]
    for got, seq in zip(gpu_m.logits_batch(seqs), seqs):
        check(got, cpu_m.logits(seq), 5e-4, f"{arch} batch")
    # fork: the copy continues exactly like the original
    a = gpu_m.new_session(64)
    a.feed(PROMPT[:10])
    b = a.fork()
    np.testing.assert_allclose(b.feed(PROMPT[10:12]), a.feed(PROMPT[10:12]), rtol=1e-5, atol=1e-5)


LONG = [(7 * i * i + 3 * i + 1) % 250 for i in range(150)]     # past SSD_CHUNK / GDN_CHUNK (64): chunked on the GPU


@pytest.mark.parametrize("arch", ["mamba2", "qwen3_5", "qwen3_next"])
def test_tiny_model_long_prompt_gpu_equals_cpu(gpu, built, arch):
    """A 150-token prompt: the GPU's chunked Mamba-2 SSD / Gated DeltaNet prefill (batched matmuls per
    chunk) gives the CPU's logits, and the state it leaves decodes on like the CPU's."""
    from rocmforge import load_model

    cpu_m = load_model(str(built[arch]), device="numpy", tokenizer=False)
    gpu_m = load_model(str(built[arch]), device="gpu", tokenizer=False)
    check(gpu_m.logits(LONG), cpu_m.logits(LONG), 5e-4, f"{arch} long prompt")
    sc, sg = cpu_m.new_session(200), gpu_m.new_session(200)
    sc.feed(LONG)
    sg.feed(LONG)
    check(np.concatenate([sg.feed([t], all_logits=True) for t in (5, 77, 9)]),
          np.concatenate([sc.feed([t], all_logits=True) for t in (5, 77, 9)]), 5e-4, f"{arch} decode after it")
