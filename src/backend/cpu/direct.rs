//! Direct stride-1 3-D convolution with AVX-512, where im2col + GEMM is bound by the column copies and
//! the gemm crate's AVX2 micro-kernel (`cargo bench --bench unet -- conv3d_patch96`, 2-core Xeon: 32->32
//! @48 and 64->64 @24 1.6x and 2.2x the im2col path): 8 output channels x 32 voxels of an output row stay
//! in 16 registers while every input channel and tap streams through them, from an input zero-padded
//! once (so no tap needs a bounds check). Selected at run time where the CPU has AVX-512F;
//! `volume::conv3d`'s im2col path is the reference it is tested against.

use crate::backend::volume::Conv3d;
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Output channels per register block.
const BLOCK: usize = 8;
/// Voxels per register chunk (two 16-lane registers).
const CHUNK: usize = 32;

/// Whether the direct kernel applies: stride 1 on a CPU with AVX-512F.
pub(super) fn applies(g: &Conv3d) -> bool {
    g.stride == [1; 3] && std::arch::is_x86_feature_detected!("avx512f")
}

/// The weights as [block][ci][kz][ky][kx][8 output channels], zero beyond `cout`.
fn pack(weight: &[f32], g: &Conv3d) -> Vec<f32> {
    let taps: usize = g.kernel.iter().product();
    let blocks = g.cout.div_ceil(BLOCK);
    let mut packed = vec![0f32; blocks * g.cin * taps * BLOCK];
    for co in 0..g.cout {
        for k in 0..g.cin * taps {
            packed[((co / BLOCK) * g.cin * taps + k) * BLOCK + co % BLOCK] = weight[co * g.cin * taps + k];
        }
    }
    packed
}

/// `x` (one image, cin x D x H x W) zero-padded by `pad` on every side, rows widened so that a chunk of
/// CHUNK voxels at any tap stays inside its row: (cin, D + 2pd, H + 2ph, row) and the row length.
fn padded(x: &[f32], g: &Conv3d) -> (Vec<f32>, usize) {
    let ([d, h, w], [pd, ph, pw]) = (g.input, g.pad);
    let (dp, hp) = (d + 2 * pd, h + 2 * ph);
    let row = g.output[2].div_ceil(CHUNK) * CHUNK + g.kernel[2] - 1;
    let mut out = vec![0f32; g.cin * dp * hp * row];
    // One task per padded (channel, z) plane; planes in the z padding stay zero.
    out.par_chunks_mut(hp * row).enumerate().for_each(|(p, plane)| {
        let (ci, zp) = (p / dp, p % dp);
        let Some(z) = zp.checked_sub(pd).filter(|&z| z < d) else { return };
        for y in 0..h {
            let src = &x[((ci * d + z) * h + y) * w..][..w];
            plane[(y + ph) * row + pw..][..w].copy_from_slice(src);
        }
    });
    (out, row)
}

/// The convolution of `x` (N images) into `out` (N, cout, od, oh, ow), bias added.
pub(super) fn conv3d(x: &[f32], weight: &[f32], bias: Option<&[f32]>, g: &Conv3d, out: &mut [f32]) {
    let packed = pack(weight, g);
    let [od, oh, ow] = g.output;
    let plane = od * oh * ow;
    let in_len = g.cin * g.input.iter().product::<usize>();
    for (img, out) in out.chunks_exact_mut(g.cout * plane).enumerate() {
        let (input, row) = padded(&x[img * in_len..(img + 1) * in_len], g);
        let out_ptr = super::SharedMut(out.as_mut_ptr());
        // A task is one output row (z, y) of every channel.
        (0..od * oh).into_par_iter().for_each(|r| {
            // SAFETY: AVX-512F is present (`applies`); the task writes row r of each channel only.
            unsafe { output_row(&input, row, &packed, bias, g, r, out_ptr.ptr()) }
        });
    }
}

/// Output row r = z * oh + y of every output channel.
#[target_feature(enable = "avx512f")]
unsafe fn output_row(
    input: &[f32],
    row: usize,
    packed: &[f32],
    bias: Option<&[f32]>,
    g: &Conv3d,
    r: usize,
    out: *mut f32,
) {
    let [kd, kh, kw] = g.kernel;
    let [od, oh, ow] = g.output;
    let (dp, hp) = (g.input[0] + 2 * g.pad[0], g.input[1] + 2 * g.pad[1]);
    let (z, y) = (r / oh, r % oh);
    let taps = kd * kh * kw;
    for block in 0..g.cout.div_ceil(BLOCK) {
        let weights = &packed[block * g.cin * taps * BLOCK..][..g.cin * taps * BLOCK];
        for x0 in (0..ow).step_by(CHUNK) {
            let mut lo = [_mm512_setzero_ps(); BLOCK];
            let mut hi = [_mm512_setzero_ps(); BLOCK];
            for ci in 0..g.cin {
                for kz in 0..kd {
                    for ky in 0..kh {
                        let line = input.as_ptr().add(((ci * dp + z + kz) * hp + y + ky) * row + x0);
                        let w = weights.as_ptr().add(((ci * kd + kz) * kh + ky) * kw * BLOCK);
                        for kx in 0..kw {
                            let (a, b) = (_mm512_loadu_ps(line.add(kx)), _mm512_loadu_ps(line.add(kx + 16)));
                            for j in 0..BLOCK {
                                let wv = _mm512_set1_ps(*w.add(kx * BLOCK + j));
                                lo[j] = _mm512_fmadd_ps(a, wv, lo[j]);
                                hi[j] = _mm512_fmadd_ps(b, wv, hi[j]);
                            }
                        }
                    }
                }
            }
            // Store the voxels of this chunk that exist, bias added.
            let n = (ow - x0).min(CHUNK);
            let (mask_lo, mask_hi) = (lanes(n.min(16)), lanes(n.saturating_sub(16)));
            for j in 0..BLOCK.min(g.cout - block * BLOCK) {
                let co = block * BLOCK + j;
                let bv = _mm512_set1_ps(bias.map_or(0.0, |b| b[co]));
                let dst = out.add(co * od * oh * ow + r * ow + x0);
                _mm512_mask_storeu_ps(dst, mask_lo, _mm512_add_ps(lo[j], bv));
                _mm512_mask_storeu_ps(dst.add(16), mask_hi, _mm512_add_ps(hi[j], bv));
            }
        }
    }
}

/// A mask of the first `n` (<= 16) lanes.
fn lanes(n: usize) -> __mmask16 {
    ((1u32 << n) - 1) as __mmask16
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
        if !std::arch::is_x86_feature_detected!("avx512f") {
            println!("SKIP: this CPU has no AVX-512F; the direct path never runs here");
            return;
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
            let (mut direct, mut reference) = (vec![f32::NAN; len], vec![f32::NAN; len]);
            conv3d(&x, &w, Some(&b), &g, &mut direct);
            im2col_conv3d(&x, &w, Some(&b), &g, &mut reference);
            // Sums of up to a few hundred O(1) products in another order: ~1e-6 absolute.
            let err = direct.iter().zip(&reference).fold(0f32, |m, (a, b)| {
                let d = (a - b).abs();
                if d.is_nan() {
                    f32::INFINITY
                } else {
                    m.max(d)
                }
            });
            assert!(err < 1e-4, "case {seed}: max |diff| {err}");
        }
    }
}
