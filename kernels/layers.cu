// Memory-bound layers of the U-Net and the ViT, and the linear-layer GEMM. Twins: the CpuBackend
// methods that src/backend/kernels.rs names for each kernel (Kernel::twin), e.g. group_norm_act ->
// group_norm, softmax_rows -> softmax_last, layer_norm_rows -> layer_norm, linear_f32 -> linear.
#include "common.cuh"

#define GRID_STRIDE(i, total) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (total); i += (long long)gridDim.x * blockDim.x)

// One block per (image, group) of `group` consecutive channel planes (one for instance norm): mean,
// biased variance (two passes, as the CPU does, in f64 partial sums), then normalise + per-channel affine
// + activation in place. Groups of the U-Nets are <= a few MB, so the second and third reads come from L2.
extern "C" __global__ void group_norm_act(float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                                          int channels, int group, int plane, float eps, int act, float slope) {
    __shared__ double scratch[32];
    const long long count = (long long)group * plane;
    float* p = x + (long long)blockIdx.x * count;
    const int c0 = (blockIdx.x % (channels / group)) * group;
    double s = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) s += p[i];
    const float mean = (float)(block_sum_f64(s, scratch) / count);
    double v = 0.0;
    for (long long i = threadIdx.x; i < count; i += blockDim.x) {
        float d = p[i] - mean;
        v += (double)d * d;
    }
    const double inv = 1.0 / sqrt(block_sum_f64(v, scratch) / count + eps);
    for (int j = 0; j < group; ++j) {
        const double g = gamma ? gamma[c0 + j] : 1.0;
        const float scale = (float)(inv * g), shift = (float)((beta ? beta[c0 + j] : 0.0) - (double)mean * inv * g);
        float* q = p + (long long)j * plane;
        for (int i = threadIdx.x; i < plane; i += blockDim.x) q[i] = activate(q[i] * scale + shift, act, slope);
    }
}

extern "C" __global__ void activate_inplace(float* __restrict__ x, long long n, int act, float slope) {
    GRID_STRIDE(i, n) x[i] = activate(x[i], act, slope);
}

extern "C" __global__ void add_inplace(float* __restrict__ a, const float* __restrict__ b, long long n) {
    GRID_STRIDE(i, n) a[i] += b[i];
}

// k x k max pool, stride k, floor mode. x (planes, h, w) -> y (planes, h / k, w / k).
extern "C" __global__ void max_pool2d(const float* __restrict__ x, float* __restrict__ y, long long planes, int h, int w, int k) {
    int ho = h / k, wo = w / k;
    GRID_STRIDE(o, planes * ho * wo) {
        int ox = (int)(o % wo), oy = (int)((o / wo) % ho);
        long long pl = o / ((long long)ho * wo);
        const float* src = x + pl * h * w + (long long)oy * k * w + ox * k;
        float m = -INFINITY;
        for (int dy = 0; dy < k; ++dy)
            for (int dx = 0; dx < k; ++dx) m = fmaxf(m, src[dy * w + dx]);
        y[o] = m;
    }
}

// Bilinear 2x, align_corners = true; source positions in f64 as on the CPU.
extern "C" __global__ void upsample_bilinear2x(const float* __restrict__ x, float* __restrict__ y, long long planes, int h, int w) {
    int ho = 2 * h, wo = 2 * w;
    GRID_STRIDE(o, planes * ho * wo) {
        int ox = (int)(o % wo), oy = (int)((o / wo) % ho);
        long long pl = o / ((long long)ho * wo);
        double py = ho > 1 ? (double)oy * (h - 1) / (ho - 1) : 0.0, px = wo > 1 ? (double)ox * (w - 1) / (wo - 1) : 0.0;
        int y0 = min((int)floor(py), h - 1), x0 = min((int)floor(px), w - 1);
        int y1 = min(y0 + 1, h - 1), x1 = min(x0 + 1, w - 1);
        float fy = (float)(py - y0), fx = (float)(px - x0);
        const float* s = x + pl * h * w;
        float top = s[y0 * w + x0] * (1.0f - fx) + s[y0 * w + x1] * fx;
        float bot = s[y1 * w + x0] * (1.0f - fx) + s[y1 * w + x1] * fx;
        y[o] = top * (1.0f - fy) + bot * fy;
    }
}

