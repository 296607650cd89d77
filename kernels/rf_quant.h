// rf_quant.h -- decoders for GGUF block formats and the OCP MX formats, shared by dequant.hip and matvec.hip.
//
// Every format is read in "groups" of 32 consecutive weights of one row
// (a row is K/32 groups; a 256-weight super-block holds 8 groups). One call
//     rf_group_<fmt>(row_bytes_ptr, g, G)
// decodes group g of a row into
//     G.q[8]  32 small signed integers packed as int8x4 (element 4k+i in byte i of q[k])
//     G.d[2], G.m[2]  scale and offset of elements 0-15 (index 0) and 16-31 (index 1)
// so that weight_i = G.d[i/16] * q_i - G.m[i/16]. This is exactly what the
// int8 dot-product matvec needs (dp4a against int8 activations) and what the
// dequant kernels expand to floats. Block layouts follow ggml's block_* structs
// (all little-endian); the CPU oracle is gguf.quants.
#pragma once
#include "rf_common.h"

struct RfGroup {
    int q[8];
    float d[2];
    float m[2];
};

// 16-entry int8 value tables as four little-endian words each: looked up with
// selects and shifts, so lanes with different nibbles never serialise on a memory table.
#define RF_KV_IQ4NL 0xbfad9881u, 0xf6eaddcfu, 0x26190d01u, 0x71594535u  /* -127 -104 -83 -65 | -49 -35 -22 -10 | 1 13 25 38 | 53 69 89 113 */
#define RF_KV_MXFP4 0x03020100u, 0x0c080604u, 0xfdfeff00u, 0xf4f8fafcu  /* 0 1 2 3 | 4 6 8 12 | 0 -1 -2 -3 | -4 -6 -8 -12 */

RF_DEV int rf_tab16(rf_u32 t0, rf_u32 t1, rf_u32 t2, rf_u32 t3, rf_u32 n) {
    const rf_u32 w = (n & 8) ? ((n & 4) ? t3 : t2) : ((n & 4) ? t1 : t0);
    return (int)(signed char)((w >> (8 * (n & 3))) & 0xff);
}

// bytes of x (each in 0..127) minus c (0..127), per byte, as int8 (no borrow between bytes)
RF_DEV int rf_sub_bytes(rf_u32 x, rf_u32 c) {
    return (int)(((x | 0x80808080u) - c * 0x01010101u) ^ 0x80808080u);
}

RF_DEV void rf_set_scale(RfGroup& G, float d, float m) { G.d[0] = G.d[1] = d; G.m[0] = G.m[1] = m; }

// ---- 32-weight blocks ------------------------------------------------------
// Q4_0: {f16 d; u8 qs[16]} 18 B: w_j = d*((qs[j]&15)-8), w_{j+16} = d*((qs[j]>>4)-8)
RF_DEV void rf_group_q4_0(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 18;
    rf_set_scale(G, rf_ld_h(b), 0.f);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = rf_ld_u32_a2(b + 2 + 4 * k);
        G.q[k] = rf_sub_bytes(w & 0x0f0f0f0fu, 8);
        G.q[k + 4] = rf_sub_bytes((w >> 4) & 0x0f0f0f0fu, 8);
    }
}

// Q4_1: {f16 d, m; u8 qs[16]} 20 B: w = d*q + m
RF_DEV void rf_group_q4_1(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 20;
    rf_set_scale(G, rf_ld_h(b), -rf_ld_h(b + 2));
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = rf_ld_u32_a2(b + 4 + 4 * k);
        G.q[k] = (int)(w & 0x0f0f0f0fu);
        G.q[k + 4] = (int)((w >> 4) & 0x0f0f0f0fu);
    }
}

// spread 4 bits (b0..b3) to bit 4 of 4 bytes
RF_DEV rf_u32 rf_bits_to_b4(rf_u32 bits) {
    return ((bits & 1u) << 4) | ((bits & 2u) << 11) | ((bits & 4u) << 18) | ((bits & 8u) << 25);
}

// Q5_0: {f16 d; u32 qh; u8 qs[16]} 22 B: 5th bit of element j is qh bit j
RF_DEV void rf_group_q5_0(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 22;
    rf_set_scale(G, rf_ld_h(b), 0.f);
    const rf_u32 qh = rf_ld_u32_a2(b + 2);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = rf_ld_u32_a2(b + 6 + 4 * k);
        G.q[k] = rf_sub_bytes((w & 0x0f0f0f0fu) | rf_bits_to_b4(qh >> (4 * k)), 16);
        G.q[k + 4] = rf_sub_bytes(((w >> 4) & 0x0f0f0f0fu) | rf_bits_to_b4(qh >> (16 + 4 * k)), 16);
    }
}

