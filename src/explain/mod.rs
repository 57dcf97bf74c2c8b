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
pub mod volume;

use crate::backend::perturb::keep_outside_roi_and_blend;
pub use crate::backend::perturb::{MaskBatch, RiseMasks, ScoreKind};
use crate::backend::{Backend, Scene};
use crate::error::{kind_of, ErrorKind};
use crate::fail;
use crate::models::SegModel;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};
use rayon::prelude::*;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Stops a running explanation at its next batch of forward passes (it then fails with
/// `ErrorKind::Cancelled`). Clones share one flag, so another thread or a signal handler can cancel.
#[derive(Clone, Debug, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    /// Asks every run that checks this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Clears the request, so that later runs go ahead.
    pub fn reset(&self) {
        self.0.store(false, Ordering::SeqCst);
    }

    /// Whether a stop was asked for.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }

    /// Fails with `Cancelled` when a stop was asked for.
    pub fn check(&self) -> Result<()> {
        if self.is_cancelled() {
            fail!(Cancelled, "cancelled");
        }
        Ok(())
    }
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

/// The baseline image of `kind` for `input` (size x size).
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
            tmp[y * size + x] =
                (-r..=r).zip(&k).map(|(o, w)| w * img[y * size + clamp(x as isize + o)]).sum::<f32>() / norm;
        }
    }
    let mut out = vec![0.0; img.len()];
    for y in 0..size {
        for x in 0..size {
            out[y * size + x] =
                (-r..=r).zip(&k).map(|(o, w)| w * tmp[clamp(y as isize + o) * size + x]).sum::<f32>() / norm;
        }
    }
    out
}

/// Scores a batch of perturbed images (N, 1, S, S): one number per image. The U-Net scorer is the real
/// one; tests plug in models whose attributions are known in closed form.
pub trait Scorer: Sync {
    /// One score per image of the batch (N, 1, S, S).
    fn scores(&self, images: &Tensor) -> Result<Vec<f32>>;

    /// The score of `image` (S x S) when the scorer already knows it (the U-Net scorer ran its own
    /// input to find M0), so the runner need not run it again; `None`: run it.
    fn known_score(&self, _image: &[f32]) -> Option<f32> {
        None
    }

    /// Scores samples 0..n of `masks` with mask building, perturbation, forward and scoring all on the
    /// scorer's backend, `batch` at a time; with `weighted_sum`, also sum_i score_i * mask_i. `None`:
    /// this scorer only takes finished images (the runner then builds them on the host).
    fn score_masks(
        &self,
        _problem: &Problem,
        _masks: &MaskBatch,
        _n: usize,
        _weighted_sum: bool,
        _progress: &mut dyn FnMut(usize),
    ) -> Option<Result<MaskScores>> {
        None
    }
}

/// Scores of samples 0..n and, when asked for, sum_i score_i * mask_i over the plane.
pub struct MaskScores {
    /// Score of each sample, in order.
    pub scores: Vec<f32>,
    /// sum_i score_i * mask_i per pixel (RISE), when asked for.
    pub weighted_sum: Option<Vec<f64>>,
}

/// The segmentation score of one organ under a U-Net.
pub struct UNetScorer<'a, B: Backend> {
    /// Where the U-Net runs.
    pub backend: &'a B,
    /// The U-Net whose prediction is explained.
    pub model: &'a SegModel<B>,
    /// The organ's class index.
    pub class: usize,
    /// M0: the unperturbed prediction of the class (model grid).
    pub m0: Vec<bool>,
    m0_plane: B::Tensor,
    /// How logits become the score.
    pub kind: ScoreKind,
    /// The score of the unperturbed input: what the perturbations' drops are measured from.
    pub unperturbed_score: f32,
    /// That input (S x S), so that [`Scorer::known_score`] answers only for it.
    input: Vec<f32>,
    /// Nanoseconds spent in U-Net forwards (M0's and the perturbed batches'), to show where time goes.
    /// A device backend queues work asynchronously, so there this counts until results are read back.
    pub forward_nanos: std::sync::atomic::AtomicU64,
}

