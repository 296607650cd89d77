// rope.hip -- rotary position embedding, "normal" (adjacent pairs) and "neox" (halves), partial rotary.
//
// Layout: x, y (T, H, D) float32 contiguous (y may alias x); rope_qk_f32 also reads q and k rows
// with a row stride (views of one joined q|k|v projection) and writes them contiguous; positions (T)
// int64; inv_freq (rot/2) float32. Dims >= rot are copied unchanged.
// Launch: 1-D grid-stride over T*H*D, one output element per thread. The
// angle pos * inv_freq[i] and its cos/sin are taken in double precision
// (positions reach 1e5, where a float angle loses the low digits), then
// scaled by mscale and rounded to float, as the NumPy reference does.
#include "rf_common.h"

// element i of x (T, H, D) rotated; rows of x are xs floats apart (a view of a joined q|k|v row), y contiguous
RF_DEV float rf_rope_elem(const float* __restrict__ x, rf_i64 xs, rf_i64 i, const long long* __restrict__ pos,
                          const float* __restrict__ inv_freq, int H, int D, int rot, int neox, float mscale) {
    const int j = (int)(i % D);
    const rf_i64 t = i / ((rf_i64)H * D);
    const rf_i64 at = t * xs + (i - t * (rf_i64)H * D);     // element i in x's row layout
    if (j >= rot) return x[at];
    const rf_i64 head = at - j;
    const int half = rot / 2;
    int fi, first, partner;
    if (neox) { fi = j < half ? j : j - half; first = j < half; partner = first ? j + half : j - half; }
    else      { fi = j >> 1; first = (j & 1) == 0; partner = j ^ 1; }
    const double ang = (double)pos[t] * (double)inv_freq[fi];
    const float c = (float)(cos(ang) * (double)mscale), s = (float)(sin(ang) * (double)mscale);
    const float a = first ? x[at] : x[head + partner];
    const float b = first ? x[head + partner] : x[at];
    return first ? a * c - b * s : a * s + b * c;
}

extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ y,
                                    const long long* __restrict__ pos, const float* __restrict__ inv_freq,
                                    int T, int H, int D, int rot, int neox, float mscale) {
    const rf_i64 n = (rf_i64)T * H * D;
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride())
        y[i] = rf_rope_elem(x, (rf_i64)H * D, i, pos, inv_freq, H, D, rot, neox, mscale);
}

// q (T, H, D) and k (T, Hk, D) in one launch, each read with its own row stride (qs, ks floats)
extern "C" __global__ void rope_qk_f32(const float* __restrict__ q, const float* __restrict__ k,
                                       float* __restrict__ yq, float* __restrict__ yk, rf_i64 qs, rf_i64 ks,
                                       const long long* __restrict__ pos, const float* __restrict__ inv_freq,
                                       int T, int H, int Hk, int D, int rot, int neox, float mscale) {
    const rf_i64 nq = (rf_i64)T * H * D, n = nq + (rf_i64)T * Hk * D;
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        if (i < nq) yq[i] = rf_rope_elem(q, qs, i, pos, inv_freq, H, D, rot, neox, mscale);
        else yk[i - nq] = rf_rope_elem(k, ks, i - nq, pos, inv_freq, Hk, D, rot, neox, mscale);
    }
}
