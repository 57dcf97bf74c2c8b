//! The mean probability or the logit sum of a pointwise (1x1) head's logits at M0's pixels only: the
//! scores read no other pixel, and the head over the whole plane was ~4% of a forward of the bundled
//! U-Net at 128², batch 16 (14 planes per image written, then read back at M0's pixels).

use crate::backend::perturb::ScoreKind;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// Pixels per block: one vector.
const LANES: usize = 16;

/// `segmentation_scores` (the mean probability or the logit sum of `class` over M0) of the logits the
/// head (weight (classes, C, 1, 1), bias) makes of `features` (N, C, H, W).
pub(super) fn m0_head_scores(
    features: &Tensor,
    (weight, bias): (&Tensor, &Tensor),
    m0: &Tensor,
    class: usize,
    kind: ScoreKind,
) -> Result<Tensor> {
    let (n, channels, h, w) = features.nchw()?;
    let (classes, wc, kh, kw) = weight.nchw()?;
    ensure!(
        (wc, kh, kw) == (channels, 1, 1),
        "head_scores: weight {:?} is not a 1x1 head over {channels} channels",
        weight.shape()
    );
    ensure!(bias.len() == classes, "head_scores: {} biases for {classes} classes", bias.len());
    ensure!(matches!(kind, ScoreKind::MeanProb | ScoreKind::LogitSum), "head_scores at M0's pixels: not for {kind:?}");
    let plane = h * w;
    ensure!(m0.len() == plane, "head_scores: M0 has {} pixels, features {plane}", m0.len());
    ensure!(class < classes, "head_scores: class {class} of {classes}");
    // M0 as runs of consecutive pixels (start, length), in order.
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for p in (0..plane).filter(|&p| m0.data()[p] != 0.0) {
        match runs.last_mut() {
            Some((start, len)) if *start + *len == p => *len += 1,
            _ => runs.push((p, 1)),
        }
    }
    let count: usize = runs.iter().map(|r| r.1).sum();
    // The weights as (C, classes rounded up to LANES), zero past the classes.
    let padded = classes.next_multiple_of(LANES);
    let mut weight_t = vec![0f32; channels * padded];
    for (c, row) in weight.data().chunks_exact(channels).enumerate() {
        row.iter().enumerate().for_each(|(k, &v)| weight_t[k * padded + c] = v);
    }
    let head = Head { weight_t, padded, bias: bias.data(), class, kind };
    let scores: Vec<f32> = features
        .data()
        .par_chunks(channels * plane)
        .map(|item| {
            let sum = head.sum(item, plane, &runs);
            (if kind == ScoreKind::MeanProb { sum / count as f64 } else { sum }) as f32
        })
        .collect();
    Tensor::new(&[n], scores)
}

/// A pointwise head and what [`m0_head_scores`] takes of its logits.
struct Head<'a> {
    /// The weight transposed, (C, `padded`).
    weight_t: Vec<f32>,
    /// The classes rounded up to LANES.
    padded: usize,
    bias: &'a [f32],
    class: usize,
    kind: ScoreKind,
}

