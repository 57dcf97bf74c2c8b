// CUDA C++ as plain C++ on the host, for the kernel emulator (tests/cuda_emulated.rs): every block's
// threads run as fibers on one OS thread, __syncthreads and warp shuffles are fiber barriers, __shared__
// is a static (blocks run one after another). Enough of the language for kernels/*.cu, nothing more.
#pragma once
#include <math.h>
#include <stdint.h>
#include <string.h>

struct dim3 {
    unsigned x, y, z;
};
struct uint2 {
    uint32_t x, y;
};
struct uint4 {
    uint32_t x, y, z, w;
};
inline uint2 make_uint2(uint32_t x, uint32_t y) { return {x, y}; }
inline uint4 make_uint4(uint32_t x, uint32_t y, uint32_t z, uint32_t w) { return {x, y, z, w}; }

extern dim3 threadIdx, blockIdx, blockDim, gridDim;

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static
#define __align__(n) __attribute__((aligned(n)))
#define __launch_bounds__(...)

void emu_block_barrier();
void emu_warp_barrier();
inline void __syncthreads() { emu_block_barrier(); }

// Per-warp exchange slots for shuffles: write, meet, read the partner's, meet again.
extern unsigned char emu_shfl_slots[32][32][8];
template <typename T>
inline T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    unsigned lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    memcpy(emu_shfl_slots[warp][lane], &v, sizeof(T));
    emu_warp_barrier();
    T r;
    memcpy(&r, emu_shfl_slots[warp][lane ^ lane_mask], sizeof(T));
    emu_warp_barrier();
    return r;
}

// Arithmetic with explicit rounding: with -ffp-contract=off these are the plain operations.
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline uint32_t __umulhi(uint32_t a, uint32_t b) { return (uint32_t)(((uint64_t)a * b) >> 32); }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline int min(int a, int b) { return a < b ? a : b; }
inline int max(int a, int b) { return a > b ? a : b; }
