"""Prefill GEMMs with fp16 operands and a float32 result in one cuBLAS / hipBLAS call.

``cupy.matmul`` of two fp16 arrays returns fp16, which the backend then cast to
float32: a pass over every (T, N) output that cost about as much as the casts
of the inputs (RESULTS.md, the pp512 profile). ``gemmEx`` writes float32
directly, accumulating in float32 on the tensor cores. Where the library or
the build does not offer it (an old CuPy, a HIP build without the binding), the
first failure is logged and the backend keeps the fp16 matmul and the cast.
"""

from __future__ import annotations

import logging

import numpy as np

log = logging.getLogger(__name__)

_state: dict[str, object] = {}


def gemm_f16_f32(x16, wT):
    """(T, N) float32 = x16 (T, K) @ wT (K, N): x16 C-contiguous fp16, wT the transposed view of a
    C-contiguous (N, K) fp16 weight (as cupy.matmul takes it). None when gemmEx is unavailable."""
    if _state.get("off"):
        return None
    try:
        import cupy as cp
        from cupy.cuda import cublas, device, runtime

        w16 = wT.T
        if not (x16.flags.c_contiguous and w16.flags.c_contiguous):
            return None
        T, K = x16.shape
        N = w16.shape[0]
        y = cp.empty((T, N), cp.float32)
        one, zero = np.ones(1, np.float32), np.zeros(1, np.float32)
        # row-major y = x @ w.T is column-major y^T (N x T) = w (N x K) . x^T: op(A) = T on w's column-major K x N
        cublas.gemmEx(device.get_cublas_handle(), cublas.CUBLAS_OP_T, cublas.CUBLAS_OP_N, N, T, K,
                      one.ctypes.data, w16.data.ptr, runtime.CUDA_R_16F, K, x16.data.ptr, runtime.CUDA_R_16F, K,
                      zero.ctypes.data, y.data.ptr, runtime.CUDA_R_32F, N, cublas.CUBLAS_COMPUTE_32F,
                      cublas.CUBLAS_GEMM_DEFAULT_TENSOR_OP)
        return y
    except Exception as exc:  # noqa: BLE001 - any binding or library gap: keep the fp16 matmul + cast
        _state["off"] = True
        log.info("gemmEx (fp16 x fp16 -> float32) unavailable, keeping matmul + cast: %s", exc)
        return None


gemm_f16_f32.is_matmul = True     # the profiler counts its FLOPs like cupy.matmul's (x, w.T)
