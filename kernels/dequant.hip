// dequant.hip -- expand quantised rows to float32 or float16 (prefill GEMM operands, embedding rows).
//
// Layout: W is the raw GGUF tensor, rows of `row_bytes` bytes, K weights each.
// `rows` (nullable) selects source rows: output row r comes from source row
// rows[r] (embedding lookup); NULL means output row r = source row r.
// Output: out32 (n_rows, K) float32 when non-NULL, else out16 (n_rows, K) f16 bits.
//
// Block formats, dequant_<fmt>: one thread per 32-weight group, grid-stride
// over n_rows * K/32 groups; each thread decodes its group (rf_quant.h) and
// writes its 32 consecutive outputs as 16-byte vector stores (rf_store_group: scalar
// 2-byte stores from threads 64 bytes apart ran the f16 path at ~220 GB/s on an H200).
// OCP MX formats, dequant_<fmt>: the same, decoding exactly to floats (rf_xgroup_*).
// Float formats, dequant_{f32,f16,bf16}: one thread per element, grid-stride.
#include "rf_common.h"
#include "rf_quant.h"

// 32 consecutive outputs at element offset o (a multiple of 32, so 16-byte aligned)
RF_DEV void rf_store_group(float* __restrict__ out32, rf_u16* __restrict__ out16, rf_i64 o, const float* v) {
    if (out32) {
        float4* p = reinterpret_cast<float4*>(out32 + o);
#pragma unroll
        for (int q = 0; q < 8; ++q) p[q] = make_float4(v[4 * q], v[4 * q + 1], v[4 * q + 2], v[4 * q + 3]);
    } else {
        uint4* p = reinterpret_cast<uint4*>(out16 + o);
#pragma unroll
        for (int q = 0; q < 4; ++q) {
            rf_u32 w[4];
#pragma unroll
            for (int e = 0; e < 4; ++e)    // element 2e at the low half (little-endian)
                w[e] = (rf_u32)rf_f2h(v[8 * q + 2 * e]) | ((rf_u32)rf_f2h(v[8 * q + 2 * e + 1]) << 16);
            p[q] = make_uint4(w[0], w[1], w[2], w[3]);
        }
    }
}

#define RF_DEQUANT_BLOCK(fmt)                                                                         \
extern "C" __global__ void dequant_##fmt(const rf_u8* __restrict__ W, rf_i64 row_bytes,               \
        const long long* __restrict__ rows, rf_i64 n_rows, int K, float* __restrict__ out32,          \
        rf_u16* __restrict__ out16) {                                                                 \
    const rf_i64 NG = K / 32;                                                                         \
    const rf_i64 total = n_rows * NG;                                                                 \
    for (rf_i64 i = rf_gid(); i < total; i += rf_gstride()) {                                         \
        const rf_i64 r = i / NG, g = i - r * NG;                                                      \
        const rf_i64 src = rows ? rows[r] : r;                                                        \
        RfGroup G;                                                                                    \
        rf_group_##fmt(W + src * row_bytes, g, G);                                                    \
        float v[32];                                                                                  \
        _Pragma("unroll") for (int k = 0; k < 8; ++k) {                                               \
            const int h = k >> 2;                                                                     \
            _Pragma("unroll") for (int j = 0; j < 4; ++j) {                                           \
                const int qv = (int)(signed char)((G.q[k] >> (8 * j)) & 0xff);                        \
                v[4 * k + j] = G.d[h] * (float)qv - G.m[h];                                           \
            }                                                                                         \
        }                                                                                             \
        rf_store_group(out32, out16, r * K + g * 32, v);                                              \
    }                                                                                                 \
}

RF_FOR_EACH_BLOCK_FORMAT(RF_DEQUANT_BLOCK)
RF_FOR_EACH_TILED_FORMAT(RF_DEQUANT_BLOCK)

// OCP MX formats, decoded exactly to floats (rf_xgroup_*, FTZ-proof): same launch as above
#define RF_DEQUANT_FGROUP(fmt)                                                                        \
extern "C" __global__ void dequant_##fmt(const rf_u8* __restrict__ W, rf_i64 row_bytes,               \
        const long long* __restrict__ rows, rf_i64 n_rows, int K, float* __restrict__ out32,          \
        rf_u16* __restrict__ out16) {                                                                 \
    const rf_i64 NG = K / 32;                                                                         \
    const rf_i64 total = n_rows * NG;                                                                 \
    for (rf_i64 i = rf_gid(); i < total; i += rf_gstride()) {                                         \
        const rf_i64 r = i / NG, g = i - r * NG;                                                      \
        const rf_i64 src = rows ? rows[r] : r;                                                        \
        float v[32];                                                                                  \
        rf_xgroup_##fmt(W + src * row_bytes, g, v);                                                   \
        rf_store_group(out32, out16, r * K + g * 32, v);                                              \
    }                                                                                                 \
}

RF_FOR_EACH_MX_FORMAT(RF_DEQUANT_FGROUP)

// kind: 0 = f32, 1 = f16, 2 = bf16 elements
RF_DEV float rf_plain(const rf_u8* W, rf_i64 i, int kind) {
    if (kind == 0) return ((const float*)W)[i];
    const rf_u16 b = ((const rf_u16*)W)[i];
    return kind == 1 ? rf_h2f(b) : rf_bf2f(b);
}

extern "C" __global__ void dequant_plain(const rf_u8* __restrict__ W, int kind, const long long* __restrict__ rows,
                                         rf_i64 n_rows, int K, float* __restrict__ out32,
                                         rf_u16* __restrict__ out16) {
    const rf_i64 total = n_rows * (rf_i64)K;
    for (rf_i64 i = rf_gid(); i < total; i += rf_gstride()) {
        const rf_i64 r = i / K, c = i - r * K;
        const rf_i64 src = rows ? rows[r] : r;
        const float v = rf_plain(W, src * K + c, kind);
        if (out32) out32[i] = v; else out16[i] = rf_f2h(v);
    }
}
