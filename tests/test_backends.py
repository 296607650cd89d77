"""Backend selection: the CPU always works; a missing GPU is a clear error or a logged fallback."""

import logging
import sys

import pytest

from rocmforge.backends import get_backend, gpu_unavailable_reason
from rocmforge.errors import DeviceError


def test_cpu_is_the_kernels_and_numpy_the_reference(monkeypatch):
    from rocmforge.backends import cpu_kernels_unavailable_reason

    want = "cpu" if cpu_kernels_unavailable_reason() is None else "numpy"    # no numba: NumPy, logged
    assert get_backend("cpu").name == want
    assert get_backend("numpy").name == "numpy"
    monkeypatch.setenv("ROCMFORGE_CPU_KERNELS", "0")
    assert get_backend("cpu").name == "numpy"


def test_import_does_not_touch_cupy():
    import subprocess

    code = "import sys, rocmforge; rocmforge.list_architectures(); print('cupy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


@pytest.fixture
def no_gpu(monkeypatch):
    import rocmforge.backends as b

    monkeypatch.setattr(b, "gpu_unavailable_reason", lambda: "CuPy is installed but its GPU runtime is not "
                                                             "(libamdhip64.so.7: cannot open shared object file)")


def test_gpu_without_runtime_is_a_clear_error(no_gpu):
    with pytest.raises(DeviceError, match=r"libamdhip64.*device='cpu' or 'auto'"):
        get_backend("gpu")


def test_auto_falls_back_to_cpu_and_says_why(no_gpu, caplog):
    with caplog.at_level(logging.WARNING, logger="rocmforge.backends"):
        assert get_backend("auto").name == get_backend("cpu").name
    assert "libamdhip64" in caplog.text and "CPU" in caplog.text


def test_unknown_device():
    with pytest.raises(DeviceError, match="expected cpu, gpu or auto"):
        get_backend("tpu")


def test_reason_is_a_sentence_or_none():
    r = gpu_unavailable_reason()
    assert r is None or (isinstance(r, str) and "CuPy" in r)


def test_cupy_without_its_runtime_is_named(monkeypatch):
    """The ROCm CuPy wheel raises ImportError for libamdhip64.so.7 where ROCm is absent."""
    import importlib.abc

    class BrokenCupy(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "cupy":
                raise ImportError("libamdhip64.so.7: cannot open shared object file: No such file or directory")
            return None

    monkeypatch.delitem(sys.modules, "cupy", raising=False)
    monkeypatch.setattr(sys, "meta_path", [BrokenCupy(), *sys.meta_path])
    reason = gpu_unavailable_reason()
    assert reason.startswith("CuPy is installed but its GPU runtime is not") and "libamdhip64" in reason
