// sampling.hip -- greedy sampling helper: argmax of each row.
//
// Layout: x (rows, V) float32; out (rows) int32.
// Launch: one block per row, blockDim.x a multiple of RF_WARP (<= 1024).
// Each thread scans a strided slice keeping (value, lowest index), then the
// warp and the block reduce; ties go to the lower index and a NaN beats every
// number (NumPy's argmax: the first NaN, else the first maximum).
#include "rf_common.h"

RF_DEV void rf_argmax_merge(float& v, int& i, float v2, int i2) {
    const bool n = v != v, n2 = v2 != v2;
    const bool take = n2 ? (!n || i2 < i) : (!n && (v2 > v || (v2 == v && i2 < i)));
    if (take) { v = v2; i = i2; }
}

extern "C" __global__ void argmax_f32(const float* __restrict__ x, int* __restrict__ out, int V) {
    __shared__ float sv[1024 / 32];
    __shared__ int si[1024 / 32];
    const float* row = x + (rf_i64)blockIdx.x * V;
    float best = -INFINITY;
    int bi = 0x7fffffff;
    for (int j = threadIdx.x; j < V; j += blockDim.x) rf_argmax_merge(best, bi, row[j], j);
#pragma unroll
    for (int o = RF_WARP / 2; o > 0; o >>= 1)
        rf_argmax_merge(best, bi, rf_shfl_xor(best, o), rf_shfl_xor(bi, o));
    const int lane = threadIdx.x % RF_WARP, wid = threadIdx.x / RF_WARP;
    if (lane == 0) { sv[wid] = best; si[wid] = bi; }
    __syncthreads();
    if (threadIdx.x == 0) {
        for (int w = 1; w < (int)(blockDim.x / RF_WARP); ++w) rf_argmax_merge(best, bi, sv[w], si[w]);
        out[blockIdx.x] = bi;
    }
}