impl Head<'_> {
    /// The sum over M0's `runs` of pixels (start, length; in order, in f64) of the class's probability
    /// or logit for one image (C planes of `plane` values), up to LANES pixels of a run at a time.
    fn sum(&self, item: &[f32], plane: usize, runs: &[(usize, usize)]) -> f64 {
        let classes = self.bias.len();
        // logits[c * LANES + j]: class c at the block's pixel j.
        let mut logits = vec![0f32; self.padded * LANES];
        let mut sum = 0f64;
        for &(start, len) in runs {
            for first in (start..start + len).step_by(LANES) {
                let n = LANES.min(start + len - first);
                self.logits(item, plane, first, n, &mut logits);
                let logits = &logits[..classes * LANES];
                let own = &logits[self.class * LANES..][..n];
                if self.kind == ScoreKind::LogitSum {
                    own.iter().for_each(|&v| sum += v as f64);
                    continue;
                }
                // As `segmentation_scores` computes it, pixel by pixel: the max, then the exponentials'
                // sum, in class order.
                for (j, &v) in own.iter().enumerate() {
                    let m = logits[j..].iter().step_by(LANES).fold(f32::NEG_INFINITY, |m, &l| m.max(l));
                    let z: f32 = logits[j..].iter().step_by(LANES).map(|&l| (l - m).exp()).sum();
                    sum += ((v - m).exp() / z) as f64;
                }
            }
        }
        sum
    }

    /// The logits of pixels first..first + n (n <= LANES) into `logits` (class-major, LANES apart).
    fn logits(&self, item: &[f32], plane: usize, first: usize, n: usize, logits: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        if super::direct::capability() == Some(super::direct::Capability::Avx512) {
            // SAFETY: AVX-512F was detected; `item` holds C planes of `plane` values and first + n <= plane.
            unsafe { self.logits_avx512(item, plane, first, n, logits) };
            return;
        }
        self.logits_scalar(item, plane, first, n, logits)
    }

    /// [`Self::logits`] without vector instructions.
    fn logits_scalar(&self, item: &[f32], plane: usize, first: usize, n: usize, logits: &mut [f32]) {
        for (c, l) in logits.chunks_exact_mut(LANES).enumerate().take(self.bias.len()) {
            for (j, v) in l[..n].iter_mut().enumerate() {
                *v = self.bias[c];
                for (k, w) in self.weight_t.chunks_exact(self.padded).enumerate() {
                    *v += w[c] * item[k * plane + first + j];
                }
            }
        }
    }

    /// [`Self::logits`] with the classes' sums in registers, LANES classes at a time, the pixels' C
    /// features read once per group (masked past n).
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn logits_avx512(&self, item: &[f32], plane: usize, first: usize, n: usize, logits: &mut [f32]) {
        use std::arch::x86_64::*;
        let mask = if n >= LANES { u16::MAX } else { (1u16 << n) - 1 };
        let classes = self.bias.len();
        for group in (0..classes).step_by(LANES) {
            let mut acc: [__m512; LANES] =
                std::array::from_fn(|c| _mm512_set1_ps(self.bias.get(group + c).copied().unwrap_or(0.0)));
            for (k, w) in self.weight_t.chunks_exact(self.padded).enumerate() {
                let x = _mm512_maskz_loadu_ps(mask, item.as_ptr().add(k * plane + first));
                for (c, a) in acc.iter_mut().enumerate() {
                    *a = _mm512_fmadd_ps(_mm512_set1_ps(w[group + c]), x, *a);
                }
            }
            for (c, a) in acc.iter().enumerate().take(classes - group) {
                _mm512_storeu_ps(logits.as_mut_ptr().add((group + c) * LANES), *a);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{Backend, CpuBackend};
    use crate::rng::Philox;

    fn random(shape: &[usize], stream: u64, scale: f32) -> Tensor {
        let rng = Philox::new(11).stream(stream);
        let len = shape.iter().product();
        Tensor::new(shape, (0..len).map(|i| (rng.uniform(i as u64) - 0.5) * scale).collect()).unwrap()
    }

    #[test]
    fn scores_at_m0_match_the_head_over_the_whole_plane() {
        // 18 classes: two groups of 16 in the vector kernel; M0 with runs of 1 to 40 pixels.
        let (n, channels, classes, h, w) = (3, 5, 18, 9, 23);
        let features = random(&[n, channels, h, w], 1, 4.0);
        let (weight, bias) = (random(&[classes, channels, 1, 1], 2, 2.0), random(&[classes], 3, 1.0));
        let m0 =
            Tensor::new(&[h * w], (0..h * w).map(|p| ((p % 7 < 3) || (40..80).contains(&p)) as u8 as f32).collect())
                .unwrap();
        let b = CpuBackend::default();
        for kind in [ScoreKind::MeanProb, ScoreKind::LogitSum] {
            for class in [0, 17] {
                let ours = m0_head_scores(&features, (&weight, &bias), &m0, class, kind).unwrap();
                let full = crate::backend::head_then_scores(&b, &features, (&weight, &bias), &m0, class, kind).unwrap();
                for (a, e) in ours.data().iter().zip(full.data()) {
                    assert!((a - e).abs() <= 1e-5 * e.abs().max(1.0), "{kind:?} class {class}: {a} vs {e}");
                }
                // And through the backend, which takes this path for these kinds.
                assert_eq!(b.head_scores(&features, (&weight, &bias), &m0, class, kind).unwrap().data(), ours.data());
            }
        }
    }

    #[test]
    fn the_vector_kernel_matches_the_scalar_one() {
        if crate::backend::cpu::direct::capability() != Some(crate::backend::cpu::direct::Capability::Avx512) {
            println!("SKIP: this CPU has no AVX-512F; the vector head never runs here");
            return;
        }
        let (channels, classes, plane) = (7, 20, 50);
        let item = random(&[channels, plane], 4, 3.0);
        let weight = random(&[classes, channels], 5, 1.0);
        let padded = classes.next_multiple_of(LANES);
        let mut weight_t = vec![0f32; channels * padded];
        for (c, row) in weight.data().chunks_exact(channels).enumerate() {
            row.iter().enumerate().for_each(|(k, &v)| weight_t[k * padded + c] = v);
        }
        let bias = random(&[classes], 6, 1.0);
        let head = Head { weight_t, padded, bias: bias.data(), class: 0, kind: ScoreKind::LogitSum };
        for (first, n) in [(0, 16), (3, 5), (34, 16), (49, 1)] {
            let (mut vector, mut scalar) = (vec![0f32; padded * LANES], vec![0f32; padded * LANES]);
            // SAFETY: AVX-512F checked above; first + n <= plane.
            unsafe { head.logits_avx512(item.data(), plane, first, n, &mut vector) };
            head.logits_scalar(item.data(), plane, first, n, &mut scalar);
            for c in 0..classes {
                for j in 0..n {
                    let (v, s) = (vector[c * LANES + j], scalar[c * LANES + j]);
                    assert!((v - s).abs() <= 1e-5 * s.abs().max(1.0), "class {c} pixel {j}: {v} vs {s}");
                }
            }
        }
    }

    #[test]
    fn a_head_that_is_not_pointwise_or_a_score_that_reads_every_pixel_is_refused() {
        let features = random(&[1, 4, 6, 6], 7, 1.0);
        let m0 = Tensor::new(&[36], vec![1.0; 36]).unwrap();
        let bias = random(&[3], 8, 1.0);
        let wide = random(&[3, 4, 3, 3], 9, 1.0);
        let err = m0_head_scores(&features, (&wide, &bias), &m0, 0, ScoreKind::MeanProb).unwrap_err();
        assert!(err.to_string().contains("not a 1x1 head"), "{err}");
        let weight = random(&[3, 4, 1, 1], 10, 1.0);
        let err = m0_head_scores(&features, (&weight, &bias), &m0, 0, ScoreKind::Dice).unwrap_err();
        assert!(err.to_string().contains("not for Dice"), "{err}");
        let err = m0_head_scores(&features, (&weight, &bias), &m0, 3, ScoreKind::MeanProb).unwrap_err();
        assert!(err.to_string().contains("class 3 of 3"), "{err}");
    }
}
