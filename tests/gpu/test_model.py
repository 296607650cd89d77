"""Whole-model logits: the GPU backend against the NumPy backend on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check, tiny_config

pytestmark = pytest.mark.gpu




@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    pytest.importorskip("transformers")
    from rocmforge.testing.tiny import make_hf_model

    out = {}
    for arch, name in [("llama", "llama-gqa"), ("llama", "mistral-swa"), ("llama", "mixtral-moe")]:
        t = tiny_config(arch, name)
        out[name] = make_hf_model(t["hf_class"], t["config"], tmp_path_factory.mktemp(name), seed=3)
    return out


IDS = [1, 17, 200, 3, 45, 99, 5, 250, 128, 7, 64, 33, 2, 180, 11, 90, 42]


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-swa", "mixtral-moe"])
def test_hf_logits_gpu_vs_cpu(folders, name):
    _gpu_vs_cpu(folders[name], prefix=9, decode_tol=5e-4, what=name)


def _gpu_vs_cpu(path, prefix: int, decode_tol: float, what: str) -> None:
    """Full-sequence logits, then a prefill of ``prefix`` tokens and one-token decode steps, GPU vs CPU."""
    import rocmforge

    cpu = rocmforge.load_model(str(path), device="numpy", tokenizer=False)
    gpu = rocmforge.load_model(str(path), device="gpu", tokenizer=False)
    ref = cpu.logits(IDS)
    check(gpu.logits(IDS), ref, 5e-4, f"{what} prefill logits")
    # the matvec + decode-attention path
    s = gpu.new_session(64)
    s.feed(IDS[:prefix])
    rows = [s.feed([t]) for t in IDS[prefix:]]
    check(np.stack(rows), ref[prefix:], decode_tol, f"{what} decode logits")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K"])
def test_gguf_quantized_gpu_vs_cpu(folders, tmp_path, qtype):
    pytest.importorskip("gguf")
    from rocmforge.testing.tiny import hf_to_gguf

    path = hf_to_gguf(folders["llama-gqa"], tmp_path / f"m-{qtype}.gguf", qtype)
    _gpu_vs_cpu(path, prefix=12, decode_tol=5e-3, what=f"{qtype} (int8 activations in decode)")


MX_TYPES = ["MXFP4_E2M1", "MXFP6_E2M3", "MXFP6_E3M2", "MXFP8_E4M3", "MXFP8_E5M2", "MXINT8"]


def _mx_model(path, device: str, qtype: str):
    """The F32 GGUF model with every matrix re-quantised to ``qtype`` (our MX blocks, in memory)."""
    import rocmforge
    from rocmforge.loaders.base import RawTensor
    from rocmforge.quant import quantize
    from rocmforge.tensor_map import MappedTensor, materialize

    m = rocmforge.load_model(str(path), device=device, tokenizer=False)
    n = 0
    for name, t in list(m.tensors.items()):
        raw = materialize(t, m.hparams)
        if len(raw.shape) == 2 and raw.shape[-1] % 32 == 0:
            data = quantize(raw.dequantize(), qtype).reshape(-1)
            m.tensors[name] = MappedTensor(RawTensor(raw.name, qtype, tuple(raw.shape), data))
            n += 1
    assert n >= 8, f"only {n} matrices re-quantised"
    return m


@pytest.fixture(scope="module")
def llama_f32_gguf(folders, tmp_path_factory):
    pytest.importorskip("gguf")
    from rocmforge.testing.tiny import hf_to_gguf

    return hf_to_gguf(folders["llama-gqa"], tmp_path_factory.mktemp("mx") / "m-f32.gguf", "F32")


@pytest.mark.parametrize("qtype", MX_TYPES)
def test_mx_model_gpu_vs_cpu(llama_f32_gguf, qtype):
    from rocmforge.backends.cupy_backend import GpuWeight

    cpu = _mx_model(llama_f32_gguf, "numpy", qtype)
    gpu = _mx_model(llama_f32_gguf, "gpu", qtype)
    ref = cpu.logits(IDS)
    check(gpu.logits(IDS), ref, 5e-4, f"{qtype} prefill")
    s = gpu.new_session(64)
    s.feed(IDS[:12])
    rows = [s.feed([t]) for t in IDS[12:]]
    tol = 5e-4 if qtype in ("MXFP6_E3M2", "MXFP8_E4M3", "MXFP8_E5M2") else 5e-3   # int8 activations
    check(np.stack(rows), ref[12:], tol, f"{qtype} decode")
    on_gpu = [w for w in gpu.executor._weights.values() if isinstance(w, GpuWeight)]
    assert on_gpu and all(w.qtype in (qtype, "F32") for w in on_gpu)
    assert sum(w.qtype == qtype for w in on_gpu) >= 8, "MX weights were not kept quantised on the GPU"
