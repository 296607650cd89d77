// matvec.hip -- fused dequant + matrix-vector products for decode (T = 1..RF_MV_MAXT columns).
//
// Layout: W is the raw GGUF tensor, N rows of `row_bytes` bytes (row = one
// output feature, K inputs). Activations x (T, K) float32 are first turned
// into int8 blocks of 32 by quantize_act_q8 (xq int8 (T, K), xd float
// (T, K/32) scales, xs float (T, K/32, 2) sums of the dequantised halves);
// block formats then use int8 dot products (rf_dp4a), float formats (F32,
// F16, BF16) read x in float32 directly.
//
// Launch: block (RF_WARP, RF_MV_ROWS): one warp per output row, row =
// blockIdx.x * blockDim.y + threadIdx.y; grid.x = ceil(N / blockDim.y).
// Each lane walks the row's 32-weight groups g = lane, lane + RF_WARP, ...,
// decodes its group once and dots it with every column t < T, then the warp
// reduces and lane 0 writes y[t * N + row] (+ bias[row]).
// MoE mode (ids != NULL): grid.y = P (token, expert) pairs, each one column:
// x row p / x_div, weights of expert ids[p] (expert_bytes apart), y[p * N + row].
#include "rf_common.h"
#include "rf_quant.h"

#ifndef RF_MV_MAXT
#define RF_MV_MAXT 8
#endif

// one thread per 32-element group of x: int8 quantisation with a per-group scale
extern "C" __global__ void quantize_act_q8(const float* __restrict__ x, int* __restrict__ xq,
                                           float* __restrict__ xd, float* __restrict__ xs, rf_i64 n_groups) {
    for (rf_i64 g = rf_gid(); g < n_groups; g += rf_gstride()) {
        const float4* src = (const float4*)(x + g * 32);
        float v[32];
#pragma unroll
        for (int i = 0; i < 8; ++i) {
            float4 f = src[i];
            v[4 * i] = f.x; v[4 * i + 1] = f.y; v[4 * i + 2] = f.z; v[4 * i + 3] = f.w;
        }
        float amax = 0.f;
#pragma unroll
        for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(v[i]));
        const float d = amax / 127.f;
        const float id = d > 0.f ? 1.f / d : 0.f;
        int s0 = 0, s1 = 0;
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            int q0 = __float2int_rn(v[4 * k] * id), q1 = __float2int_rn(v[4 * k + 1] * id);
            int q2 = __float2int_rn(v[4 * k + 2] * id), q3 = __float2int_rn(v[4 * k + 3] * id);
            if (k < 4) s0 += q0 + q1 + q2 + q3; else s1 += q0 + q1 + q2 + q3;
            xq[g * 8 + k] = rf_pack4(q0, q1, q2, q3);
        }
        xd[g] = d;
        xs[2 * g] = d * (float)s0;
        xs[2 * g + 1] = d * (float)s1;
    }
}

