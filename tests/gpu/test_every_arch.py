"""Whole-model logits GPU vs CPU for every registered architecture's tiny models (the conformance 'gpu' check)."""

from __future__ import annotations

import pytest

from rocmforge.testing.conformance import collect, run_check

pytestmark = pytest.mark.gpu

CASES = collect()


@pytest.mark.parametrize("arch,model", CASES, ids=[f"{a}-{m}" for a, m in CASES])
def test_gpu_equals_cpu(arch, model, tmp_path_factory):
    pytest.importorskip("transformers")
    r = run_check(arch, model, "gpu", tmp_path_factory.mktemp(f"gpu-{arch}-{model}"))
    assert r.status == "pass", r.detail
