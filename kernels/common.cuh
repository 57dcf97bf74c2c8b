// Helpers shared by every kernel family: activations (same formulas as backend::Activation), Philox
// (same stream as rng.rs), and block reductions.
#pragma once
#include <stdint.h>

// Activation codes, as CudaBackend passes them (backend::Activation order).
#define ACT_IDENTITY 0
#define ACT_RELU 1
#define ACT_LEAKY_RELU 2
#define ACT_QUICK_GELU 3
#define ACT_GELU 4

__device__ __forceinline__ float activate(float x, int act, float slope) {
    switch (act) {
    case ACT_RELU: return fmaxf(x, 0.0f);
    case ACT_LEAKY_RELU: return x >= 0.0f ? x : x * slope;
    case ACT_QUICK_GELU: return x / (1.0f + expf(-1.702f * x));
    case ACT_GELU: return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
    default: return x;
    }
}

// Philox4x32-10 with the counter layout of rng.rs: (index lo, index hi, stream lo, stream hi).
__device__ __forceinline__ uint4 philox4x32_10(uint4 ctr, uint2 key) {
    const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u, W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
#pragma unroll
    for (int round = 0; round < 10; ++round) {
        if (round > 0) { key.x += W0; key.y += W1; }
        uint32_t hi0 = __umulhi(M0, ctr.x), lo0 = M0 * ctr.x;
        uint32_t hi1 = __umulhi(M1, ctr.z), lo1 = M1 * ctr.z;
        ctr = make_uint4(hi1 ^ ctr.y ^ key.x, lo1, hi0 ^ ctr.w ^ key.y, lo0);
    }
    return ctr;
}

// Word i of stream `stream` under `seed` (rng::Philox::word).
__device__ __forceinline__ uint32_t philox_word(uint64_t seed, uint64_t stream, uint64_t i) {
    uint64_t block = i / 4;
    uint4 r = philox4x32_10(make_uint4((uint32_t)block, (uint32_t)(block >> 32), (uint32_t)stream, (uint32_t)(stream >> 32)),
                            make_uint2((uint32_t)seed, (uint32_t)(seed >> 32)));
    switch (i % 4) { case 0: return r.x; case 1: return r.y; case 2: return r.z; default: return r.w; }
}

// rng::Philox::uniform: the top 24 bits, exact in f32.
__device__ __forceinline__ float philox_uniform(uint64_t seed, uint64_t stream, uint64_t i) {
    return (float)(philox_word(seed, stream, i) >> 8) * (1.0f / 16777216.0f);
}

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values; the leading barrier makes back-to-back calls safe.
__device__ __forceinline__ double block_sum_f64(double v, double* scratch) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
    v = warp_sum(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0;
    return warp_sum(v);
}