impl<'a, B: Backend> UNetScorer<'a, B> {
    /// Runs the unperturbed input once to find M0 = {argmax == class}; errors when the organ is absent.
    pub fn new(
        backend: &'a B,
        model: &'a SegModel<B>,
        input: &[f32],
        size: usize,
        class: usize,
        kind: ScoreKind,
    ) -> Result<Self> {
        let classes = model.out_channels();
        ensure!(class < classes, "class {class} is not an output of this U-Net ({classes} classes)");
        let started = std::time::Instant::now();
        let x = backend.upload(&Tensor::new(&[1, 1, size, size], input.to_vec())?)?;
        let forward = Forward::run(model, backend, &x)?;
        let head_logits;
        let on_device = match &forward {
            Forward::Logits(logits) => logits,
            Forward::Features(features, head) => {
                head_logits = crate::backend::head_logits(backend, features, *head)?;
                &head_logits
            }
        };
        let logits = backend.download(on_device)?;
        crate::models::check_finite_outputs(logits.data())?;
        let forward_nanos = std::sync::atomic::AtomicU64::new(started.elapsed().as_nanos() as u64);
        let plane = size * size;
        let m0: Vec<bool> = (0..plane)
            .map(|p| {
                (0..classes).max_by(|&a, &b| logits.data()[a * plane + p].total_cmp(&logits.data()[b * plane + p]))
                    == Some(class)
            })
            .collect();
        if !m0.contains(&true) {
            fail!(OrganAbsent, "the U-Net predicts no pixel of class {class} on this slice: nothing to explain");
        }
        let m0_plane = backend.upload(&Tensor::new(&[plane], m0.iter().map(|&b| b as u8 as f32).collect())?)?;
        let scores = forward.scores(backend, &m0_plane, class, kind)?;
        let unperturbed_score = backend.download(&scores)?.data()[0];
        let input = input.to_vec();
        Ok(Self { backend, model, class, m0, m0_plane, kind, unperturbed_score, input, forward_nanos })
    }

    /// One score per image of a batch on the backend; the forward is timed (with the head, where the
    /// scores apply it).
    fn score_batch(&self, images: &B::Tensor) -> Result<B::Tensor> {
        let started = std::time::Instant::now();
        let scores =
            Forward::run(self.model, self.backend, images)?.scores(self.backend, &self.m0_plane, self.class, self.kind);
        self.forward_nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        scores
    }

    fn fused(
        &self,
        problem: &Problem,
        masks: &MaskBatch,
        n: usize,
        weighted_sum: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Result<MaskScores> {
        let b = self.backend;
        let (size, plane) = (problem.size, problem.size * problem.size);
        let plane_tensor = |v: Vec<f32>| b.upload(&Tensor::new(&[plane], v)?);
        let scene = Scene {
            size,
            input: plane_tensor(problem.input.clone())?,
            baseline: plane_tensor(problem.baseline.clone())?,
            roi: plane_tensor(problem.roi.iter().map(|&r| r as u8 as f32).collect())?,
            labels: masks.scene_labels().map(plane_tensor).transpose()?,
        };
        let mut acc = weighted_sum.then(|| b.upload(&Tensor::zeros(&[2, plane]))).transpose()?;
        let mut batch = problem.batch.max(1);
        let mut scores = Vec::new();
        let mut start = 0;
        while start < n {
            let count = batch.min(n - start);
            let step = (|| -> Result<B::Tensor> {
                let (mask_t, images) = b.perturb(&scene, masks, start, count)?;
                let s = self.score_batch(&images)?;
                if let Some(acc) = acc.as_mut() {
                    b.accumulate_weighted(acc, &s, &mask_t)?;
                }
                Ok(s)
            })();
            match step {
                Ok(s) => scores.push(s),
                Err(e) if count > 1 && kind_of(&e) == ErrorKind::OutOfMemory => {
                    batch = count / 2;
                    eprintln!("warning: {} ran out of memory at batch {count}; retrying with batch {batch}", b.name());
                    continue;
                }
                Err(e) => return Err(e),
            }
            start += count;
            progress(start);
            problem.cancel.check()?;
        }
        let started = std::time::Instant::now();
        let scores = scores.iter().map(|s| b.download(s).map(Tensor::into_data)).collect::<Result<Vec<_>>>()?.concat();
        // Kahan leaves sum - compensation as the best estimate of the exact sum.
        let weighted_sum = acc
            .map(|a| b.download(&a))
            .transpose()?
            .map(|a| a.data()[..plane].iter().zip(&a.data()[plane..]).map(|(&s, &c)| s as f64 - c as f64).collect());
        self.forward_nanos.fetch_add(started.elapsed().as_nanos() as u64, std::sync::atomic::Ordering::Relaxed);
        Ok(MaskScores { scores, weighted_sum })
    }
}

impl<B: Backend> Scorer for UNetScorer<'_, B> {
    fn known_score(&self, image: &[f32]) -> Option<f32> {
        // The same forward and scoring as `scores` on this image: the same bits.
        (image == self.input.as_slice()).then_some(self.unperturbed_score)
    }

