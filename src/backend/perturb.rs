//! The perturbation stage on the backend, CPU side: these functions are the reference twins of
//! kernels/perturb.cu and produce the same bits for masks, images and sums (each f32 rounding step in
//! the same order; the device code spells them out so nothing is contracted into a multiply-add).

use crate::rng::Philox;
use crate::tensor::Tensor;
use anyhow::{ensure, Context, Result};
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

/// RISE's masks (Petsiuk et al. 2018) as a plain description: mask i is an s x s Bernoulli(p1) grid drawn
/// from Philox stream i of `seed`, upsampled and shifted. Any device or thread regenerates mask i exactly.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RiseMasks {
    /// Cells per side (s).
    pub grid: usize,
    /// Probability that a cell is kept.
    pub p1: f32,
    /// Seed of the Philox streams.
    pub seed: u64,
}

impl RiseMasks {
    /// Writes mask i (size x size, values in [0, 1]) into `out`. Bilinear upsampling is pixel-centre
    /// aligned with edge clamping (the original code uses skimage resize, order 1, mode 'reflect').
    pub fn mask(&self, i: usize, size: usize, out: &mut [f32]) {
        let s = self.grid;
        let rng = Philox::new(self.seed).stream(i as u64);
        let cell = size.div_ceil(s);
        let up = (s + 1) * cell;
        let grid: Vec<f32> = (0..s * s).map(|c| if rng.uniform(c as u64) < self.p1 { 1.0 } else { 0.0 }).collect();
        let shift_y = (rng.uniform((s * s) as u64) * cell as f32) as usize;
        let shift_x = (rng.uniform((s * s + 1) as u64) * cell as f32) as usize;
        let tap = |u: usize| tap(u, s, up);
        let columns: Vec<(usize, usize, f32)> = (0..size).map(|x| tap(x + shift_x)).collect();
        for y in 0..size {
            let (y0, y1, fy) = tap(y + shift_y);
            let (top_row, bottom_row) = (&grid[y0 * s..(y0 + 1) * s], &grid[y1 * s..(y1 + 1) * s]);
            for (x, &(x0, x1, fx)) in columns.iter().enumerate() {
                let top = top_row[x0] * (1.0 - fx) + top_row[x1] * fx;
                let bottom = bottom_row[x0] * (1.0 - fx) + bottom_row[x1] * fx;
                out[y * size + x] = top * (1.0 - fy) + bottom * fy;
            }
        }
    }
}

/// The two grid cells and the weight of the second for upsampled position `u` of an `s`-cell axis
/// upsampled to `up`: grid coordinate (u + 0.5) s / up - 0.5, clamped to [0, s - 1].
fn tap(u: usize, s: usize, up: usize) -> (usize, usize, f32) {
    let pos = ((u as f32 + 0.5) * s as f32 / up as f32 - 0.5).clamp(0.0, (s - 1) as f32);
    let g0 = pos.floor() as usize;
    (g0, (g0 + 1).min(s - 1), pos - g0 as f32)
}

/// RISE mask i over a (D, H, W) volume: an s x s x s Bernoulli(p1) grid (cells of ceil(n / s) voxels on
/// each axis, so anisotropic on thin volumes), trilinearly upsampled to (s + 1) cells and cropped at a
/// random shift in [0, cell) per axis, as [`RiseMasks::mask`] does in 2-D. Values are computed per
/// voxel on demand, so a mask costs s³ floats whatever the volume's size.
#[derive(Clone, Debug)]
pub struct RiseMask3d {
    s: usize,
    grid: Vec<f32>,
    /// Per axis and voxel coordinate: the two grid cells and the second's weight.
    taps: [Vec<(usize, usize, f32)>; 3],
}

