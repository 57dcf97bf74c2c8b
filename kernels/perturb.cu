// Perturbation on the device: keep-masks are generated where the U-Net runs and written, together with
// the perturbed images baseline + m (input - baseline), straight into the batch input buffer; scores and
// the RISE saliency sum stay on the device too. Twins: CpuBackend::perturb, ::segmentation_scores,
// ::accumulate_weighted, which produce the same bits for masks, images and sums (every rounding step
// is spelled out with __f*_rn so no multiply-add is contracted).
#include "common.cuh"
#include <cstddef>

struct PerturbArgs {
    const float* input;     // (plane)
    const float* baseline;  // (plane)
    const float* roi;       // (plane), 1 inside the ROI; the mask is forced to 1 outside
    float* masks;           // (n, plane)
    float* images;          // (n, plane)
    int n, size;
};
// The layout src/backend/cuda.rs asserts for its PerturbArgs (pushed by value).
static_assert(sizeof(PerturbArgs) == 48 && offsetof(PerturbArgs, n) == 40, "PerturbArgs must match src/backend/cuda.rs");

__device__ __forceinline__ void emit(const PerturbArgs& a, int i, int p, float m) {
    long long plane = (long long)a.size * a.size;
    if (a.roi[p] == 0.0f) m = 1.0f;
    float b = a.baseline[p];
    a.masks[i * plane + p] = m;
    a.images[i * plane + p] = __fadd_rn(b, __fmul_rn(m, __fsub_rn(a.input[p], b)));
}

// Grid tap of upsampled pixel u (explain::rise::Rise::mask): pos = (u + 0.5) s / up - 0.5, clamped.
__device__ __forceinline__ void rise_tap(int u, int s, int up, int& g0, int& g1, float& frac) {
    float pos = __fsub_rn(__fdiv_rn(__fmul_rn(__fadd_rn((float)u, 0.5f), (float)s), (float)up), 0.5f);
    pos = fminf(fmaxf(pos, 0.0f), (float)(s - 1));
    g0 = (int)floorf(pos);
    g1 = min(g0 + 1, s - 1);
    frac = __fsub_rn(pos, (float)g0);
}

__device__ __forceinline__ float lerp_exact(float a, float b, float f) {
    return __fadd_rn(__fmul_rn(a, __fsub_rn(1.0f, f)), __fmul_rn(b, f));
}

#define RISE_MAX_GRID 64

// RISE masks first..first+n: blockIdx.y = mask, blockIdx.x = a strip of rows. The s x s Bernoulli grid and
// the two shifts come from Philox stream (first + i) exactly as on the CPU.
extern "C" __global__ void rise_masks(const PerturbArgs a, unsigned long long seed, unsigned long long first, int s, float p1) {
    __shared__ float grid[RISE_MAX_GRID * RISE_MAX_GRID];
    __shared__ int shift[2];
    const int i = blockIdx.y;
    const unsigned long long stream = first + i;
    const int cell = (a.size + s - 1) / s, up = (s + 1) * cell;
    for (int c = threadIdx.x; c < s * s; c += blockDim.x) grid[c] = philox_uniform(seed, stream, c) < p1 ? 1.0f : 0.0f;
    if (threadIdx.x < 2) shift[threadIdx.x] = (int)__fmul_rn(philox_uniform(seed, stream, (unsigned long long)(s * s + threadIdx.x)), (float)cell);
    __syncthreads();
    const int rows = (a.size + gridDim.x - 1) / gridDim.x;
    const int y_begin = blockIdx.x * rows, y_end = min(a.size, y_begin + rows);
    for (int e = threadIdx.x; e < (y_end - y_begin) * a.size; e += blockDim.x) {
        int y = y_begin + e / a.size, x = e % a.size;
        int y0, y1, x0, x1;
        float fy, fx;
        rise_tap(y + shift[0], s, up, y0, y1, fy);
        rise_tap(x + shift[1], s, up, x0, x1, fx);
        float top = lerp_exact(grid[y0 * s + x0], grid[y0 * s + x1], fx);
        float bottom = lerp_exact(grid[y1 * s + x0], grid[y1 * s + x1], fx);
        emit(a, i, y * a.size + x, lerp_exact(top, bottom, fy));
    }
}

