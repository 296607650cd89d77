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


# The small real models (requirements-models.txt), shared by the tokenizer and template tests.

@pytest.fixture(scope="session")
def smollm_path():
    from models import SMOLLM2_DIST, installed

    if not installed(SMOLLM2_DIST):
        pytest.skip(f"{SMOLLM2_DIST} not installed")
    from rocmforge.installed_models import resolve_model

    return resolve_model("smollm2")


@pytest.fixture(scope="session")
def gemma_path():
    from models import GEMMA3_DIST, installed

    if not installed(GEMMA3_DIST):
        pytest.skip(f"{GEMMA3_DIST} not installed")
    from rocmforge.installed_models import resolve_model

    return resolve_model("gemma3-270m")


@pytest.fixture(scope="session")
def smollm(smollm_path):
    from models import gguf_metadata

    from rocmforge.tokenizer import Tokenizer

    return Tokenizer.from_gguf_metadata(gguf_metadata(smollm_path), source=str(smollm_path))


@pytest.fixture(scope="session")
def gemma(gemma_path):
    from models import gguf_metadata

    from rocmforge.tokenizer import Tokenizer

    return Tokenizer.from_gguf_metadata(gguf_metadata(gemma_path), source=str(gemma_path))
