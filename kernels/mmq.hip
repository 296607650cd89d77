// mmq.hip -- quantised weights x int8 activations for batches past the matvec (decode of 9+ sequences).
//
// y (T, N) = x (T, K) . W^T with W in a block format (any RfGroup decoder of rf_quant.h) and x the
// int8 blocks of quantize_act_q8 (xq, xd, xs). Per 32-weight group and half h the integer dot
// s_h = sum q_w * q_x is exact; the float step is the matvec's,
//     acc += xd * (d0 * s_0 + d1 * s_1) - (m0 * xs_0 + m1 * xs_1),
// taken over the groups in order, so every path below gives the same integers and the same float
// sequence per output (the matvec differs only in its summation order).
//
// The matvec (matvec.hip) reads the weights once per 8 columns and does its dot products with dp4a,
// which at 16..64 columns makes a decode step compute-bound. Here a block stages a tile of
// RF_MMQ_BM rows x RF_MMQ_BG groups of decoded weights and the matching activations of up to
// RF_MMQ_BN columns in shared memory, so each weight byte is read once for all of them, and on
// NVIDIA (sm_80+) the integer dots run on the tensor cores (mma.sync m16n8k16 s8.s8.s32: one warp,
// 16 rows x 8 columns x 16 k). Elsewhere (AMD for now: MFMA / WMMA are the next step) the same
// tile is reduced with rf_dp4a by plain threads, with no assumption on the wavefront size.
//
// Each stage is loaded into registers while the previous one's dot products run. RF_MMQ_BN x
// RF_MMQ_BG is chosen by the host per batch size (16 x 8, 32 x 8, 64 x 4: one tile's staging stays
// under the 48 KB of static shared memory and few columns keep few accumulators).
// Launch: block (RF_MMQ_THREADS), grid (ceil(N / RF_MMQ_BM), S, ceil(T / RF_MMQ_BN)). Split y of
// the grid takes the groups [y * gps, (y + 1) * gps): with S = 1 it writes y (+ bias) directly,
// otherwise partial sums part[(y * T + t) * N + n] that mmq_reduce adds in split order
// (deterministic: no atomics).
#include "rf_common.h"
#include "rf_quant.h"
#include "rf_split.h"

#define RF_MMQ_THREADS 128
#define RF_MMQ_BM 64                        /* rows per block: 4 warps of 16 on NVIDIA */
#ifndef RF_MMQ_BN
#define RF_MMQ_BN 64                        /* columns per block (tiles of 8): 16 / 32 / 64 by T */
#endif
#ifndef RF_MMQ_BG
#define RF_MMQ_BG 4                         /* 32-weight groups per stage (8 fits beside BN <= 32) */
#endif
#define RF_MMQ_STRIDE (RF_MMQ_BG * 32 + 16) /* bytes per staged row: the padding puts the 8 rows x 4
                                               lanes of one fragment load in 32 distinct banks */
#define RF_MMQ_NA (RF_MMQ_BM * RF_MMQ_BG / RF_MMQ_THREADS)   /* weight groups staged per thread */
#define RF_MMQ_NX (RF_MMQ_BN * RF_MMQ_BG / RF_MMQ_THREADS)   /* activation groups staged per thread */

#if defined(RF_CUDA) && defined(__CUDA_ARCH__) && !defined(RF_MMQ_NO_MMA)
#  if __CUDA_ARCH__ >= 800
#    define RF_MMQ_MMA 1
#  endif
#endif

struct RfMmqTile {
    rf_u8 a[RF_MMQ_BM * RF_MMQ_STRIDE];     // weight codes, row-major (row, k)
    rf_u8 x[RF_MMQ_BN * RF_MMQ_STRIDE];     // activation codes, (column, k)
    float4 s[RF_MMQ_BM][RF_MMQ_BG];         // d0, d1, m0, m1 of each staged group
    float4 xs[RF_MMQ_BN][RF_MMQ_BG];        // xd, xs_0, xs_1 of each staged activation group
};

