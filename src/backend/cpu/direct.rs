//! Direct stride-1 convolution (2-D as one slice, and 3-D) with AVX-512 or AVX2 + FMA, where im2col +
//! GEMM is bound by the column copies and the gemm crate's AVX2 micro-kernel (`cargo bench --bench unet`,
//! 2-core Xeon: 3-D 32->32 @48 and 64->64 @24 1.6x and 2.2x the im2col path, the bundled 2-D U-Net's
//! forward 1.4x): a block of output channels x a few registers of voxels of one output row stay in
//! registers (AVX-512: 8 x 2 x 16 lanes; AVX2: 4 x 3 x 8 lanes) while every input channel and tap streams
//! through them, from an input zero-padded once (so no tap needs a bounds check). The instruction set is
//! chosen at run time; `XAICLIP_CPU_CAPABILITY=avx2|default` (as PyTorch's `ATEN_CPU_CAPABILITY`) caps it,
//! `default` meaning the im2col path. `volume::im2col_conv3d` is the reference both are tested against.

use crate::backend::volume::Conv3d;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// The vector instructions a kernel is compiled for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Capability {
    Avx512,
    Avx2,
}

/// The best capability of this CPU, capped by `XAICLIP_CPU_CAPABILITY`; None: the im2col path.
pub(super) fn capability() -> Option<Capability> {
    static CHOSEN: std::sync::OnceLock<Option<Capability>> = std::sync::OnceLock::new();
    *CHOSEN.get_or_init(|| {
        let cap = std::env::var("XAICLIP_CPU_CAPABILITY").unwrap_or_default().to_ascii_lowercase();
        let avx512 = std::arch::is_x86_feature_detected!("avx512f") && !matches!(cap.as_str(), "avx2" | "default");
        let avx2 = std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma");
        if avx512 {
            Some(Capability::Avx512)
        } else if avx2 && cap != "default" {
            Some(Capability::Avx2)
        } else {
            None
        }
    })
}

/// Whether the direct kernel applies: stride 1 on a CPU with AVX2 + FMA or AVX-512F, and not a wide
/// layer on short rows (256->256 on 16² planes wastes half of each 32-voxel run; GEMM keeps its peak).
pub(super) fn applies(g: &Conv3d) -> bool {
    g.stride == [1; 3] && (g.cout <= 64 || g.output[2] >= 32) && capability().is_some()
}

/// One instruction set's vectors.
trait Vector: Copy {
    const LANES: usize;
    unsafe fn zero() -> Self;
    unsafe fn load(p: *const f32) -> Self;
    unsafe fn splat(v: f32) -> Self;
    /// a * b + c.
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self;
    /// Stores the first `n` lanes of `v + bias` at `p`.
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize);
}

impl Vector for __m512 {
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm512_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm512_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm512_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm512_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize) {
        _mm512_mask_storeu_ps(p, ((1u32 << n) - 1) as __mmask16, _mm512_add_ps(v, _mm512_set1_ps(bias)))
    }
}

impl Vector for __m256 {
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self {
        _mm256_setzero_ps()
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        _mm256_set1_ps(v)
    }
    #[inline(always)]
    unsafe fn fma(a: Self, b: Self, c: Self) -> Self {
        _mm256_fmadd_ps(a, b, c)
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self, bias: f32, n: usize) {
        let v = _mm256_add_ps(v, _mm256_set1_ps(bias));
        if n == 8 {
            _mm256_storeu_ps(p, v);
        } else {
            let mut lanes = [0f32; 8];
            _mm256_storeu_ps(lanes.as_mut_ptr(), v);
            std::ptr::copy_nonoverlapping(lanes.as_ptr(), p, n);
        }
    }
}

/// Output channels per register block and voxels per block of one row, per capability.
fn shape(cap: Capability) -> (usize, usize) {
    match cap {
        Capability::Avx512 => (8, 2 * 16),
        Capability::Avx2 => (4, 3 * 8),
    }
}

/// The weights as [block][ci][kz][ky][kx][block output channels], zero beyond `cout`.
fn pack(weight: &[f32], g: &Conv3d, block: usize) -> Vec<f32> {
    let taps: usize = g.kernel.iter().product();
    let mut packed = vec![0f32; g.cout.div_ceil(block) * g.cin * taps * block];
    for co in 0..g.cout {
        for k in 0..g.cin * taps {
            packed[((co / block) * g.cin * taps + k) * block + co % block] = weight[co * g.cin * taps + k];
        }
    }
    packed
}