// Q5_1: {f16 d, m; u32 qh; u8 qs[16]} 24 B
RF_DEV void rf_group_q5_1(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 24;
    rf_set_scale(G, rf_ld_h(b), -rf_ld_h(b + 2));
    const rf_u32 qh = rf_ld_u32_a2(b + 4);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = rf_ld_u32_a2(b + 8 + 4 * k);
        G.q[k] = (int)((w & 0x0f0f0f0fu) | rf_bits_to_b4(qh >> (4 * k)));
        G.q[k + 4] = (int)(((w >> 4) & 0x0f0f0f0fu) | rf_bits_to_b4(qh >> (16 + 4 * k)));
    }
}

// Q8_0: {f16 d; i8 qs[32]} 34 B
RF_DEV void rf_group_q8_0(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 34;
    rf_set_scale(G, rf_ld_h(b), 0.f);
#pragma unroll
    for (int k = 0; k < 8; ++k) G.q[k] = (int)rf_ld_u32_a2(b + 2 + 4 * k);
}

// 4 nibbles (the low 4 bits of each byte of w) through a 16-entry table
RF_DEV int rf_lut4(rf_u32 t0, rf_u32 t1, rf_u32 t2, rf_u32 t3, rf_u32 w) {
#if defined(RF_CUDA)
    // byte permutes: entries 0-7 from (t0, t1) and 8-15 from (t2, t3) for all four lanes at once, then
    // pick per byte by bit 3 of its index (the select chain below runs ~4x the instructions: the
    // table formats' matvecs were ALU-bound at a third of Q4_0's bandwidth)
    const rf_u32 x = w & 0x0f0f0f0fu;
    const rf_u32 x7 = x & 0x07070707u;
    const rf_u32 t = x7 | (x7 >> 4);                       // byte 0: i0 | i1 << 4, byte 2: i2 | i3 << 4
    const rf_u32 sel = (t & 0xffu) | ((t >> 8) & 0xff00u);  // four 3-bit byte selectors
    const rf_u32 lo = __byte_perm(t0, t1, sel), hi = __byte_perm(t2, t3, sel);
    const rf_u32 upper = ((x >> 3) & 0x01010101u) * 0xffu;
    return (int)((lo & ~upper) | (hi & upper));
#else
    return rf_pack4(rf_tab16(t0, t1, t2, t3, w & 15), rf_tab16(t0, t1, t2, t3, (w >> 8) & 15),
                    rf_tab16(t0, t1, t2, t3, (w >> 16) & 15), rf_tab16(t0, t1, t2, t3, (w >> 24) & 15));
#endif
}

// IQ4_NL: {f16 d; u8 qs[16]} 18 B: w = d * kvalues[nibble]
RF_DEV void rf_group_iq4_nl(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 18;
    rf_set_scale(G, rf_ld_h(b), 0.f);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = rf_ld_u32_a2(b + 2 + 4 * k);
        G.q[k] = rf_lut4(RF_KV_IQ4NL, w);
        G.q[k + 4] = rf_lut4(RF_KV_IQ4NL, w >> 4);
    }
}

// MXFP4 (GGUF): {u8 e (E8M0); u8 qs[16]} 17 B: w = 2^(e-128) * 2*E2M1[nibble]
RF_DEV void rf_group_mxfp4(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 17;
    const rf_u32 e = b[0];
    const float d = __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23));
    rf_set_scale(G, d, 0.f);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = rf_ld_u32(b + 1 + 4 * k);
        G.q[k] = rf_lut4(RF_KV_MXFP4, w);
        G.q[k + 4] = rf_lut4(RF_KV_MXFP4, w >> 4);
    }
}