// One stage in registers: loaded while the previous stage's dot products run, then stored.
struct RfMmqRegs {
    RfGroup G[RF_MMQ_NA];
    int4 xlo[RF_MMQ_NX], xhi[RF_MMQ_NX];
    float4 xsc[RF_MMQ_NX];
};

// Load groups [g0, g0 + RF_MMQ_BG) of rows row0.. and columns col0..; groups at or past g_end and
// rows / columns out of range load zeros, which add exactly nothing. Consecutive threads take
// consecutive groups of one row: a tiled row's blocks are contiguous.
template <class D>
RF_DEV void rf_mmq_load(RfMmqRegs& R, const rf_u8* __restrict__ W, rf_i64 row_bytes,
                        const int* __restrict__ xq, const float* __restrict__ xd, const float* __restrict__ xs,
                        int N, int T, rf_i64 NG, int row0, int col0, rf_i64 g0, rf_i64 g_end) {
#pragma unroll
    for (int u = 0; u < RF_MMQ_NA; ++u) {
        const int i = threadIdx.x + u * RF_MMQ_THREADS;
        const int r = i / RF_MMQ_BG;
        const rf_i64 g = g0 + i % RF_MMQ_BG;
        if (row0 + r < N && g < g_end) {
            D::group(W + (rf_i64)(row0 + r) * row_bytes, g, R.G[u]);
        } else {
#pragma unroll
            for (int k = 0; k < 8; ++k) R.G[u].q[k] = 0;
            R.G[u].d[0] = R.G[u].d[1] = R.G[u].m[0] = R.G[u].m[1] = 0.f;
        }
    }
#pragma unroll
    for (int u = 0; u < RF_MMQ_NX; ++u) {
        const int i = threadIdx.x + u * RF_MMQ_THREADS;
        const int c = i / RF_MMQ_BG;
        const rf_i64 g = g0 + i % RF_MMQ_BG;
        R.xlo[u] = R.xhi[u] = make_int4(0, 0, 0, 0);
        R.xsc[u] = make_float4(0.f, 0.f, 0.f, 0.f);
        if (col0 + c < T && g < g_end) {
            const rf_i64 xg = (rf_i64)(col0 + c) * NG + g;
            const int4* xv = (const int4*)(xq + xg * 8);
            R.xlo[u] = xv[0]; R.xhi[u] = xv[1];
            const float2 h = ((const float2*)xs)[xg];
            R.xsc[u] = make_float4(xd[xg], h.x, h.y, 0.f);
        }
    }
}

RF_DEV void rf_mmq_store(RfMmqTile& S, const RfMmqRegs& R) {
#pragma unroll
    for (int u = 0; u < RF_MMQ_NA; ++u) {
        const int i = threadIdx.x + u * RF_MMQ_THREADS;
        const int r = i / RF_MMQ_BG, j = i % RF_MMQ_BG;
        const RfGroup& G = R.G[u];
        int4* dst = (int4*)(S.a + r * RF_MMQ_STRIDE + j * 32);
        dst[0] = make_int4(G.q[0], G.q[1], G.q[2], G.q[3]);
        dst[1] = make_int4(G.q[4], G.q[5], G.q[6], G.q[7]);
        S.s[r][j] = make_float4(G.d[0], G.d[1], G.m[0], G.m[1]);
    }
#pragma unroll
    for (int u = 0; u < RF_MMQ_NX; ++u) {
        const int i = threadIdx.x + u * RF_MMQ_THREADS;
        const int c = i / RF_MMQ_BG, j = i % RF_MMQ_BG;
        int4* dst = (int4*)(S.x + c * RF_MMQ_STRIDE + j * 32);
        dst[0] = R.xlo[u]; dst[1] = R.xhi[u];
        S.xs[c][j] = R.xsc[u];
    }
}

RF_DEV float rf_mmq_step(float acc, float4 w, float4 x, int s0, int s1) {
    return acc + (x.x * (w.x * (float)s0 + w.y * (float)s1) - (w.z * x.y + w.w * x.z));
}

