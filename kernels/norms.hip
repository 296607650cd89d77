// norms.hip -- RMSNorm and LayerNorm over the last axis.
//
// Layout: x (rows, D) float32 contiguous, weight w (D) and bias b (D) float32
// or NULL, y (rows, D) float32 (may alias x).
// Launch: one block per row, blockDim.x a multiple of RF_WARP (256 by
// default); grid.x = rows. Each thread strides over the row's elements,
// the block reduces the sums (rf_block_sum), then each thread writes its elements.
#include "rf_common.h"

#define RF_NORM_MAX_WARPS 32

extern "C" __global__ void rms_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                        float* __restrict__ y, int D, float eps) {
    __shared__ float scratch[RF_NORM_MAX_WARPS];
    const rf_i64 base = (rf_i64)blockIdx.x * D;
    float ss = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float v = x[base + i];
        ss += v * v;
    }
    ss = rf_block_sum(ss, scratch);
    const float r = 1.f / sqrtf(ss / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float v = x[base + i] * r;
        y[base + i] = w ? v * w[i] : v;
    }
}

extern "C" __global__ void layer_norm_f32(const float* __restrict__ x, const float* __restrict__ w,
                                          const float* __restrict__ b, float* __restrict__ y, int D, float eps) {
    __shared__ float scratch[RF_NORM_MAX_WARPS];
    const rf_i64 base = (rf_i64)blockIdx.x * D;
    float s = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) s += x[base + i];
    const float mu = rf_block_sum(s, scratch) / (float)D;
    float ss = 0.f;
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        const float v = x[base + i] - mu;
        ss += v * v;
    }
    const float r = 1.f / sqrtf(rf_block_sum(ss, scratch) / (float)D + eps);
    for (int i = threadIdx.x; i < D; i += blockDim.x) {
        float v = (x[base + i] - mu) * r;
        if (w) v *= w[i];
        if (b) v += b[i];
        y[base + i] = v;
    }
}
