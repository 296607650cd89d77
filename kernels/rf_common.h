// rf_common.h -- the portability layer every kernels/*.hip file includes first.
//
// One source, three compilers: hipRTC / clang in HIP mode (AMD, wave32 on
// RDNA, wave64 on CDNA), NVRTC through CuPy and nvcc (NVIDIA, warp of 32).
//   RF_WARP            threads per warp/wavefront, a compile-time constant
//                      taken from the device compiler (never write 32 for it)
//   rf_shfl_xor        butterfly shuffle (no 32-bit lane mask on HIP)
//   rf_warp_sum/max    full-warp reductions built on it
//   rf_h2f / rf_f2h    IEEE half <-> float on raw 16-bit patterns (no fp16
//                      header needed: NVRTC gets none from CuPy by default)
//   rf_bf2f            bfloat16 bits -> float
//   rf_dp4a            c + dot(int8x4 a, int8x4 b): __dp4a on CUDA,
//                      sdot4 (CDNA, RDNA2) / sudot4 (RDNA3+) on AMD
//   rf_i64             64-bit signed index type: every offset into a tensor
//                      is computed in it (tensors beyond 2^31 elements)
#pragma once

#if defined(__HIPCC__) || defined(__HIP__)
#  include <hip/hip_runtime.h>
#  define RF_HIP 1
#  if defined(__AMDGCN_WAVEFRONT_SIZE)
#    define RF_WARP __AMDGCN_WAVEFRONT_SIZE
#  elif defined(RF_WARP_SIZE)
#    define RF_WARP RF_WARP_SIZE
#  else
#    define RF_WARP 64   /* host pass only: device passes define the macro above */
#  endif
#else
#  define RF_CUDA 1
#  define RF_WARP 32     /* every NVIDIA GPU */
#endif

#if defined(RF_WARP_SIZE) && defined(RF_HIP) && defined(__AMDGCN_WAVEFRONT_SIZE)
#  if RF_WARP_SIZE != __AMDGCN_WAVEFRONT_SIZE
#    error "RF_WARP_SIZE passed by the host does not match the device wavefront size"
#  endif
#endif

typedef long long rf_i64;
typedef unsigned long long rf_u64;
typedef unsigned int rf_u32;
typedef unsigned short rf_u16;
typedef unsigned char rf_u8;
typedef signed char rf_i8;

#define RF_DEV __device__ __forceinline__

#ifndef INFINITY   /* NVRTC has no math.h */
#define INFINITY __int_as_float(0x7f800000)
#endif

// ---- shuffles and warp reductions ----------------------------------------
#if defined(RF_HIP)
#  define rf_shfl_xor(v, m) __shfl_xor((v), (m))
#else
#  define rf_shfl_xor(v, m) __shfl_xor_sync(0xffffffffu, (v), (m))
#endif

RF_DEV float rf_warp_sum(float v) {
#pragma unroll
    for (int o = RF_WARP / 2; o > 0; o >>= 1) v += rf_shfl_xor(v, o);
    return v;
}

RF_DEV float rf_warp_max(float v) {
#pragma unroll
    for (int o = RF_WARP / 2; o > 0; o >>= 1) v = fmaxf(v, rf_shfl_xor(v, o));
    return v;
}

// Sum over a whole block of blockDim.x threads (a multiple of RF_WARP);
// `scratch` holds at least blockDim.x / RF_WARP floats. All threads get the sum.
RF_DEV float rf_block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % RF_WARP, wid = threadIdx.x / RF_WARP;
    const int nw = blockDim.x / RF_WARP;
    v = rf_warp_sum(v);
    __syncthreads();                 // scratch may be reused by a previous call
    if (lane == 0) scratch[wid] = v;
    __syncthreads();
    float s = 0.f;
    for (int i = 0; i < nw; ++i) s += scratch[i];
    return s;
}

// ---- half / bfloat16 on raw bits ------------------------------------------
RF_DEV float rf_h2f(rf_u16 h) {
#if defined(RF_HIP)
    _Float16 f = __builtin_bit_cast(_Float16, h);
    return (float)f;
#else
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h));
    return f;
#endif
}

RF_DEV rf_u16 rf_f2h(float f) {
#if defined(RF_HIP)
    _Float16 h = (_Float16)f;
    return __builtin_bit_cast(rf_u16, h);
#else
    rf_u16 h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f));
    return h;
#endif
}

RF_DEV float rf_bf2f(rf_u16 b) { return __uint_as_float(((rf_u32)b) << 16); }

// little-endian loads from byte pointers of any alignment
RF_DEV rf_u16 rf_ld_u16(const rf_u8* p) { return (rf_u16)(p[0] | (p[1] << 8)); }
RF_DEV rf_u32 rf_ld_u32(const rf_u8* p) {
    return (rf_u32)p[0] | ((rf_u32)p[1] << 8) | ((rf_u32)p[2] << 16) | ((rf_u32)p[3] << 24);
}
// 4 bytes from a 2-byte aligned pointer (block formats of even size)
RF_DEV rf_u32 rf_ld_u32_a2(const rf_u8* p) {
    const rf_u16* q = (const rf_u16*)p;
    return (rf_u32)q[0] | ((rf_u32)q[1] << 16);
}
RF_DEV float rf_ld_h(const rf_u8* p) { return rf_h2f(rf_ld_u16(p)); }

// ---- integer dot product of 4 packed int8 ----------------------------------
RF_DEV int rf_dp4a(int a, int b, int c) {
#if defined(RF_CUDA)
    return __dp4a(a, b, c);
#elif defined(__gfx1100__) || defined(__gfx1101__) || defined(__gfx1102__) || defined(__gfx1103__) || \
      defined(__gfx1150__) || defined(__gfx1151__) || defined(__gfx1200__) || defined(__gfx1201__)
    return __builtin_amdgcn_sudot4(true, a, true, b, c, false);
#elif defined(__gfx906__) || defined(__gfx908__) || defined(__gfx90a__) || defined(__gfx940__) || \
      defined(__gfx941__) || defined(__gfx942__) || defined(__gfx950__) || defined(__gfx1030__) || \
      defined(__gfx1031__) || defined(__gfx1032__)
    return __builtin_amdgcn_sdot4(a, b, c, false);
#else
    const rf_i8* x = (const rf_i8*)&a;
    const rf_i8* y = (const rf_i8*)&b;
    return c + x[0] * y[0] + x[1] * y[1] + x[2] * y[2] + x[3] * y[3];
#endif
}

// pack 4 small signed ints (each in -128..127) into an int8x4 word
RF_DEV int rf_pack4(int a, int b, int c, int d) {
    return (a & 0xff) | ((b & 0xff) << 8) | ((c & 0xff) << 16) | ((rf_u32)(d & 0xff) << 24);
}

RF_DEV rf_i64 rf_gid() { return (rf_i64)blockIdx.x * blockDim.x + threadIdx.x; }
RF_DEV rf_i64 rf_gstride() { return (rf_i64)gridDim.x * blockDim.x; }
