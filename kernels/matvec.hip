// matvec.hip -- fused dequant + matrix-vector products for decode (T = 1..RF_MV_MAXT columns).
//
// Layout: W is the raw GGUF tensor, N rows of `row_bytes` bytes (row = one
// output feature, K inputs). Activations x (T, K) float32 are first turned
// into int8 blocks of 32 by quantize_act_q8 (xq int8 (T, K), xd float
// (T, K/32) scales, xs float (T, K/32, 2) sums of the dequantised halves);
// block formats then use int8 dot products (rf_dp4a), float formats (F32,
// F16, BF16) read x in float32 directly.
//
// Launch: block (RF_WARP, RF_MV_ROWS). Block formats: one warp per RF_MV_RPW
// consecutive output rows, row0 = (blockIdx.x * blockDim.y + threadIdx.y) * RF_MV_RPW,
// grid.x = ceil(N / (blockDim.y * RF_MV_RPW)); float formats: one warp per row.
// Each lane walks the rows' 32-weight groups g = lane, lane + RF_WARP, ...
// (RF_MV_UNROLL groups decoded before their dot products), dots each with every
// column t < T (the activation group loaded once for all RF_MV_RPW rows), then
// the warp reduces and lane 0 writes y[t * N + row] (+ bias[row]).
// MoE mode (ids != NULL): grid.y = P (token, expert) pairs, each one column:
// x row p / x_div, weights of expert ids[p] (expert_bytes apart), y[p * N + row].
#include "rf_common.h"
#include "rf_quant.h"
#include "rf_q8.h"

#ifndef RF_MV_MAXT
#define RF_MV_MAXT 8      /* columns (tokens) per launch; the backend compiles a MAXT=1 module for T = 1 */
#endif
#ifndef RF_MV_RPW
#define RF_MV_RPW 1       /* rows per warp (block formats): each activation group is loaded once for them */
#endif
#ifndef RF_MV_UNROLL
#define RF_MV_UNROLL 1    /* groups per lane decoded (loads issued) before the dot products */
#endif

// 8 threads per 32-element group of x (a float4 each): int8 quantisation with a per-group scale.
// Group g: xq[8g..8g+7] int8x4, xd[g] = amax/127, xs[2g], xs[2g+1] = d * sums of the two halves.
extern "C" __global__ void quantize_act_q8(const float* __restrict__ x, int* __restrict__ xq,
                                           float* __restrict__ xd, float* __restrict__ xs, rf_i64 n_groups) {
    const rf_i64 n = n_groups * 8;
    // whole warps stay in the loop (full-warp shuffles); blockDim.x is a multiple of RF_WARP
    for (rf_i64 i = rf_gid(); i - (rf_i64)(threadIdx.x % RF_WARP) < n; i += rf_gstride()) {
        const bool live = i < n;
        float4 f = make_float4(0.f, 0.f, 0.f, 0.f);
        if (live) f = ((const float4*)x)[i];
        rf_q8_group_store(f, i, live, xq, xd, xs);
    }
}

