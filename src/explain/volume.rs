//! Whole-volume occlusion and RISE of 3-D U-Nets under sliding-window inference, with tile reuse.
//!
//! Sliding-window inference predicts every tile independently (instance norm included: each tile is its
//! own forward) and blends the tiles' logits with the importance map. A perturbation confined to a box
//! changes the input of the tiles whose windows overlap it and no other; every other tile's logits are
//! the unperturbed ones. [`VolumeScorer`] keeps those logits, recomputes only the affected tiles of each
//! perturbed sample (batched across samples), and re-blends only inside the affected tiles' union, in the
//! same order of operations as the full blend: the scores, and so the maps, are bit-identical to
//! recomputing every tile (`reuse = false`, tested), at a fraction of the tiles.
//!
//! The target is the mean probability of the organ over M0, its unperturbed predicted 3-D mask.

use super::lime::{distinct_images, paint, shapley_regression, KernelShap, Lime};
use super::occlusion::window_origins;
use super::rise::Rise;
use super::superpixels::Segments;
use super::Cancel;
use crate::backend::perturb::RiseMask3d;
use crate::backend::Backend;
use crate::fail;
use crate::models::sliding::{Plan, SlidingWindow};
use crate::models::SegModel;
use crate::tensor::Tensor;
use anyhow::{ensure, Context, Result};

/// A box of the input grid, [lo, hi) per (D, H, W) axis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First voxel per axis.
    pub lo: [usize; 3],
    /// One past the last voxel per axis.
    pub hi: [usize; 3],
}

/// What one perturbed sample does to the volume, on ROI voxels of its box only: occlusion sets them to
/// the baseline; a RISE mask keeps each in proportion m (baseline + m (x - baseline)); a coalition of
/// supervoxels sets the voxels of those switched off to the baseline.
#[derive(Clone, Debug)]
pub enum Perturbation {
    /// The box's ROI voxels set to the baseline.
    Occlude(Region),
    /// A RISE keep-mask applied to the box's ROI voxels (the ROI's bounding box, or the whole volume).
    Mask(Region, Box<RiseMask3d>),
    /// Supervoxel labels per voxel (row-major, -1 outside the ROI) and which are on.
    Coalition(Region, std::sync::Arc<[i32]>, Vec<bool>),
}

impl Perturbation {
    /// The box the perturbation may change.
    pub fn region(&self) -> Region {
        match self {
            Perturbation::Occlude(r) | Perturbation::Mask(r, _) | Perturbation::Coalition(r, ..) => *r,
        }
    }

    /// The perturbed value of the voxel at (z, y, x) (row-major `index`) inside the box, whose value was `v`.
    fn apply(&self, [z, y, x]: [usize; 3], index: usize, v: f32, baseline: f32) -> f32 {
        match self {
            Perturbation::Occlude(_) => baseline,
            Perturbation::Mask(_, m) => baseline + m.value(z, y, x) * (v - baseline),
            Perturbation::Coalition(_, labels, on) => match usize::try_from(labels[index]) {
                Ok(l) if !on[l] => baseline,
                _ => v,
            },
        }
    }
}

impl Region {
    /// The box's voxels as ((z, y, x), row-major index on an image of `dims`), z slowest.
    pub fn voxels(self, [_, h, w]: [usize; 3]) -> impl Iterator<Item = ([usize; 3], usize)> {
        (self.lo[0]..self.hi[0]).flat_map(move |z| {
            (self.lo[1]..self.hi[1])
                .flat_map(move |y| (self.lo[2]..self.hi[2]).map(move |x| ([z, y, x], (z * h + y) * w + x)))
        })
    }
}

/// Softmax probability of `class` among the logits of one voxel.
fn class_probability(logits: &[f32], class: usize) -> f32 {
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = logits.iter().map(|&l| (l - m).exp()).sum();
    (logits[class] - m).exp() / z
}

