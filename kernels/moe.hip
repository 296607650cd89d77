// moe.hip -- mixture-of-experts routing and combination.
//
// moe_route: logits (T, E) float32 -> probs scratch (T, E), weights (T, k)
//   float32, ids (T, k) int32. Launch: one warp per token (block = RF_WARP
//   threads, grid = T). gating 0 softmax over all experts, 1 sigmoid; then k
//   rounds of a warp argmax (ties to the lower expert id), the chosen entry
//   knocked out; norm_topk renormalises the k weights to sum 1.
// moe_combine: y (T*k, d) per-pair expert outputs, weights (T, k) ->
//   out (T, d) = sum_j weights[t, j] * y[t*k + j]. 1-D grid-stride over T*d.
// The expert FFNs themselves run through matvec.hip's MoE mode.
#include "rf_common.h"

extern "C" __global__ void moe_route(const float* __restrict__ logits, float* __restrict__ probs,
                                     float* __restrict__ weights, int* __restrict__ ids, int E, int k,
                                     int gating, int norm_topk) {
    const int t = blockIdx.x, lane = threadIdx.x;
    const float* lg = logits + (rf_i64)t * E;
    float* pr = probs + (rf_i64)t * E;
    if (gating == 0) {
        float mx = -INFINITY;
        for (int e = lane; e < E; e += RF_WARP) mx = fmaxf(mx, lg[e]);
        mx = rf_warp_max(mx);
        float s = 0.f;
        for (int e = lane; e < E; e += RF_WARP) { const float z = expf(lg[e] - mx); pr[e] = z; s += z; }
        s = rf_warp_sum(s);
        for (int e = lane; e < E; e += RF_WARP) pr[e] = pr[e] / s;
    } else {
        for (int e = lane; e < E; e += RF_WARP) pr[e] = 1.f / (1.f + expf(-lg[e]));
    }
    float wsum = 0.f;
    for (int j = 0; j < k; ++j) {
        float bv = -INFINITY;
        int bi = 0x7fffffff;
        for (int e = lane; e < E; e += RF_WARP) {
            const float v = pr[e];
            if (v > bv || (v == bv && e < bi)) { bv = v; bi = e; }
        }
#pragma unroll
        for (int o = RF_WARP / 2; o > 0; o >>= 1) {
            const float v2 = rf_shfl_xor(bv, o);
            const int i2 = rf_shfl_xor(bi, o);
            if (v2 > bv || (v2 == bv && i2 < bi)) { bv = v2; bi = i2; }
        }
        if (lane == 0) {
            weights[(rf_i64)t * k + j] = bv;
            ids[(rf_i64)t * k + j] = bi;
        }
        if (lane == bi % RF_WARP) pr[bi] = -INFINITY;   // the owning lane: its own later reads see it
        wsum += bv;
    }
    if (norm_topk && lane == 0)
        for (int j = 0; j < k; ++j) weights[(rf_i64)t * k + j] /= wsum;
}

extern "C" __global__ void moe_combine(const float* __restrict__ y, const float* __restrict__ weights,
                                       float* __restrict__ out, int T, int k, int d) {
    const rf_i64 n = (rf_i64)T * d;
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        const rf_i64 t = i / d, c = i - t * d;
        float s = 0.f;
        for (int j = 0; j < k; ++j) s += weights[t * k + j] * y[(t * k + j) * d + c];
        out[i] = s;
    }
}
