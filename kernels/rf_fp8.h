// rf_fp8.h -- the KV cache element of attention.hip and paged_attention.hip: f16 bits, or an FP8 code.
//
// ATT_KV (passed with -D by the backend): 0 f16; 1 FP8 E4M3FN (OCP: bias 7, max 448, NaN 0x7f/0xff);
// 2 FP8 E4M3FNUZ (MI300: bias 8, max 240, no negative zero, NaN 0x80).
//   att_kv_t        the stored element (rf_u16 f16 bits, rf_u8 code)
//   att_enc(x, s)   what a store writes: f16(x) (s unused), or fp8(clip(x / s, -max, max)) rounded to
//                   nearest even (ml_dtypes' cast, the NumPy reference rocmforge.quant.act.kv_encode)
//   att_ld(c)       what a read gives: the f16 value, or the code's value times 2^(bias - 15), read
//                   through its f16 bit pattern (exponent and mantissa move up to f16's fields, exact,
//                   subnormals included); the backend folds 2^(15 - bias) and the layer's scale into
//                   the kernels' scale arguments (GpuKVCache.factors)
// Both kernel files include this header, so the contiguous and the paged caches hold the same codes.
#pragma once
#include "rf_common.h"

#ifndef ATT_KV
#define ATT_KV 0
#endif

#if ATT_KV == 0
typedef rf_u16 att_kv_t;
RF_DEV float att_ld(att_kv_t c) { return rf_h2f(c); }
RF_DEV att_kv_t att_enc(float x, float) { return rf_f2h(x); }
#else
typedef rf_u8 att_kv_t;
#define ATT_FP8_BIAS (ATT_KV == 1 ? 7 : 8)
#define ATT_FP8_MAX (ATT_KV == 1 ? 448.f : 240.f)
// the code's value times 2^(bias - 15): its 7 magnitude bits become f16's exponent and mantissa
RF_DEV float att_ld(att_kv_t c) { return rf_h2f((rf_u16)(((c & 0x7f) << 7) | ((c & 0x80) << 8))); }
// x / scale as an E4M3 code, rounded to nearest even, saturated at the flavour's max
RF_DEV att_kv_t att_enc(float x, float scale) {
    const float a = fminf(fabsf(x / scale), ATT_FP8_MAX);       // NaN -> max (fminf), as clip would not
    const rf_u32 sign = (__float_as_uint(x) >> 24) & 0x80u;     // -0 keeps its sign, as the cast does
    rf_u32 mag;
    if (a < ldexpf(1.f, 1 - ATT_FP8_BIAS)) {
        mag = (rf_u32)rintf(a * ldexpf(1.f, ATT_FP8_BIAS + 2));   // subnormal steps of 2^(-2 - bias); 8 = min normal
    } else {
        rf_u32 b = __float_as_uint(a);
        b += 0x7ffffu + ((b >> 20) & 1u);                         // round the mantissa to 3 bits, ties to even
        mag = ((((b >> 23) & 0xffu) - 127u + ATT_FP8_BIAS) << 3) | ((b >> 20) & 7u);
    }
#if ATT_KV == 2
    return (att_kv_t)(mag ? (mag | sign) : 0u);                  // E4M3FNUZ: 0x80 is NaN, zero has no sign
#else
    return (att_kv_t)(mag | sign);
#endif
}
#endif