/// Mean organ probability over M0 of a perturbed volume, with the unperturbed tiles' logits kept.
pub struct VolumeScorer<'a, B: Backend> {
    backend: &'a B,
    model: &'a SegModel<B>,
    plan: Plan,
    volume: &'a [f32],
    channels: usize,
    classes: usize,
    class: usize,
    baseline: f32,
    roi: Vec<bool>,
    tile_logits: Vec<Vec<f32>>,
    /// Unperturbed organ probability per input voxel.
    prob: Vec<f32>,
    /// Per axis and padded coordinate: the indices of the tile starts covering it.
    covering: [Vec<Vec<usize>>; 3],
    m0: Vec<usize>,
    /// Score of the unperturbed volume.
    pub base_score: f32,
    /// Recompute only the tiles a perturbation touches (false: every tile, the reference).
    pub reuse: bool,
    /// Tiles run through the model so far (the unperturbed pass included).
    pub tiles_evaluated: usize,
    /// Model forwards so far (each up to `SlidingWindow::batch` tiles).
    pub forward_passes: usize,
    /// Stops scoring at the next batch of tiles (`ErrorKind::Cancelled`).
    pub cancel: Cancel,
}

impl<'a, B: Backend> VolumeScorer<'a, B> {
    /// Runs the unperturbed volume (1, C, D, H, W) through `model` tile by tile, keeps every tile's logits,
    /// and finds M0 for `class`. Perturbations may touch the whole volume until [`Self::set_roi`];
    /// `baseline` fills perturbed voxels.
    pub fn new(
        backend: &'a B,
        model: &'a SegModel<B>,
        volume: &'a Tensor,
        window: &SlidingWindow,
        class: usize,
        baseline: f32,
    ) -> Result<Self> {
        let (n, channels, image) = crate::backend::volume::ncdhw(volume.shape(), "volume")?;
        ensure!(n == 1, "one volume at a time, got a batch of {n}");
        let voxels: usize = image.iter().product();
        let roi = vec![true; voxels];
        let plan = window.plan(image)?;
        let classes = model.out_channels();
        ensure!(class < classes, "class {class} is not an output of this {classes}-class model");
        let covering = std::array::from_fn(|a| {
            (0..plan.padded[a])
                .map(|p| {
                    let r = plan.window.roi_size[a];
                    (0..plan.starts[a].len()).filter(|&i| plan.starts[a][i] <= p && p < plan.starts[a][i] + r).collect()
                })
                .collect()
        });
        let mut scorer = Self {
            backend,
            model,
            volume: volume.data(),
            channels,
            classes,
            class,
            baseline,
            roi,
            tile_logits: Vec::new(),
            prob: Vec::new(),
            covering,
            m0: Vec::new(),
            base_score: 0.0,
            reuse: true,
            tiles_evaluated: 0,
            forward_passes: 0,
            cancel: Cancel::default(),
            plan,
        };
        let all: Vec<(usize, Option<&Perturbation>)> = (0..scorer.plan.tiles.len()).map(|t| (t, None)).collect();
        scorer.tile_logits = scorer.run_tiles(volume.data(), &all)?;
        let logits = scorer.plan.blend(&scorer.tile_logits, classes)?;
        let mut at_voxel = vec![0f32; classes];
        for v in 0..voxels {
            for (k, l) in at_voxel.iter_mut().enumerate() {
                *l = logits[k * voxels + v];
            }
            let p = class_probability(&at_voxel, class);
            let winner = (0..classes).fold(0, |best, k| if at_voxel[k] > at_voxel[best] { k } else { best });
            if winner == class {
                scorer.m0.push(v);
            }
            scorer.prob.push(p);
        }
        if scorer.m0.is_empty() {
            fail!(OrganAbsent, "the model predicts no voxel of class {class} in this volume: nothing to explain");
        }
        scorer.base_score = scorer.mean_over_m0(|v| scorer.prob[v]);
        Ok(scorer)
    }

    /// The tiles of the sliding window.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// M0: the voxels (row-major indices of the input grid) the model assigns to the class.
    pub fn m0(&self) -> &[usize] {
        &self.m0
    }

    /// The voxels perturbations may touch.
    pub fn roi(&self) -> &[bool] {
        &self.roi
    }

    /// Bounds what perturbations may touch (and what occlusion attributes) to `roi` (D*H*W).
    pub fn set_roi(&mut self, roi: Vec<bool>) -> Result<()> {
        ensure!(roi.len() == self.prob.len(), "the ROI has {} voxels, the volume {}", roi.len(), self.prob.len());
        self.roi = roi;
        Ok(())
    }

