// attention.hip -- KV-cache append and causal attention (decode and tiled prefill), GQA-native.
//
// Layout: q (T, H, Dk) float32; the cache of one layer is kc (max_tokens, Hkv, Dk)
// and vc (max_tokens, Hkv, Dv) as f16 bits, or as FP8 codes (ATT_KV); out (T, H, Dv) float32. Query t sits
// at position pos0 + t and sees keys j with max(0, p - window + 1) <= j <= p
// (window 0: all); with chunk > 0 also only keys of its own chunk, j >= (p / chunk) * chunk
// (Llama 4). Scores are q.k * scale, then cap * tanh(s / cap) when cap > 0, plus
// slopes[h] * (j - p) when slopes is non-null (ALiBi). sinks (non-null: one logit per head)
// joins each softmax's denominator as exp(sinks[h] - m) and carries no value (gpt-oss).
// Query head h reads kv head h / (H / Hkv).
//
// Compile-time shape (passed with -D by the backend, one module per shape):
//   ATT_G   query heads one warp handles (a divisor of H / Hkv, at most 8): the
//           block reads each K/V row once for all of them (no KV replication)
//   ATT_NEK ceil(Dk / RF_WARP), ATT_NEV ceil(Dv / RF_WARP): head elements per lane;
//           lane l holds elements l, l + RF_WARP, ... of q, and of the output.
//   ATT_KV  the cache's element: 0 f16; 1 FP8 E4M3FN (OCP: bias 7, max 448, NaN 0x7f/0xff);
//           2 FP8 E4M3FNUZ (MI300: bias 8, max 240, no negative zero, NaN 0x80).
//
// FP8 cache (att_enc / att_ld in rf_fp8.h, shared with paged_attention.hip): kv_store writes
// code = fp8(clip(x / kv_scale, -max, max)), rounded to nearest even
// (ml_dtypes' cast, the NumPy reference). The attention kernels read a code through its f16 bit
// pattern: exponent and mantissa move up to f16's fields, which is the value times 2^(bias - 15)
// exactly (subnormals included), so the two flavours differ only in the factor 2^(15 - bias) the
// backend folds into the scale arguments: scale = softmax scale * k_scale * 2^(15 - bias) and
// vscale = v_scale * 2^(15 - bias) (1 for an f16 cache). A code is never read as the other flavour:
// the flavour's bias is part of the cache, which passes both factors.
// Each warp keeps an online softmax (max m, sum l, unnormalised acc) per head.
//
// Step position: pos0 is a kernel argument, or read from the device (pos_dev non-null: the
// int64 position of a captured decode step, written before each graph replay).
//
// kv_store: 1-D grid-stride, one element per thread, f32 -> f16 into the cache at row pos0.
// attn_decode (small T): grid (Hkv * (H/Hkv)/ATT_G, T, >= nsplit), block ATT_NW warps.
//   nsplit = max(1, min(nsplit_cap, ceil(visible keys of the last query / 64))), computed in
//   the kernel; blocks with blockIdx.z >= nsplit exit at once.
//   The keys visible to query t are cut into nsplit chunks (flash-decoding);
//   warps of a block stride over their chunk's keys four at a time (att_step4s), then
//   merge through shared memory. nsplit == 1 writes out directly, otherwise
//   partial (acc, m, l) go to part_acc / part_ml and attn_combine merges them
//   (grid T*H blocks, threads over Dv).
// attn_prefill (large T): grid (Hkv * (H/Hkv)/ATT_G, ceil(T / ATT_NWQ)), block ATT_NWQ
//   warps, warp w owns query t = blockIdx.y*ATT_NWQ + w. The block walks the key
//   range its queries need in tiles of ATT_BK keys staged in shared memory;
//   each warp consumes the tile's keys visible to its query, four at a time (att_step4).
#include "rf_common.h"
#include "rf_fp8.h"

#ifndef ATT_G
#define ATT_G 1
#endif
#ifndef ATT_NEK
#define ATT_NEK 4
#endif
#ifndef ATT_NEV
#define ATT_NEV 4
#endif
#define ATT_NW 4
#define ATT_NWQ 8
#define ATT_BK 32