extern "C" __global__ void pad_replicate_end(const float* __restrict__ x, float* __restrict__ y, long long planes, int h, int w, int ho, int wo) {
    GRID_STRIDE(o, planes * ho * wo) {
        int ox = (int)(o % wo), oy = (int)((o / wo) % ho);
        long long pl = o / ((long long)ho * wo);
        y[o] = x[pl * h * w + (long long)min(oy, h - 1) * w + min(ox, w - 1)];
    }
}

// [a, b] along channels; a (n, ca, plane), b (n, cb, plane).
extern "C" __global__ void concat_channels(const float* __restrict__ a, const float* __restrict__ b, float* __restrict__ y, int n, int ca, int cb, long long plane) {
    long long per = (long long)(ca + cb) * plane;
    GRID_STRIDE(o, n * per) {
        long long img = o / per, r = o % per;
        y[o] = r < ca * plane ? a[img * ca * plane + r] : b[img * cb * plane + r - ca * plane];
    }
}

// Softmax over channels of NCHW: one thread per pixel.
extern "C" __global__ void softmax_channels(float* __restrict__ x, int n, int channels, long long plane) {
    GRID_STRIDE(q, n * plane) {
        float* p = x + (q / plane) * channels * plane + q % plane;
        float m = -INFINITY;
        for (int c = 0; c < channels; ++c) m = fmaxf(m, p[c * plane]);
        float z = 0.0f;
        for (int c = 0; c < channels; ++c) z += expf(p[c * plane] - m);
        for (int c = 0; c < channels; ++c) p[c * plane] = expf(p[c * plane] - m) / z;
    }
}

// One warp per row of length `len`.
extern "C" __global__ void softmax_rows(float* __restrict__ x, long long rows, int len) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    float* p = x + row * len;
    float m = -INFINITY;
    for (int i = lane; i < len; i += 32) m = fmaxf(m, p[i]);
    m = warp_max(m);
    float z = 0.0f;
    for (int i = lane; i < len; i += 32) z += expf(p[i] - m);
    z = warp_sum(z);
    for (int i = lane; i < len; i += 32) p[i] = expf(p[i] - m) / z;
}

// LayerNorm over rows of length `len`, one warp per row.
extern "C" __global__ void layer_norm_rows(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                                           float* __restrict__ y, long long rows, int len, float eps) {
    long long row = (blockIdx.x * (long long)blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x & 31;
    if (row >= rows) return;
    const float* p = x + row * len;
    float s = 0.0f;
    for (int i = lane; i < len; i += 32) s += p[i];
    const float mean = warp_sum(s) / len;
    float v = 0.0f;
    for (int i = lane; i < len; i += 32) v += (p[i] - mean) * (p[i] - mean);
    const float rstd = rsqrtf(warp_sum(v) / len + eps);
    for (int i = lane; i < len; i += 32) y[row * len + i] = (p[i] - mean) * rstd * gamma[i] + beta[i];
}

// y (M, N) = x (M, K) W (N, K)^T + bias: torch.nn.Linear. 64 x 64 tiles, 256 threads of 4 x 4 outputs.
extern "C" __global__ void __launch_bounds__(256) linear_f32(const float* __restrict__ x, const float* __restrict__ wt, const float* __restrict__ bias,
                                                             float* __restrict__ y, int m, int n, int k) {
    constexpr int BM = 64, BN = 64, BK = 16;
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int m0 = blockIdx.y * BM, n0 = blockIdx.x * BN, tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    float acc[4][4] = {};
    for (int k0 = 0; k0 < k; k0 += BK) {
        for (int e = tid; e < BM * BK; e += 256) {
            int r = e / BK, c = e % BK;
            As[c][r] = (m0 + r < m && k0 + c < k) ? x[(long long)(m0 + r) * k + k0 + c] : 0.0f;
            Bs[c][r] = (n0 + r < n && k0 + c < k) ? wt[(long long)(n0 + r) * k + k0 + c] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; ++kk) {
            float av[4], bv[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) av[i] = As[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) bv[j] = Bs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            int r = m0 + ty * 4 + i, c = n0 + tx * 4 + j;
            if (r < m && c < n) y[(long long)r * n + c] = acc[i][j] + (bias ? bias[c] : 0.0f);
        }
}
