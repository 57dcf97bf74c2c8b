// U-Net convolutions as implicit GEMM: C[Cout][pixels] = W[Cout][Cin*kh*kw] x im2col(X), where the
// im2col matrix is never stored; each block gathers its K-slice of input pixels into shared memory.
// Decoder convs read the skip (xa) and the upsampled tensor (xb) directly: channel c < ca comes from xa,
// the rest from xb, so the concatenation is never copied. Epilogue: + bias, activation.
//
// Twins: CpuBackend::conv2d (im2col + gemm) and CpuBackend::conv_transpose2d.
#include "common.cuh"
#include <cstddef>
#include <mma.h>
#include <cuda_bf16.h>
using namespace nvcuda;

struct ConvArgs {
    const float* xa;
    const float* xb;  // null when cb == 0
    const float* weight;  // (cout, ca + cb, kh, kw)
    const float* bias;  // null for none
    float* y;         // (n, cout, hout, wout)
    int n, ca, cb, h, wd, cout, kh, kw, stride, pad, hout, wout, act;
    float slope;
};
// The layout src/backend/cuda.rs asserts for its ConvArgs (pushed by value).
static_assert(sizeof(ConvArgs) == 96 && offsetof(ConvArgs, n) == 40 && offsetof(ConvArgs, act) == 88 &&
                  offsetof(ConvArgs, slope) == 92,
              "ConvArgs must match src/backend/cuda.rs");

// Input value for GEMM row k (channel, ky, kx) at the output pixel this thread decoded.
struct Column {
    int img, iy0, ix0;
    bool valid;
};

__device__ __forceinline__ Column decode_column(const ConvArgs& a, long long p) {
    Column c;
    long long plane = (long long)a.hout * a.wout;
    c.valid = p < (long long)a.n * plane;
    if (!c.valid) p = 0;
    c.img = (int)(p / plane);
    int rem = (int)(p - (long long)c.img * plane);
    int oy = rem / a.wout, ox = rem - (rem / a.wout) * a.wout;
    c.iy0 = oy * a.stride - a.pad;
    c.ix0 = ox * a.stride - a.pad;
    return c;
}

__device__ __forceinline__ float gather(const ConvArgs& a, const Column& c, int k, int kdim) {
    if (!c.valid || k >= kdim) return 0.0f;
    int taps = a.kh * a.kw;
    int ci = k / taps, t = k - ci * taps;
    int ky = t / a.kw, kx = t - ky * a.kw;
    int iy = c.iy0 + ky, ix = c.ix0 + kx;
    if (iy < 0 || iy >= a.h || ix < 0 || ix >= a.wd) return 0.0f;
    const float* src = ci < a.ca ? a.xa + ((long long)c.img * a.ca + ci) * a.h * a.wd
                                 : a.xb + ((long long)c.img * a.cb + (ci - a.ca)) * a.h * a.wd;
    return __ldg(src + (long long)iy * a.wd + ix);
}

__device__ __forceinline__ void store_output(const ConvArgs& a, int m, long long p, float v) {
    long long plane = (long long)a.hout * a.wout;
    if (m >= a.cout || p >= (long long)a.n * plane) return;
    int img = (int)(p / plane);
    long long rem = p - (long long)img * plane;
    if (a.bias) v += a.bias[m];
    a.y[((long long)img * a.cout + m) * plane + rem] = activate(v, a.act, a.slope);
}