/// `x` (one image, cin x D x H x W) zero-padded by `pad` on every side, rows widened so that a run of
/// `chunk` voxels at any tap stays inside its row: (cin, D + 2pd, H + 2ph, row) and the row length.
fn padded(x: &[f32], g: &Conv3d, chunk: usize) -> (Vec<f32>, usize) {
    let ([d, h, w], [pd, ph, pw]) = (g.input, g.pad);
    let (dp, hp) = (d + 2 * pd, h + 2 * ph);
    let row = g.output[2].div_ceil(chunk) * chunk + g.kernel[2] - 1;
    let len = g.cin * dp * hp * row;
    let mut out = Vec::with_capacity(len);
    // Every value is written once, one task per padded (channel, z) plane (no zeroing pass first: it
    // cost as much as the copy).
    out.spare_capacity_mut()[..len].par_chunks_mut(hp * row).enumerate().for_each(|(p, plane)| {
        let (ci, zp) = (p / dp, p % dp);
        for (yp, dst) in plane.chunks_exact_mut(row).enumerate() {
            let source = zp.checked_sub(pd).filter(|&z| z < d).zip(yp.checked_sub(ph).filter(|&y| y < h));
            match source {
                Some((z, y)) => {
                    let src = &x[((ci * d + z) * h + y) * w..][..w];
                    dst[..pw].fill(std::mem::MaybeUninit::new(0.0));
                    dst[pw..pw + w].iter_mut().zip(src).for_each(|(o, &v)| *o = std::mem::MaybeUninit::new(v));
                    dst[pw + w..].fill(std::mem::MaybeUninit::new(0.0));
                }
                None => dst.fill(std::mem::MaybeUninit::new(0.0)),
            }
        }
    });
    // SAFETY: the planes cover the first `len` values and each was written above.
    unsafe { out.set_len(len) };
    (out, row)
}

/// The convolution of `x` (N images): (N, cout, od, oh, ow), bias added, with the CPU's capability
/// (`applies` must hold).
pub(super) fn conv3d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Conv3d) -> Vec<f32> {
    conv3d_with(capability().expect("direct::applies was checked"), x, weight, bias, g)
}

fn conv3d_with(cap: Capability, x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Conv3d) -> Vec<f32> {
    let (block, chunk) = shape(cap);
    let packed = pack(weight, g, block);
    let [od, oh, ow] = g.output;
    let plane = od * oh * ow;
    let in_len = g.cin * g.input.iter().product::<usize>();
    let len = g.n * g.cout * plane;
    // Every output value is stored once below, so the buffer is not zeroed first.
    let mut out: Vec<f32> = Vec::with_capacity(len);
    for img in 0..g.n {
        let (input, row) = padded(&x[img * in_len..(img + 1) * in_len], g, chunk);
        let out_ptr = super::SharedMut(out.spare_capacity_mut()[img * g.cout * plane..].as_mut_ptr().cast());
        let job = Row { input: &input, row, packed: &packed, bias, g };
        // A task is one output row (z, y) of every channel.
        (0..od * oh).into_par_iter().for_each(|r| {
            // SAFETY: the CPU has the capability (`capability` detected it); the task writes row r of
            // each output channel of this image only, inside the buffer's capacity.
            unsafe {
                match cap {
                    Capability::Avx512 => row_avx512(&job, r, out_ptr.ptr()),
                    Capability::Avx2 => row_avx2(&job, r, out_ptr.ptr()),
                }
            }
        });
    }
    // SAFETY: the tasks stored every (image, channel, row, voxel) value.
    unsafe { out.set_len(len) };
    out
}

/// What every output row of one image reads.
struct Row<'a> {
    input: &'a [f32],
    row: usize,
    packed: &'a [f32],
    bias: Option<&'a [f32]>,
    g: &'a Conv3d,
}

#[target_feature(enable = "avx512f")]
unsafe fn row_avx512(job: &Row, r: usize, out: *mut f32) {
    output_row::<__m512, 8, 2>(job, r, out)
}

#[target_feature(enable = "avx2,fma")]
unsafe fn row_avx2(job: &Row, r: usize, out: *mut f32) {
    output_row::<__m256, 4, 3>(job, r, out)
}

