"""Whole-model logits: the GPU backend against the NumPy backend on tiny random models."""

from __future__ import annotations

import numpy as np
import pytest

from .helpers import check

pytestmark = pytest.mark.gpu


def _tiny(arch: str, name: str):
    from rocmforge.registry import architectures

    spec = architectures()[arch]
    for t in spec.recipe_obj.tiny:
        if t["name"] == name:
            return t
    pytest.skip(f"no tiny model {name} in {arch}")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    pytest.importorskip("transformers")
    from rocmforge.testing.tiny import make_hf_model

    out = {}
    for arch, name in [("llama", "llama-gqa"), ("llama", "mistral-swa"), ("llama", "mixtral-moe")]:
        t = _tiny(arch, name)
        out[name] = make_hf_model(t["hf_class"], t["config"], tmp_path_factory.mktemp(name), seed=3)
    return out


IDS = [1, 17, 200, 3, 45, 99, 5, 250, 128, 7, 64, 33, 2, 180, 11, 90, 42]


@pytest.mark.parametrize("name", ["llama-gqa", "mistral-swa", "mixtral-moe"])
def test_hf_logits_gpu_vs_cpu(folders, name):
    import rocmforge

    cpu = rocmforge.load_model(str(folders[name]), device="cpu", tokenizer=False)
    gpu = rocmforge.load_model(str(folders[name]), device="gpu", tokenizer=False)
    ref = cpu.logits(IDS)
    check(gpu.logits(IDS), ref, 5e-4, f"{name} prefill logits")
    # prefill a prefix, then decode one token at a time (the matvec + decode-attention path)
    s = gpu.new_session(64)
    s.feed(IDS[:9])
    rows = [s.feed([t]) for t in IDS[9:]]
    check(np.stack(rows), ref[9:], 5e-4, f"{name} decode logits")


@pytest.mark.parametrize("qtype", ["Q8_0", "Q4_0", "Q4_K"])
def test_gguf_quantized_gpu_vs_cpu(folders, tmp_path, qtype):
    pytest.importorskip("gguf")
    import rocmforge
    from rocmforge.testing.tiny import hf_to_gguf

    try:
        path = hf_to_gguf(folders["llama-gqa"], tmp_path / f"m-{qtype}.gguf", qtype)
    except Exception as exc:  # a format the converter cannot write for these shapes
        pytest.skip(f"hf_to_gguf({qtype}): {exc}")
    cpu = rocmforge.load_model(str(path), device="cpu", tokenizer=False)
    gpu = rocmforge.load_model(str(path), device="gpu", tokenizer=False)
    ref = cpu.logits(IDS)
    check(gpu.logits(IDS), ref, 5e-4, f"{qtype} prefill")
    s = gpu.new_session(64)
    s.feed(IDS[:12])
    rows = [s.feed([t]) for t in IDS[12:]]
    check(np.stack(rows), ref[12:], 5e-3, f"{qtype} decode (int8 activations)")
