// moe_oss.hip -- gpt-oss experts: per-expert biases and the clamped SwiGLU.
//
// moe_oss_glu: g, u (R, ff) float32 gate/up projections of R (token, expert) rows,
//   gb, ub (E, ff) float32 biases, ids (R,) int32 expert of each row ->
//   h (R, ff) = (clamp(u + ub[e], -limit, limit) + 1) * gc * sigmoid(alpha * gc),
//   gc = min(g + gb[e], limit). 1-D grid-stride over R * ff, one element a thread.
// moe_oss_bias_rows: y (R, d) += b[ids[r]] for bias table b (E, d). Same launch shape.
// Elementwise only: no warp-level code, so nothing depends on the warp size.
#include "rf_common.h"

extern "C" __global__ void moe_oss_glu(const float* __restrict__ g, const float* __restrict__ u,
                                       const float* __restrict__ gb, const float* __restrict__ ub,
                                       const int* __restrict__ ids, float* __restrict__ h,
                                       rf_i64 n, int ff, float alpha, float limit) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        const rf_i64 r = i / ff, c = i - r * ff;
        const rf_i64 b = (rf_i64)ids[r] * ff + c;
        const float gv = fminf(g[i] + gb[b], limit);
        const float uv = fminf(fmaxf(u[i] + ub[b], -limit), limit);
        h[i] = (uv + 1.f) * gv / (1.f + expf(-alpha * gv));
    }
}

extern "C" __global__ void moe_oss_bias_rows(float* __restrict__ y, const float* __restrict__ b,
                                             const int* __restrict__ ids, rf_i64 n, int d) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        const rf_i64 r = i / d, c = i - r * d;
        y[i] += b[(rf_i64)ids[r] * d + c];
    }
}
