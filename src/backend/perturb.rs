//! The perturbation stage on the backend, CPU side: these functions are the reference twins of
//! kernels/perturb.cu and produce the same bits for masks, images and sums (each f32 rounding step in
//! the same order; the device code spells them out so nothing is contracted into a multiply-add).

use crate::explain::{MaskBatch, ScoreKind};
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use rayon::prelude::*;

/// The fixed planes of one explanation problem, held by the backend: every perturbed batch is built
/// from these, so they cross to a device once per explanation.
pub struct Scene<T> {
    pub size: usize,
    pub input: T,
    pub baseline: T,
    /// 1 where pixels may be perturbed, 0 elsewhere.
    pub roi: T,
    /// Superpixel id per pixel as f32 (-1: none), for coalition masks.
    pub labels: Option<T>,
}

/// CPU twin of the mask kernels plus the perturbation they write into the batch buffer.
pub fn perturb(scene: &Scene<Tensor>, masks: &MaskBatch, first: usize, n: usize) -> Result<(Tensor, Tensor)> {
    let size = scene.size;
    let plane = size * size;
    ensure!(
        scene.input.len() == plane && scene.baseline.len() == plane && scene.roi.len() == plane,
        "perturb: scene planes must be {size}x{size}"
    );
    let labels = scene.labels.as_ref().map(|l| l.data());
    let (input, baseline, roi) = (scene.input.data(), scene.baseline.data(), scene.roi.data());
    let mut mask_t = Tensor::zeros(&[n, 1, size, size]);
    let mut images = Tensor::zeros(&[n, 1, size, size]);
    mask_t.data_mut().par_chunks_mut(plane).zip(images.data_mut().par_chunks_mut(plane)).enumerate().try_for_each(
        |(j, (mask, image))| -> Result<()> {
            masks.fill(first + j, size, labels, mask)?;
            keep_outside_roi_and_blend(mask, image, input, baseline, |q| roi[q] != 0.0);
            Ok(())
        },
    )?;
    Ok((mask_t, images))
}

/// Forces the keep-mask to 1 outside the ROI and writes the perturbed image baseline + m (input -
/// baseline): what every mask kernel's `emit` does per pixel, and what the host path does per sample.
pub fn keep_outside_roi_and_blend(
    mask: &mut [f32],
    image: &mut [f32],
    input: &[f32],
    baseline: &[f32],
    inside: impl Fn(usize) -> bool,
) {
    for q in 0..mask.len() {
        if !inside(q) {
            mask[q] = 1.0;
        }
        image[q] = baseline[q] + mask[q] * (input[q] - baseline[q]);
    }
}

/// CPU twin of `segmentation_scores`: sums in f64, probabilities in f32 as the softmax produces them.
pub fn segmentation_scores(logits: &Tensor, m0: &Tensor, class: usize, kind: ScoreKind) -> Result<Tensor> {
    let (n, classes, h, w) = logits.nchw()?;
    let plane = h * w;
    ensure!(m0.len() == plane, "segmentation_scores: M0 has {} pixels, logits {plane}", m0.len());
    ensure!(class < classes, "segmentation_scores: class {class} of {classes}");
    let m0 = m0.data();
    let m0_count = m0.iter().filter(|&&v| v != 0.0).count() as f64;
    let scores: Vec<f32> = (0..n)
        .into_par_iter()
        .map(|i| {
            let item = &logits.data()[i * classes * plane..(i + 1) * classes * plane];
            let logit = |c: usize, p: usize| item[c * plane + p];
            let prob = |p: usize| {
                let m = (0..classes).map(|c| logit(c, p)).fold(f32::NEG_INFINITY, f32::max);
                let z: f32 = (0..classes).map(|c| (logit(c, p) - m).exp()).sum();
                (logit(class, p) - m).exp() / z
            };
            let in_m0 = |p: usize| m0[p] != 0.0;
            let predicted = |p: usize| (0..classes).all(|c| logit(c, p) <= logit(class, p));
            (match kind {
                ScoreKind::MeanProb => (0..plane).filter(|&p| in_m0(p)).map(|p| prob(p) as f64).sum::<f64>() / m0_count,
                ScoreKind::LogitSum => (0..plane).filter(|&p| in_m0(p)).map(|p| logit(class, p) as f64).sum::<f64>(),
                ScoreKind::SoftDice => {
                    let (mut inter, mut total) = (0.0f64, 0.0f64);
                    for p in 0..plane {
                        let pr = prob(p) as f64;
                        total += pr;
                        if in_m0(p) {
                            inter += pr;
                        }
                    }
                    2.0 * inter / (total + m0_count)
                }
                ScoreKind::Dice => {
                    let (mut inter, mut total) = (0usize, 0usize);
                    for p in (0..plane).filter(|&p| predicted(p)) {
                        total += 1;
                        inter += in_m0(p) as usize;
                    }
                    2.0 * inter as f64 / (total as f64 + m0_count)
                }
            }) as f32
        })
        .collect();
    Tensor::new(&[n], scores)
}

/// CPU twin of `accumulate_weighted`: per pixel, a Kahan sum over the items in order.
pub fn accumulate_weighted(acc: &mut Tensor, weights: &Tensor, masks: &Tensor) -> Result<()> {
    let n = weights.len();
    ensure!(n > 0 && masks.len().is_multiple_of(n), "accumulate_weighted: {} mask values for {n} weights", masks.len());
    let plane = masks.len() / n;
    ensure!(acc.len() == 2 * plane, "accumulate_weighted: accumulator must be (2, {plane})");
    let (w, m) = (weights.data(), masks.data());
    let (sums, comps) = acc.data_mut().split_at_mut(plane);
    sums.par_iter_mut().zip(comps.par_iter_mut()).enumerate().for_each(|(p, (sum, comp))| {
        for (i, &wi) in w.iter().enumerate() {
            let y = wi * m[i * plane + p] - *comp;
            let t = *sum + y;
            *comp = (t - *sum) - y;
            *sum = t;
        }
    });
    Ok(())
}
