// norms.hip -- RMSNorm and LayerNorm over the last axis.
//
// Layout: x (rows, D) float32 contiguous, weight w (D) and bias b (D) float32
// or NULL, y (rows, D) float32 (may alias x).
// Launch: one block per row, blockDim.x a multiple of RF_WARP (the backend gives up to 1024: one
// element or float4 each); grid.x = rows. Each thread strides over the row's elements,
// the block reduces the sums (rf_block_sum), then each thread writes its elements.
#include "rf_common.h"
#include "rf_q8.h"

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

// ---- with the int8 blocks of the output (decode: the norm's output feeds matvecs) -------------
// rms_norm_q8_f32 / add_rms_norm_q8_f32: as rms_norm_f32, and also write y quantised exactly as
// quantize_act_q8 (matvec.hip) does: xq int8x4 words, xd (D/32 per row) scales, xs (2 per group)
// scaled half-sums. D % 32 == 0; each thread owns float4s t, t + blockDim.x, ... so the 8 threads
// of a 32-element group are 8 consecutive lanes of one warp (blockDim.x % RF_WARP == 0).
// add_rms_norm_q8_f32 first forms s = a + b (written to s: the residual stream), then normalises s.
// xq == NULL: no int8 blocks (rows too many for the matvecs), only the norm.

RF_DEV void rf_rms_norm_q8_row(const float4* __restrict__ a4, const float4* __restrict__ b4,
                               float4* __restrict__ s4, const float* __restrict__ w, float* __restrict__ y,
                               int* __restrict__ xq, float* __restrict__ xd, float* __restrict__ xs,
                               int D, float eps) {
    __shared__ float scratch[RF_NORM_MAX_WARPS];
    const rf_i64 row = blockIdx.x;
    const int n4 = D / 4;
    a4 += row * n4;
    float ss = 0.f;
    for (int i = threadIdx.x; i < n4; i += blockDim.x) {
        float4 v = a4[i];
        if (b4) {
            const float4 u = b4[row * n4 + i];
            v.x += u.x; v.y += u.y; v.z += u.z; v.w += u.w;
            s4[row * n4 + i] = v;
        }
        ss += v.x * v.x + v.y * v.y + v.z * v.z + v.w * v.w;
    }
    ss = rf_block_sum(ss, scratch);
    const float r = 1.f / sqrtf(ss / (float)D + eps);
    float4* y4 = (float4*)y + row * n4;
    const float4* src = b4 ? s4 + row * n4 : a4;   // each thread re-reads what it wrote itself
    for (int i = threadIdx.x; i - (int)(threadIdx.x % RF_WARP) < n4; i += blockDim.x) {
        const bool live = i < n4;     // whole warps stay in the loop for the group shuffles
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (live) {
            v = src[i];
            v.x *= r; v.y *= r; v.z *= r; v.w *= r;
            if (w) {
                const float4 m = ((const float4*)w)[i];
                v.x *= m.x; v.y *= m.y; v.z *= m.z; v.w *= m.w;
            }
            y4[i] = v;
        }
        if (xq) rf_q8_group_store(v, row * n4 + i, live, xq, xd, xs);
    }
}

extern "C" __global__ void rms_norm_q8_f32(const float* __restrict__ x, const float* __restrict__ w,
                                           float* __restrict__ y, int* __restrict__ xq, float* __restrict__ xd,
                                           float* __restrict__ xs, int D, float eps) {
    rf_rms_norm_q8_row((const float4*)x, nullptr, nullptr, w, y, xq, xd, xs, D, eps);
}

extern "C" __global__ void add_rms_norm_q8_f32(const float* __restrict__ a, const float* __restrict__ b,
                                               float* __restrict__ s, const float* __restrict__ w,
                                               float* __restrict__ y, int* __restrict__ xq, float* __restrict__ xd,
                                               float* __restrict__ xs, int D, float eps) {
    rf_rms_norm_q8_row((const float4*)a, (const float4*)b, (float4*)s, w, y, xq, xd, xs, D, eps);
}