#define RF_MATVEC_BLOCK(fmt)                                                                          \
extern "C" __global__ void matvec_##fmt(const rf_u8* __restrict__ W, rf_i64 row_bytes,                \
        const int* __restrict__ xq, const float* __restrict__ xd, const float* __restrict__ xs,      \
        float* __restrict__ y, const float* __restrict__ bias, int N, int K, int T,                   \
        const int* __restrict__ ids, int x_div, rf_i64 expert_bytes) {                               \
    const int row = blockIdx.x * blockDim.y + threadIdx.y;                                            \
    if (row >= N) return;                                                                             \
    const int lane = threadIdx.x;                                                                     \
    const rf_i64 NG = K / 32;                                                                         \
    const rf_u8* wrow = W + (rf_i64)row * row_bytes;                                                  \
    rf_i64 xrow0 = 0; rf_i64 yoff = 0;                                                                \
    int nt = T;                                                                                       \
    if (ids) {                                                                                        \
        const int p = blockIdx.y;                                                                     \
        wrow += (rf_i64)ids[p] * expert_bytes;                                                        \
        xrow0 = p / x_div; yoff = (rf_i64)p * N; nt = 1;                                              \
    }                                                                                                 \
    float acc[RF_MV_MAXT];                                                                            \
    _Pragma("unroll") for (int t = 0; t < RF_MV_MAXT; ++t) acc[t] = 0.f;                              \
    for (rf_i64 g = lane; g < NG; g += RF_WARP) {                                                     \
        RfGroup G;                                                                                    \
        rf_group_##fmt(wrow, g, G);                                                                   \
        _Pragma("unroll") for (int t = 0; t < RF_MV_MAXT; ++t) {                                      \
            if (t < nt) {                                                                             \
                const rf_i64 xg = (xrow0 + t) * NG + g;                                               \
                const int4* xv = (const int4*)(xq + xg * 8);                                          \
                const int4 a = xv[0], b = xv[1];                                                      \
                int s0 = rf_dp4a(G.q[0], a.x, 0); s0 = rf_dp4a(G.q[1], a.y, s0);                      \
                s0 = rf_dp4a(G.q[2], a.z, s0); s0 = rf_dp4a(G.q[3], a.w, s0);                         \
                int s1 = rf_dp4a(G.q[4], b.x, 0); s1 = rf_dp4a(G.q[5], b.y, s1);                      \
                s1 = rf_dp4a(G.q[6], b.z, s1); s1 = rf_dp4a(G.q[7], b.w, s1);                         \
                const float2 sx = ((const float2*)xs)[xg];                                            \
                acc[t] += xd[xg] * (G.d[0] * (float)s0 + G.d[1] * (float)s1)                          \
                          - (G.m[0] * sx.x + G.m[1] * sx.y);                                          \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    _Pragma("unroll") for (int t = 0; t < RF_MV_MAXT; ++t) {                                          \
        if (t < nt) {                                                                                 \
            const float s = rf_warp_sum(acc[t]);                                                      \
            if (lane == 0) y[yoff + (rf_i64)t * N + row] = s + (bias ? bias[row] : 0.f);              \
        }                                                                                             \
    }                                                                                                 \
}

RF_FOR_EACH_BLOCK_FORMAT(RF_MATVEC_BLOCK)

// ---- block formats decoded to floats (OCP MXFP8, MXFP6 E3M2): x read as float32 ---------------
// Same launch and MoE mode as the block kernels; x (rows, K) float32 instead of int8 blocks.
#define RF_MATVEC_FGROUP(fmt)                                                                         \
extern "C" __global__ void matvec_##fmt(const rf_u8* __restrict__ W, rf_i64 row_bytes,                \
        const float* __restrict__ x, float* __restrict__ y, const float* __restrict__ bias,          \
        int N, int K, int T, const int* __restrict__ ids, int x_div, rf_i64 expert_bytes) {          \
    const int row = blockIdx.x * blockDim.y + threadIdx.y;                                            \
    if (row >= N) return;                                                                             \
    const int lane = threadIdx.x;                                                                     \
    const rf_i64 NG = K / 32;                                                                         \
    const rf_u8* wrow = W + (rf_i64)row * row_bytes;                                                  \
    rf_i64 xrow0 = 0; rf_i64 yoff = 0;                                                                \
    int nt = T;                                                                                       \
    if (ids) {                                                                                        \
        const int p = blockIdx.y;                                                                     \
        wrow += (rf_i64)ids[p] * expert_bytes;                                                        \
        xrow0 = p / x_div; yoff = (rf_i64)p * N; nt = 1;                                              \
    }                                                                                                 \
    float acc[RF_MV_MAXT];                                                                            \
    _Pragma("unroll") for (int t = 0; t < RF_MV_MAXT; ++t) acc[t] = 0.f;                              \
    for (rf_i64 g = lane; g < NG; g += RF_WARP) {                                                     \
        float v[32];                                                                                  \
        rf_fgroup_##fmt(wrow, g, v);                                                                  \
        _Pragma("unroll") for (int t = 0; t < RF_MV_MAXT; ++t) {                                      \
            if (t < nt) {                                                                             \
                const float4* xv = (const float4*)(x + (xrow0 + t) * (rf_i64)K + g * 32);             \
                float s = 0.f;                                                                        \
                _Pragma("unroll") for (int k = 0; k < 8; ++k) {                                       \
                    const float4 a = xv[k];                                                           \
                    s += v[4 * k] * a.x + v[4 * k + 1] * a.y + v[4 * k + 2] * a.z + v[4 * k + 3] * a.w; \
                }                                                                                     \
                acc[t] += s;                                                                          \
            }                                                                                         \
        }                                                                                             \
    }                                                                                                 \
    _Pragma("unroll") for (int t = 0; t < RF_MV_MAXT; ++t) {                                          \
        if (t < nt) {                                                                                 \
            const float s = rf_warp_sum(acc[t]);                                                      \
            if (lane == 0) y[yoff + (rf_i64)t * N + row] = s + (bias ? bias[row] : 0.f);              \
        }                                                                                             \
    }                                                                                                 \
}

RF_FOR_EACH_FLOAT_GROUP_FORMAT(RF_MATVEC_FGROUP)

// ---- float formats: x read as float32, weights as f32 / f16 / bf16 elements -------------------
RF_DEV float rf_elem(const float* w, rf_i64 i) { return w[i]; }
RF_DEV float rf_elem(const rf_u16* w, rf_i64 i) { return rf_h2f(w[i]); }
struct rf_bf16_tag { rf_u16 v; };
RF_DEV float rf_elem(const rf_bf16_tag* w, rf_i64 i) { return rf_bf2f(w[i].v); }

template <typename E>
RF_DEV void rf_matvec_float(const E* __restrict__ W, const float* __restrict__ x, float* __restrict__ y,
                            const float* __restrict__ bias, int N, int K, int T, const int* __restrict__ ids,
                            int x_div, rf_i64 expert_elems) {
    const int row = blockIdx.x * blockDim.y + threadIdx.y;
    if (row >= N) return;
    const int lane = threadIdx.x;
    const E* wrow = W + (rf_i64)row * K;
    rf_i64 xrow0 = 0, yoff = 0;
    int nt = T;
    if (ids) {
        const int p = blockIdx.y;
        wrow += (rf_i64)ids[p] * expert_elems;
        xrow0 = p / x_div; yoff = (rf_i64)p * N; nt = 1;
    }
    float acc[RF_MV_MAXT];
#pragma unroll
    for (int t = 0; t < RF_MV_MAXT; ++t) acc[t] = 0.f;
    for (rf_i64 i = lane; i < K; i += RF_WARP) {
        const float w = rf_elem(wrow, i);
#pragma unroll
        for (int t = 0; t < RF_MV_MAXT; ++t)
            if (t < nt) acc[t] += w * x[(xrow0 + t) * K + i];
    }
#pragma unroll
    for (int t = 0; t < RF_MV_MAXT; ++t) {
        if (t < nt) {
            const float s = rf_warp_sum(acc[t]);
            if (lane == 0) y[yoff + (rf_i64)t * N + row] = s + (bias ? bias[row] : 0.f);
        }
    }
}

extern "C" __global__ void matvec_f32(const float* W, const float* x, float* y, const float* bias, int N, int K,
                                      int T, const int* ids, int x_div, rf_i64 expert_elems) {
    rf_matvec_float(W, x, y, bias, N, K, T, ids, x_div, expert_elems);
}
extern "C" __global__ void matvec_f16(const rf_u16* W, const float* x, float* y, const float* bias, int N, int K,
                                      int T, const int* ids, int x_div, rf_i64 expert_elems) {
    rf_matvec_float(W, x, y, bias, N, K, T, ids, x_div, expert_elems);
}
extern "C" __global__ void matvec_bf16(const rf_u16* W, const float* x, float* y, const float* bias, int N, int K,
                                       int T, const int* ids, int x_div, rf_i64 expert_elems) {
    rf_matvec_float((const rf_bf16_tag*)W, x, y, bias, N, K, T, ids, x_div, expert_elems);
}