    /// A map of `samples` scored samples with what they cost so far; without reuse every sample and
    /// the unperturbed volume need every tile.
    pub fn explanation(&self, saliency: Vec<f32>, samples: usize) -> VolumeExplanation {
        VolumeExplanation {
            saliency,
            samples,
            tiles_evaluated: self.tiles_evaluated,
            tiles_naive: (samples + 1) * self.plan.tiles.len(),
            forward_passes: self.forward_passes,
        }
    }

    /// The unperturbed probability of the class per voxel.
    pub fn probability(&self) -> &[f32] {
        &self.prob
    }

    fn mean_over_m0(&self, mut prob: impl FnMut(usize) -> f32) -> f32 {
        (self.m0.iter().map(|&v| prob(v) as f64).sum::<f64>() / self.m0.len() as f64) as f32
    }

    /// Logits (K, roi) of each (tile, perturbation) pair of `source`, `window.batch` tiles per forward.
    fn run_tiles(&mut self, source: &[f32], jobs: &[(usize, Option<&Perturbation>)]) -> Result<Vec<Vec<f32>>> {
        let roi = self.plan.window.roi_size;
        let tile_len: usize = roi.iter().product();
        let mut out = Vec::with_capacity(jobs.len());
        for chunk in jobs.chunks(self.plan.window.batch) {
            self.cancel.check()?;
            let mut data = Vec::with_capacity(chunk.len() * self.channels * tile_len);
            for &(t, perturbation) in chunk {
                let mut tile = self.plan.extract(source, self.channels, t);
                if let Some(p) = perturbation {
                    self.perturb_tile(&mut tile, t, p);
                }
                data.extend(tile);
            }
            let x = self.backend.upload(&Tensor::new(&[chunk.len(), self.channels, roi[0], roi[1], roi[2]], data)?)?;
            let y = self.backend.download(&self.model.forward_logits(self.backend, &x)?)?;
            self.forward_passes += 1;
            self.tiles_evaluated += chunk.len();
            out.extend(y.data().chunks_exact(self.classes * tile_len).map(<[f32]>::to_vec));
        }
        Ok(out)
    }

    /// Perturbs the voxels of tile `t` that fall in the perturbation's box and the ROI (every input
    /// channel).
    fn perturb_tile(&self, tile: &mut [f32], t: usize, p: &Perturbation) {
        let r = p.region();
        let ([rd, rh, rw], [_, h, w]) = (self.plan.window.roi_size, self.plan.image);
        let start = self.plan.tiles[t];
        // Tile coordinate -> input coordinate on each axis, when inside the input.
        let input =
            |a: usize, i: usize| (start[a] + i).checked_sub(self.plan.pad[a].0).filter(|&v| v < self.plan.image[a]);
        for z in 0..rd {
            let Some(iz) = input(0, z).filter(|&v| (r.lo[0]..r.hi[0]).contains(&v)) else { continue };
            for y in 0..rh {
                let Some(iy) = input(1, y).filter(|&v| (r.lo[1]..r.hi[1]).contains(&v)) else { continue };
                for x in 0..rw {
                    let Some(ix) = input(2, x).filter(|&v| (r.lo[2]..r.hi[2]).contains(&v)) else { continue };
                    let index = (iz * h + iy) * w + ix;
                    if self.roi[index] {
                        for c in 0..self.channels {
                            let v = &mut tile[((c * rd + z) * rh + y) * rw + x];
                            *v = p.apply([iz, iy, ix], index, *v, self.baseline);
                        }
                    }
                }
            }
        }
    }

    /// Per axis, the range of tile-start indices whose tiles overlap `r`.
    fn affected(&self, r: Region) -> [std::ops::Range<usize>; 3] {
        std::array::from_fn(|a| {
            let (lo, hi) = (r.lo[a] + self.plan.pad[a].0, r.hi[a] + self.plan.pad[a].0);
            let size = self.plan.window.roi_size[a];
            let starts = &self.plan.starts[a];
            let first = starts.iter().position(|&s| s + size > lo).unwrap_or(starts.len());
            let last = starts.iter().rposition(|&s| s < hi).map_or(0, |i| i + 1);
            first..last.max(first)
        })
    }