// FP32 path: 256 threads as a 16 x 16 grid, each computing TM x TN outputs (TM = BM/16, TN = BN/16).
// Thin layers (Cout 16) use BM = 16, BN = 256 so no block computes rows that do not exist.
template <int BM, int BN>
__device__ __forceinline__ void conv_f32_tile(const ConvArgs a) {
    constexpr int BK = 16, TM = BM / 16, TN = BN / 16, THREADS = 256;
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int kdim = (a.ca + a.cb) * a.kh * a.kw;
    const int m0 = blockIdx.y * BM;
    const long long p0 = (long long)blockIdx.x * BN;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    // Each thread gathers one fixed column of the B tile: decode its pixel once.
    const int bcol = tid % BN, brow0 = tid / BN;
    constexpr int BROWS = THREADS / BN;  // rows between this thread's loads
    const Column col = decode_column(a, p0 + bcol);
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < kdim; k0 += BK) {
#pragma unroll
        for (int e = tid; e < BM * BK; e += THREADS) {
            int m = e / BK, k = e % BK;
            As[k][m] = (m0 + m < a.cout && k0 + k < kdim) ? __ldg(a.weight + (long long)(m0 + m) * kdim + k0 + k) : 0.0f;
        }
#pragma unroll
        for (int r = brow0; r < BK; r += BROWS) Bs[r][bcol] = gather(a, col, k0 + r, kdim);
        __syncthreads();
#pragma unroll
        for (int k = 0; k < BK; ++k) {
            float av[TM], bv[TN];
#pragma unroll
            for (int i = 0; i < TM; ++i) av[i] = As[k][ty * TM + i];
#pragma unroll
            for (int j = 0; j < TN; ++j) bv[j] = Bs[k][tx * TN + j];
#pragma unroll
            for (int i = 0; i < TM; ++i)
#pragma unroll
                for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(av[i], bv[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) store_output(a, m0 + ty * TM + i, p0 + tx * TN + j, acc[i][j]);
}

extern "C" __global__ void __launch_bounds__(256) conv2d_f32_m16(const ConvArgs a) { conv_f32_tile<16, 256>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_f32_m32(const ConvArgs a) { conv_f32_tile<32, 128>(a); }
extern "C" __global__ void __launch_bounds__(256) conv2d_f32_m64(const ConvArgs a) { conv_f32_tile<64, 64>(a); }

// Tensor-core path (wmma, FP32 accumulate): a 64 x 64 tile per block of 4 warps, each warp 32 x 32 as
// 2 x 2 fragments of 16 x 16. Operands are rounded to TF32 or BF16 when staged into shared memory.
template <typename Op> struct TensorOp;
template <> struct TensorOp<float> {  // TF32
    static constexpr int K = 8, PAD = 4;
    using Prec = wmma::precision::tf32;
    __device__ static float convert(float v) { return wmma::__float_to_tf32(v); }
};
template <> struct TensorOp<__nv_bfloat16> {
    static constexpr int K = 16, PAD = 8;
    using Prec = __nv_bfloat16;
    __device__ static __nv_bfloat16 convert(float v) { return __float2bfloat16_rn(v); }
};

template <typename T>
__device__ __forceinline__ void conv_tc_tile(const ConvArgs a) {
    using Op = TensorOp<T>;
    constexpr int BM = 64, BN = 64, BK = 16, THREADS = 128;
    __shared__ __align__(32) T As[BM][BK + Op::PAD];
    __shared__ __align__(32) T Bs[BK][BN + Op::PAD];
    __shared__ __align__(32) float Cs[BM][BN + 4];
    const int kdim = (a.ca + a.cb) * a.kh * a.kw;
    const int m0 = blockIdx.y * BM;
    const long long p0 = (long long)blockIdx.x * BN;
    const int tid = threadIdx.x, warp = tid / 32, wm = warp / 2, wn = warp % 2;
    const int bcol = tid % BN, brow0 = tid / BN;
    const Column col = decode_column(a, p0 + bcol);
    wmma::fragment<wmma::accumulator, 16, 16, Op::K, float> acc[2][2];
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::fill_fragment(acc[i][j], 0.0f);
    for (int k0 = 0; k0 < kdim; k0 += BK) {
#pragma unroll
        for (int e = tid; e < BM * BK; e += THREADS) {
            int m = e / BK, k = e % BK;
            As[m][k] = Op::convert((m0 + m < a.cout && k0 + k < kdim) ? __ldg(a.weight + (long long)(m0 + m) * kdim + k0 + k) : 0.0f);
        }
#pragma unroll
        for (int r = brow0; r < BK; r += THREADS / BN) Bs[r][bcol] = Op::convert(gather(a, col, k0 + r, kdim));
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < BK; kk += Op::K) {
            wmma::fragment<wmma::matrix_a, 16, 16, Op::K, typename Op::Prec, wmma::row_major> fa[2];
            wmma::fragment<wmma::matrix_b, 16, 16, Op::K, typename Op::Prec, wmma::row_major> fb[2];
#pragma unroll
            for (int i = 0; i < 2; ++i) wmma::load_matrix_sync(fa[i], &As[wm * 32 + i * 16][kk], BK + Op::PAD);
#pragma unroll
            for (int j = 0; j < 2; ++j) wmma::load_matrix_sync(fb[j], &Bs[kk][wn * 32 + j * 16], BN + Op::PAD);
#pragma unroll
            for (int i = 0; i < 2; ++i)
#pragma unroll
                for (int j = 0; j < 2; ++j) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 2; ++i)
#pragma unroll
        for (int j = 0; j < 2; ++j) wmma::store_matrix_sync(&Cs[wm * 32 + i * 16][wn * 32 + j * 16], acc[i][j], BN + 4, wmma::mem_row_major);
    __syncthreads();
    // Consecutive threads take consecutive pixels of one output row: coalesced stores.
    for (int e = tid; e < BM * BN; e += THREADS) {
        int m = e / BN, c = e % BN;
        store_output(a, m0 + m, p0 + c, Cs[m][c]);
    }
}

extern "C" __global__ void __launch_bounds__(128) conv2d_tf32(const ConvArgs a) { conv_tc_tile<float>(a); }
extern "C" __global__ void __launch_bounds__(128) conv2d_bf16(const ConvArgs a) { conv_tc_tile<__nv_bfloat16>(a); }

// Transposed conv whose kernel equals its stride 2 (MONAI deconv): every output pixel has exactly one
// input tap, y[n,co,2i+dy,2j+dx] = b[co] + sum_ci x[n,ci,i,j] w[ci,co,dy,dx]. One thread per output.
extern "C" __global__ void conv_transpose2x2(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                                             float* __restrict__ y, int n, int cin, int cout, int h, int wd) {
    long long total = (long long)n * cout * 4 * h * wd;
    for (long long o = blockIdx.x * (long long)blockDim.x + threadIdx.x; o < total; o += (long long)gridDim.x * blockDim.x) {
        int wo = 2 * wd, ho = 2 * h;
        int ox = (int)(o % wo);
        long long r = o / wo;
        int oy = (int)(r % ho);
        r /= ho;
        int co = (int)(r % cout), img = (int)(r / cout);
        int i = oy / 2, j = ox / 2, tap = (oy % 2) * 2 + (ox % 2);
        const float* src = x + (long long)img * cin * h * wd + (long long)i * wd + j;
        float acc = bias ? bias[co] : 0.0f;
        for (int ci = 0; ci < cin; ++ci) acc = fmaf(__ldg(src + (long long)ci * h * wd), __ldg(w + ((long long)ci * cout + co) * 4 + tap), acc);
        y[o] = acc;
    }
}
