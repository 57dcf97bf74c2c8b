//! The 2x2 stride-2 transposed convolution of the 2-D U-Nets' upsampling, with AVX-512: each output voxel
//! has exactly one tap, so an output row is two accumulators (taps tx = 0 and 1) over the input channels
//! of one input row, interleaved in registers and stored once. The GEMM + scatter path it replaces
//! (`volume::conv_transpose`, which stays the reference and the path of every other geometry) sums
//! K = cin products in a GEMM of tiny depth, writes a column buffer the size of the output and reads it
//! back strided (bundled U-Net at 256², batch 16: ~20 ms, 27 GFLOP/s, for the 16->16 upsampling).

use super::direct::{capability, Capability};
use rayon::prelude::*;
use std::arch::x86_64::*;

/// Output channels per register block (x 2 taps = 16 accumulators).
const BLOCK: usize = 8;

/// Whether the kernel takes a k x k, stride-k transposed convolution: k = 2 on a CPU with AVX-512 (not
/// capped by `XAICLIP_CPU_CAPABILITY`).
pub(super) fn applies(k: usize) -> bool {
    k == 2 && capability() == Some(Capability::Avx512)
}

/// `x` (n, cin, h, w) through `weight` (cin, cout, 2, 2): (n, cout, 2h, 2w), bias added (`applies(2)`
/// must hold).
pub(super) fn conv_transpose2x2(
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    [n, cin, h, w]: [usize; 4],
    cout: usize,
) -> Vec<f32> {
    assert!(applies(2), "transposed::applies was checked");
    let blocks = cout.div_ceil(BLOCK);
    // [block][ty][ci][channel of the block][tx], zero past cout: the inner loop reads it in order.
    let mut packed = vec![0f32; blocks * 2 * cin * BLOCK * 2];
    for ci in 0..cin {
        for co in 0..cout {
            for (t, &v) in weight[(ci * cout + co) * 4..][..4].iter().enumerate() {
                let (ty, tx) = (t / 2, t % 2);
                packed[(((co / BLOCK * 2 + ty) * cin + ci) * BLOCK + co % BLOCK) * 2 + tx] = v;
            }
        }
    }
    let plane_out = 4 * h * w;
    let len = n * cout * plane_out;
    let mut out: Vec<f32> = Vec::with_capacity(len);
    let dst = super::SharedMut(out.spare_capacity_mut().as_mut_ptr().cast());
    let job = Job { packed: &packed, bias, cin, cout, plane_in: h * w, w, plane_out };
    // A task is one input row of one image: output rows 2y and 2y + 1 of every channel.
    (0..n * h).into_par_iter().for_each(|task| {
        let (i, y) = (task / h, task % h);
        // SAFETY: the CPU has AVX-512 (applies); the task reads row y of image i's channels and writes
        // output rows 2y, 2y + 1 of image i's channels only, inside the buffer's capacity.
        unsafe {
            job.rows(x.as_ptr().add(i * cin * h * w + y * w), dst.ptr().add(i * cout * plane_out + 2 * y * 2 * w))
        }
    });
    // SAFETY: the tasks stored every output voxel.
    unsafe { out.set_len(len) };
    out
}

struct Job<'a> {
    packed: &'a [f32],
    bias: Option<&'a [f32]>,
    cin: usize,
    cout: usize,
    plane_in: usize,
    w: usize,
    plane_out: usize,
}

/// Lane indices of `_mm512_permutex2var_ps` that interleave two registers a, b: a0 b0 a1 b1 ... (16 and
/// up name b's lanes).
const LOW: [i32; 16] = [0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23];
const HIGH: [i32; 16] = [8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31];

impl Job<'_> {
    /// Output rows 2y and 2y + 1 (at `out`) of every channel from input row y (at `x`).
    #[target_feature(enable = "avx512f")]
    unsafe fn rows(&self, x: *const f32, out: *mut f32) {
        let (low, high) = (_mm512_loadu_epi32(LOW.as_ptr()), _mm512_loadu_epi32(HIGH.as_ptr()));
        for block in 0..self.cout.div_ceil(BLOCK) {
            for ty in 0..2 {
                let weights = self.packed.as_ptr().add((block * 2 + ty) * self.cin * BLOCK * 2);
                for x0 in (0..self.w).step_by(16) {
                    let n = (self.w - x0).min(16);
                    let mask = (((1u32 << n) - 1) & 0xffff) as __mmask16;
                    let mut acc = [[_mm512_setzero_ps(); 2]; BLOCK];
                    for ci in 0..self.cin {
                        let v = _mm512_maskz_loadu_ps(mask, x.add(ci * self.plane_in + x0));
                        let wc = weights.add(ci * BLOCK * 2);
                        for (j, acc) in acc.iter_mut().enumerate() {
                            for (tx, a) in acc.iter_mut().enumerate() {
                                *a = _mm512_fmadd_ps(_mm512_set1_ps(*wc.add(j * 2 + tx)), v, *a);
                            }
                        }
                    }
                    // Output voxels 2 x0 .. 2 (x0 + n) of row 2y + ty, bias added after the sum.
                    let (first, second) = (
                        (((1u64 << (2 * n).min(16)) - 1) & 0xffff) as __mmask16,
                        (((1u64 << (2 * n).saturating_sub(16)) - 1) & 0xffff) as __mmask16,
                    );
                    for (j, acc) in acc.iter().enumerate().take(self.cout - block * BLOCK) {
                        let co = block * BLOCK + j;
                        let b = _mm512_set1_ps(self.bias.map_or(0.0, |b| b[co]));
                        let (a0, a1) = (_mm512_add_ps(acc[0], b), _mm512_add_ps(acc[1], b));
                        let row = out.add(co * self.plane_out + ty * 2 * self.w + 2 * x0);
                        _mm512_mask_storeu_ps(row, first, _mm512_permutex2var_ps(a0, low, a1));
                        _mm512_mask_storeu_ps(row.add(16), second, _mm512_permutex2var_ps(a0, high, a1));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::cpu::direct::tests::{max_abs_diff, random};
    use crate::backend::volume::{ConvTranspose3d, Transposed};

    #[test]
    fn the_2x2_kernel_matches_the_gemm_path() {
        if !applies(2) {
            println!("SKIP: this CPU has no AVX-512F; the 2x2 transposed kernel never runs here");
            return;
        }
        // Rows shorter than, equal to and past a register (5, 16, 33), channels below, at and past a
        // block (3, 8, 13), one and many input channels, two images.
        for (seed, &(n, cin, cout, h, w)) in
            [(2, 1, 3, 3, 5), (1, 16, 8, 4, 16), (2, 7, 13, 5, 33), (1, 32, 16, 2, 8)].iter().enumerate()
        {
            let x = random(n * cin * h * w, 7 * seed as u64);
            let weight = random(cin * cout * 4, 7 * seed as u64 + 1);
            let bias = random(cout, 7 * seed as u64 + 2);
            let at = Transposed::kernel_stride([1, 2, 2]);
            let g = ConvTranspose3d::checked(n, (cin, cin, cout), [1, h, w], [1, 2, 2], at).unwrap();
            let reference = super::super::volume::conv_transpose(&x, &weight, Some(&bias), &g);
            let got = conv_transpose2x2(&x, &weight, Some(&bias), [n, cin, h, w], cout);
            assert_eq!(got.len(), reference.data().len());
            // Sums of cin O(1) products in another order; a NaN fails.
            let err = max_abs_diff(&got, reference.data());
            assert!(err < 1e-5, "case {seed} (cin {cin}, cout {cout}, w {w}): max |diff| {err}");
        }
    }
}