    /// The score of the volume under each perturbation (which touches ROI voxels only).
    pub fn score(&mut self, perturbations: &[Perturbation]) -> Result<Vec<f32>> {
        if !self.reuse {
            return perturbations.iter().map(|p| self.score_recomputing_every_tile(p)).collect();
        }
        // Every affected (tile, perturbation) pair of the call, in one stream of batched forwards.
        let affected: Vec<(Vec<usize>, [std::ops::Range<usize>; 3])> = perturbations
            .iter()
            .map(|p| {
                let ranges = self.affected(p.region());
                (self.tiles_in(&ranges), ranges)
            })
            .collect();
        let jobs: Vec<(usize, Option<&Perturbation>)> = affected
            .iter()
            .zip(perturbations)
            .flat_map(|((tiles, _), p)| tiles.iter().map(move |&t| (t, Some(p))))
            .collect();
        let fresh = self.run_tiles(self.volume, &jobs)?;
        let mut offset = 0;
        let mut scores = Vec::with_capacity(perturbations.len());
        for (tiles, ranges) in affected {
            let changed: std::collections::HashMap<usize, &Vec<f32>> =
                tiles.iter().copied().zip(&fresh[offset..offset + tiles.len()]).collect();
            offset += tiles.len();
            scores.push(self.rescore(&changed, ranges));
        }
        Ok(scores)
    }

    /// Tile numbers of the product of per-axis start ranges, in plan order.
    fn tiles_in(&self, [a, b, c]: &[std::ops::Range<usize>; 3]) -> Vec<usize> {
        let counts = [self.plan.starts[1].len(), self.plan.starts[2].len()];
        let mut out = Vec::with_capacity(a.len() * b.len() * c.len());
        for i in a.clone() {
            for j in b.clone() {
                out.extend(c.clone().map(|k| (i * counts[0] + j) * counts[1] + k));
            }
        }
        out
    }

    /// Which supervoxels of `segments` a coalition can change: those with a voxel, in any channel, whose
    /// bits are not the baseline's (switching the others off writes the values already there, so
    /// coalitions that differ only in them build the same volume).
    fn changing(&self, segments: &Segments) -> Vec<bool> {
        let voxels = self.roi.len();
        let mut active = vec![false; segments.count];
        for (v, &l) in segments.labels.iter().enumerate() {
            let differs = (0..self.channels).any(|c| self.volume[c * voxels + v].to_bits() != self.baseline.to_bits());
            if l >= 0 && differs {
                active[l as usize] = true;
            }
        }
        active
    }

    /// The reference: the perturbed volume through every tile and the full blend.
    fn score_recomputing_every_tile(&mut self, p: &Perturbation) -> Result<f32> {
        let [d, h, w] = self.plan.image;
        let mut perturbed = self.volume.to_vec();
        for (at, v) in p.region().voxels(self.plan.image).filter(|&(_, v)| self.roi[v]) {
            for c in 0..self.channels {
                let value = &mut perturbed[c * d * h * w + v];
                *value = p.apply(at, v, *value, self.baseline);
            }
        }
        let all: Vec<(usize, Option<&Perturbation>)> = (0..self.plan.tiles.len()).map(|t| (t, None)).collect();
        let outputs = self.run_tiles(&perturbed, &all)?;
        let logits = self.plan.blend(&outputs, self.classes)?;
        let voxels = d * h * w;
        let mut at_voxel = vec![0f32; self.classes];
        Ok(self.mean_over_m0(|v| {
            for (k, l) in at_voxel.iter_mut().enumerate() {
                *l = logits[k * voxels + v];
            }
            class_probability(&at_voxel, self.class)
        }))
    }

