//! Perturbation explainers and the machinery they share: the target score, baselines, and the fused
//! perturb-and-score loop that turns keep-masks into batched forward passes.
//!
//! A perturbation is a keep-mask m over the model's input grid (1 = original pixel, 0 = baseline);
//! the perturbed image is baseline + m * (input - baseline). Outside the region of interest the runner
//! forces m = 1, so ROI mode can never touch a pixel outside the ROI, whatever the explainer asks for.

pub mod lime;
pub mod occlusion;
pub mod rise;
pub mod superpixels;

use crate::backend::Backend;
use crate::models::BasicUNet;
use crate::tensor::Tensor;
use anyhow::{bail, ensure, Result};
use rayon::prelude::*;

/// How a forward pass is reduced to the one number being explained, for organ class c with M0 the
/// unperturbed predicted mask of c.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ScoreKind {
    /// Mean over M0 of the softmax probability of c (default).
    MeanProb,
    /// Sum over M0 of the logit of c (Captum's usual segmentation aggregation).
    LogitSum,
    /// Soft Dice of P_c against M0: 2 sum(P_c M0) / (sum P_c + |M0|).
    SoftDice,
    /// Dice of the perturbed prediction {argmax = c} against M0 (the paper's "drop in Dice").
    Dice,
}

/// What replaces a perturbed pixel (in model-input space, i.e. after windowing to [0, 1]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BaselineKind {
    /// 0: the bottom of the intensity window (Captum's default baseline).
    Zero,
    /// The mean intensity of the slice.
    Mean,
    /// A Gaussian blur of the slice (sigma = 1/16 of its side): removes detail, keeps brightness.
    Blur,
}

pub fn baseline_image(kind: BaselineKind, input: &[f32], size: usize) -> Vec<f32> {
    match kind {
        BaselineKind::Zero => vec![0.0; input.len()],
        BaselineKind::Mean => vec![input.iter().sum::<f32>() / input.len() as f32; input.len()],
        BaselineKind::Blur => gaussian_blur(input, size, size as f32 / 16.0),
    }
}

/// Separable Gaussian blur of a size x size image with edge clamping.
pub fn gaussian_blur(img: &[f32], size: usize, sigma: f32) -> Vec<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let k: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let norm: f32 = k.iter().sum();
    let clamp = |v: isize| v.clamp(0, size as isize - 1) as usize;
    let mut tmp = vec![0.0; img.len()];
    for y in 0..size {
        for x in 0..size {
            tmp[y * size + x] = (-r..=r).zip(&k).map(|(o, w)| w * img[y * size + clamp(x as isize + o)]).sum::<f32>() / norm;
        }
    }
    let mut out = vec![0.0; img.len()];
    for y in 0..size {
        for x in 0..size {
            out[y * size + x] = (-r..=r).zip(&k).map(|(o, w)| w * tmp[clamp(y as isize + o) * size + x]).sum::<f32>() / norm;
        }
    }
    out
}

/// Scores a batch of perturbed images (N, 1, S, S): one number per image. The U-Net scorer is the real
/// one; tests plug in models whose attributions are known in closed form.
pub trait Scorer: Sync {
    fn scores(&self, images: &Tensor) -> Result<Vec<f32>>;
}

/// The segmentation score of one organ under a U-Net.
pub struct UNetScorer<'a, B: Backend> {
    pub backend: &'a B,
    pub model: &'a BasicUNet<B>,
    pub class: usize,
    pub m0: Vec<bool>,
    pub kind: ScoreKind,
    /// Nanoseconds spent in U-Net forwards (M0's and the perturbed batches'), to show where time goes.
    pub forward_nanos: std::sync::atomic::AtomicU64,
}

impl<'a, B: Backend> UNetScorer<'a, B> {
    /// Runs the unperturbed input once to find M0 = {argmax == class}; errors when the organ is absent.
    pub fn new(backend: &'a B, model: &'a BasicUNet<B>, input: &[f32], size: usize, class: usize, kind: ScoreKind) -> Result<Self> {
        let classes = model.config().out_channels;
        ensure!(class < classes, "class {class} is not an output of this U-Net ({classes} classes)");
        let started = std::time::Instant::now();
        let x = backend.upload(&Tensor::new(&[1, 1, size, size], input.to_vec())?)?;
        let logits = backend.download(&model.forward_logits(backend, &x)?)?;
        let forward_nanos = std::sync::atomic::AtomicU64::new(started.elapsed().as_nanos() as u64);
        let plane = size * size;
        let m0: Vec<bool> = (0..plane)
            .map(|p| (0..classes).max_by(|&a, &b| logits.data()[a * plane + p].total_cmp(&logits.data()[b * plane + p])) == Some(class))
            .collect();
        if !m0.contains(&true) {
            bail!("the U-Net predicts no pixel of class {class} on this slice: nothing to explain");
        }
        Ok(Self { backend, model, class, m0, kind, forward_nanos })
    }
}