// Occlusion: sample i zeroes the window x window square at origins[2i], origins[2i + 1] (y, x).
extern "C" __global__ void window_masks(const PerturbArgs a, const int* __restrict__ origins, int window) {
    long long plane = (long long)a.size * a.size;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < a.n * plane; e += (long long)gridDim.x * blockDim.x) {
        int i = (int)(e / plane), p = (int)(e % plane), y = p / a.size, x = p % a.size;
        int oy = origins[2 * i], ox = origins[2 * i + 1];
        bool inside = y >= oy && y < oy + window && x >= ox && x < ox + window;
        emit(a, i, p, inside ? 0.0f : 1.0f);
    }
}

// LIME / Kernel SHAP coalitions: pixel keeps its value when its superpixel is on (labels < 0: no
// superpixel, always kept). on: (n, count) of 0/1.
extern "C" __global__ void coalition_masks(const PerturbArgs a, const float* __restrict__ labels, const float* __restrict__ on, int count) {
    long long plane = (long long)a.size * a.size;
    for (long long e = blockIdx.x * (long long)blockDim.x + threadIdx.x; e < a.n * plane; e += (long long)gridDim.x * blockDim.x) {
        int i = (int)(e / plane), p = (int)(e % plane);
        int l = (int)labels[p];
        emit(a, i, p, (l < 0 || on[(long long)i * count + l] != 0.0f) ? 1.0f : 0.0f);
    }
}

// Score kinds (explain::ScoreKind order).
#define SCORE_MEAN_PROB 0
#define SCORE_LOGIT_SUM 1
#define SCORE_SOFT_DICE 2
#define SCORE_DICE 3

// One block per batch item: reduces logits (n, classes, plane) to that item's score of `cls` against
// M0 (m0: plane of 0/1). Sums in f64 as on the CPU.
extern "C" __global__ void segmentation_scores(const float* __restrict__ logits, const float* __restrict__ m0, float* __restrict__ scores,
                                               int classes, int plane, int cls, int kind) {
    __shared__ double scratch[32];
    const float* item = logits + (long long)blockIdx.x * classes * plane;
    double num = 0.0, den = 0.0, m0_count = 0.0;
    for (int p = threadIdx.x; p < plane; p += blockDim.x) {
        const bool in_m0 = m0[p] != 0.0f;
        m0_count += in_m0;
        const float target = item[(long long)cls * plane + p];
        if (kind == SCORE_LOGIT_SUM) {
            if (in_m0) num += target;
            continue;
        }
        float m = -INFINITY;
        bool predicted = true;
        for (int c = 0; c < classes; ++c) {
            float l = item[(long long)c * plane + p];
            m = fmaxf(m, l);
            predicted = predicted && l <= target;
        }
        if (kind == SCORE_DICE) {
            if (predicted) { den += 1.0; num += in_m0; }
            continue;
        }
        float z = 0.0f;
        for (int c = 0; c < classes; ++c) z += expf(item[(long long)c * plane + p] - m);
        const double prob = expf(target - m) / z;
        if (kind == SCORE_MEAN_PROB) {
            if (in_m0) num += prob;
        } else {  // soft Dice
            den += prob;
            if (in_m0) num += prob;
        }
    }
    num = block_sum_f64(num, scratch);
    den = block_sum_f64(den, scratch);
    m0_count = block_sum_f64(m0_count, scratch);
    if (threadIdx.x != 0) return;
    double score;
    switch (kind) {
    case SCORE_MEAN_PROB: score = num / m0_count; break;
    case SCORE_LOGIT_SUM: score = num; break;
    default: score = 2.0 * num / (den + m0_count); break;
    }
    scores[blockIdx.x] = (float)score;
}

// acc (2, plane) = Kahan (sum, compensation) of sum_i w_i m_i, items in order per pixel.
extern "C" __global__ void accumulate_weighted(float* __restrict__ acc, const float* __restrict__ weights, const float* __restrict__ masks, int n, int plane) {
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < plane; p += gridDim.x * blockDim.x) {
        float sum = acc[p], comp = acc[plane + p];
        for (int i = 0; i < n; ++i) {
            float y = __fsub_rn(__fmul_rn(weights[i], masks[(long long)i * plane + p]), comp);
            float t = __fadd_rn(sum, y);
            comp = __fsub_rn(__fsub_rn(t, sum), y);
            sum = t;
        }
        acc[p] = sum;
        acc[plane + p] = comp;
    }
}
