// act_quant.hip -- activation quantise-dequantise at a linear layer's input (AMD Quark exports):
// the GPU side of rocmforge/quant/act.py, element for element the same values.
//
// Elements are minifloats of exponent bias `bias` and `mbits` mantissa bits, finite max `fmax`
// (FP4 E2M1, FP6 E2M3 / E3M2, FP8 E4M3 / E5M2); rf_round_minifloat rounds a magnitude no larger
// than fmax to the nearest such value, ties to even, subnormals included: within a binade the
// values are a grid of step 2^(e - mbits), below the smallest normal one grid of step
// 2^(1 - bias - mbits). Powers of two scale exactly, so rintf on the scaled value is the cast.
//
// act_qdq_mx: one thread per 32-block of the last axis. The block's power-of-two scale comes from
// its amax by `rule` (0 Quark's even: the amax's mantissa rounded to nearest at mbits before its
// exponent is taken; 1 floor(log2); 2 ceil(log2)), scale = 2^clamp(e - emax, -127, 127).
// act_qdq_fp8: one float scale for the whole tensor: `scale`, or (amax_dev non-null: dynamic)
// amax / fmax computed in double and rounded once to float, as the NumPy reference does.
#include "rf_common.h"

RF_DEV float rf_round_minifloat(float a, int bias, int mbits) {
    const int emin = 1 - bias;
    int e = (int)((__float_as_uint(a) >> 23) & 0xffu) - 127;
    if (e < emin) e = emin;
    const float step = ldexpf(1.f, e - mbits);
    return rintf(a / step) * step;
}

RF_DEV float rf_qdq_elem(float x, float s, int bias, int mbits, float fmax) {
    const float a = fminf(fabsf(x / s), fmax);
    const float q = rf_round_minifloat(a, bias, mbits);
    return copysignf(q, x) * s;
}

// 2^e for e in [-127, 127] (2^-127 is a float32 subnormal: built from its bits, not by ldexpf)
RF_DEV float rf_pow2(int e) {
    return e >= -126 ? __uint_as_float((rf_u32)(e + 127) << 23) : __uint_as_float(0x00400000u);
}

extern "C" __global__ void act_qdq_mx(const float* __restrict__ x, float* __restrict__ y, rf_i64 nblocks,
                                      int bias, int mbits, float fmax, int emax, int rule) {
    for (rf_i64 b = rf_gid(); b < nblocks; b += rf_gstride()) {
        const float* xb = x + b * 32;
        float amax = 0.f;
        for (int i = 0; i < 32; ++i) amax = fmaxf(amax, fabsf(xb[i]));
        int e;
        if (rule == 0) {
            const float a = amax == 0.f ? ldexpf(1.f, -126) : amax;
            rf_u32 bits = __float_as_uint(a) + (1u << (23 - mbits - 1));
            e = (int)((bits >> 23) & 0xffu) - 127;
        } else {
            const rf_u32 bits = __float_as_uint(amax);
            const int field = (int)((bits >> 23) & 0xffu);
            // zero and subnormal amax: log2 below -126, the scale is clamped to 2^-127 anyway
            e = field == 0 ? -1000 : field - 127 + (rule == 2 && (bits & 0x7fffffu) ? 1 : 0);
        }
        e -= emax;
        e = e < -127 ? -127 : (e > 127 ? 127 : e);
        const float s = rf_pow2(e);
        for (int i = 0; i < 32; ++i) y[b * 32 + i] = rf_qdq_elem(xb[i], s, bias, mbits, fmax);
    }
}

extern "C" __global__ void act_qdq_fp8(const float* __restrict__ x, float* __restrict__ y, rf_i64 n,
                                       int bias, int mbits, float fmax, float scale,
                                       const float* __restrict__ amax_dev) {
    float s = scale;
    if (amax_dev) {
        const float amax = amax_dev[0];
        s = amax > 0.f ? (float)((double)amax / (double)fmax) : 1.1920928955078125e-07f;   // float32 eps
    }
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) y[i] = rf_qdq_elem(x[i], s, bias, mbits, fmax);
}
