// rope.hip -- rotary position embedding, "normal" (adjacent pairs) and "neox" (halves), partial rotary.
//
// Layout: x, y (T, H, D) float32 contiguous (y may alias x); positions (T)
// int64; inv_freq (rot/2) float32. Dims >= rot are copied unchanged.
// Launch: 1-D grid-stride over T*H*D, one output element per thread. The
// angle pos * inv_freq[i] and its cos/sin are taken in double precision
// (positions reach 1e5, where a float angle loses the low digits), then
// scaled by mscale and rounded to float, as the NumPy reference does.
#include "rf_common.h"

extern "C" __global__ void rope_f32(const float* __restrict__ x, float* __restrict__ y,
                                    const long long* __restrict__ pos, const float* __restrict__ inv_freq,
                                    int T, int H, int D, int rot, int neox, float mscale) {
    const rf_i64 n = (rf_i64)T * H * D;
    const int half = rot / 2;
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        const int j = (int)(i % D);
        if (j >= rot) { y[i] = x[i]; continue; }
        const rf_i64 t = i / ((rf_i64)H * D);
        const rf_i64 head = i - j;
        int fi, first, partner;
        if (neox) { fi = j < half ? j : j - half; first = j < half; partner = first ? j + half : j - half; }
        else      { fi = j >> 1; first = (j & 1) == 0; partner = j ^ 1; }
        const double ang = (double)pos[t] * (double)inv_freq[fi];
        const float c = (float)(cos(ang) * (double)mscale), s = (float)(sin(ang) * (double)mscale);
        const float a = first ? x[i] : x[head + partner];
        const float b = first ? x[head + partner] : x[i];
        y[i] = first ? a * c - b * s : a * s + b * c;
    }
}
