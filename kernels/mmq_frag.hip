// mmq_frag.hip -- Q4_0 tiles (q4_0t) x int8 activations for batches of 9..64 rows, each lane's
// tensor-core operands loaded straight from the weight tiles.
//
// y (T, N) = x (T, K) . W^T, x the int8 blocks of quantize_act_q8 (xq, xd). mmq.hip decodes every
// 32-weight group into shared memory first, which costs more instructions per weight byte than the
// GPU has to stream them at HBM rates (ncu: 7.7 % of DRAM bandwidth, L1/shared 64 %). Here only the
// activations are staged; a Q4_0 block's 16 payload bytes already hold an mma fragment's layout:
// byte e's low nibble is weight e, its high nibble weight e + 16, so the 32-bit word at byte
// tig * 4 of a row's block gives, masked and shifted, exactly the A operand registers of
// mma.m16n8k32 for k = tig*4.. and k = 16 + tig*4.. (rows gid and gid + 8 of the warp's 16).
// The nibbles become signed (q - 8) per byte before the dot, so the float step per block is one
// product: acc += (d_w * d_x) * s with s the exact integer dot of the block.
//
// A 32-thread group (lane = threadIdx.x % 32, gid = lane / 4, tig = lane % 4: the mma layout)
// owns 16 weight rows; the kernel never assumes the hardware's wave size. Without NVIDIA's mma
// (AMD for now, or RF_MMQ_NO_MMA) each lane forms the same four integer dots with rf_dp4a from
// the whole blocks, so both paths give the same integers and the same float sequence per output
// (bit for bit); the accumulation runs over the groups in order, as mmq.hip's.
//
// Per stage (one tile of 8 groups = 256 k), the block's threads copy the BN columns' activation
// codes and scales into one of two shared buffers (cp.async on sm_80+, so the copy of stage s + 1
// flies during stage s's dots) while each lane holds its rows' next tile in registers.
// Launch: block (RF_FRAG_THREADS), grid (ceil(N / RF_FRAG_BM), S, ceil(T / RF_FRAG_BN)); split y takes
// groups [y * gps, (y + 1) * gps) (gps a multiple of 8); S = 1 writes y (+ bias), otherwise the
// partial sums part[(y * T + t) * N + n] that mmq_frag_reduce adds in split order.
#include "rf_common.h"
#include "rf_quant.h"
#include "rf_split.h"

#define RF_FRAG_THREADS 128
#define RF_FRAG_BM 64                        /* rows per block: 4 groups of 32 threads x 16 rows */
#ifndef RF_FRAG_BN
#define RF_FRAG_BN 16                        /* columns per block: 16 / 32 / 64 by T */
#endif
#define RF_FRAG_NT (RF_FRAG_BN / 8)          /* column tiles of 8 (the mma's n) */
#define RF_FRAG_XSTRIDE 272                  /* a column's 256 staged code bytes + 16: the 8 columns x
                                                4 lanes of one B-fragment load hit 32 distinct banks */
#define RF_FRAG_NX (RF_FRAG_BN * 16 / RF_FRAG_THREADS)   /* 16-byte code chunks each thread copies */
#ifndef RF_FRAG_MIN_BLOCKS
#  if defined(RF_CUDA)
#    define RF_FRAG_MIN_BLOCKS 3             /* resident blocks per multiprocessor the registers must allow:
                                                3 measured best on the H200 at 32 and 64 rows, 2 was ~1.5x
                                                slower (benchmarks/mmq_bench.py --frag-min-blocks) */
#  else
#    define RF_FRAG_MIN_BLOCKS 1             /* not measured on AMD: the compiler's own choice (3 cannot be
                                                met on gfx942 with the plain-thread path's registers) */
#  endif
#endif

#if defined(RF_CUDA) && defined(__CUDA_ARCH__)
#  if __CUDA_ARCH__ >= 800
#    define RF_FRAG_ASYNC 1
#    if !defined(RF_MMQ_NO_MMA)
#      define RF_FRAG_MMA 1
#    endif
#  endif
#endif

struct alignas(16) RfFragStage {   // 16-byte copies land 16-byte aligned
    rf_u8 x[RF_FRAG_BN * RF_FRAG_XSTRIDE];   // codes (column, k) of 8 groups
    float xd[8][RF_FRAG_BN];                 // their scales (group, column)
};

// one lane's share of a q4_0t tile (f16 d[8] | qs[8][16]) for its two rows
struct RfFragTile {
    uint4 d[2];          // the 8 scales of each row
    rf_u32 q[2][8];      // bytes tig*4 .. tig*4 + 3 of each block's payload
};

