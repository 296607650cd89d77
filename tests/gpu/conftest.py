"""Fixtures the GPU op tests share: a poisoning GPU backend, the NumPy reference, per-test inputs."""

from __future__ import annotations

import zlib

import numpy as np
import pytest


@pytest.fixture(scope="module")
def gb():
    from rocmforge.backends.cupy_backend import CupyBackend

    return CupyBackend(poison=True)


@pytest.fixture(scope="module")
def nb():
    from rocmforge.backends.numpy_backend import NumpyBackend

    return NumpyBackend()


@pytest.fixture
def rng(request):
    # crc32, not hash(): str hashes change from process to process, and so would the inputs
    return np.random.default_rng(zlib.crc32(request.node.name.encode()))