// ---- tiled layouts: the GPU's repacking of the 32-weight formats at upload ------------------
// A tile of n consecutive blocks of one row stores each field of the n blocks together (all n
// scales, then all n payloads, ...), so every field starts 16-byte aligned and a lane reads its
// block's 16 (or 32) quant bytes with one (two) 16-byte loads; the file's 18-byte Q4_0 blocks
// only allow 2-byte loads. A tile has the bytes of its n blocks, so rows keep their size.
// Fields and n: rocmforge/backends/gpu_layouts.py (TILES) lays them out on the host.
RF_DEV void rf_nibbles(uint4 w, RfGroup& G) {
    G.q[0] = (int)(w.x & 0x0f0f0f0fu); G.q[4] = (int)((w.x >> 4) & 0x0f0f0f0fu);
    G.q[1] = (int)(w.y & 0x0f0f0f0fu); G.q[5] = (int)((w.y >> 4) & 0x0f0f0f0fu);
    G.q[2] = (int)(w.z & 0x0f0f0f0fu); G.q[6] = (int)((w.z >> 4) & 0x0f0f0f0fu);
    G.q[3] = (int)(w.w & 0x0f0f0f0fu); G.q[7] = (int)((w.w >> 4) & 0x0f0f0f0fu);
}

RF_DEV void rf_set_nibble_lut(uint4 w, rf_u32 t0, rf_u32 t1, rf_u32 t2, rf_u32 t3, RfGroup& G) {
    const rf_u32 v[4] = {w.x, w.y, w.z, w.w};
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        G.q[k] = rf_lut4(t0, t1, t2, t3, v[k]);
        G.q[k + 4] = rf_lut4(t0, t1, t2, t3, v[k] >> 4);
    }
}

// Q4_0T, 8 blocks (144 B): f16 d[8] | qs[8][16]. (q - 8) * d = d*q - 8d: the offset goes through
// the activation sums (G.m) instead of a per-byte subtraction; both products are exact in float.
RF_DEV void rf_group_q4_0t(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 3) * 144;
    const int j = (int)(g & 7);
    const float d = rf_h2f(((const rf_u16*)t)[j]);
    rf_set_scale(G, d, 8.f * d);
    rf_nibbles(((const uint4*)(t + 16))[j], G);
}

// Q4_1T, 4 blocks (80 B): f16 d[4] | f16 m[4] | qs[4][16]
RF_DEV void rf_group_q4_1t(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 2) * 80;
    const int j = (int)(g & 3);
    rf_set_scale(G, rf_h2f(((const rf_u16*)t)[j]), -rf_h2f(((const rf_u16*)t)[4 + j]));
    rf_nibbles(((const uint4*)(t + 16))[j], G);
}

// bit j of qh becomes bit 4 of element j (Q5_0 / Q5_1)
RF_DEV void rf_fifth_bits(rf_u32 qh, RfGroup& G) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        G.q[k] |= (int)rf_bits_to_b4(qh >> (4 * k));
        G.q[k + 4] |= (int)rf_bits_to_b4(qh >> (16 + 4 * k));
    }
}

// Q5_0T, 8 blocks (176 B): f16 d[8] | u32 qh[8] | qs[8][16]
RF_DEV void rf_group_q5_0t(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 3) * 176;
    const int j = (int)(g & 7);
    const float d = rf_h2f(((const rf_u16*)t)[j]);
    rf_set_scale(G, d, 16.f * d);
    const rf_u32 qh = ((const rf_u32*)(t + 16))[j];
    rf_nibbles(((const uint4*)(t + 48))[j], G);
    rf_fifth_bits(qh, G);
}

// Q5_1T, 4 blocks (96 B): f16 d[4] | f16 m[4] | u32 qh[4] | qs[4][16]
RF_DEV void rf_group_q5_1t(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 2) * 96;
    const int j = (int)(g & 3);
    rf_set_scale(G, rf_h2f(((const rf_u16*)t)[j]), -rf_h2f(((const rf_u16*)t)[4 + j]));
    const rf_u32 qh = ((const rf_u32*)(t + 16))[j];
    rf_nibbles(((const uint4*)(t + 32))[j], G);
    rf_fifth_bits(qh, G);
}

// Q8_0T, 8 blocks (272 B): f16 d[8] | qs[8][32]
RF_DEV void rf_group_q8_0t(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 3) * 272;
    const int j = (int)(g & 7);
    rf_set_scale(G, rf_h2f(((const rf_u16*)t)[j]), 0.f);
    const uint4* q = (const uint4*)(t + 16 + 32 * j);
    const uint4 a = q[0], b = q[1];
    G.q[0] = (int)a.x; G.q[1] = (int)a.y; G.q[2] = (int)a.z; G.q[3] = (int)a.w;
    G.q[4] = (int)b.x; G.q[5] = (int)b.y; G.q[6] = (int)b.z; G.q[7] = (int)b.w;
}

