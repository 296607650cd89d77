// gated_delta.hip -- Gated DeltaNet's gated delta rule (Yang et al. 2024), the recurrent form, for a
// decode step and (one token after the other) for a prefill. The state is float32 and is updated in
// place; the NumPy reference is rocmforge/backends/numpy_delta.py (gated_delta_rule_ref and the
// gates of NumpyDelta.gated_delta_net).
//
// gdn_recurrent: q, k (T, Hk, dk), v (T, Hv, dv), a, b (T, Hv), A, dt_bias (Hv,), state S (Hv, dk, dv)
//   -> o (T, Hv, dv). Value head h reads key head h / (Hv / Hk), or h % Hk when `tiled`.
//   Per t: beta = sigmoid(b), g = A * softplus(a + dt_bias); q, k L2-normalised (eps 1e-6 under the
//   root), q scaled by dk^-1/2; S = exp(g) S; u = beta (v - S^T k); S += k u^T; o = S^T q.
//   Launch: grid (Hv, ceil(dv / GDN_CPB)); block GDN_CPB * GDN_KS threads. Column j of a head's state
//   is held by GDN_KS threads (a power of two <= RF_WARP: an aligned slice of one warp), thread `lane`
//   keeping rows lane + GDN_KS * r (r < GDN_R, GDN_KS * GDN_R >= dk) in registers. The sums over the
//   rows (|q|^2, |k|^2, S^T k, S^T q) are shuffle butterflies within the slice. The time loop runs
//   inside the kernel (a decode step is T = 1); every column is independent, so no block-wide sync.
#include "rf_common.h"

#ifndef GDN_KS
#define GDN_KS 16
#endif
#ifndef GDN_R
#define GDN_R 8
#endif
#define GDN_CPB ((256 / GDN_KS) > 0 ? (256 / GDN_KS) : 1)
#define GDN_THREADS (GDN_CPB * GDN_KS)

RF_DEV float gdn_slice_sum(float v) {
#pragma unroll
    for (int o = GDN_KS / 2; o > 0; o >>= 1) v += rf_shfl_xor(v, o);
    return v;
}

RF_DEV float gdn_softplus(float v) { return v > 20.f ? v : log1pf(expf(v)); }

extern "C" __global__ void __launch_bounds__(GDN_THREADS)
gdn_recurrent(const float* __restrict__ q, const float* __restrict__ k, const float* __restrict__ v,
              const float* __restrict__ a, const float* __restrict__ b, const float* __restrict__ A,
              const float* __restrict__ dt_bias, float* __restrict__ state, float* __restrict__ o,
              int T, int Hk, int Hv, int dk, int dv, int tiled) {
    const int h = blockIdx.x;
    const int lane = threadIdx.x % GDN_KS;
    const int col = blockIdx.y * GDN_CPB + threadIdx.x / GDN_KS;
    const bool valid = col < dv;                 // invalid columns still take part in the shuffles
    const int hk = tiled ? h % Hk : h / (Hv / Hk);
    const float Ah = A[h], bias = dt_bias[h];
    const float scale = rsqrtf((float)dk);
    float* S = state + (rf_i64)h * dk * dv;
    float s[GDN_R];
#pragma unroll
    for (int r = 0; r < GDN_R; ++r) {
        const int i = lane + GDN_KS * r;
        s[r] = (valid && i < dk) ? S[(rf_i64)i * dv + col] : 0.f;
    }
    for (int t = 0; t < T; ++t) {
        const rf_i64 qk0 = ((rf_i64)t * Hk + hk) * dk;
        float qv[GDN_R], kv[GDN_R];
        float sq = 0.f, sk = 0.f;
#pragma unroll
        for (int r = 0; r < GDN_R; ++r) {
            const int i = lane + GDN_KS * r;
            qv[r] = i < dk ? q[qk0 + i] : 0.f;
            kv[r] = i < dk ? k[qk0 + i] : 0.f;
            sq += qv[r] * qv[r];
            sk += kv[r] * kv[r];
        }
        const float qn = rsqrtf(gdn_slice_sum(sq) + 1e-6f) * scale;
        const float kn = rsqrtf(gdn_slice_sum(sk) + 1e-6f);
        const rf_i64 th = (rf_i64)t * Hv + h;
        const float decay = expf(Ah * gdn_softplus(a[th] + bias));
        const float beta = 1.f / (1.f + expf(-b[th]));
        float p = 0.f;
#pragma unroll
        for (int r = 0; r < GDN_R; ++r) {
            s[r] *= decay;
            kv[r] *= kn;
            p += s[r] * kv[r];
        }
        p = gdn_slice_sum(p);                    // (S^T k)[col]
        const rf_i64 vo = th * dv + col;
        const float u = beta * ((valid ? v[vo] : 0.f) - p);
        float out = 0.f;
#pragma unroll
        for (int r = 0; r < GDN_R; ++r) {
            s[r] += kv[r] * u;
            out += s[r] * qv[r];
        }
        out = gdn_slice_sum(out) * qn;           // (S^T q)[col], q's norm and scale applied once
        if (valid && lane == 0) o[vo] = out;
    }
#pragma unroll
    for (int r = 0; r < GDN_R; ++r) {
        const int i = lane + GDN_KS * r;
        if (valid && i < dk) S[(rf_i64)i * dv + col] = s[r];
    }
}