// One warp per RF_MV_RPW consecutive rows, row0 = (blockIdx.x * blockDim.y + threadIdx.y) * RF_MV_RPW.
template <class D>
RF_DEV void rf_matvec_block(const rf_u8* __restrict__ W, rf_i64 row_bytes, const int* __restrict__ xq,
                            const float* __restrict__ xd, const float* __restrict__ xs, float* __restrict__ y,
                            const float* __restrict__ bias, int N, int K, int T, const int* __restrict__ ids,
                            int x_div, rf_i64 expert_bytes) {
    const int row0 = (blockIdx.x * blockDim.y + threadIdx.y) * RF_MV_RPW;
    if (row0 >= N) return;
    const int lane = threadIdx.x;
    const rf_i64 NG = K / 32;
    const rf_u8* wbase = W;
    rf_i64 xrow0 = 0, yoff = 0;
    int nt = T;
    if (ids) {
        const int p = blockIdx.y;
        wbase += (rf_i64)ids[p] * expert_bytes;
        xrow0 = p / x_div; yoff = (rf_i64)p * N; nt = 1;
    }
    const rf_u8* wrow[RF_MV_RPW];
#pragma unroll
    for (int r = 0; r < RF_MV_RPW; ++r) wrow[r] = wbase + (rf_i64)min(row0 + r, N - 1) * row_bytes;
    float acc[RF_MV_RPW][RF_MV_MAXT];
#pragma unroll
    for (int r = 0; r < RF_MV_RPW; ++r)
#pragma unroll
        for (int t = 0; t < RF_MV_MAXT; ++t) acc[r][t] = 0.f;
    for (rf_i64 g0 = lane; g0 < NG; g0 += RF_WARP * RF_MV_UNROLL) {
        RfGroup G[RF_MV_UNROLL][RF_MV_RPW];
#pragma unroll
        for (int u = 0; u < RF_MV_UNROLL; ++u) {
            const rf_i64 g = g0 + u * RF_WARP;
            if (u == 0 || g < NG) {
#pragma unroll
                for (int r = 0; r < RF_MV_RPW; ++r) D::group(wrow[r], g, G[u][r]);
            }
        }
#pragma unroll
        for (int u = 0; u < RF_MV_UNROLL; ++u) {
            const rf_i64 g = g0 + u * RF_WARP;
            if (u == 0 || g < NG) {
#pragma unroll
                for (int t = 0; t < RF_MV_MAXT; ++t) {
                    if (t < nt) {
                        const rf_i64 xg = (xrow0 + t) * NG + g;
                        const int4* xv = (const int4*)(xq + xg * 8);
                        const int4 a = xv[0], b = xv[1];
                        const float2 sx = ((const float2*)xs)[xg];
                        const float dx = xd[xg];
#pragma unroll
                        for (int r = 0; r < RF_MV_RPW; ++r) {
                            const RfGroup& Q = G[u][r];
                            int s0 = rf_dp4a(Q.q[0], a.x, 0); s0 = rf_dp4a(Q.q[1], a.y, s0);
                            s0 = rf_dp4a(Q.q[2], a.z, s0); s0 = rf_dp4a(Q.q[3], a.w, s0);
                            int s1 = rf_dp4a(Q.q[4], b.x, 0); s1 = rf_dp4a(Q.q[5], b.y, s1);
                            s1 = rf_dp4a(Q.q[6], b.z, s1); s1 = rf_dp4a(Q.q[7], b.w, s1);
                            acc[r][t] += dx * (Q.d[0] * (float)s0 + Q.d[1] * (float)s1)
                                         - (Q.m[0] * sx.x + Q.m[1] * sx.y);
                        }
                    }
                }
            }
        }
    }
#pragma unroll
    for (int r = 0; r < RF_MV_RPW; ++r) {
#pragma unroll
        for (int t = 0; t < RF_MV_MAXT; ++t) {
            if (t < nt) {
                const float s = rf_warp_sum(acc[r][t]);
                if (lane == 0 && row0 + r < N)
                    y[yoff + (rf_i64)t * N + row0 + r] = s + (bias ? bias[row0 + r] : 0.f);
            }
        }
    }
}

#define RF_MATVEC_BLOCK(fmt)                                                                          \
struct rf_dec_##fmt {                                                                                 \
    static RF_DEV void group(const rf_u8* row, rf_i64 g, RfGroup& G) { rf_group_##fmt(row, g, G); }  \
};                                                                                                    \
extern "C" __global__ void matvec_##fmt(const rf_u8* __restrict__ W, rf_i64 row_bytes,                \
        const int* __restrict__ xq, const float* __restrict__ xd, const float* __restrict__ xs,      \
        float* __restrict__ y, const float* __restrict__ bias, int N, int K, int T,                   \
        const int* __restrict__ ids, int x_div, rf_i64 expert_bytes) {                               \
    rf_matvec_block<rf_dec_##fmt>(W, row_bytes, xq, xd, xs, y, bias, N, K, T, ids, x_div, expert_bytes); \
}

RF_FOR_EACH_BLOCK_FORMAT(RF_MATVEC_BLOCK)
RF_FOR_EACH_TILED_FORMAT(RF_MATVEC_BLOCK)
RF_FOR_EACH_MX_INT_FORMAT(RF_MATVEC_BLOCK)

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