// IQ4_NLT, 8 blocks (144 B): f16 d[8] | qs[8][16]
RF_DEV void rf_group_iq4_nlt(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 3) * 144;
    const int j = (int)(g & 7);
    rf_set_scale(G, rf_h2f(((const rf_u16*)t)[j]), 0.f);
    rf_set_nibble_lut(((const uint4*)(t + 16))[j], RF_KV_IQ4NL, G);
}

// MXFP4T (GGUF MXFP4), 16 blocks (272 B): u8 e[16] | qs[16][16]
RF_DEV void rf_group_mxfp4t(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* t = row + (g >> 4) * 272;
    const int j = (int)(g & 15);
    const rf_u32 e = t[j];
    rf_set_scale(G, __uint_as_float(e < 2 ? (0x00200000u << e) : ((e - 1) << 23)), 0.f);
    rf_set_nibble_lut(((const uint4*)(t + 16))[j], RF_KV_MXFP4, G);
}

// ---- 256-weight super-blocks (k-quants, IQ4_XS): group g = super-block g/8, sub-group s = g%8
// Q2_K: {u8 scales[16]; u8 qs[64]; f16 d, dmin} 84 B.
// sub-group s: bytes qs[(s/4)*32 + l], bits 2*(s%4); scales[2s], scales[2s+1] (lo: scale, hi: min)
RF_DEV void rf_group_q2_k(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + (g >> 3) * 84;
    const int s = (int)(g & 7);
    const float d = rf_ld_h(b + 80), dmin = rf_ld_h(b + 82);
    const int sh = 2 * (s & 3);
    const rf_u8* qs = b + 16 + (s >> 2) * 32;
#pragma unroll
    for (int k = 0; k < 8; ++k) G.q[k] = (int)((rf_ld_u32_a2(qs + 4 * k) >> sh) & 0x03030303u);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
        const int sc = b[2 * s + h];
        G.d[h] = d * (float)(sc & 15);
        G.m[h] = dmin * (float)(sc >> 4);
    }
}

// Q3_K: {u8 hmask[32]; u8 qs[64]; u8 scales[12]; f16 d} 110 B.
// q = ((qs >> 2*(s%4)) & 3) - (hmask bit s set ? 0 : 4); 16 6-bit scales, minus 32.
RF_DEV int rf_q3k_scale(const rf_u8* sc, int i) {
    const int lo = i < 8 ? (sc[i] & 15) : (sc[i - 8] >> 4);
    const int hi = (sc[8 + (i & 3)] >> (2 * (i >> 2))) & 3;
    return (lo | (hi << 4)) - 32;
}

RF_DEV void rf_group_q3_k(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + (g >> 3) * 110;
    const int s = (int)(g & 7);
    const float d = rf_ld_h(b + 108);
    const int sh = 2 * (s & 3);
    const rf_u8* qs = b + 32 + (s >> 2) * 32;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        rf_u32 lo = (rf_ld_u32_a2(qs + 4 * k) >> sh) & 0x03030303u;
        rf_u32 hb = (rf_ld_u32_a2(b + 4 * k) >> s) & 0x01010101u;
        G.q[k] = rf_sub_bytes(lo | (hb << 2), 4);
    }
    G.d[0] = d * (float)rf_q3k_scale(b + 96, 2 * s);
    G.d[1] = d * (float)rf_q3k_scale(b + 96, 2 * s + 1);
    G.m[0] = G.m[1] = 0.f;
}

