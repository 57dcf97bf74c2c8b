// 3-D (NCDHW) layers of volumetric U-Nets. Twins: src/backend/cpu/volume.rs (conv3d, conv_transpose3d,
// max_pool3d, upsample_trilinear, pad_replicate_end3d, flip3d); shapes are checked in src/backend/volume.rs
// before any launch. Instance norm, concatenation and channel softmax of volumes run on layers.cu's
// kernels, which see a volume as one long plane.
#include "common.cuh"
#include <cstddef>

#define GRID_STRIDE3(i, total) \
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < (total); i += (long long)gridDim.x * blockDim.x)

struct Conv3dArgs {
    const float* x;       // (n, cin, d, h, w)
    const float* weight;  // (cout, cin, kd, kh, kw)
    const float* bias;    // null for none
    float* y;             // (n, cout, od, oh, ow)
    int n, cin, d, h, w, cout, kd, kh, kw, sd, sh, sw, pd, ph, pw, od, oh, ow;
};
// The layout src/backend/cuda.rs asserts for its Conv3dArgs (pushed by value).
static_assert(sizeof(Conv3dArgs) == 104 && offsetof(Conv3dArgs, n) == 32 && offsetof(Conv3dArgs, ow) == 100,
              "Conv3dArgs must match src/backend/cuda.rs");

// The output voxel of GEMM column p, decoded once per thread: image and the input corner of its window.
struct Voxel {
    int img, iz0, iy0, ix0;
    bool valid;
};

__device__ __forceinline__ Voxel decode_voxel(const Conv3dArgs& a, long long p) {
    Voxel v;
    long long vol = (long long)a.od * a.oh * a.ow;
    v.valid = p < (long long)a.n * vol;
    if (!v.valid) p = 0;
    v.img = (int)(p / vol);
    long long rem = p - (long long)v.img * vol;
    int oz = (int)(rem / ((long long)a.oh * a.ow));
    int r = (int)(rem - (long long)oz * a.oh * a.ow);
    int oy = r / a.ow, ox = r - (r / a.ow) * a.ow;
    v.iz0 = oz * a.sd - a.pd;
    v.iy0 = oy * a.sh - a.ph;
    v.ix0 = ox * a.sw - a.pw;
    return v;
}

// Input value of GEMM row k = (ci, kz, ky, kx) for the voxel; 0 in the padding.
__device__ __forceinline__ float gather3d(const Conv3dArgs& a, const Voxel& v, int k, int kdim) {
    if (!v.valid || k >= kdim) return 0.0f;
    int taps = a.kd * a.kh * a.kw;
    int ci = k / taps, t = k - ci * taps;
    int kz = t / (a.kh * a.kw);
    t -= kz * a.kh * a.kw;
    int ky = t / a.kw, kx = t - ky * a.kw;
    int iz = v.iz0 + kz, iy = v.iy0 + ky, ix = v.ix0 + kx;
    if (iz < 0 || iz >= a.d || iy < 0 || iy >= a.h || ix < 0 || ix >= a.w) return 0.0f;
    return __ldg(a.x + (((long long)v.img * a.cin + ci) * a.d + iz) * a.h * a.w + (long long)iy * a.w + ix);
}

