"""Compute backends: ``cpu-kernels`` (what ``device="cpu"`` gets: NumPy plus Numba kernels that read
the quantised blocks), ``numpy`` (the float32 reference every other backend is checked against) and
``cupy`` (HIP/CUDA kernels).

On the CPU the Numba kernels decode about 2.7x faster than the float backend, in a fraction of its
memory (benchmarks/RESULTS.md, CPU sections). Their decode steps quantise activations to int8 per 32
as llama.cpp does, so a decode's logits differ from the float reference's by ~1e-3 NMSE; a prefill
runs in float throughout, so a prompt's first token is the reference's. A step of more than 8 rows
runs in float too, so a row's arithmetic depends on what shares its step: ``rocmforge serve`` keeps
the float reference on the CPU, where a request's tokens must not depend on its batch. Tests that
need float math, and anyone who wants the reference, ask for ``device="numpy"`` (or set
ROCMFORGE_CPU_KERNELS=0); without numba, ``cpu`` falls back to NumPy with a log line.

CuPy is imported only when the GPU backend is asked for, so importing
rocmforge never initialises a GPU.
"""

from __future__ import annotations

import logging
import os

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


def cpu_kernels_unavailable_reason() -> str | None:
    """None when the Numba CPU kernels can be used; otherwise a sentence saying why not."""
    try:
        import numba  # noqa: F401
    except Exception as exc:  # not installed, or a broken llvmlite: the float path still works
        return f"numba is not importable ({type(exc).__name__}: {exc})"
    return None


def cpu_kernels_backend() -> Backend:
    """The quantised Numba kernels when numba imports, else (with a log line) the NumPy float reference."""
    reason = cpu_kernels_unavailable_reason()
    if reason is None:
        from .cpu_backend import CpuBackend

        return CpuBackend()
    from .numpy_backend import NumpyBackend

    log.warning("CPU kernels off: %s; running the NumPy float backend (dequantised weights)", reason)
    return NumpyBackend()


def get_backend(device: str = "cpu") -> Backend:
    """``cpu``/``cpu-kernels`` -> the Numba kernels on the quantised weights (NumPy, with a log line, if
    numba is missing; ``cpu`` with ROCMFORGE_CPU_KERNELS=0 -> NumPy); ``numpy`` -> the NumPy float
    reference; ``gpu`` -> CuPy (error if unavailable); ``auto`` -> GPU if present, else ``cpu``."""
    device = (device or "cpu").lower()
    if device == "cpu":
        device = "numpy" if os.environ.get("ROCMFORGE_CPU_KERNELS", "1") == "0" else "cpu-kernels"
    if device == "numpy":
        from .numpy_backend import NumpyBackend

        return NumpyBackend()
    if device == "cpu-kernels":
        return cpu_kernels_backend()
    if device in ("gpu", "cuda", "rocm", "hip", "cupy", "auto"):
        reason = gpu_unavailable_reason()
        if reason is None:
            from .cupy_backend import CupyBackend

            return CupyBackend()
        if device == "auto":
            log.warning("no GPU: %s; running on the CPU", reason)
            return get_backend("cpu")
        raise DeviceError(f"device='{device}' was asked for, but {reason}. Use device='cpu' or 'auto'.")
    raise DeviceError(f"unknown device '{device}'; expected cpu, gpu or auto (or numpy, cpu-kernels)")