// 6-bit scale and min j (0..7) of Q4_K / Q5_K (ggml's get_scale_min_k4)
RF_DEV void rf_scale_min_k4(const rf_u8* q, int j, int& sc, int& mn) {
    if (j < 4) {
        sc = q[j] & 63;
        mn = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        mn = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

// Q4_K: {f16 d, dmin; u8 scales[12]; u8 qs[128]} 144 B.
// sub-group s: nibble (s&1) of qs[(s/2)*32 + l]; w = d*sc*q - dmin*m
RF_DEV void rf_group_q4_k(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + (g >> 3) * 144;
    const int s = (int)(g & 7);
    const float d = rf_ld_h(b), dmin = rf_ld_h(b + 2);
    int sc, mn;
    rf_scale_min_k4(b + 4, s, sc, mn);
    rf_set_scale(G, d * (float)sc, dmin * (float)mn);
    // 144-byte super-blocks keep rows 16-byte aligned: the 32 quant bytes in two 16-byte loads
    const uint4* qs = (const uint4*)(b + 16 + (s >> 1) * 32);
    const uint4 a = qs[0], c = qs[1];
    const rf_u32 w[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
    const int sh = 4 * (s & 1);
#pragma unroll
    for (int k = 0; k < 8; ++k) G.q[k] = (int)((w[k] >> sh) & 0x0f0f0f0fu);
}

// Q5_K: {f16 d, dmin; u8 scales[12]; u8 qh[32]; u8 qs[128]} 176 B; 5th bit: qh[l] bit s
RF_DEV void rf_group_q5_k(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + (g >> 3) * 176;
    const int s = (int)(g & 7);
    const float d = rf_ld_h(b), dmin = rf_ld_h(b + 2);
    int sc, mn;
    rf_scale_min_k4(b + 4, s, sc, mn);
    rf_set_scale(G, d * (float)sc, dmin * (float)mn);
    // 176-byte super-blocks keep rows 16-byte aligned: qh and qs in 16-byte loads
    const uint4* qh4 = (const uint4*)(b + 16);
    const uint4* qs4 = (const uint4*)(b + 48 + (s >> 1) * 32);
    const uint4 h0 = qh4[0], h1 = qh4[1], a = qs4[0], c = qs4[1];
    const rf_u32 qh[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    const rf_u32 qs[8] = {a.x, a.y, a.z, a.w, c.x, c.y, c.z, c.w};
    const int sh = 4 * (s & 1);
#pragma unroll
    for (int k = 0; k < 8; ++k)
        G.q[k] = (int)(((qs[k] >> sh) & 0x0f0f0f0fu) | (((qh[k] >> s) & 0x01010101u) << 4));
}

// Q6_K: {u8 ql[128]; u8 qh[64]; i8 scales[16]; f16 d} 210 B.
// sub-group s = 4h + k: ql[h*64 + (k&1)*32 + l] nibble (k>>1), qh[h*32 + l] bits 2k..2k+1, minus 32;
// scales[h*8 + 2k + l/16]
RF_DEV void rf_group_q6_k(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + (g >> 3) * 210;
    const int s = (int)(g & 7);
    const int h = s >> 2, k4 = s & 3;
    const float d = rf_ld_h(b + 208);
    const rf_u8* ql = b + h * 64 + (k4 & 1) * 32;
    const rf_u8* qh = b + 128 + h * 32;
    const int shl = 4 * (k4 >> 1), shh = 2 * k4;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        rf_u32 lo = (rf_ld_u32_a2(ql + 4 * k) >> shl) & 0x0f0f0f0fu;
        rf_u32 hi = (rf_ld_u32_a2(qh + 4 * k) >> shh) & 0x03030303u;
        G.q[k] = rf_sub_bytes(lo | (hi << 4), 32);
    }
    const rf_i8* sc = (const rf_i8*)(b + 192 + h * 8 + 2 * k4);
    G.d[0] = d * (float)sc[0];
    G.d[1] = d * (float)sc[1];
    G.m[0] = G.m[1] = 0.f;
}

// Q6_KT (tiled Q6_K, gpu_layouts), 8 super-blocks (1680 B): ql[8][128] | qh[8][64] | i8 scales[8][16] |
// f16 d[8]. The file's 210-byte super-blocks allow only 2-byte loads; here ql and qh take 16-byte ones.
RF_DEV void rf_group_q6_kt(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_i64 sb = g >> 3;
    const rf_u8* t = row + (sb >> 3) * 1680;
    const int j = (int)(sb & 7), s = (int)(g & 7);
    const int h = s >> 2, k4 = s & 3;
    const float d = rf_h2f(((const rf_u16*)(t + 1664))[j]);
    const uint4* ql = (const uint4*)(t + j * 128 + h * 64 + (k4 & 1) * 32);
    const uint4* qh = (const uint4*)(t + 1024 + j * 64 + h * 32);
    const uint4 l0 = ql[0], l1 = ql[1], h0 = qh[0], h1 = qh[1];
    const rf_u32 L[8] = {l0.x, l0.y, l0.z, l0.w, l1.x, l1.y, l1.z, l1.w};
    const rf_u32 Hb[8] = {h0.x, h0.y, h0.z, h0.w, h1.x, h1.y, h1.z, h1.w};
    const int shl = 4 * (k4 >> 1), shh = 2 * k4;
#pragma unroll
    for (int k = 0; k < 8; ++k)
        G.q[k] = rf_sub_bytes(((L[k] >> shl) & 0x0f0f0f0fu) | (((Hb[k] >> shh) & 0x03030303u) << 4), 32);
    const rf_i8* sc = (const rf_i8*)(t + 1536 + j * 16 + h * 8 + 2 * k4);
    G.d[0] = d * (float)sc[0];
    G.d[1] = d * (float)sc[1];
    G.m[0] = G.m[1] = 0.f;
}

// IQ4_XS: {f16 d; u16 scales_h; u8 scales_l[4]; u8 qs[128]} 136 B.
// sub-group s: 6-bit scale ls, w = d*(ls-32)*kvalues[nibble] of qs[s*16 + j] (lo: j, hi: j+16)
RF_DEV void rf_group_iq4_xs(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + (g >> 3) * 136;
    const int s = (int)(g & 7);
    const float d = rf_ld_h(b);
    const int sh = rf_ld_u16(b + 2);
    const int ls = ((b[4 + (s >> 1)] >> (4 * (s & 1))) & 15) | (((sh >> (2 * s)) & 3) << 4);
    rf_set_scale(G, d * (float)(ls - 32), 0.f);
    const rf_u32* qs = (const rf_u32*)(b + 8 + s * 16);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        rf_u32 w = qs[k];
        G.q[k] = rf_lut4(RF_KV_IQ4NL, w);
        G.q[k + 4] = rf_lut4(RF_KV_IQ4NL, w >> 4);
    }
}

// ---- OCP Microscaling v1.0 (rocmforge.quant.mx layout) ---------------------------------------
// Every block: byte 0 = E8M0 scale X = 2^(e-127) (0xFF = NaN: the whole block is NaN), then 32
// element codes in element order: MXINT8 / MXFP8 1 byte each (33 B), MXFP6 8 x 3 bytes (25 B, the
// little-endian 24-bit word of a 3-byte group holds elements 4k..4k+3 at bits 0, 6, 12, 18),
// MXFP4 16 bytes (17 B, byte j: element 2j low nibble, 2j+1 high nibble; not GGUF's MXFP4 order).
// Formats whose element values are exact small integers times a power of two (INT8, FP4 E2M1,
// FP6 E2M3) decode to RfGroup (dp4a matvec); FP8 E4M3/E5M2 and FP6 E3M2 (up to 448 steps of
// its smallest subnormal) decode to 32 floats (rf_fgroup_*: float matvec against float x).
RF_DEV float rf_e8m0(rf_u32 e) {
    return __uint_as_float(e == 0xFFu ? 0x7FC00000u : (e == 0u ? 0x00400000u : (e << 23)));
}

// MXINT8: w = X * 2^-6 * int8 (two's complement, -128 accepted)
RF_DEV void rf_group_mx_int8(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 33;
    rf_set_scale(G, rf_e8m0(b[0]) * 0.015625f, 0.f);
#pragma unroll
    for (int k = 0; k < 8; ++k) G.q[k] = (int)rf_ld_u32(b + 1 + 4 * k);
}

// the 4 nibbles of a 16-bit h -> the low nibbles of the 4 bytes of a word (element order)
RF_DEV rf_u32 rf_spread_nibbles(rf_u32 h) {
    return (h & 0xFu) | ((h & 0xF0u) << 4) | ((h & 0xF00u) << 8) | ((h & 0xF000u) << 12);
}

// MXFP4_E2M1: w = X/2 * (2 * E2M1[code]) (0 1 2 3 4 6 8 12, sign bit 3)
RF_DEV void rf_group_mx_fp4(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 17;
    rf_set_scale(G, rf_e8m0(b[0]) * 0.5f, 0.f);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const rf_u32 w = rf_ld_u32(b + 1 + 4 * k);
        G.q[2 * k] = rf_lut4(RF_KV_MXFP4, rf_spread_nibbles(w & 0xFFFFu));
        G.q[2 * k + 1] = rf_lut4(RF_KV_MXFP4, rf_spread_nibbles(w >> 16));
    }
}

// FP6 E2M3 code (s eemmm, bias 1, no inf/NaN) times 8: 0..7, 8..15, 16..30, 32..60 (signed)
RF_DEV int rf_e2m3_x8(rf_u32 c) {
    const int e = (c >> 3) & 3, m = c & 7;
    const int mag = e == 0 ? m : ((8 | m) << (e - 1));
    return (c & 0x20u) ? -mag : mag;
}

RF_DEV rf_u32 rf_ld_u24(const rf_u8* p) { return (rf_u32)p[0] | ((rf_u32)p[1] << 8) | ((rf_u32)p[2] << 16); }

// MXFP6_E2M3: w = X/8 * (8 * E2M3[code])
RF_DEV void rf_group_mx_fp6_e2m3(const rf_u8* row, rf_i64 g, RfGroup& G) {
    const rf_u8* b = row + g * 25;
    rf_set_scale(G, rf_e8m0(b[0]) * 0.125f, 0.f);
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const rf_u32 w = rf_ld_u24(b + 1 + 3 * k);
        G.q[k] = rf_pack4(rf_e2m3_x8(w & 63), rf_e2m3_x8((w >> 6) & 63), rf_e2m3_x8((w >> 12) & 63),
                          rf_e2m3_x8((w >> 18) & 63));
    }
}