#if defined(RF_MMQ_MMA)
// c = a (16 x 16 s8, row-major fragments a0: row gid, a1: row gid + 8) . b (16 x 8 s8, column gid)
RF_DEV void rf_mma_s8_16816(int c[4], int a0, int a1, int b0) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5}, {%6}, {%7,%8,%9,%10};"
                 : "=r"(c[0]), "=r"(c[1]), "=r"(c[2]), "=r"(c[3])
                 : "r"(a0), "r"(a1), "r"(b0), "r"(0), "r"(0), "r"(0), "r"(0));
}
#endif

template <class D>
RF_DEV void rf_mmq(const rf_u8* __restrict__ W, rf_i64 row_bytes, const int* __restrict__ xq,
                   const float* __restrict__ xd, const float* __restrict__ xs, float* __restrict__ y,
                   const float* __restrict__ bias, int N, int K, int T, int gps) {
    __shared__ RfMmqTile S;
    const rf_i64 NG = K / 32;
    const int row0 = blockIdx.x * RF_MMQ_BM, col0 = blockIdx.z * RF_MMQ_BN;
    const rf_i64 g_begin = (rf_i64)blockIdx.y * gps;
    const rf_i64 g_end = min(NG, g_begin + gps);
    const int ntiles = min(RF_MMQ_BN, T - col0 + 7) / 8;   // column tiles of 8 that hold a live column
#if defined(RF_MMQ_MMA)
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int gid = lane >> 2, tig = lane & 3;
    const int ra = warp * 16 + gid;                     // this lane's rows ra and ra + 8
    float acc[RF_MMQ_BN / 8][4];
#pragma unroll
    for (int n = 0; n < RF_MMQ_BN / 8; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#else
    const int r = threadIdx.x % RF_MMQ_BM;              // this thread's row and 32 columns
    const int c0 = (threadIdx.x / RF_MMQ_BM) * (RF_MMQ_BN / 2);
    float acc[RF_MMQ_BN / 2];
#pragma unroll
    for (int c = 0; c < RF_MMQ_BN / 2; ++c) acc[c] = 0.f;
#endif
    RfMmqRegs R;
    rf_mmq_load<D>(R, W, row_bytes, xq, xd, xs, N, T, NG, row0, col0, g_begin, g_end);
    for (rf_i64 g0 = g_begin; g0 < g_end; g0 += RF_MMQ_BG) {
        __syncthreads();                                // the previous stage has been read
        rf_mmq_store(S, R);
        __syncthreads();
        if (g0 + RF_MMQ_BG < g_end)                     // the next stage's loads fly during these dots
            rf_mmq_load<D>(R, W, row_bytes, xq, xd, xs, N, T, NG, row0, col0, g0 + RF_MMQ_BG, g_end);
#pragma unroll
        for (int j = 0; j < RF_MMQ_BG; ++j) {
#if defined(RF_MMQ_MMA)
            const int* A0 = (const int*)(S.a + ra * RF_MMQ_STRIDE + j * 32 + tig * 4);
            const int* A1 = (const int*)(S.a + (ra + 8) * RF_MMQ_STRIDE + j * 32 + tig * 4);
            const int a00 = A0[0], a10 = A1[0], a01 = A0[4], a11 = A1[4];   // halves at +0 and +16 bytes
            const float4 w0 = S.s[ra][j], w1 = S.s[ra + 8][j];
#pragma unroll
            for (int n = 0; n < RF_MMQ_BN / 8; ++n) {
                if (n < ntiles) {
                    const int* B = (const int*)(S.x + (n * 8 + gid) * RF_MMQ_STRIDE + j * 32 + tig * 4);
                    int s0[4], s1[4];
                    rf_mma_s8_16816(s0, a00, a10, B[0]);
                    rf_mma_s8_16816(s1, a01, a11, B[4]);
                    const float4 x0 = S.xs[n * 8 + tig * 2][j], x1 = S.xs[n * 8 + tig * 2 + 1][j];
                    acc[n][0] = rf_mmq_step(acc[n][0], w0, x0, s0[0], s1[0]);
                    acc[n][1] = rf_mmq_step(acc[n][1], w0, x1, s0[1], s1[1]);
                    acc[n][2] = rf_mmq_step(acc[n][2], w1, x0, s0[2], s1[2]);
                    acc[n][3] = rf_mmq_step(acc[n][3], w1, x1, s0[3], s1[3]);
                }
            }
#else
            const int4* A = (const int4*)(S.a + r * RF_MMQ_STRIDE + j * 32);
            const int4 al = A[0], ah = A[1];
            const float4 w = S.s[r][j];
#pragma unroll
            for (int c = 0; c < RF_MMQ_BN / 2; ++c) {
                if (c0 + c < ntiles * 8) {
                    const int4* X = (const int4*)(S.x + (c0 + c) * RF_MMQ_STRIDE + j * 32);
                    const int4 xl = X[0], xh = X[1];
                    int s0 = rf_dp4a(al.x, xl.x, 0); s0 = rf_dp4a(al.y, xl.y, s0);
                    s0 = rf_dp4a(al.z, xl.z, s0); s0 = rf_dp4a(al.w, xl.w, s0);
                    int s1 = rf_dp4a(ah.x, xh.x, 0); s1 = rf_dp4a(ah.y, xh.y, s1);
                    s1 = rf_dp4a(ah.z, xh.z, s1); s1 = rf_dp4a(ah.w, xh.w, s1);
                    acc[c] = rf_mmq_step(acc[c], w, S.xs[c0 + c][j], s0, s1);
                }
            }
#endif
        }
    }
    const bool split = gridDim.y > 1;
    float* out = split ? y + (rf_i64)blockIdx.y * T * N : y;
#if defined(RF_MMQ_MMA)
#pragma unroll
    for (int n = 0; n < RF_MMQ_BN / 8; ++n) {
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = row0 + ra + (i >> 1) * 8, col = col0 + n * 8 + tig * 2 + (i & 1);
            if (n < ntiles && row < N && col < T)
                out[(rf_i64)col * N + row] = acc[n][i] + (!split && bias ? bias[row] : 0.f);
        }
    }
#else
#pragma unroll
    for (int c = 0; c < RF_MMQ_BN / 2; ++c) {
        const int row = row0 + r, col = col0 + c0 + c;
        if (row < N && col < T) out[(rf_i64)col * N + row] = acc[c] + (!split && bias ? bias[row] : 0.f);
    }
#endif
}

