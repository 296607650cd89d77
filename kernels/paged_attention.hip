// paged_attention.hip -- KV append, decode attention and gather through a block table (paged KV).
//
// Layout: the pool of one layer is kc (n_blocks, bs, Hkv, Dk) and vc (n_blocks, bs, Hkv, Dv) as
// f16 bits; one sequence's position j lives in row j % bs of block table[j / bs] (int32), i.e. at
// slot = table[j / bs] * bs + j % bs. q (T, H, Dk) float32 holds queries at positions pos0 + t;
// out (T, H, Dv) float32. Masks, softcap, ALiBi and sinks follow attention.hip's contract: query
// at p sees keys j with lo <= j <= p, lo = max(0, p - window + 1) (window 0: 0), and with chunk > 0
// also j >= (p / chunk) * chunk; score = q.k * scale, cap * tanh(s / cap) when cap > 0, plus
// slopes[h] * (j - p) when slopes is non-null; sinks[h] (non-null) joins each denominator.
//
// ATT_NEK = ceil(Dk / RF_WARP), ATT_NEV = ceil(Dv / RF_WARP): head elements per lane (lane l holds
// elements l, l + RF_WARP, ...), passed with -D by the backend.
//
// paged_kv_store: 1-D grid-stride over the T * Hkv * D elements of k (then v); element i of row t
//   goes to slot(pos0 + t).
// paged_attn_decode: grid (H, T), block PA_NW warps. Query head h of query t; warp w takes keys
//   lo + w, lo + w + PA_NW, ... reading each through the table (no gather copy), keeps an online
//   softmax (m, l, acc), then warp 0 merges the PA_NW partial states through shared memory.
// paged_kv_gather: 1-D grid-stride; rows 0..n of the sequence into contiguous (n, Hkv, D) f16
//   buffers, for the tiled prefill kernel of attention.hip.
#include "rf_common.h"

#ifndef ATT_NEK
#define ATT_NEK 4
#endif
#ifndef ATT_NEV
#define ATT_NEV 4
#endif
#define PA_NW 4

RF_DEV rf_i64 pa_slot(const int* __restrict__ table, rf_i64 j, int bs) {
    return (rf_i64)table[j / bs] * bs + j % bs;
}

extern "C" __global__ void paged_kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                          rf_u16* __restrict__ kc, rf_u16* __restrict__ vc,
                                          const int* __restrict__ table, rf_i64 n_tok, rf_i64 pos0,
                                          rf_i64 kstride, rf_i64 vstride, int bs) {
    for (rf_i64 i = rf_gid(); i < n_tok * kstride; i += rf_gstride()) {
        const rf_i64 t = i / kstride, e = i % kstride;
        kc[pa_slot(table, pos0 + t, bs) * kstride + e] = rf_f2h(k[i]);
    }
    for (rf_i64 i = rf_gid(); i < n_tok * vstride; i += rf_gstride()) {
        const rf_i64 t = i / vstride, e = i % vstride;
        vc[pa_slot(table, pos0 + t, bs) * vstride + e] = rf_f2h(v[i]);
    }
}

extern "C" __global__ void paged_kv_gather(const rf_u16* __restrict__ kc, const rf_u16* __restrict__ vc,
                                           const int* __restrict__ table, rf_u16* __restrict__ kout,
                                           rf_u16* __restrict__ vout, rf_i64 n, rf_i64 kstride, rf_i64 vstride,
                                           int bs) {
    for (rf_i64 i = rf_gid(); i < n * kstride; i += rf_gstride())
        kout[i] = kc[pa_slot(table, i / kstride, bs) * kstride + i % kstride];
    for (rf_i64 i = rf_gid(); i < n * vstride; i += rf_gstride())
        vout[i] = vc[pa_slot(table, i / vstride, bs) * vstride + i % vstride];
}

extern "C" __global__ void paged_attn_decode(const float* __restrict__ q, const rf_u16* __restrict__ kc,
                                             const rf_u16* __restrict__ vc, const int* __restrict__ table,
                                             float* __restrict__ out, int T, int H, int Hkv, int Dk, int Dv,
                                             int pos0, int window, float scale, float cap, int chunk, int bs,
                                             const float* __restrict__ slopes, const float* __restrict__ sinks) {
    __shared__ float s_m[PA_NW], s_l[PA_NW];
    __shared__ float s_acc[PA_NW][ATT_NEV * RF_WARP];
    const int h = blockIdx.x, t = blockIdx.y;
    const int lane = threadIdx.x % RF_WARP, w = threadIdx.x / RF_WARP;
    const int kvh = h / (H / Hkv);
    const int p = pos0 + t;
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    if (chunk > 0) lo = max(lo, (p / chunk) * chunk);
    const float slope = slopes ? slopes[h] : 0.f;

    float qv[ATT_NEK];
#pragma unroll
    for (int i = 0; i < ATT_NEK; ++i) {
        const int e = lane + i * RF_WARP;
        qv[i] = e < Dk ? q[((rf_i64)t * H + h) * Dk + e] * scale : 0.f;
    }
    float m = -INFINITY, l = 0.f, acc[ATT_NEV];
#pragma unroll
    for (int i = 0; i < ATT_NEV; ++i) acc[i] = 0.f;

    for (int j = lo + w; j <= p; j += PA_NW) {
        const rf_i64 slot = pa_slot(table, j, bs);
        const rf_u16* kp = kc + (slot * Hkv + kvh) * (rf_i64)Dk;
        const rf_u16* vp = vc + (slot * Hkv + kvh) * (rf_i64)Dv;
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < ATT_NEK; ++i) {
            const int e = lane + i * RF_WARP;
            if (e < Dk) s += qv[i] * rf_h2f(kp[e]);
        }
        s = rf_warp_sum(s);
        if (cap > 0.f) s = cap * tanhf(s / cap);
        s += slope * (float)(j - p);
        const float mn = fmaxf(m, s);
        const float corr = __expf(m - mn);      // m = -inf on the first key: 0
        const float pe = __expf(s - mn);
        l = l * corr + pe;
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) {
            const int e = lane + i * RF_WARP;
            acc[i] = acc[i] * corr + (e < Dv ? pe * rf_h2f(vp[e]) : 0.f);
        }
        m = mn;
    }
    if (lane == 0) {
        s_m[w] = m;
        s_l[w] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_NEV; ++i) s_acc[w][lane + i * RF_WARP] = acc[i];
    __syncthreads();
    if (w != 0) return;
    float M = sinks ? sinks[h] : -INFINITY;
    for (int k = 0; k < PA_NW; ++k) M = fmaxf(M, s_m[k]);   // finite: key p is always visible
    float L = sinks ? __expf(sinks[h] - M) : 0.f;
    float f[PA_NW];
    for (int k = 0; k < PA_NW; ++k) {
        f[k] = s_m[k] == -INFINITY ? 0.f : __expf(s_m[k] - M);   // a warp that saw no key adds nothing
        L += s_l[k] * f[k];
    }
#pragma unroll
    for (int i = 0; i < ATT_NEV; ++i) {
        const int e = lane + i * RF_WARP;
        if (e >= Dv) continue;
        float o = 0.f;
        for (int k = 0; k < PA_NW; ++k) o += s_acc[k][e] * f[k];
        out[((rf_i64)t * H + h) * Dv + e] = o / L;
    }
}