// a minifloat code without special values: s | EB exponent bits | MB mantissa bits, bias BIAS
template <int EB, int MB, int BIAS>
RF_DEV float rf_minifloat(rf_u32 c) {
    const int e = (int)((c >> MB) & ((1u << EB) - 1u));
    const rf_u32 m = c & ((1u << MB) - 1u);
    const float mag = (float)(e ? (m | (1u << MB)) : m) *
                      __uint_as_float((rf_u32)(127 + (e ? e : 1) - BIAS - MB) << 23);
    return ((c >> (EB + MB)) & 1u) ? -mag : mag;
}

// FP8 E4M3 (bias 7): no infinity, S.1111.111 is NaN
RF_DEV float rf_fp8_e4m3(rf_u32 c) {
    return (c & 0x7Fu) == 0x7Fu ? __uint_as_float(0x7FC00000u) : rf_minifloat<4, 3, 7>(c);
}

// FP8 E5M2 (bias 15): exponent 11111 is +-inf (mantissa 0) or NaN
RF_DEV float rf_fp8_e5m2(rf_u32 c) {
    if ((c & 0x7Cu) == 0x7Cu)
        return __uint_as_float((c & 3u) ? 0x7FC00000u : (((c & 0x80u) << 24) | 0x7F800000u));
    return rf_minifloat<5, 2, 15>(c);
}

