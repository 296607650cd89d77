// elementwise.hip -- activations, add/mul with simple broadcasting, scale, soft-capping.
//
// Layout: flat float32 arrays of n elements (contiguous).
// Launch: 1-D grid-stride, one element per thread per step, 256 threads a block.
// Binary ops: b is read at i (mode 0, same shape), i % nb (mode 1, b is a
// trailing-dims vector), or i / inner (mode 2, b is (rows, 1)).
// Activation kinds: 0 silu, 1 gelu (erf), 2 gelu_tanh, 3 relu, 4 relu2 (relu(x)^2), 5 sigmoid, 6 tanh.
#include "rf_common.h"
#include "rf_q8.h"

RF_DEV float rf_act(float x, int kind) {
    switch (kind) {
    case 0: return x / (1.f + expf(-x));
    case 1: return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
    case 2: return 0.5f * x * (1.f + tanhf(0.79788456080286536f * (x + 0.044715f * x * x * x)));
    case 4: { const float r = fmaxf(x, 0.f); return r * r; }
    case 5: return 1.f / (1.f + expf(-x));
    case 6: return tanhf(x);
    default: return fmaxf(x, 0.f);
    }
}

extern "C" __global__ void act_f32(const float* __restrict__ x, float* __restrict__ y, rf_i64 n, int kind) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) y[i] = rf_act(x[i], kind);
}

// y = act(g) * u  (gated FFN middle, fused)
extern "C" __global__ void act_mul_f32(const float* __restrict__ g, const float* __restrict__ u,
                                       float* __restrict__ y, rf_i64 n, int kind) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) y[i] = rf_act(g[i], kind) * u[i];
}

// op: 0 add, 1 mul
extern "C" __global__ void binary_f32(const float* __restrict__ a, const float* __restrict__ b,
                                      float* __restrict__ y, rf_i64 n, int op, int mode, rf_i64 nb) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) {
        const rf_i64 j = mode == 0 ? i : (mode == 1 ? i % nb : i / nb);
        const float bv = b[j];
        y[i] = op == 0 ? a[i] + bv : a[i] * bv;
    }
}

extern "C" __global__ void scale_f32(const float* __restrict__ x, float* __restrict__ y, rf_i64 n, float s) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) y[i] = x[i] * s;
}

extern "C" __global__ void softcap_f32(const float* __restrict__ x, float* __restrict__ y, rf_i64 n, float cap) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) y[i] = cap * tanhf(x[i] / cap);
}

// y = act(g) * u for (T, F) rows, F % 4 == 0, float4 at a time: g and u rows `gs` / `us` floats apart
// (views of one joined gate|up output need no copy); y (T, F) contiguous. With xq non-NULL
// (F % 32 == 0) y is also written as the int8 blocks the down-projection's matvec reads, exactly as
// quantize_act_q8 would (rf_q8.h).
extern "C" __global__ void act_mul_rows_f32(const float* __restrict__ g, const float* __restrict__ u,
                                            float* __restrict__ y, rf_i64 T, int F, rf_i64 gs, rf_i64 us,
                                            int kind, int* __restrict__ xq, float* __restrict__ xd,
                                            float* __restrict__ xs) {
    const rf_i64 f4 = F / 4, n4 = T * f4;
    for (rf_i64 i = rf_gid(); i - (rf_i64)(threadIdx.x % RF_WARP) < n4; i += rf_gstride()) {
        const bool live = i < n4;     // whole warps stay in the loop for the group shuffles
        float4 v = make_float4(0.f, 0.f, 0.f, 0.f);
        if (live) {
            const rf_i64 t = i / f4, c = (i - t * f4) * 4;
            const float4 a = *(const float4*)(g + t * gs + c), b = *(const float4*)(u + t * us + c);
            v = make_float4(rf_act(a.x, kind) * b.x, rf_act(a.y, kind) * b.y, rf_act(a.z, kind) * b.z,
                            rf_act(a.w, kind) * b.w);
            ((float4*)y)[i] = v;
        }
        if (xq) rf_q8_group_store(v, i, live, xq, xd, xs);
    }
}

// f32 -> f16 bits (GEMM operands)
extern "C" __global__ void f32_to_f16(const float* __restrict__ x, rf_u16* __restrict__ y, rf_i64 n) {
    for (rf_i64 i = rf_gid(); i < n; i += rf_gstride()) y[i] = rf_f2h(x[i]);
}
