"""Shared test setup.

Entry-point discovery is off under pytest (rocmforge.plugins checks
``sys._called_from_test``) so what happens to be installed never changes the
results; tests that need a plugin register a throwaway one.
"""

import sys

import pytest

sys._called_from_test = True


def pytest_addoption(parser):
    parser.addoption("--runslow", action="store_true", help="also run tests marked slow")


def pytest_collection_modifyitems(config, items):
    run_slow = config.getoption("--runslow") or "slow" in (config.getoption("-m") or "")
    gpu = _gpu_available()
    skip_slow = pytest.mark.skip(reason="slow: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="no GPU visible to CuPy")
    for item in items:
        if "slow" in item.keywords and not run_slow:
            item.add_marker(skip_slow)
        if "gpu" in item.keywords and not gpu:
            item.add_marker(skip_gpu)


_GPU = None


def _gpu_available() -> bool:
    global _GPU
    if _GPU is None:
        try:
            import cupy

            _GPU = cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:
            _GPU = False
    return _GPU