// exact v * 2^k (IEEE, round to nearest even into the subnormals) in integer arithmetic, for v a
// normal float, +-0, inf or NaN (MX element values are never float32 subnormals). No float multiply:
// CuPy compiles CUDA kernels with -ftz=true, which would flush the subnormal results of tiny E8M0 scales.
RF_DEV float rf_ldexp_exact(float v, int k) {
    const rf_u32 b = __float_as_uint(v);
    const rf_u32 s = b & 0x80000000u;
    const int E = (int)((b >> 23) & 0xFFu);
    if (E == 0xFF || (b & 0x7FFFFFFFu) == 0u) return v;
    const int E2 = E + k;
    if (E2 >= 0xFF) return __uint_as_float(s | 0x7F800000u);
    if (E2 >= 1) return __uint_as_float(s | ((rf_u32)E2 << 23) | (b & 0x7FFFFFu));
    const int sh = 1 - E2;
    if (sh > 25) return __uint_as_float(s);
    const rf_u32 m = (b & 0x7FFFFFu) | 0x800000u;
    rf_u32 q = m >> sh;
    const rf_u32 rem = m & ((1u << sh) - 1u), half = 1u << (sh - 1);
    if (rem > half || (rem == half && (q & 1u))) ++q;
    return __uint_as_float(s | q);
}

