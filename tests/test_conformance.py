"""The conformance suite over every registered architecture's tiny models."""

import pytest

from rocmforge.testing.conformance import CHECKS, collect, run_check

CASES = [(a, m, c) for a, m in collect() for c in CHECKS]


@pytest.mark.parametrize("arch,model,check", CASES, ids=[f"{a}-{m}-{c}" for a, m, c in CASES])
def test_conformance(arch, model, check, tmp_path_factory):
    if check == "transformers":
        pytest.importorskip("transformers")
    r = run_check(arch, model, check, tmp_path_factory.mktemp(f"{arch}-{model}"))
    if r.status == "skip":
        pytest.skip(r.detail)
    assert r.status == "pass", r.detail