RF_DEV void rf_frag_load(RfFragTile& t, const rf_u8* __restrict__ r0, const rf_u8* __restrict__ r1, rf_i64 tile,
                         int tig) {
    const rf_u8* a = r0 + tile * 144;
    const rf_u8* b = r1 + tile * 144;
    t.d[0] = *(const uint4*)a;
    t.d[1] = *(const uint4*)b;
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        t.q[0][j] = *(const rf_u32*)(a + 16 + 16 * j + tig * 4);
        t.q[1][j] = *(const rf_u32*)(b + 16 + 16 * j + tig * 4);
    }
}

RF_DEV void rf_frag_copy16(void* dst, const void* src) {
#if defined(RF_FRAG_ASYNC)
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(s), "l"(src));
#else
    *(int4*)dst = *(const int4*)src;
#endif
}

RF_DEV void rf_frag_copy4(void* dst, const void* src) {
#if defined(RF_FRAG_ASYNC)
    const unsigned s = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.ca.shared.global [%0], [%1], 4;" ::"r"(s), "l"(src));
#else
    *(float*)dst = *(const float*)src;
#endif
}

RF_DEV void rf_frag_commit() {
#if defined(RF_FRAG_ASYNC)
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}

RF_DEV void rf_frag_wait() {
#if defined(RF_FRAG_ASYNC)
    asm volatile("cp.async.wait_group 0;" ::: "memory");
#endif
}

// groups [g, g + 8) of columns col0 .. col0 + BN (past T: column T - 1 again, never written out)
RF_DEV void rf_frag_stage(RfFragStage& S, const rf_u8* __restrict__ xq, const float* __restrict__ xd, int T,
                          rf_i64 NG, int col0, rf_i64 g) {
#pragma unroll
    for (int u = 0; u < RF_FRAG_NX; ++u) {
        const int i = threadIdx.x + u * RF_FRAG_THREADS;
        const int c = i / 16, part = i % 16;
        const rf_i64 col = min(col0 + c, T - 1);
        rf_frag_copy16(S.x + c * RF_FRAG_XSTRIDE + part * 16, xq + (col * NG + g) * 32 + part * 16);
    }
    for (int i = threadIdx.x; i < 8 * RF_FRAG_BN; i += RF_FRAG_THREADS) {
        const int j = i / RF_FRAG_BN, c = i % RF_FRAG_BN;
        const rf_i64 col = min(col0 + c, T - 1);
        rf_frag_copy4(&S.xd[j][c], xd + col * NG + g + j);
    }
}

RF_DEV float rf_frag_scale(uint4 d, int j) {
    const rf_u32 w = j < 2 ? d.x : j < 4 ? d.y : j < 6 ? d.z : d.w;
    return rf_h2f((rf_u16)((j & 1) ? w >> 16 : w & 0xffffu));
}

// the 4 weights of a word's low (hi = 0) or high nibbles as int8 q - 8
RF_DEV int rf_frag_codes(rf_u32 w, int hi) {
    return rf_sub_bytes((w >> (4 * hi)) & 0x0f0f0f0fu, 8);
}

#if defined(RF_FRAG_MMA)
// c (16 x 8) = a (16 x 32 s8: a0 / a1 rows gid / gid + 8 at k tig*4.., a2 / a3 the same at 16 + tig*4..)
//            . b (32 x 8 s8, column gid: b0 k tig*4.., b1 16 + tig*4..)
RF_DEV void rf_mma_s8_16832(int c[4], int a0, int a1, int a2, int a3, int b0, int b1) {
    asm volatile("mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1), "r"(0), "r"(0), "r"(0), "r"(0));
}
#else
// the same four integers from whole blocks: rows gid / gid + 8 (w0 / w1: their block's 16 payload
// bytes) x columns tig*2 and tig*2 + 1 of the column tile (x0 / x1: their 32 staged codes)
RF_DEV int rf_frag_dot(uint4 w, const rf_u8* x) {
    const rf_u32 v[4] = {w.x, w.y, w.z, w.w};
    const int* xi = (const int*)x;
    int s = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        s = rf_dp4a(rf_frag_codes(v[k], 0), xi[k], s);
        s = rf_dp4a(rf_frag_codes(v[k], 1), xi[4 + k], s);
    }
    return s;
}
#endif