// the 32 element values of an MX block (before the shared scale); b points at the block
RF_DEV void rf_mx_elems_mx_int8(const rf_u8* b, float* el) {
#pragma unroll
    for (int i = 0; i < 32; ++i) el[i] = (float)(int)(signed char)b[1 + i] * 0.015625f;
}
RF_DEV void rf_mx_elems_mx_fp4(const rf_u8* b, float* el) {
#pragma unroll
    for (int j = 0; j < 16; ++j) {
        const rf_u32 c = b[1 + j];
        el[2 * j] = (float)rf_tab16(RF_KV_MXFP4, c & 15u) * 0.5f;
        el[2 * j + 1] = (float)rf_tab16(RF_KV_MXFP4, c >> 4) * 0.5f;
    }
}
RF_DEV void rf_mx_elems_mx_fp6_e2m3(const rf_u8* b, float* el) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const rf_u32 w = rf_ld_u24(b + 1 + 3 * k);
#pragma unroll
        for (int i = 0; i < 4; ++i) el[4 * k + i] = (float)rf_e2m3_x8((w >> (6 * i)) & 63) * 0.125f;
    }
}
RF_DEV void rf_mx_elems_mx_fp6_e3m2(const rf_u8* b, float* el) {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const rf_u32 w = rf_ld_u24(b + 1 + 3 * k);
#pragma unroll
        for (int i = 0; i < 4; ++i) el[4 * k + i] = rf_minifloat<3, 2, 3>((w >> (6 * i)) & 63);
    }
}
RF_DEV void rf_mx_elems_mx_fp8_e4m3(const rf_u8* b, float* el) {
#pragma unroll
    for (int i = 0; i < 32; ++i) el[i] = rf_fp8_e4m3(b[1 + i]);
}
RF_DEV void rf_mx_elems_mx_fp8_e5m2(const rf_u8* b, float* el) {
#pragma unroll
    for (int i = 0; i < 32; ++i) el[i] = rf_fp8_e5m2(b[1 + i]);
}

// block bytes of each MX format
#define RF_MX_BYTES_mx_int8 33
#define RF_MX_BYTES_mx_fp4 17
#define RF_MX_BYTES_mx_fp6_e2m3 25
#define RF_MX_BYTES_mx_fp6_e3m2 25
#define RF_MX_BYTES_mx_fp8_e4m3 33
#define RF_MX_BYTES_mx_fp8_e5m2 33

// rf_fgroup_<fmt>: element value times X in float (the float matvec; subnormal products may flush)
// rf_xgroup_<fmt>: the exact values, bit-identical to rocmforge.quant.mx.decode_blocks (dequant)
#define RF_MX_GROUPS(fmt)                                                                             \
RF_DEV void rf_fgroup_##fmt(const rf_u8* row, rf_i64 g, float* v) {                                  \
    const rf_u8* b = row + g * RF_MX_BYTES_##fmt;                                                     \
    const float X = rf_e8m0(b[0]);                                                                    \
    rf_mx_elems_##fmt(b, v);                                                                          \
    _Pragma("unroll") for (int i = 0; i < 32; ++i) v[i] *= X;                                         \
}                                                                                                     \
RF_DEV void rf_xgroup_##fmt(const rf_u8* row, rf_i64 g, float* v) {                                  \
    const rf_u8* b = row + g * RF_MX_BYTES_##fmt;                                                     \
    const rf_u32 e = b[0];                                                                            \
    rf_mx_elems_##fmt(b, v);                                                                          \
    _Pragma("unroll") for (int i = 0; i < 32; ++i)                                                    \
        v[i] = e == 0xFFu ? __uint_as_float(0x7FC00000u) : rf_ldexp_exact(v[i], (int)e - 127);        \
}

// X-macros. GGUF block formats: RfGroup decoder for the dp4a matvec and the dequant.
#define RF_FOR_EACH_BLOCK_FORMAT(X) \
    X(q4_0) X(q4_1) X(q5_0) X(q5_1) X(q8_0) X(iq4_nl) X(mxfp4) \
    X(q2_k) X(q3_k) X(q4_k) X(q5_k) X(q6_k) X(iq4_xs)
// the tiled GPU layouts of the 32-weight formats (same decoders' contract, 16-byte loads)
#define RF_FOR_EACH_TILED_FORMAT(X) X(q4_0t) X(q4_1t) X(q5_0t) X(q5_1t) X(q8_0t) X(iq4_nlt) X(mxfp4t) X(q6_kt)
// OCP MX formats with an RfGroup decoder (dp4a matvec)
#define RF_FOR_EACH_MX_INT_FORMAT(X) X(mx_int8) X(mx_fp4) X(mx_fp6_e2m3)
// block formats decoded to floats (rf_fgroup_*: float matvec)
#define RF_FOR_EACH_FLOAT_GROUP_FORMAT(X) X(mx_fp8_e4m3) X(mx_fp8_e5m2) X(mx_fp6_e3m2)
// every OCP MX format (rf_xgroup_*: exact dequant)
#define RF_FOR_EACH_MX_FORMAT(X) X(mx_int8) X(mx_fp4) X(mx_fp6_e2m3) X(mx_fp8_e4m3) X(mx_fp8_e5m2) X(mx_fp6_e3m2)

RF_FOR_EACH_MX_FORMAT(RF_MX_GROUPS)