#define RF_MMQ_KERNEL(fmt)                                                                            \
struct rf_mmq_dec_##fmt {                                                                             \
    static RF_DEV void group(const rf_u8* row, rf_i64 g, RfGroup& G) { rf_group_##fmt(row, g, G); }  \
};                                                                                                    \
extern "C" __global__ void __launch_bounds__(RF_MMQ_THREADS)                                          \
mmq_##fmt(const rf_u8* __restrict__ W, rf_i64 row_bytes, const int* __restrict__ xq,                  \
          const float* __restrict__ xd, const float* __restrict__ xs, float* __restrict__ y,           \
          const float* __restrict__ bias, int N, int K, int T, int gps) {                             \
    rf_mmq<rf_mmq_dec_##fmt>(W, row_bytes, xq, xd, xs, y, bias, N, K, T, gps);                        \
}

RF_FOR_EACH_BLOCK_FORMAT(RF_MMQ_KERNEL)
RF_FOR_EACH_TILED_FORMAT(RF_MMQ_KERNEL)
RF_FOR_EACH_MX_INT_FORMAT(RF_MMQ_KERNEL)

// y (T, N) = the S partial sums of a split launch, added in split order, + bias.
extern "C" __global__ void mmq_reduce(const float* __restrict__ part, float* __restrict__ y,
                                      const float* __restrict__ bias, int N, int T, int S) {
    rf_split_sum(part, y, bias, N, T, S);
}
