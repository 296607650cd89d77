// paged_attention.hip -- KV append, decode attention and gather through a block table (paged KV).
//
// Layout: the pool of one layer is kc (n_blocks, bs, Hkv, Dk) and vc (n_blocks, bs, Hkv, Dv) as
// f16 bits, or as FP8 codes (ATT_KV 1 E4M3FN / 2 E4M3FNUZ, rf_fp8.h: the same att_enc / att_ld as
// attention.hip's contiguous cache, so both hold the same codes for the same values); one sequence's position j lives in row j % bs of block table[j / bs] (int32), i.e. at
// slot = table[j / bs] * bs + j % bs. q (T, H, Dk) float32 holds queries at positions pos0 + t;
// out (T, H, Dv) float32. Masks, softcap, ALiBi and sinks follow attention.hip's contract: query
// at p sees keys j with lo <= j <= p, lo = max(0, p - window + 1) (window 0: 0), and with chunk > 0
// also j >= (p / chunk) * chunk; score = q.k * scale, cap * tanh(s / cap) when cap > 0, plus
// slopes[h] * (j - p) when slopes is non-null; sinks[h] (non-null) joins each denominator.
//
// ATT_NEK = ceil(Dk / RF_WARP), ATT_NEV = ceil(Dv / RF_WARP): head elements per lane (lane l holds
// elements l, l + RF_WARP, ...), passed with -D by the backend.
// FP8 scales: a store writes att_enc(x, kscale / vscale) (the layer's scales); a read gives the code's
// value times 2^(bias - 15), so the backend passes decode's scale = softmax scale * k_scale * 2^(15 - bias)
// and vscale = v_scale * 2^(15 - bias) (both 1 for f16: scale is then the softmax scale alone).
//
// paged_kv_store: 1-D grid-stride over the T * Hkv * D elements of k (then v); element i of row t
//   goes to slot(pos0 + t), as att_enc(x, kscale) / att_enc(x, vscale).
// paged_attn_decode: grid (H, T), block PA_NW warps. Query head h of query t; warp w takes the runs
//   of PA_KU keys from lo + w * PA_KU, every PA_NW * PA_KU keys, reading each through the table (no
//   gather copy), keeps an online
//   softmax (m, l, acc), then warp 0 merges the PA_NW partial states through shared memory and
//   writes o / L * vscale.
// paged_kv_store_rows / paged_attn_decode_rows: the same for R sequences of one token each in one
//   launch (a batched decode step): rows = [pos (R) | tables (R, mb)] int32 on the device, row r's
//   token at position pos[r] of the sequence whose block table is tables[r]; its q, k, v rows are row
//   r of q, k, v. Grid (H, R) for the attention. The positions live on the device, so a captured
//   decode graph replays with new ones (the host writes rows before each replay).
// paged_kv_gather: 1-D grid-stride; rows 0..n of the sequence into contiguous (n, Hkv, D) buffers of
//   the pool's element (f16 bits or codes, copied as they are), for the tiled prefill kernel of
//   attention.hip (built with the same ATT_KV, reading them with the same factors).
#include "rf_common.h"
#include "rf_fp8.h"

#ifndef ATT_NEK
#define ATT_NEK 4
#endif
#ifndef ATT_NEV
#define ATT_NEV 4
#endif
#define PA_NW 8      /* warps per block: a 16-sequence step has 16 x H blocks */
#define PA_KU 4      /* keys per warp and round */

RF_DEV rf_i64 pa_slot(const int* __restrict__ table, rf_i64 j, int bs) {
    return (rf_i64)table[j / bs] * bs + j % bs;
}

extern "C" __global__ void paged_kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                          att_kv_t* __restrict__ kc, att_kv_t* __restrict__ vc,
                                          const int* __restrict__ table, rf_i64 n_tok, rf_i64 pos0,
                                          rf_i64 kstride, rf_i64 vstride, int bs, float kscale, float vscale) {
    for (rf_i64 i = rf_gid(); i < n_tok * kstride; i += rf_gstride()) {
        const rf_i64 t = i / kstride, e = i % kstride;
        kc[pa_slot(table, pos0 + t, bs) * kstride + e] = att_enc(k[i], kscale);
    }
    for (rf_i64 i = rf_gid(); i < n_tok * vstride; i += rf_gstride()) {
        const rf_i64 t = i / vstride, e = i % vstride;
        vc[pa_slot(table, pos0 + t, bs) * vstride + e] = att_enc(v[i], vscale);
    }
}

