"""Shared helpers of the GPU tests: backends, NMSE, random inputs."""

from __future__ import annotations

import numpy as np


def nmse(got, ref) -> float:
    got = np.asarray(got, np.float64)
    ref = np.asarray(ref, np.float64)
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert np.isfinite(got).all(), f"{(~np.isfinite(got)).sum()} non-finite values (unwritten or NaN)"
    den = float((ref * ref).sum())
    return float(((got - ref) ** 2).sum()) / max(den, 1e-30)


def check(got, ref, tol, what=""):
    e = nmse(got, ref)
    assert e <= tol, f"{what}: NMSE {e:.3g} > {tol:g}"
    return e


def quant_case(qtype, N, K, seed):
    """Random blocks of an (N, K) ``qtype`` weight and their float32 values (the CPU dequantiser's)."""
    from rocmforge.quant import dequantize
    from rocmforge.quant.samples import random_blocks

    raw = random_blocks(qtype, (N, K), seed)
    return raw, dequantize(raw, qtype, (N, K))


def rand(rng, *shape, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def tiny_config(arch: str, name: str) -> dict:
    """The tiny model ``name`` that ``arch``'s recipe declares (skip the test if there is none)."""
    import pytest

    from rocmforge.registry import architectures

    for t in architectures()[arch].recipe_obj.tiny:
        if t["name"] == name:
            return t
    pytest.skip(f"no tiny model {name} in {arch}")


def tiny_model(arch: str, name: str, tmp_path, seed: int = 3):
    """A tiny model of ``arch``'s recipe: the prebuilt F32 GGUF of benchmarks/gpu_conformance.py --build
    (.gpu-models, which machines without transformers carry), else an HF folder made here."""
    from pathlib import Path

    import pytest

    prebuilt = Path(__file__).resolve().parents[2] / ".gpu-models" / arch / name / "model-F32.gguf"
    if prebuilt.exists():
        pytest.importorskip("gguf")
        return prebuilt
    pytest.importorskip("transformers")
    from rocmforge.testing.tiny import make_hf_model

    t = tiny_config(arch, name)
    return make_hf_model(t["hf_class"], t["config"], tmp_path / name, seed=seed)