extern "C" __global__ void kv_store(const float* __restrict__ k, const float* __restrict__ v,
                                    att_kv_t* __restrict__ kc, att_kv_t* __restrict__ vc,
                                    rf_i64 nk, rf_i64 nv, rf_i64 pos0_arg, rf_i64 kstride, rf_i64 vstride,
                                    const rf_i64* __restrict__ pos_dev, float kscale, float vscale) {
    const rf_i64 pos0 = pos_dev ? pos_dev[0] : pos0_arg;
    const rf_i64 koff = pos0 * kstride, voff = pos0 * vstride;
    for (rf_i64 i = rf_gid(); i < nk; i += rf_gstride()) kc[koff + i] = att_enc(k[i], kscale);
    for (rf_i64 i = rf_gid(); i < nv; i += rf_gstride()) vc[voff + i] = att_enc(v[i], vscale);
}

// Chunks of the keys for a step ending at position end - 1 (the backend's rule, repeated here so
// a captured step, whose grid is sized for the longest step, picks the same split as an eager one).
RF_DEV int att_nsplit(int end, int window, int chunk, int nsplit_cap) {
    int nvis = window > 0 ? min(end, window) : end;
    if (chunk > 0) nvis = min(nvis, chunk);
    return max(1, min(nsplit_cap, (nvis + 63) / 64));
}

// first key visible to the query at position p
RF_DEV int att_lo(int p, int window, int chunk) {
    int lo = window > 0 ? max(0, p - window + 1) : 0;
    if (chunk > 0) lo = max(lo, (p / chunk) * chunk);
    return lo;
}

struct AttState {
    float q[ATT_G][ATT_NEK];
    float acc[ATT_G][ATT_NEV];
    float m[ATT_G], l[ATT_G];
    float slope[ATT_G];     // ALiBi slope of each head (0: none)
};

RF_DEV void att_init(AttState& S, const float* __restrict__ q, rf_i64 t, int H, int h0, int Dk, float scale,
                     int lane, const float* __restrict__ slopes) {
#pragma unroll
    for (int g = 0; g < ATT_G; ++g) {
        S.slope[g] = slopes ? slopes[h0 + g] : 0.f;
#pragma unroll
        for (int i = 0; i < ATT_NEK; ++i) {
            const int e = lane + i * RF_WARP;
            S.q[g][i] = e < Dk ? q[(t * H + h0 + g) * (rf_i64)Dk + e] * scale : 0.f;
        }
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) S.acc[g][i] = 0.f;
        S.m[g] = -INFINITY;
        S.l[g] = 0.f;
    }
}

// one key/value row (f16 bits) at distance dist = j - p into the online softmax of every head of the warp
RF_DEV void att_step(AttState& S, const att_kv_t* kp, const att_kv_t* vp, int Dk, int Dv, float cap, int lane,
                     int dist) {
    float kv[ATT_NEK];
#pragma unroll
    for (int i = 0; i < ATT_NEK; ++i) {
        const int e = lane + i * RF_WARP;
        kv[i] = e < Dk ? att_ld(kp[e]) : 0.f;
    }
    float vv[ATT_NEV];
#pragma unroll
    for (int i = 0; i < ATT_NEV; ++i) {
        const int e = lane + i * RF_WARP;
        vv[i] = e < Dv ? att_ld(vp[e]) : 0.f;
    }
#pragma unroll
    for (int g = 0; g < ATT_G; ++g) {
        float s = 0.f;
#pragma unroll
        for (int i = 0; i < ATT_NEK; ++i) s += S.q[g][i] * kv[i];
        s = rf_warp_sum(s);
        if (cap > 0.f) s = cap * tanhf(s / cap);
        s += S.slope[g] * (float)dist;
        const float mn = fmaxf(S.m[g], s);
        const float corr = expf(S.m[g] - mn);
        const float p = expf(s - mn);
        S.l[g] = S.l[g] * corr + p;
        S.m[g] = mn;
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) S.acc[g][i] = S.acc[g][i] * corr + p * vv[i];
    }
}