    fn scores(&self, images: &Tensor) -> Result<Vec<f32>> {
        Ok(self.backend.download(&self.score_batch(&self.backend.upload(images)?)?)?.into_data())
    }

    fn score_masks(
        &self,
        problem: &Problem,
        masks: &MaskBatch,
        n: usize,
        weighted_sum: bool,
        progress: &mut dyn FnMut(usize),
    ) -> Option<Result<MaskScores>> {
        Some(self.fused(problem, masks, n, weighted_sum, progress))
    }
}

/// A batch's forward: the logits, or, where the model ends in a pointwise head, the features before it
/// and that head, which `Backend::head_scores` may apply at the pixels the score reads only.
enum Forward<'m, T> {
    Logits(T),
    Features(T, (&'m T, &'m T)),
}

impl<'m, T> Forward<'m, T> {
    fn run<B: Backend<Tensor = T>>(model: &'m SegModel<B>, b: &B, x: &T) -> Result<Self> {
        Ok(match model.pointwise_head() {
            Some(head) => Forward::Features(model.forward_features(b, x)?, head),
            None => Forward::Logits(model.forward_logits(b, x)?),
        })
    }

    fn scores<B: Backend<Tensor = T>>(&self, b: &B, m0: &T, class: usize, kind: ScoreKind) -> Result<T> {
        match self {
            Forward::Logits(logits) => b.segmentation_scores(logits, m0, class, kind),
            Forward::Features(features, head) => b.head_scores(features, *head, m0, class, kind),
        }
    }
}

/// One slice's explanation problem on the model grid (size x size).
pub struct Problem<'a> {
    /// Side of the model grid.
    pub size: usize,
    /// The windowed slice in [0, 1] (model grid).
    pub input: Vec<f32>,
    /// What perturbed pixels become.
    pub baseline: Vec<f32>,
    /// Pixels that may be perturbed (all true for the conventional full-image method).
    pub roi: Vec<bool>,
    /// Scores perturbed images.
    pub scorer: &'a dyn Scorer,
    /// Images per forward batch.
    pub batch: usize,
    /// Checked after every batch.
    pub cancel: Cancel,
}

impl Problem<'_> {
    /// Whether a keep-mask can change pixel q of the perturbed images, `baseline + m (input - baseline)`
    /// on every path: inside the ROI where input - baseline is not zero. Where it is ±0, m times it is
    /// that same ±0 for every mask value, so the pixel comes out the same bits (background that already
    /// is the baseline, as air windowed to 0 against the zero baseline).
    pub fn perturbable(&self, q: usize) -> bool {
        self.roi[q] && self.input[q] - self.baseline[q] != 0.0
    }

    /// Whether the perturbed image of an all-ones mask is the input itself, bit for bit (as with the zero
    /// baseline; another may round `input - baseline` back to a neighbour of the input).
    pub fn keeps_input(&self) -> bool {
        self.input.iter().zip(&self.baseline).all(|(&x, &b)| (b + 1.0 * (x - b)).to_bits() == x.to_bits())
    }
}

/// The items of `items` distinct by `key`, in order of first appearance, and which of them each item is:
/// samples that build the same perturbed image are scored once (the map gets the same bits).
pub(crate) fn distinct_by<'a, T: Clone, K: std::hash::Hash + Eq>(
    items: &'a [T],
    key: impl Fn(&'a T) -> K,
) -> (Vec<T>, Vec<usize>) {
    let mut seen = std::collections::HashMap::new();
    let mut unique = Vec::new();
    let index = items
        .iter()
        .map(|item| {
            *seen.entry(key(item)).or_insert_with(|| {
                unique.push(item.clone());
                unique.len() - 1
            })
        })
        .collect();
    (unique, index)
}

/// Counts forward passes (perturbed images scored) and reports progress.
pub struct Runner<'a> {
    /// The problem being explained.
    pub problem: &'a Problem<'a>,
    /// Forward passes so far (the unperturbed base score counted where it had to run).
    pub forward_passes: usize,
    /// The images the explainer said it will score ([`Runner::plan`]), for progress reports.
    planned: usize,
    progress: Box<dyn FnMut(usize, usize) + 'a>,
}