impl RiseMask3d {
    /// Mask `i` of `masks` over a volume of `dims` voxels (Philox stream i: cells 0..s³, then one shift
    /// per axis).
    pub fn new(masks: &RiseMasks, i: usize, dims: [usize; 3]) -> Self {
        let s = masks.grid;
        let rng = Philox::new(masks.seed).stream(i as u64);
        let cells = s * s * s;
        let grid = (0..cells).map(|c| if rng.uniform(c as u64) < masks.p1 { 1.0 } else { 0.0 }).collect();
        let taps = std::array::from_fn(|a| {
            let cell = dims[a].div_ceil(s);
            let shift = (rng.uniform((cells + a) as u64) * cell as f32) as usize;
            (0..dims[a]).map(|u| tap(u + shift, s, (s + 1) * cell)).collect()
        });
        Self { s, grid, taps }
    }

    /// The mask's value at voxel (z, y, x), in [0, 1].
    pub fn value(&self, z: usize, y: usize, x: usize) -> f32 {
        let s = self.s;
        let ((z0, z1, fz), (y0, y1, fy), (x0, x1, fx)) = (self.taps[0][z], self.taps[1][y], self.taps[2][x]);
        let row = |zz: usize, yy: usize| {
            let r = &self.grid[(zz * s + yy) * s..(zz * s + yy + 1) * s];
            r[x0] * (1.0 - fx) + r[x1] * fx
        };
        let plane = |zz: usize| row(zz, y0) * (1.0 - fy) + row(zz, y1) * fy;
        plane(z0) * (1.0 - fz) + plane(z1) * fz
    }
}

/// The keep-masks an explainer asks for, described by a few parameters so that a backend can build them
/// where the model runs (kernels/perturb.cu) instead of receiving them from the host.
#[derive(Clone, Copy)]
pub enum MaskBatch<'a> {
    /// Sample i is RISE mask first + i.
    #[allow(missing_docs)] // masks: the RISE description; first: index of sample 0
    Rise { masks: RiseMasks, first: usize },
    /// Sample i zeroes the window x window square at `origins[i]` = (y, x).
    #[allow(missing_docs)] // origins: (y, x) per sample; window: side in pixels
    Windows { origins: &'a [(usize, usize)], window: usize },
    /// Sample i keeps the superpixels switched on in `rows[i]`; `labels` is the superpixel id per pixel (-1: none).
    #[allow(missing_docs)] // rows: superpixels kept per sample; labels: superpixel per pixel
    Coalitions { rows: &'a [Vec<bool>], labels: &'a [i32] },
}

impl MaskBatch<'_> {
    /// The superpixel map as the backend's scene holds it (f32 ids), for coalitions.
    pub fn scene_labels(&self) -> Option<Vec<f32>> {
        match self {
            MaskBatch::Coalitions { labels, .. } => Some(labels.iter().map(|&l| l as f32).collect()),
            _ => None,
        }
    }

    /// Writes sample i's keep-mask (size x size, before the ROI is applied). `labels` is `scene_labels()`.
    pub fn fill(&self, i: usize, size: usize, labels: Option<&[f32]>, out: &mut [f32]) -> Result<()> {
        match *self {
            MaskBatch::Rise { masks, first } => masks.mask(first + i, size, out),
            MaskBatch::Windows { origins, window } => {
                out.fill(1.0);
                let (y0, x0) = *origins.get(i).with_context(|| format!("window {i} of {}", origins.len()))?;
                for y in y0..(y0 + window).min(size) {
                    out[y * size + x0..y * size + (x0 + window).min(size)].fill(0.0);
                }
            }
            MaskBatch::Coalitions { rows, .. } => {
                let (row, labels) = (
                    rows.get(i).with_context(|| format!("coalition {i} of {}", rows.len()))?,
                    labels.context("coalition masks need the superpixel map")?,
                );
                for (m, &l) in out.iter_mut().zip(labels) {
                    *m = if l < 0.0 || row[l as usize] { 1.0 } else { 0.0 };
                }
            }
        }
        Ok(())
    }
}

/// The fixed planes of one explanation problem, held by the backend: every perturbed batch is built
/// from these, so they cross to a device once per explanation.
pub struct Scene<T> {
    /// Side of the model grid.
    pub size: usize,
    /// The windowed slice (plane).
    pub input: T,
    /// What perturbed pixels become (plane).
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