/// Output row r = z * oh + y of every output channel: BLOCK channels x CHUNKS vectors of voxels at a
/// time, accumulated in registers over every input channel and tap.
#[inline(always)]
unsafe fn output_row<V: Vector, const BLOCK: usize, const CHUNKS: usize>(job: &Row, r: usize, out: *mut f32) {
    let g = job.g;
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.output;
    let (dp, hp) = (g.input[0] + 2 * g.pad[0], g.input[1] + 2 * g.pad[1]);
    let (z, y) = (r / oh, r % oh);
    let taps = kd * kh * kw;
    let span = CHUNKS * V::LANES;
    for block in 0..g.cout.div_ceil(BLOCK) {
        let weights = &job.packed[block * g.cin * taps * BLOCK..][..g.cin * taps * BLOCK];
        for x0 in (0..ow).step_by(span) {
            let mut acc = [[V::zero(); CHUNKS]; BLOCK];
            for ci in 0..g.cin {
                for kz in 0..kd {
                    for ky in 0..kh {
                        let line = job.input.as_ptr().add(((ci * dp + z + kz) * hp + y + ky) * job.row + x0);
                        let w = weights.as_ptr().add(((ci * kd + kz) * kh + ky) * kw * BLOCK);
                        for kx in 0..kw {
                            let mut v = [V::zero(); CHUNKS];
                            for (c, v) in v.iter_mut().enumerate() {
                                *v = V::load(line.add(kx + c * V::LANES));
                            }
                            for (j, acc) in acc.iter_mut().enumerate() {
                                let wv = V::splat(*w.add(kx * BLOCK + j));
                                for (a, &v) in acc.iter_mut().zip(&v) {
                                    *a = V::fma(v, wv, *a);
                                }
                            }
                        }
                    }
                }
            }
            // Store the voxels of this span that exist, bias added.
            let n = (ow - x0).min(span);
            for (j, acc) in acc.iter().enumerate().take(g.cout - block * BLOCK) {
                let co = block * BLOCK + j;
                let bias = job.bias.map_or(0.0, |b| b[co]);
                let dst = out.add(co * od * oh * ow + r * ow + x0);
                for (c, &a) in acc.iter().enumerate() {
                    let lanes = n.saturating_sub(c * V::LANES).min(V::LANES);
                    if lanes > 0 {
                        V::store(dst.add(c * V::LANES), a, bias, lanes);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::volume::im2col_conv3d;

    fn random(n: usize, seed: u64) -> Vec<f32> {
        let rng = crate::rng::Philox::new(seed);
        (0..n as u64).map(|i| rng.uniform(i) * 2.0 - 1.0).collect()
    }

    #[test]
    fn direct_convolution_matches_the_im2col_path() {
        let mut capabilities = Vec::new();
        if std::arch::is_x86_feature_detected!("avx512f") {
            capabilities.push(Capability::Avx512);
        } else {
            println!("SKIP: this CPU has no AVX-512F; that kernel never runs here");
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma") {
            capabilities.push(Capability::Avx2);
        } else {
            println!("SKIP: this CPU has no AVX2 + FMA; that kernel never runs here");
        }
        // Partial chunks (W 5, 33, 70), W below one register, Cout not a multiple of 8, anisotropic and
        // even kernels, padding 0-2, two images, and a single slice (a 2-D convolution).
        for (seed, &(n, cin, cout, input, kernel, pad)) in [
            (1, 3, 5, [4, 6, 5], [3, 3, 3], [1, 1, 1]),
            (2, 8, 8, [6, 9, 33], [3, 3, 3], [1, 1, 1]),
            (1, 4, 19, [3, 7, 70], [1, 3, 3], [0, 1, 1]),
            (1, 2, 12, [5, 5, 8], [2, 2, 4], [0, 1, 2]),
            (1, 16, 3, [4, 4, 17], [1, 1, 1], [0, 0, 0]),
            (2, 5, 9, [1, 11, 40], [1, 5, 5], [0, 2, 2]),
        ]
        .iter()
        .enumerate()
        {
            let g = Conv3d::new(
                &[n, cin, input[0], input[1], input[2]],
                &[cout, cin, kernel[0], kernel[1], kernel[2]],
                [1; 3],
                pad,
            )
            .unwrap();
            let x = random(n * cin * input.iter().product::<usize>(), 3 * seed as u64);
            let w = random(cout * cin * kernel.iter().product::<usize>(), 3 * seed as u64 + 1);
            let b = random(cout, 3 * seed as u64 + 2);
            let len = n * cout * g.output.iter().product::<usize>();
            let mut reference = vec![f32::NAN; len];
            im2col_conv3d(&x, &w, Some(&b), &g, &mut reference);
            for &cap in &capabilities {
                let direct = conv3d_with(cap, &x, &w, Some(&b), &g);
                assert_eq!(direct.len(), len);
                // Sums of up to a few hundred O(1) products in another order: ~1e-6 absolute.
                let err = direct.iter().zip(&reference).fold(0f32, |m, (a, b)| {
                    let d = (a - b).abs();
                    if d.is_nan() {
                        f32::INFINITY
                    } else {
                        m.max(d)
                    }
                });
                assert!(err < 1e-4, "case {seed}, {cap:?}: max |diff| {err}");
            }
        }
    }
}