impl<'a> Runner<'a> {
    /// A runner for `problem` that reports `progress(done, planned)` in forward passes (done capped at
    /// planned: the base score's pass is not in the plan).
    pub fn new(problem: &'a Problem<'a>, progress: impl FnMut(usize, usize) + 'a) -> Self {
        Self { problem, forward_passes: 0, planned: 0, progress: Box::new(progress) }
    }

    /// The explainer's plan: it will score `images` perturbed images (one per distinct image; adaptive
    /// RISE may stop earlier).
    pub fn plan(&mut self, images: usize) {
        self.planned = images;
    }

    fn report(&mut self, done: usize) {
        (self.progress)(done.min(self.planned), self.planned);
    }

    /// Score of the unperturbed input: the scorer's own where it knows it (no forward), else one forward.
    pub fn base_score(&mut self) -> Result<f32> {
        let p = self.problem;
        if let Some(score) = p.scorer.known_score(&p.input) {
            return Ok(score);
        }
        self.forward_passes += 1;
        Ok(p.scorer.scores(&Tensor::new(&[1, 1, p.size, p.size], p.input.clone())?)?[0])
    }

    /// Scores samples 0..n of `masks` (and sums score_i * mask_i when asked): on the scorer's backend when
    /// it can, else through `run` with masks built here.
    pub fn score_masks(&mut self, n: usize, masks: &MaskBatch, weighted_sum: bool) -> Result<MaskScores> {
        let p = self.problem;
        let done = self.forward_passes;
        let fused = p.scorer.score_masks(p, masks, n, weighted_sum, &mut |k| self.report(done + k));
        if let Some(result) = fused {
            let result = result?;
            ensure!(result.scores.len() == n, "scorer returned {} scores for {n} samples", result.scores.len());
            self.forward_passes += n;
            return Ok(result);
        }
        let labels = masks.scene_labels();
        let mut scores = vec![0f32; n];
        let mut sum = weighted_sum.then(|| vec![0f64; p.size * p.size]);
        self.run(
            n,
            |i, mask| masks.fill(i, p.size, labels.as_deref(), mask).expect("sample index in range"),
            |i, s, mask| {
                scores[i] = s;
                if let Some(sum) = sum.as_mut() {
                    sum.iter_mut().zip(mask).for_each(|(acc, &m)| *acc += s as f64 * m as f64);
                }
            },
        )?;
        Ok(MaskScores { scores, weighted_sum: sum })
    }

    /// For samples 0..n: `fill(i, mask)` writes sample i's keep-mask (all pixels, values in [0, 1]);
    /// the runner forces 1 outside the ROI, builds the perturbed images of a batch in one reused buffer,
    /// scores them, and hands `consume(i, score, effective_mask)` each result in order.
    pub fn run(
        &mut self,
        n: usize,
        fill: impl Fn(usize, &mut [f32]) + Sync,
        mut consume: impl FnMut(usize, f32, &[f32]),
    ) -> Result<()> {
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
            masks[..b * plane].par_chunks_mut(plane).zip(images.data_mut().par_chunks_mut(plane)).enumerate().for_each(
                |(j, (mask, image))| {
                    fill(start + j, mask);
                    keep_outside_roi_and_blend(mask, image, &p.input, &p.baseline, |q| p.roi[q]);
                },
            );
            let scores = p.scorer.scores(&images)?;
            ensure!(scores.len() == b, "scorer returned {} scores for {b} images", scores.len());
            for j in 0..b {
                consume(start + j, scores[j], &masks[j * plane..(j + 1) * plane]);
            }
            start += b;
            self.forward_passes += b;
            self.report(self.forward_passes);
            p.cancel.check()?;
        }
        Ok(())
    }
}

/// A saliency map on the model grid and what it cost.
#[derive(Clone, Debug)]
pub struct Explanation {
    /// The map on the model grid.
    pub saliency: Vec<f32>,
    /// Forward passes it took.
    pub forward_passes: usize,
    /// Perturbation samples used (RISE's adaptive mode may stop early).
    pub samples: usize,
    /// RISE's adaptive mode: how the map settled (None otherwise).
    pub convergence: Option<Convergence>,
}

#[derive(Clone, Debug, PartialEq, serde::Serialize)]
/// How adaptive RISE's map settled: its relative L2 change ||m_k - m_{k-1}|| / ||m_k|| after each
/// block of masks, as (masks scored so far, change); the run stops at the first change below `tol`.
pub struct Convergence {
    /// The stopping tolerance (`--rise-tol`).
    pub tol: f32,
    /// (masks scored, relative change) per check.
    pub steps: Vec<(usize, f64)>,
}