// Four key/value rows (krow / vrow elements apart, distances dist .. dist + 3) in one online-softmax
// update. The four dot products reduce in interleaved butterflies: one key at a time, each step waits
// on its own chain of shuffles (the prefill kernel was latency-bound at ~3 TFLOP/s on an H200).
RF_DEV void att_step4s(AttState& S, const att_kv_t* kp, const att_kv_t* vp, rf_i64 krow, rf_i64 vrow, float cap,
                       int lane, int dist, int Dk, int Dv) {
    float kv[4][ATT_NEK], vv[4][ATT_NEV];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
#pragma unroll
        for (int i = 0; i < ATT_NEK; ++i) {
            const int e = lane + i * RF_WARP;
            kv[r][i] = e < Dk ? att_ld(kp[r * krow + e]) : 0.f;
        }
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) {
            const int e = lane + i * RF_WARP;
            vv[r][i] = e < Dv ? att_ld(vp[r * vrow + e]) : 0.f;
        }
    }
#pragma unroll
    for (int g = 0; g < ATT_G; ++g) {
        float s[4];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            s[r] = 0.f;
#pragma unroll
            for (int i = 0; i < ATT_NEK; ++i) s[r] += S.q[g][i] * kv[r][i];
        }
#pragma unroll
        for (int o = RF_WARP / 2; o > 0; o >>= 1) {
#pragma unroll
            for (int r = 0; r < 4; ++r) s[r] += rf_shfl_xor(s[r], o);
        }
        float mn = S.m[g];
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            if (cap > 0.f) s[r] = cap * tanhf(s[r] / cap);
            s[r] += S.slope[g] * (float)(dist + r);
            mn = fmaxf(mn, s[r]);
        }
        const float corr = expf(S.m[g] - mn);
        float p[4], psum = 0.f;
#pragma unroll
        for (int r = 0; r < 4; ++r) {
            p[r] = expf(s[r] - mn);
            psum += p[r];
        }
        S.l[g] = S.l[g] * corr + psum;
        S.m[g] = mn;
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i)
            S.acc[g][i] = S.acc[g][i] * corr + p[0] * vv[0][i] + p[1] * vv[1][i] + p[2] * vv[2][i] + p[3] * vv[3][i];
    }
}

// four rows of a tile staged in shared memory (rows Dk / Dv apart)
RF_DEV void att_step4(AttState& S, const att_kv_t* kp, const att_kv_t* vp, int Dk, int Dv, float cap, int lane,
                      int dist) {
    att_step4s(S, kp, vp, Dk, Dv, cap, lane, dist, Dk, Dv);
}