extern "C" __global__ void paged_kv_store_rows(const float* __restrict__ k, const float* __restrict__ v,
                                               att_kv_t* __restrict__ kc, att_kv_t* __restrict__ vc,
                                               const int* __restrict__ rows, int R, int mb, rf_i64 kstride,
                                               rf_i64 vstride, int bs, float kscale, float vscale) {
    const int* tables = rows + R;
    for (rf_i64 i = rf_gid(); i < (rf_i64)R * kstride; i += rf_gstride()) {
        const rf_i64 r = i / kstride, e = i % kstride;
        kc[pa_slot(tables + r * mb, rows[r], bs) * kstride + e] = att_enc(k[i], kscale);
    }
    for (rf_i64 i = rf_gid(); i < (rf_i64)R * vstride; i += rf_gstride()) {
        const rf_i64 r = i / vstride, e = i % vstride;
        vc[pa_slot(tables + r * mb, rows[r], bs) * vstride + e] = att_enc(v[i], vscale);
    }
}

extern "C" __global__ void paged_kv_gather(const att_kv_t* __restrict__ kc, const att_kv_t* __restrict__ vc,
                                           const int* __restrict__ table, att_kv_t* __restrict__ kout,
                                           att_kv_t* __restrict__ vout, rf_i64 n, rf_i64 kstride, rf_i64 vstride,
                                           int bs) {
    for (rf_i64 i = rf_gid(); i < n * kstride; i += rf_gstride())
        kout[i] = kc[pa_slot(table, i / kstride, bs) * kstride + i % kstride];
    for (rf_i64 i = rf_gid(); i < n * vstride; i += rf_gstride())
        vout[i] = vc[pa_slot(table, i / vstride, bs) * vstride + i % vstride];
}

// 4 stored elements at p (4-element aligned) as floats, in one load
RF_DEV void att_ld4(const rf_u16* __restrict__ p, float* o) {
    const uint2 w = *(const uint2*)p;
    o[0] = rf_h2f((rf_u16)(w.x & 0xffffu)); o[1] = rf_h2f((rf_u16)(w.x >> 16));
    o[2] = rf_h2f((rf_u16)(w.y & 0xffffu)); o[3] = rf_h2f((rf_u16)(w.y >> 16));
}
RF_DEV void att_ld4(const rf_u8* __restrict__ p, float* o) {
    const rf_u32 w = *(const rf_u32*)p;
#pragma unroll
    for (int k = 0; k < 4; ++k) o[k] = att_ld((att_kv_t)((w >> (8 * k)) & 0xffu));
}

// elements e0 .. e0 + NE - 1 of a stored row of n as floats (0 at or past n); ``vec``: n % 4 == 0, so
// a run that starts on a multiple of 4 elements is 4-element aligned
template <int NE>
RF_DEV void pa_ld_run(const att_kv_t* __restrict__ row, int e0, int n, bool vec, float* out) {
    if (vec && NE % 4 == 0 && e0 + NE <= n) {
#pragma unroll
        for (int c = 0; c + 4 <= NE; c += 4) att_ld4(row + e0 + c, out + c);
    } else {
#pragma unroll
        for (int i = 0; i < NE; ++i) out[i] = e0 + i < n ? att_ld(row[e0 + i]) : 0.f;
    }
}