impl<B: Backend> Scorer for UNetScorer<'_, B> {
    fn scores(&self, images: &Tensor) -> Result<Vec<f32>> {
        let (n, _, h, w) = images.nchw()?;
        let started = std::time::Instant::now();
        let logits = self.backend.download(&self.model.forward_logits(self.backend, &self.backend.upload(images)?)?)?;
        self.forward_nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        let (classes, plane) = (self.model.config().out_channels, h * w);
        let m0_count = self.m0.iter().filter(|&&b| b).count() as f64;
        Ok((0..n)
            .into_par_iter()
            .map(|i| {
                let item = &logits.data()[i * classes * plane..(i + 1) * classes * plane];
                let logit = |c: usize, p: usize| item[c * plane + p];
                let prob = |p: usize| {
                    let m = (0..classes).map(|c| logit(c, p)).fold(f32::NEG_INFINITY, f32::max);
                    let z: f32 = (0..classes).map(|c| (logit(c, p) - m).exp()).sum();
                    (logit(self.class, p) - m).exp() / z
                };
                let in_m0 = || (0..plane).filter(|&p| self.m0[p]);
                let predicted = |p: usize| (0..classes).all(|c| logit(c, p) <= logit(self.class, p));
                (match self.kind {
                    ScoreKind::MeanProb => in_m0().map(|p| prob(p) as f64).sum::<f64>() / m0_count,
                    ScoreKind::LogitSum => in_m0().map(|p| logit(self.class, p) as f64).sum::<f64>(),
                    ScoreKind::SoftDice => {
                        let (mut inter, mut total) = (0.0f64, 0.0f64);
                        for p in 0..plane {
                            let pr = prob(p) as f64;
                            total += pr;
                            if self.m0[p] {
                                inter += pr;
                            }
                        }
                        2.0 * inter / (total + m0_count)
                    }
                    ScoreKind::Dice => {
                        let (mut inter, mut total) = (0usize, 0usize);
                        for p in (0..plane).filter(|&p| predicted(p)) {
                            total += 1;
                            inter += self.m0[p] as usize;
                        }
                        2.0 * inter as f64 / (total as f64 + m0_count)
                    }
                }) as f32
            })
            .collect())
    }
}

/// One slice's explanation problem on the model grid (size x size).
pub struct Problem<'a> {
    pub size: usize,
    pub input: Vec<f32>,
    pub baseline: Vec<f32>,
    /// Pixels that may be perturbed (all true for the conventional full-image method).
    pub roi: Vec<bool>,
    pub scorer: &'a dyn Scorer,
    pub batch: usize,
}

/// Counts forward passes (perturbed images scored) and reports progress.
pub struct Runner<'a> {
    pub problem: &'a Problem<'a>,
    pub forward_passes: usize,
    progress: Box<dyn FnMut(usize) + 'a>,
}

impl<'a> Runner<'a> {
    pub fn new(problem: &'a Problem<'a>, progress: impl FnMut(usize) + 'a) -> Self {
        Self { problem, forward_passes: 0, progress: Box::new(progress) }
    }

    /// Score of the unperturbed input.
    pub fn base_score(&mut self) -> Result<f32> {
        let p = self.problem;
        self.forward_passes += 1;
        Ok(p.scorer.scores(&Tensor::new(&[1, 1, p.size, p.size], p.input.clone())?)?[0])
    }

    /// For samples 0..n: `fill(i, mask)` writes sample i's keep-mask (all pixels, values in [0, 1]);
    /// the runner forces 1 outside the ROI, builds the perturbed images of a batch in one reused buffer,
    /// scores them, and hands `consume(i, score, effective_mask)` each result in order.
    pub fn run(&mut self, n: usize, fill: impl Fn(usize, &mut [f32]) + Sync, mut consume: impl FnMut(usize, f32, &[f32])) -> Result<()> {
        let p = self.problem;
        let plane = p.size * p.size;
        let batch = p.batch.max(1).min(n.max(1));
        let mut masks = vec![0f32; batch * plane];
        let mut images = Tensor::zeros(&[batch, 1, p.size, p.size]);
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            if b < batch {
                images = Tensor::zeros(&[b, 1, p.size, p.size]);
            }
            masks[..b * plane].par_chunks_mut(plane).zip(images.data_mut().par_chunks_mut(plane)).enumerate().for_each(|(j, (mask, image))| {
                fill(start + j, mask);
                for q in 0..plane {
                    if !p.roi[q] {
                        mask[q] = 1.0;
                    }
                    image[q] = p.baseline[q] + mask[q] * (p.input[q] - p.baseline[q]);
                }
            });
            let scores = p.scorer.scores(&images)?;
            ensure!(scores.len() == b, "scorer returned {} scores for {b} images", scores.len());
            for j in 0..b {
                consume(start + j, scores[j], &masks[j * plane..(j + 1) * plane]);
            }
            start += b;
            self.forward_passes += b;
            (self.progress)(self.forward_passes);
        }
        Ok(())
    }
}

/// A saliency map on the model grid and what it cost.
#[derive(Clone, Debug)]
pub struct Explanation {
    pub saliency: Vec<f32>,
    pub forward_passes: usize,
    /// Perturbation samples used (RISE's adaptive mode may stop early).
    pub samples: usize,
}