// Implicit GEMM, FP32: C[cout][voxels] = W[cout][cin kd kh kw] x im2col(X), the im2col matrix never
// stored. 256 threads as 16 x 16, each TM x TN outputs; BM = 16 for thin layers (Cout <= 16).
template <int BM, int BN>
__device__ __forceinline__ void conv3d_tile(const Conv3dArgs a) {
    constexpr int BK = 16, TM = BM / 16, TN = BN / 16, THREADS = 256;
    __shared__ float As[BK][BM + 4];
    __shared__ float Bs[BK][BN + 4];
    const int kdim = a.cin * a.kd * a.kh * a.kw;
    const long long vol = (long long)a.od * a.oh * a.ow;
    const int m0 = blockIdx.y * BM;
    const long long p0 = (long long)blockIdx.x * BN;
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int bcol = tid % BN, brow0 = tid / BN;
    constexpr int BROWS = THREADS / BN;
    const Voxel vox = decode_voxel(a, p0 + bcol);
    float acc[TM][TN];
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;
    for (int k0 = 0; k0 < kdim; k0 += BK) {
        for (int e = tid; e < BM * BK; e += THREADS) {
            int m = e / BK, k = e % BK;
            As[k][m] = (m0 + m < a.cout && k0 + k < kdim) ? __ldg(a.weight + (long long)(m0 + m) * kdim + k0 + k) : 0.0f;
        }
        for (int r = brow0; r < BK; r += BROWS) Bs[r][bcol] = gather3d(a, vox, k0 + r, kdim);
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
    for (int i = 0; i < TM; ++i) {
        int m = m0 + ty * TM + i;
        if (m >= a.cout) continue;
#pragma unroll
        for (int j = 0; j < TN; ++j) {
            long long p = p0 + tx * TN + j;
            if (p >= (long long)a.n * vol) continue;
            long long img = p / vol;
            a.y[(img * a.cout + m) * vol + (p - img * vol)] = acc[i][j] + (a.bias ? a.bias[m] : 0.0f);
        }
    }
}

extern "C" __global__ void __launch_bounds__(256) conv3d_f32_m16(const Conv3dArgs a) { conv3d_tile<16, 256>(a); }
extern "C" __global__ void __launch_bounds__(256) conv3d_f32_m64(const Conv3dArgs a) { conv3d_tile<64, 64>(a); }

// Transposed conv: input voxel i and tap t land on output o = i s - p + t per axis, so each output voxel
// gathers the taps with (o + p - t) divisible by s and the quotient inside the input (one tap when
// kernel = stride), y[n, co, o] = b[co] + sum_taps sum_ci x[n, ci, i] w[ci, co, t]; taps in order.
extern "C" __global__ void conv_transpose3d(const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ bias,
                                            float* __restrict__ y, int n, int cin, int cout, int d, int h, int wd, int kd,
                                            int kh, int kw, int sd, int sh, int sw, int pd, int ph, int pw, int od, int oh,
                                            int ow) {
    const int taps = kd * kh * kw;
    const long long vin = (long long)d * h * wd;
    GRID_STRIDE3(o, (long long)n * cout * od * oh * ow) {
        int ox = (int)(o % ow);
        long long r = o / ow;
        int oy = (int)(r % oh);
        r /= oh;
        int oz = (int)(r % od);
        r /= od;
        int co = (int)(r % cout), img = (int)(r / cout);
        const float* base = x + (long long)img * cin * vin;
        float acc = bias ? bias[co] : 0.0f;
        for (int tz = 0; tz < kd; ++tz) {
            int nz = oz + pd - tz;
            if (nz < 0 || nz % sd != 0 || nz / sd >= d) continue;
            for (int ty = 0; ty < kh; ++ty) {
                int ny = oy + ph - ty;
                if (ny < 0 || ny % sh != 0 || ny / sh >= h) continue;
                for (int tx = 0; tx < kw; ++tx) {
                    int nx = ox + pw - tx;
                    if (nx < 0 || nx % sw != 0 || nx / sw >= wd) continue;
                    const float* src = base + ((long long)(nz / sd) * h + ny / sh) * wd + nx / sw;
                    const float* wt = w + (long long)co * taps + (tz * kh + ty) * kw + tx;
                    float part = 0.0f;
                    for (int ci = 0; ci < cin; ++ci)
                        part = fmaf(__ldg(src + (long long)ci * vin), __ldg(wt + (long long)ci * cout * taps), part);
                    acc += part;
                }
            }
        }
        y[o] = acc;
    }
}

// Max pool, window = stride (kd, kh, kw), floor mode. x (volumes, d, h, w) -> y (volumes, d/kd, h/kh, w/kw).
extern "C" __global__ void max_pool3d(const float* __restrict__ x, float* __restrict__ y, long long volumes, int d, int h, int w,
                                      int kd, int kh, int kw) {
    const int od = d / kd, oh = h / kh, ow = w / kw;
    GRID_STRIDE3(o, volumes * od * oh * ow) {
        int ox = (int)(o % ow), oy = (int)((o / ow) % oh), oz = (int)((o / ((long long)ow * oh)) % od);
        long long v = o / ((long long)od * oh * ow);
        const float* src = x + v * d * h * w + ((long long)oz * kd * h + (long long)oy * kh) * w + (long long)ox * kw;
        float m = -INFINITY;
        for (int dz = 0; dz < kd; ++dz)
            for (int dy = 0; dy < kh; ++dy)
                for (int dx = 0; dx < kw; ++dx) m = fmaxf(m, src[((long long)dz * h + dy) * w + dx]);
        y[o] = m;
    }
}

// One axis of linear resampling, as backend::volume::linear_taps computes it (f64 source position).
__device__ __forceinline__ void linear_tap(int o, int in, int out, int align, int* i0, int* i1, float* f) {
    double pos = align ? (out > 1 ? (double)o * (in - 1) / (out - 1) : 0.0) : fmax(0.0, ((double)o + 0.5) * in / out - 0.5);
    *i0 = min((int)floor(pos), in - 1);
    *i1 = min(*i0 + 1, in - 1);
    *f = (float)(pos - *i0);
}

// Trilinear resize to (od, oh, ow): lerp along W, then H, then D, as the CPU twin.
extern "C" __global__ void upsample_trilinear(const float* __restrict__ x, float* __restrict__ y, long long volumes, int d, int h,
                                              int w, int od, int oh, int ow, int align) {
    GRID_STRIDE3(o, volumes * od * oh * ow) {
        int ox = (int)(o % ow), oy = (int)((o / ow) % oh), oz = (int)((o / ((long long)ow * oh)) % od);
        const float* s = x + (o / ((long long)od * oh * ow)) * d * h * w;
        int z0, z1, y0, y1, x0, x1;
        float fz, fy, fx;
        linear_tap(oz, d, od, align, &z0, &z1, &fz);
        linear_tap(oy, h, oh, align, &y0, &y1, &fy);
        linear_tap(ox, w, ow, align, &x0, &x1, &fx);
#define AT(z, yy, xx) s[((long long)(z) * h + (yy)) * w + (xx)]
#define LINE(z, yy) (AT(z, yy, x0) * (1.0f - fx) + AT(z, yy, x1) * fx)
#define FACE(z) (LINE(z, y0) * (1.0f - fy) + LINE(z, y1) * fy)
        y[o] = FACE(z0) * (1.0f - fz) + FACE(z1) * fz;
#undef FACE
#undef LINE
#undef AT
    }
}

extern "C" __global__ void pad_replicate_end3d(const float* __restrict__ x, float* __restrict__ y, long long volumes, int d, int h,
                                               int w, int od, int oh, int ow) {
    GRID_STRIDE3(o, volumes * od * oh * ow) {
        int ox = (int)(o % ow), oy = (int)((o / ow) % oh), oz = (int)((o / ((long long)ow * oh)) % od);
        long long v = o / ((long long)od * oh * ow);
        y[o] = x[v * d * h * w + ((long long)min(oz, d - 1) * h + min(oy, h - 1)) * w + min(ox, w - 1)];
    }
}

// Reversal of each (image, channel) volume along the flagged axes: nnU-Net's test-time mirroring. CPU twin:
// flip3d in src/backend/cpu/volume.rs.
extern "C" __global__ void flip3d(const float* __restrict__ x, float* __restrict__ y, long long volumes, int d, int h, int w,
                                  int fd, int fh, int fw) {
    GRID_STRIDE3(o, volumes * d * h * w) {
        int ox = (int)(o % w), oy = (int)((o / w) % h), oz = (int)((o / ((long long)w * h)) % d);
        long long v = o / ((long long)d * h * w);
        int ix = fw ? w - 1 - ox : ox, iy = fh ? h - 1 - oy : oy, iz = fd ? d - 1 - oz : oz;
        y[o] = x[v * d * h * w + ((long long)iz * h + iy) * w + ix];
    }
}
