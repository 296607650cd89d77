// ssm.hip -- recurrent layers: Mamba's causal depthwise conv1d, the selective scan (Mamba S6 and
// Mamba-2 SSD share one kernel) and Mamba-2's gated group RMSNorm. Every state is float32 and is
// updated in place; the NumPy reference is rocmforge/backends/numpy_ssm.py.
//
// ssm_conv1d: x (T, C) float32, w (C, K), b (C,) or null, state (K-1, C) -> y (T, C).
//   One thread per channel c (1-D grid over C), looping over t: y[t, c] = b[c] +
//   sum_k w[c, k] * xin[t + k] with xin = [state; x]; then state <- the last K-1 rows of xin
//   (ascending j: state[j] is written after its old value state[T + j] was read).
//
// ssm_scan: channels c in [0, Cn), each with a state row h[c, 0..N) (state (Cn, N)).
//   head = c / div: dt (T, Cn/div), dt_bias (Cn/div) or null, D (Cn/div) or null;
//   A[head * a_row + n * a_col]; group g = c / (Cn / G) of B, C (T, G, N); x, y (T, Cn).
//   Mamba S6: div 1, A (Cn, N): a_row N, a_col 1, G 1.  Mamba-2: c = head * P + p, div P,
//   A (H,): a_row 1, a_col 0.
//   delta = clip(softplus(dt + dt_bias), dt_min, dt_max); h = exp(delta * A) h + delta x B;
//   y = sum_n h C + D x.
//   Launch: block = SSM_CPB * SSM_NPAD threads, SSM_NPAD (a power of two >= N) threads per
//   channel, one per state n; grid = ceil(Cn / SSM_CPB). The time loop runs inside the kernel
//   (a decode step is T = 1). The sum over n is a shuffle butterfly when SSM_NPAD <= RF_WARP (the
//   channel's threads are a power-of-two aligned slice of one warp), else a shared-memory tree.
//
// ssm_rms_norm_gated: x, z (T, C) -> y = rms_norm(x * silu(z)) over each group of `group`
//   channels, times w (C,). One block per (t, group); block = a multiple of RF_WARP threads.
#include "rf_common.h"

#ifndef SSM_NPAD
#define SSM_NPAD 16
#endif
#define SSM_CPB ((256 / SSM_NPAD) > 0 ? (256 / SSM_NPAD) : 1)
#define SSM_THREADS (SSM_CPB * SSM_NPAD)

extern "C" __global__ void ssm_conv1d(const float* __restrict__ x, const float* __restrict__ w,
                                      const float* __restrict__ b, float* __restrict__ state,
                                      float* __restrict__ y, int T, int C, int K) {
    const rf_i64 c = (rf_i64)blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    const int S = K - 1;                        // rows of state
    const float bias = b ? b[c] : 0.f;
    for (int t = 0; t < T; ++t) {
        float acc = bias;
        for (int k = 0; k < K; ++k) {
            const int j = t + k;                // row of xin = [state; x]
            const float v = j < S ? state[(rf_i64)j * C + c] : x[(rf_i64)(j - S) * C + c];
            acc += w[c * K + k] * v;
        }
        y[(rf_i64)t * C + c] = acc;
    }
    for (int j = 0; j < S; ++j) {
        const int src = T + j;
        state[(rf_i64)j * C + c] = src < S ? state[(rf_i64)src * C + c] : x[(rf_i64)(src - S) * C + c];
    }
}

RF_DEV float ssm_softplus(float v) { return v > 20.f ? v : log1pf(expf(v)); }

extern "C" __global__ void __launch_bounds__(SSM_THREADS)
ssm_scan(const float* __restrict__ x, const float* __restrict__ dt, const float* __restrict__ A,
         const float* __restrict__ B, const float* __restrict__ Cm, const float* __restrict__ D,
         const float* __restrict__ dt_bias, float* __restrict__ state, float* __restrict__ y,
         int T, int Cn, int N, int div, int a_row, int a_col, int G, float dt_min, float dt_max) {
    __shared__ float red[SSM_THREADS];
    const int n = threadIdx.x % SSM_NPAD;
    const int local = threadIdx.x / SSM_NPAD;
    const rf_i64 c = (rf_i64)blockIdx.x * SSM_CPB + local;
    const bool valid = c < Cn && n < N;
    const int nh = Cn / div;                    // dt columns (heads)
    const rf_i64 head = valid ? c / div : 0;
    const rf_i64 g = valid ? c / (Cn / G) : 0;
    const float a = valid ? A[head * a_row + (rf_i64)n * a_col] : 0.f;
    const float bias = (valid && dt_bias) ? dt_bias[head] : 0.f;
    const float dskip = (valid && D) ? D[head] : 0.f;
    float h = valid ? state[c * N + n] : 0.f;
    for (int t = 0; t < T; ++t) {
        float p = 0.f, xv = 0.f;
        if (valid) {
            const float delta = fminf(fmaxf(ssm_softplus(dt[(rf_i64)t * nh + head] + bias), dt_min), dt_max);
            xv = x[(rf_i64)t * Cn + c];
            const rf_i64 bc = ((rf_i64)t * G + g) * N + n;
            h = expf(delta * a) * h + delta * xv * B[bc];
            p = h * Cm[bc];
        }
#if SSM_NPAD <= RF_WARP
#pragma unroll
        for (int o = SSM_NPAD / 2; o > 0; o >>= 1) p += rf_shfl_xor(p, o);
#else
        red[threadIdx.x] = p;
        __syncthreads();
#pragma unroll
        for (int o = SSM_NPAD / 2; o > 0; o >>= 1) {
            if (n < o) red[threadIdx.x] += red[threadIdx.x + o];
            __syncthreads();
        }
        p = red[threadIdx.x - n];
        __syncthreads();                        // red is rewritten next step
#endif
        if (valid && n == 0) y[(rf_i64)t * Cn + c] = p + dskip * xv;
    }
    if (valid) state[c * N + n] = h;
}

extern "C" __global__ void ssm_rms_norm_gated(const float* __restrict__ x, const float* __restrict__ z,
                                              const float* __restrict__ w, float* __restrict__ y, int C,
                                              int group, float eps) {
    __shared__ float scratch[1024 / RF_WARP];
    const rf_i64 t = blockIdx.x;
    const int g0 = blockIdx.y * group;
    const rf_i64 row = t * C;
    float ss = 0.f;
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        const float zv = z[row + g0 + i];
        const float v = x[row + g0 + i] * zv / (1.f + expf(-zv));
        ss += v * v;
    }
    const float inv = rsqrtf(rf_block_sum(ss, scratch) / group + eps);
    for (int i = threadIdx.x; i < group; i += blockDim.x) {
        const float zv = z[row + g0 + i];
        const float v = x[row + g0 + i] * zv / (1.f + expf(-zv));
        y[row + g0 + i] = v * inv * w[g0 + i];
    }
}
