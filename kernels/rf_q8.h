// rf_q8.h -- int8 blocks of an activation, written by the kernel that makes the activation.
//
// The dp4a matvecs (matvec.hip) read x as int8 blocks of 32 with a float scale and two scaled
// half-sums per block (quantize_act_q8's layout: xq int8x4 words, xd[g], xs[2g], xs[2g + 1]).
// A decode step's norms and gated-FFN products write those blocks themselves, which saves the
// separate quantize launch; the values are the same as quantize_act_q8's, bit for bit.
#pragma once
#include "rf_common.h"

// quantise the float4 v (element 4*i4 of the flat activation) with its 7 group partners; every
// lane of the warp calls it (shuffles), lanes with live == false write nothing
RF_DEV void rf_q8_group_store(float4 f, rf_i64 i4, bool live, int* __restrict__ xq, float* __restrict__ xd,
                              float* __restrict__ xs) {
    float amax = fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
    amax = fmaxf(amax, rf_shfl_xor(amax, 1));
    amax = fmaxf(amax, rf_shfl_xor(amax, 2));
    amax = fmaxf(amax, rf_shfl_xor(amax, 4));
    const float d = amax / 127.f;
    const float id = d > 0.f ? 1.f / d : 0.f;
    const int q0 = __float2int_rn(f.x * id), q1 = __float2int_rn(f.y * id);
    const int q2 = __float2int_rn(f.z * id), q3 = __float2int_rn(f.w * id);
    int s = q0 + q1 + q2 + q3;
    s += rf_shfl_xor(s, 1);
    s += rf_shfl_xor(s, 2);
    if (!live) return;
    xq[i4] = rf_pack4(q0, q1, q2, q3);
    const rf_i64 g = i4 >> 3;
    if ((i4 & 7) == 0) xd[g] = d;
    if ((i4 & 3) == 0) xs[2 * g + ((i4 >> 2) & 1)] = d * (float)s;
}