extern "C" __global__ void __launch_bounds__(RF_FRAG_THREADS, RF_FRAG_MIN_BLOCKS)
mmq_frag_q4_0t(const rf_u8* __restrict__ W, rf_i64 row_bytes, const int* __restrict__ xq_words,
               const float* __restrict__ xd, const float* __restrict__ xs, float* __restrict__ y,
               const float* __restrict__ bias, int N, int K, int T, int gps) {
    (void)xs;    // the signed codes need no activation sums; mmq.hip's signature, one host path
    __shared__ RfFragStage S[2];
    const rf_u8* xq = (const rf_u8*)xq_words;
    const rf_i64 NG = K / 32;
    const int row0 = blockIdx.x * RF_FRAG_BM, col0 = blockIdx.z * RF_FRAG_BN;
    const rf_i64 g_begin = (rf_i64)blockIdx.y * gps;
    const rf_i64 g_end = min(NG, g_begin + gps);
    const int ntiles = min(RF_FRAG_BN, T - col0 + 7) / 8;   // column tiles that hold a live column
    const int lane = threadIdx.x % 32, team = threadIdx.x / 32;
    const int gid = lane >> 2, tig = lane & 3;
    const int ra = row0 + team * 16 + gid, rb = ra + 8;
    const rf_u8* w0 = W + (rf_i64)min(ra, N - 1) * row_bytes;
    const rf_u8* w1 = W + (rf_i64)min(rb, N - 1) * row_bytes;
    float acc[RF_FRAG_NT][4];
#pragma unroll
    for (int n = 0; n < RF_FRAG_NT; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
    RfFragTile cur, nxt;
    if (g_begin < g_end) {      // (an empty split still writes its zeros)
        rf_frag_load(cur, w0, w1, g_begin / 8, tig);
        rf_frag_stage(S[0], xq, xd, T, NG, col0, g_begin);
        rf_frag_commit();
        int buf = 0;
        for (rf_i64 g = g_begin; g < g_end; g += 8) {
            rf_frag_wait();
            __syncthreads();        // stage g is in S[buf]; every team is done with S[buf ^ 1]
            const bool more = g + 8 < g_end;
            if (more) {
                rf_frag_stage(S[buf ^ 1], xq, xd, T, NG, col0, g + 8);
                rf_frag_commit();
                rf_frag_load(nxt, w0, w1, (g + 8) / 8, tig);
            }
            const RfFragStage& X = S[buf];
#pragma unroll
            for (int j = 0; j < 8; ++j) {
                const float d0 = rf_frag_scale(cur.d[0], j), d1 = rf_frag_scale(cur.d[1], j);
#if defined(RF_FRAG_MMA)
                const int a0 = rf_frag_codes(cur.q[0][j], 0), a1 = rf_frag_codes(cur.q[1][j], 0);
                const int a2 = rf_frag_codes(cur.q[0][j], 1), a3 = rf_frag_codes(cur.q[1][j], 1);
#else
                const uint4 p0 = ((const uint4*)(w0 + (g / 8) * 144 + 16))[j];
                const uint4 p1 = ((const uint4*)(w1 + (g / 8) * 144 + 16))[j];
#endif
#pragma unroll
                for (int n = 0; n < RF_FRAG_NT; ++n) {
                    if (n < ntiles) {
                        int s[4];
#if defined(RF_FRAG_MMA)
                        const rf_u8* B = X.x + (n * 8 + gid) * RF_FRAG_XSTRIDE + j * 32 + tig * 4;
                        rf_mma_s8_16832(s, a0, a1, a2, a3, *(const int*)B, *(const int*)(B + 16));
#else
                        const rf_u8* x0 = X.x + (n * 8 + tig * 2) * RF_FRAG_XSTRIDE + j * 32;
                        const rf_u8* x1 = x0 + RF_FRAG_XSTRIDE;
                        s[0] = rf_frag_dot(p0, x0); s[1] = rf_frag_dot(p0, x1);
                        s[2] = rf_frag_dot(p1, x0); s[3] = rf_frag_dot(p1, x1);
#endif
                        const float2 xv = *(const float2*)&X.xd[j][n * 8 + tig * 2];
                        acc[n][0] = fmaf(d0 * xv.x, (float)s[0], acc[n][0]);
                        acc[n][1] = fmaf(d0 * xv.y, (float)s[1], acc[n][1]);
                        acc[n][2] = fmaf(d1 * xv.x, (float)s[2], acc[n][2]);
                        acc[n][3] = fmaf(d1 * xv.y, (float)s[3], acc[n][3]);
                    }
                }
            }
            if (more) cur = nxt;
            buf ^= 1;
        }
    }
    const bool split = gridDim.y > 1;
    float* out = split ? y + (rf_i64)blockIdx.y * T * N : y;
#pragma unroll
    for (int n = 0; n < RF_FRAG_NT; ++n) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = (i >> 1) ? rb : ra, col = col0 + n * 8 + tig * 2 + (i & 1);
            if (n < ntiles && row < N && col < T)
                out[(rf_i64)col * N + row] = acc[n][i] + (!split && bias ? bias[row] : 0.f);
        }
    }
}

// y (T, N) = the S partial sums of a split launch, added in split order, + bias.
extern "C" __global__ void mmq_frag_reduce(const float* __restrict__ part, float* __restrict__ y,
                                           const float* __restrict__ bias, int N, int T, int S) {
    rf_split_sum(part, y, bias, N, T, S);
}
