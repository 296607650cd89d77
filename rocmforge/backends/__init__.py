"""Compute backends: ``numpy`` (the reference, default) and ``cupy`` (HIP/CUDA kernels).

CuPy is imported only when the GPU backend is asked for, so importing
rocmforge never initialises a GPU.
"""

from __future__ import annotations

import logging

from ..errors import DeviceError
from .base import Backend

log = logging.getLogger(__name__)


def gpu_unavailable_reason() -> str | None:
    """None when CuPy sees a GPU; otherwise a sentence saying why not."""
    try:
        import cupy  # noqa: F401
    except ImportError as exc:
        if "libamdhip64" in str(exc) or "libcudart" in str(exc) or ".so" in str(exc):
            return f"CuPy is installed but its GPU runtime is not ({exc})"
        return "CuPy is not installed (pip install 'rocmforge[rocm]' or 'rocmforge[cuda]')"
    except Exception as exc:  # a broken CuPy install must not break the CPU path
        return f"CuPy failed to import ({type(exc).__name__}: {exc})"
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy found no usable GPU ({exc})"
    return None if n > 0 else "CuPy found no GPU"


def get_backend(device: str = "cpu") -> Backend:
    """``cpu`` -> NumPy; ``gpu`` -> CuPy (error if unavailable); ``auto`` -> GPU if present, else CPU."""
    device = (device or "cpu").lower()
    if device in ("cpu", "numpy"):
        from .numpy_backend import NumpyBackend

        return NumpyBackend()
    if device in ("gpu", "cuda", "rocm", "hip", "cupy", "auto"):
        reason = gpu_unavailable_reason()
        if reason is None:
            from .cupy_backend import CupyBackend

            return CupyBackend()
        if device == "auto":
            log.warning("no GPU: %s; running on the CPU", reason)
            from .numpy_backend import NumpyBackend

            return NumpyBackend()
        raise DeviceError(f"device='{device}' was asked for, but {reason}. Use device='cpu' or 'auto'.")
    raise DeviceError(f"unknown device '{device}'; expected cpu, gpu or auto")