    /// The score with the tiles in `changed` replaced: voxels inside the changed tiles' union are
    /// re-blended over every tile covering them, in the blend's order; the rest keep their probability.
    fn rescore(
        &self,
        changed: &std::collections::HashMap<usize, &Vec<f32>>,
        [a, b, c]: [std::ops::Range<usize>; 3],
    ) -> f32 {
        if changed.is_empty() {
            return self.base_score;
        }
        let roi = self.plan.window.roi_size;
        let [_, ph, pw] = self.plan.padded;
        let [_, h, w] = self.plan.image;
        let starts = &self.plan.starts;
        let counts = [starts[0].len(), starts[1].len(), starts[2].len()];
        // The union on the padded grid, then on the input grid.
        let union = [
            (starts[0][a.start], starts[0][a.end - 1] + roi[0]),
            (starts[1][b.start], starts[1][b.end - 1] + roi[1]),
            (starts[2][c.start], starts[2][c.end - 1] + roi[2]),
        ];
        let inside = |v: usize| {
            let p = [v / (h * w) + self.plan.pad[0].0, (v / w) % h + self.plan.pad[1].0, v % w + self.plan.pad[2].0];
            (0..3).all(|ax| union[ax].0 <= p[ax] && p[ax] < union[ax].1).then_some(p)
        };
        let tile_len: usize = roi.iter().product();
        let mut acc = vec![0f32; self.classes];
        self.mean_over_m0(|v| {
            let Some(p) = inside(v) else { return self.prob[v] };
            acc.iter_mut().for_each(|x| *x = 0.0);
            for &i in &self.covering[0][p[0]] {
                for &j in &self.covering[1][p[1]] {
                    for &k in &self.covering[2][p[2]] {
                        let t = (i * counts[1] + j) * counts[2] + k;
                        let out = changed.get(&t).copied().unwrap_or(&self.tile_logits[t]);
                        let local =
                            ((p[0] - starts[0][i]) * roi[1] + p[1] - starts[1][j]) * roi[2] + p[2] - starts[2][k];
                        let weight = self.plan.weights[local];
                        for (kk, x) in acc.iter_mut().enumerate() {
                            *x += out[kk * tile_len + local] * weight;
                        }
                    }
                }
            }
            let denominator = self.plan.weight_sum[(p[0] * ph + p[1]) * pw + p[2]];
            acc.iter_mut().for_each(|x| *x /= denominator);
            class_probability(&acc, self.class)
        })
    }
}

/// Occlusion of a volume: a box window slides by a stride along each axis (Captum's origins per axis),
/// the window's part inside the ROI is set to the baseline, and each ROI voxel's attribution is the mean
/// score drop of the windows covering it (0 outside the ROI).
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Occlusion3d {
    /// Window (D, H, W) in voxels.
    pub window: [usize; 3],
    /// Stride (D, H, W) in voxels.
    pub stride: [usize; 3],
}

/// A volume explanation and what it cost.
#[derive(Clone, Debug)]
pub struct VolumeExplanation {
    /// Attribution per voxel of the input grid (D*H*W, row-major).
    pub saliency: Vec<f32>,
    /// Perturbed samples scored.
    pub samples: usize,
    /// Tiles run through the model (the unperturbed pass included).
    pub tiles_evaluated: usize,
    /// Tiles a run without reuse needs: every tile for the unperturbed volume and for each sample.
    pub tiles_naive: usize,
    /// Model forwards.
    pub forward_passes: usize,
}

/// Samples scored per call of the scorer: their affected tiles share forward batches.
const SAMPLES_PER_CALL: usize = 16;

impl Occlusion3d {
    /// The regions to occlude: per window that holds ROI voxels, the bounding box of those voxels (the
    /// only ones it changes, so the tiles it affects are as few as they can be).
    pub fn regions(&self, image: [usize; 3], roi: &[bool]) -> Vec<Region> {
        let [_, h, w] = image;
        let origins: [Vec<usize>; 3] =
            std::array::from_fn(|a| window_origins(image[a], self.window[a], self.stride[a]));
        let mut out = Vec::new();
        for &z0 in &origins[0] {
            for &y0 in &origins[1] {
                for &x0 in &origins[2] {
                    let start = [z0, y0, x0];
                    let end: [usize; 3] = std::array::from_fn(|a| (start[a] + self.window[a]).min(image[a]));
                    let (mut lo, mut hi) = (end, start);
                    for z in z0..end[0] {
                        for y in y0..end[1] {
                            for x in x0..end[2] {
                                if roi[(z * h + y) * w + x] {
                                    let p = [z, y, x];
                                    for a in 0..3 {
                                        lo[a] = lo[a].min(p[a]);
                                        hi[a] = hi[a].max(p[a] + 1);
                                    }
                                }
                            }
                        }
                    }
                    if (0..3).all(|a| lo[a] < hi[a]) {
                        out.push(Region { lo, hi });
                    }
                }
            }
        }
        out
    }

