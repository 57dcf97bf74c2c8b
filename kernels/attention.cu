// Fused multi-head attention (flash-attention style): scores, online softmax and the weighted sum of V
// in one pass over the keys, so no L x L matrix reaches global memory. Twin: CpuBackend::attention.
//
// q, k, v, out: (B, L, heads * d). One warp per (batch, head, query); each lane holds d / 32 (<= 4) of
// the query and output coordinates. Keys and values are staged in shared memory 32 at a time and shared
// by the block's 4 warps (4 consecutive queries of one head).
#include "common.cuh"

#define MAX_D 128
#define KEYS 32
#define WARPS 4

extern "C" __global__ void __launch_bounds__(WARPS * 32) attention_f32(const float* __restrict__ q, const float* __restrict__ k,
                                                                       const float* __restrict__ v, float* __restrict__ out,
                                                                       int batch, int len, int heads, int d, int causal) {
    __shared__ float ks[KEYS][MAX_D + 1];
    __shared__ float vs[KEYS][MAX_D + 1];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int query_blocks = (len + WARPS - 1) / WARPS;
    const int b = blockIdx.x / (heads * query_blocks);
    const int h = (blockIdx.x / query_blocks) % heads;
    const int qi = (blockIdx.x % query_blocks) * WARPS + warp;
    const int width = heads * d;
    const bool active = qi < len;
    const float scale = rsqrtf((float)d);
    float qr[MAX_D / 32], acc[MAX_D / 32];
#pragma unroll
    for (int j = 0; j < MAX_D / 32; ++j) {
        int c = lane + 32 * j;
        qr[j] = (active && c < d) ? q[((long long)b * len + qi) * width + h * d + c] * scale : 0.0f;
        acc[j] = 0.0f;
    }
    float running_max = -INFINITY, running_sum = 0.0f;
    // The block's last query bounds the keys any of its warps needs.
    const int last_query = min(len, (blockIdx.x % query_blocks) * WARPS + WARPS) - 1;
    const int key_end = causal ? last_query + 1 : len;
    for (int k0 = 0; k0 < key_end; k0 += KEYS) {
        __syncthreads();
        for (int e = threadIdx.x; e < KEYS * d; e += WARPS * 32) {
            int r = e / d, c = e % d;
            long long src = ((long long)b * len + k0 + r) * width + h * d + c;
            bool ok = k0 + r < len;
            ks[r][c] = ok ? k[src] : 0.0f;
            vs[r][c] = ok ? v[src] : 0.0f;
        }
        __syncthreads();
        if (!active) continue;
        const int keys = min(KEYS, (causal ? qi + 1 : len) - k0);
        for (int r = 0; r < keys; ++r) {
            float dot = 0.0f;
#pragma unroll
            for (int j = 0; j < MAX_D / 32; ++j) {
                int c = lane + 32 * j;
                if (c < d) dot += qr[j] * ks[r][c];
            }
            dot = warp_sum(dot);
            float new_max = fmaxf(running_max, dot);
            float correction = expf(running_max - new_max), p = expf(dot - new_max);
            running_sum = running_sum * correction + p;
#pragma unroll
            for (int j = 0; j < MAX_D / 32; ++j) {
                int c = lane + 32 * j;
                acc[j] = acc[j] * correction + (c < d ? p * vs[r][c] : 0.0f);
            }
            running_max = new_max;
        }
    }
    if (!active) return;
#pragma unroll
    for (int j = 0; j < MAX_D / 32; ++j) {
        int c = lane + 32 * j;
        if (c < d) out[((long long)b * len + qi) * width + h * d + c] = acc[j] / running_sum;
    }
}