extern "C" __global__ void attn_decode(const float* __restrict__ q, const att_kv_t* __restrict__ kc,
                                       const att_kv_t* __restrict__ vc, float* __restrict__ out,
                                       float* __restrict__ part_acc, float* __restrict__ part_ml,
                                       int T, int H, int Hkv, int Dk, int Dv, int pos0_arg, int window,
                                       float scale, float cap, int nsplit_cap, const rf_i64* __restrict__ pos_dev,
                                       int chunk, const float* __restrict__ slopes, const float* __restrict__ sinks,
                                       float vscale) {
    const int pos0 = pos_dev ? (int)pos_dev[0] : pos0_arg;
    const int nsplit = att_nsplit(pos0 + T, window, chunk, nsplit_cap);
    if ((int)blockIdx.z >= nsplit) return;      // spare chunks of a grid sized for the longest step
    __shared__ float sm_m[ATT_NW][ATT_G], sm_l[ATT_NW][ATT_G];
    __shared__ float sm_acc[ATT_NW][ATT_G][ATT_NEV * RF_WARP];
    const int gtot = H / Hkv, hch = gtot / ATT_G;
    const int kvh = blockIdx.x / hch, h0 = kvh * gtot + (blockIdx.x % hch) * ATT_G;
    const int t = blockIdx.y, z = blockIdx.z;
    const int p = pos0 + t;
    const int lo = att_lo(p, window, chunk);
    const int nvis = p - lo + 1;
    const int cs = (nvis + nsplit - 1) / nsplit;
    const int ks = lo + z * cs, ke = min(p + 1, ks + cs);
    const int w = threadIdx.x / RF_WARP, lane = threadIdx.x % RF_WARP;

    AttState S;
    att_init(S, q, t, H, h0, Dk, scale, lane, slopes);
    // warp w takes keys in runs of four (att_step4: four dot products per chain of shuffles), the
    // chunk's last few one at a time
    const rf_i64 krow = (rf_i64)Hkv * Dk, vrow = (rf_i64)Hkv * Dv;
    int j = ks + 4 * w;
    for (; j + 3 < ke; j += 4 * ATT_NW)
        att_step4s(S, kc + (rf_i64)j * krow + (rf_i64)kvh * Dk, vc + (rf_i64)j * vrow + (rf_i64)kvh * Dv, krow, vrow,
                   cap, lane, j - p, Dk, Dv);
    for (int jj = j; jj < min(ke, j + 4); ++jj)
        att_step(S, kc + ((rf_i64)jj * Hkv + kvh) * Dk, vc + ((rf_i64)jj * Hkv + kvh) * Dv, Dk, Dv, cap, lane, jj - p);
#pragma unroll
    for (int g = 0; g < ATT_G; ++g) {
        if (lane == 0) { sm_m[w][g] = S.m[g]; sm_l[w][g] = S.l[g]; }
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) sm_acc[w][g][lane + i * RF_WARP] = S.acc[g][i];
    }
    __syncthreads();
    for (int idx = threadIdx.x; idx < ATT_G * Dv; idx += blockDim.x) {
        const int g = idx / Dv, e = idx - g * Dv;
        float M = -INFINITY;
        for (int ww = 0; ww < ATT_NW; ++ww) M = fmaxf(M, sm_m[ww][g]);
        float L = 0.f, A = 0.f;
        for (int ww = 0; ww < ATT_NW; ++ww) {
            const float f = sm_m[ww][g] == -INFINITY ? 0.f : expf(sm_m[ww][g] - M);
            L += sm_l[ww][g] * f;
            A += sm_acc[ww][g][e] * f;
        }
        const rf_i64 o = ((rf_i64)t * H + h0 + g) * Dv + e;
        if (nsplit == 1) {
            if (sinks) {            // the sink logit joins the denominator (M is finite: key p is visible)
                const float sk = sinks[h0 + g], Mn = fmaxf(M, sk);
                out[o] = vscale * A * expf(M - Mn) / (L * expf(M - Mn) + expf(sk - Mn));
            } else {
                out[o] = vscale * A / L;
            }
        } else {
            const rf_i64 po = (rf_i64)z * T * H * Dv + o;
            part_acc[po] = A;
            if (e == 0) {
                const rf_i64 mo = ((rf_i64)z * T * H + (rf_i64)t * H + h0 + g) * 2;
                part_ml[mo] = M;
                part_ml[mo + 1] = L;
            }
        }
    }
}

extern "C" __global__ void attn_combine(const float* __restrict__ part_acc, const float* __restrict__ part_ml,
                                        float* __restrict__ out, int T, int H, int Dv, int nsplit_cap,
                                        int pos0_arg, int window, const rf_i64* __restrict__ pos_dev,
                                        int chunk, const float* __restrict__ sinks, float vscale) {
    const int pos0 = pos_dev ? (int)pos_dev[0] : pos0_arg;
    const int nsplit = att_nsplit(pos0 + T, window, chunk, nsplit_cap);
    if (nsplit == 1) return;                    // attn_decode wrote out directly
    const rf_i64 th = blockIdx.x;            // t * H + h
    const rf_i64 TH = (rf_i64)T * H;
    float M = -INFINITY;
    for (int z = 0; z < nsplit; ++z) M = fmaxf(M, part_ml[(z * TH + th) * 2]);
    const float sk = sinks ? sinks[th % H] : -INFINITY;
    if (sinks) M = fmaxf(M, sk);
    for (int e = threadIdx.x; e < Dv; e += blockDim.x) {
        float L = sinks ? expf(sk - M) : 0.f, A = 0.f;
        for (int z = 0; z < nsplit; ++z) {
            const float m = part_ml[(z * TH + th) * 2];
            const float f = m == -INFINITY ? 0.f : expf(m - M);
            L += part_ml[(z * TH + th) * 2 + 1] * f;
            A += part_acc[(z * TH + th) * Dv + e] * f;
        }
        out[th * Dv + e] = vscale * A / L;
    }
}

