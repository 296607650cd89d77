// rf_split.h -- the sum of a split-K launch's partial results, in split order (no atomics: a result
// never depends on timing). Shared by the batch kernels of mmq.hip and mmq_frag.hip.
#pragma once
#include "rf_common.h"

// y (T, N) = part[0] + part[1] + ... + part[S - 1] (each (T, N)), + bias (N) when given
RF_DEV void rf_split_sum(const float* __restrict__ part, float* __restrict__ y, const float* __restrict__ bias,
                         int N, int T, int S) {
    const rf_i64 n = (rf_i64)T * N;
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        float s = part[i];
        for (int k = 1; k < S; ++k) s += part[(rf_i64)k * n + i];
        y[i] = s + (bias ? bias[i % N] : 0.f);
    }
}