// One (query head, query row) of paged decode attention: query row t at position p, keys through table.
RF_DEV void pa_decode(const float* __restrict__ q, const att_kv_t* __restrict__ kc,
                      const att_kv_t* __restrict__ vc, const int* __restrict__ table, float* __restrict__ out,
                      int t, int p, int H, int Hkv, int Dk, int Dv, int window, float scale, float cap, int chunk,
                      int bs, const float* __restrict__ slopes, const float* __restrict__ sinks, float vscale) {
    __shared__ float s_m[PA_NW], s_l[PA_NW];
    __shared__ float s_acc[PA_NW][ATT_NEV * RF_WARP];
    const int h = blockIdx.x;
    const int lane = threadIdx.x % RF_WARP, w = threadIdx.x / RF_WARP;
    const int kvh = h / (H / Hkv);
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    if (chunk > 0) lo = max(lo, (p / chunk) * chunk);
    const float slope = slopes ? slopes[h] : 0.f;

    // lane owns elements lane * NE .. lane * NE + NE - 1 of a row: whole 4-element loads of K and V
    const bool kvec = (Dk & 3) == 0, vvec = (Dv & 3) == 0;
    float qv[ATT_NEK];
#pragma unroll
    for (int i = 0; i < ATT_NEK; ++i) {
        const int e = lane * ATT_NEK + i;
        qv[i] = e < Dk ? q[((rf_i64)t * H + h) * Dk + e] * scale : 0.f;
    }
    float m = -INFINITY, l = 0.f, acc[ATT_NEV];
#pragma unroll
    for (int i = 0; i < ATT_NEV; ++i) acc[i] = 0.f;

    // PA_KU consecutive keys per warp and round: their K and V loads are issued together and their
    // warp sums run as independent shuffle chains (one key at a time waited on each key's load)
    for (int j0 = lo + w * PA_KU; j0 <= p; j0 += PA_NW * PA_KU) {
        float s[PA_KU], vv[PA_KU][ATT_NEV];
#pragma unroll
        for (int u = 0; u < PA_KU; ++u) {
            s[u] = 0.f;
#pragma unroll
            for (int i = 0; i < ATT_NEV; ++i) vv[u][i] = 0.f;
            if (j0 + u <= p) {
                const rf_i64 slot = pa_slot(table, j0 + u, bs);
                const att_kv_t* kp = kc + (slot * Hkv + kvh) * (rf_i64)Dk;
                const att_kv_t* vp = vc + (slot * Hkv + kvh) * (rf_i64)Dv;
                float kv[ATT_NEK];
                pa_ld_run<ATT_NEK>(kp, lane * ATT_NEK, Dk, kvec, kv);
                pa_ld_run<ATT_NEV>(vp, lane * ATT_NEV, Dv, vvec, vv[u]);
#pragma unroll
                for (int i = 0; i < ATT_NEK; ++i) s[u] += qv[i] * kv[i];
            }
        }
        float mn = m;
#pragma unroll
        for (int u = 0; u < PA_KU; ++u) {
            s[u] = rf_warp_sum(s[u]);
            if (cap > 0.f) s[u] = cap * tanhf(s[u] / cap);
            s[u] += slope * (float)(j0 + u - p);
            if (j0 + u <= p) mn = fmaxf(mn, s[u]);
        }
        const float corr = __expf(m - mn);      // m = -inf on the first keys: 0
        l *= corr;
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) acc[i] *= corr;
#pragma unroll
        for (int u = 0; u < PA_KU; ++u) {
            if (j0 + u > p) continue;
            const float pe = __expf(s[u] - mn);
            l += pe;
#pragma unroll
            for (int i = 0; i < ATT_NEV; ++i) acc[i] += pe * vv[u][i];
        }
        m = mn;
    }
    if (lane == 0) {
        s_m[w] = m;
        s_l[w] = l;
    }
#pragma unroll
    for (int i = 0; i < ATT_NEV; ++i) s_acc[w][lane * ATT_NEV + i] = acc[i];
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
        out[((rf_i64)t * H + h) * Dv + e] = o / L * vscale;
    }
}

extern "C" __global__ void paged_attn_decode(const float* __restrict__ q, const att_kv_t* __restrict__ kc,
                                             const att_kv_t* __restrict__ vc, const int* __restrict__ table,
                                             float* __restrict__ out, int T, int H, int Hkv, int Dk, int Dv,
                                             int pos0, int window, float scale, float cap, int chunk, int bs,
                                             const float* __restrict__ slopes, const float* __restrict__ sinks,
                                             float vscale) {
    pa_decode(q, kc, vc, table, out, blockIdx.y, pos0 + (int)blockIdx.y, H, Hkv, Dk, Dv, window, scale, cap,
              chunk, bs, slopes, sinks, vscale);
}

extern "C" __global__ void paged_attn_decode_rows(const float* __restrict__ q, const att_kv_t* __restrict__ kc,
                                                  const att_kv_t* __restrict__ vc, const int* __restrict__ rows,
                                                  float* __restrict__ out, int R, int mb, int H, int Hkv, int Dk,
                                                  int Dv, int window, float scale, float cap, int chunk, int bs,
                                                  const float* __restrict__ slopes,
                                                  const float* __restrict__ sinks, float vscale) {
    const int r = blockIdx.y;
    pa_decode(q, kc, vc, rows + R + (rf_i64)r * mb, out, r, rows[r], H, Hkv, Dk, Dv, window, scale, cap, chunk,
              bs, slopes, sinks, vscale);
}