extern "C" __global__ void attn_prefill(const float* __restrict__ q, const att_kv_t* __restrict__ kc,
                                        const att_kv_t* __restrict__ vc, float* __restrict__ out,
                                        int T, int H, int Hkv, int Dk, int Dv, int pos0, int window,
                                        float scale, float cap, int chunk, const float* __restrict__ slopes,
                                        const float* __restrict__ sinks, float vscale) {
    __shared__ att_kv_t sk[ATT_BK * ATT_NEK * RF_WARP];
    __shared__ att_kv_t sv[ATT_BK * ATT_NEV * RF_WARP];
    const int gtot = H / Hkv, hch = gtot / ATT_G;
    const int kvh = blockIdx.x / hch, h0 = kvh * gtot + (blockIdx.x % hch) * ATT_G;
    const int w = threadIdx.x / RF_WARP, lane = threadIdx.x % RF_WARP;
    const int t0 = blockIdx.y * ATT_NWQ;
    const int tlast = min(T - 1, t0 + ATT_NWQ - 1);
    const int t = t0 + w;
    const bool active = t < T;
    const int p = pos0 + t;
    const int lo = att_lo(p, window, chunk);
    const int klo = att_lo(pos0 + t0, window, chunk);
    const int khi = pos0 + tlast;

    AttState S;
    att_init(S, q, active ? t : 0, H, h0, Dk, scale, lane, slopes);
    for (int kb = klo; kb <= khi; kb += ATT_BK) {
        const int nk = min(ATT_BK, khi - kb + 1);
        __syncthreads();
        for (int idx = threadIdx.x; idx < nk * Dk; idx += blockDim.x) {
            const int r = idx / Dk, c = idx - r * Dk;
            sk[r * Dk + c] = kc[((rf_i64)(kb + r) * Hkv + kvh) * Dk + c];
        }
        for (int idx = threadIdx.x; idx < nk * Dv; idx += blockDim.x) {
            const int r = idx / Dv, c = idx - r * Dv;
            sv[r * Dv + c] = vc[((rf_i64)(kb + r) * Hkv + kvh) * Dv + c];
        }
        __syncthreads();
        if (active) {
            const int rs = max(lo - kb, 0), re = min(p - kb, nk - 1);
            int r = rs;
            for (; r + 3 <= re; r += 4) att_step4(S, sk + r * Dk, sv + r * Dv, Dk, Dv, cap, lane, kb + r - p);
            for (; r <= re; ++r) att_step(S, sk + r * Dk, sv + r * Dv, Dk, Dv, cap, lane, kb + r - p);
        }
    }
    if (!active) return;
#pragma unroll
    for (int g = 0; g < ATT_G; ++g) {
        float inv = 1.f / S.l[g], rescale = 1.f;
        if (sinks) {                // the sink logit joins the denominator
            const float sink = sinks[h0 + g], Mn = fmaxf(S.m[g], sink);
            rescale = expf(S.m[g] - Mn);
            inv = 1.f / (S.l[g] * rescale + expf(sink - Mn));
        }
        rescale *= vscale;              // the FP8 cache's V scale (1 for f16)
#pragma unroll
        for (int i = 0; i < ATT_NEV; ++i) {
            const int e = lane + i * RF_WARP;
            if (e < Dv) out[((rf_i64)t * H + h0 + g) * Dv + e] = S.acc[g][i] * rescale * inv;
        }
    }
}