    /// The map; `progress(done, total)` counts scored samples.
    pub fn explain<B: Backend>(
        &self,
        scorer: &mut VolumeScorer<B>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<VolumeExplanation> {
        ensure!(
            self.window.iter().chain(&self.stride).all(|&v| v >= 1),
            "occlusion window and stride must be >= 1 on every axis"
        );
        let image = scorer.plan.image;
        let regions = self.regions(image, &scorer.roi);
        let voxels: usize = image.iter().product();
        let (mut sum, mut count) = (vec![0f64; voxels], vec![0u32; voxels]);
        let base = scorer.base_score;
        for (done, chunk) in regions.chunks(SAMPLES_PER_CALL).enumerate() {
            let perturbations: Vec<Perturbation> = chunk.iter().map(|&r| Perturbation::Occlude(r)).collect();
            let scores = scorer.score(&perturbations)?;
            for (r, score) in chunk.iter().zip(scores) {
                let drop = (base - score) as f64;
                for (_, v) in r.voxels(image).filter(|&(_, v)| scorer.roi[v]) {
                    sum[v] += drop;
                    count[v] += 1;
                }
            }
            progress((done * SAMPLES_PER_CALL + chunk.len()).min(regions.len()), regions.len());
        }
        let saliency = sum.iter().zip(&count).map(|(&s, &c)| if c > 0 { (s / c as f64) as f32 } else { 0.0 }).collect();
        Ok(scorer.explanation(saliency, regions.len()))
    }
}

impl Rise {
    /// RISE over a volume: mask i keeps each ROI voxel of the ROI's bounding box in proportion m_i, and
    /// the map is sum_i score_i m_i / (N p1) on ROI voxels (0 elsewhere), as in 2-D. Masks come from
    /// (seed, i) alone, so tile reuse, batch and thread count do not change them. `progress(done,
    /// total)` counts scored masks. The adaptive stop (`tol`) is for slices only.
    pub fn explain_volume<B: Backend>(
        &self,
        scorer: &mut VolumeScorer<B>,
        mut progress: impl FnMut(usize, usize),
    ) -> Result<VolumeExplanation> {
        ensure!(
            self.masks >= 1 && self.grid >= 1 && self.p1 > 0.0 && self.p1 <= 1.0,
            "RISE needs masks >= 1, grid >= 1, 0 < p1 <= 1"
        );
        ensure!(self.tol.is_none(), "the adaptive RISE stop (--rise-tol) is for slices; volumes score every mask");
        let image = scorer.plan.image;
        let region = roi_box(&scorer.roi, image).context("the ROI is empty: nothing to perturb")?;
        let (mut sum, masks) = (vec![0f64; image.iter().product()], self.mask_set());
        for first in (0..self.masks).step_by(SAMPLES_PER_CALL) {
            let batch: Vec<Perturbation> = (first..(first + SAMPLES_PER_CALL).min(self.masks))
                .map(|i| Perturbation::Mask(region, Box::new(RiseMask3d::new(&masks, i, image))))
                .collect();
            let scores = scorer.score(&batch)?;
            for (p, score) in batch.iter().zip(scores) {
                let Perturbation::Mask(_, m) = p else { unreachable!("RISE scores masks") };
                for ([z, y, x], v) in region.voxels(image).filter(|&(_, v)| scorer.roi[v]) {
                    sum[v] += score as f64 * m.value(z, y, x) as f64;
                }
            }
            progress(first + batch.len(), self.masks);
        }
        let scale = 1.0 / (self.masks as f64 * self.p1 as f64);
        Ok(scorer.explanation(sum.iter().map(|&v| (v * scale) as f32).collect(), self.masks))
    }

    /// The masks for a volume ROI at the full run's budget per grid cell: the share of the s³ cells
    /// (ceil(n / s) voxels per axis) that hold ROI voxels, as the pipeline's `roi_budget` does on
    /// slices; at least one mask.
    pub fn volume_budget(&self, roi: &[bool], image: [usize; 3]) -> usize {
        let s = self.grid;
        let cell: [usize; 3] = std::array::from_fn(|a| image[a].div_ceil(s));
        let [_, h, w] = image;
        let mut touched = vec![false; s * s * s];
        for (v, _) in roi.iter().enumerate().filter(|(_, &r)| r) {
            let p = [v / (h * w), (v / w) % h, v % w];
            touched[((p[0] / cell[0]) * s + p[1] / cell[1]) * s + p[2] / cell[2]] = true;
        }
        let fraction = touched.iter().filter(|&&t| t).count() as f64 / touched.len() as f64;
        ((self.masks as f64 * fraction).ceil() as usize).clamp(1, self.masks)
    }
}

/// The bounding box of the ROI's voxels; None when it has none.
fn roi_box(roi: &[bool], [_, h, w]: [usize; 3]) -> Option<Region> {
    let (mut lo, mut hi) = ([usize::MAX; 3], [0; 3]);
    for (v, _) in roi.iter().enumerate().filter(|(_, &r)| r) {
        let p = [v / (h * w), (v / w) % h, v % w];
        for a in 0..3 {
            lo[a] = lo[a].min(p[a]);
            hi[a] = hi[a].max(p[a] + 1);
        }
    }
    (hi[0] > 0).then_some(Region { lo, hi })
}

/// The ROI's supervoxels and the scores of coalitions of them.
fn score_coalitions<B: Backend>(
    scorer: &mut VolumeScorer<B>,
    segments: &Segments,
    rows: &[Vec<bool>],
    mut progress: impl FnMut(usize, usize),
) -> Result<Vec<f64>> {
    let image = scorer.plan.image;
    let region = roi_box(&scorer.roi, image).context("the ROI is empty: nothing to perturb")?;
    ensure!(segments.labels.len() == scorer.roi.len(), "supervoxels and volume differ in size");
    let labels: std::sync::Arc<[i32]> = segments.labels.clone().into();
    let (unique, index) = distinct_images(rows, &scorer.changing(segments));
    let mut scores = Vec::with_capacity(unique.len());
    for chunk in unique.chunks(SAMPLES_PER_CALL) {
        let batch: Vec<Perturbation> =
            chunk.iter().map(|on| Perturbation::Coalition(region, labels.clone(), on.clone())).collect();
        scores.extend(scorer.score(&batch)?.into_iter().map(f64::from));
        progress(scores.len(), unique.len());
    }
    Ok(index.into_iter().map(|i| scores[i]).collect())
}

impl Lime {
    /// LIME over supervoxels of the ROI (`segments`, row-major on the volume): coalitions, sample
    /// weights and the weighted ridge as on slices; `progress(done, total)` counts scored samples.
    pub fn explain_volume<B: Backend>(
        &self,
        scorer: &mut VolumeScorer<B>,
        segments: &Segments,
        progress: impl FnMut(usize, usize),
    ) -> Result<VolumeExplanation> {
        ensure!(self.samples >= 2, "LIME needs at least 2 samples");
        ensure!(segments.count > 0, "no supervoxels to perturb (empty ROI)");
        let rows = self.coalitions(segments.count);
        let y = score_coalitions(scorer, segments, &rows, progress)?;
        Ok(scorer.explanation(paint(segments, &self.fit(&rows, &y)?), rows.len()))
    }
}

impl KernelShap {
    /// Kernel SHAP over supervoxels of the ROI, as on slices; `progress(done, total)` counts scored
    /// coalitions.
    pub fn explain_volume<B: Backend>(
        &self,
        scorer: &mut VolumeScorer<B>,
        segments: &Segments,
        progress: impl FnMut(usize, usize),
    ) -> Result<VolumeExplanation> {
        ensure!(segments.count > 0, "no supervoxels to perturb (empty ROI)");
        let rows = self.coalitions(segments.count);
        let y = score_coalitions(scorer, segments, &rows, progress)?;
        let phi = shapley_regression(&rows, &y)?;
        Ok(scorer.explanation(paint(segments, &phi), rows.len()))
    }
}
