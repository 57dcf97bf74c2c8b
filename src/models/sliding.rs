//! Sliding-window inference over a whole volume, as MONAI's `sliding_window_inference` computes it
//! (monai/inferers/utils.py, monai/data/utils.py): the volume is zero-padded symmetrically to at least the
//! patch size, tiles start every `int(patch (1 - overlap))` voxels with the last one flush with the end,
//! each tile's prediction is weighted by an importance map (constant, or a Gaussian with sigma =
//! `sigma_scale` x patch side, clamped below at max(its minimum, 1e-3)), and the weighted sum is divided by
//! the summed weights, then cropped back to the input.
//!
//! nnU-Net's predictor (nnunetv2/inference/sliding_window_prediction.py) tiles the same way with two
//! differences, [`Tiling::NnUNet`]: tiles are spread evenly between the first and the last position
//! (`compute_steps_for_sliding_window`, numpy's round half to even), and the Gaussian is scipy's
//! `gaussian_filter` of a unit impulse at the tile's centre voxel (n // 2), truncated at 4 sigma, with its
//! zeros raised to its least positive value (`compute_gaussian`). nnU-Net pads with 0 after its own
//! normalisation, which [`SlidingWindow::cval`] states in the windowed input the models here take.
//!
//! Every tile is an independent forward, so a [`Plan`] also lets a caller keep the tiles' outputs and
//! recompute only some of them (the tile reuse of the 3-D explainers) before blending again.

use crate::backend::Backend;
use crate::tensor::Tensor;
use anyhow::{ensure, Result};

/// How overlapping tiles are weighted (MONAI's `BlendMode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Blend {
    /// Every voxel of a tile weighs 1.
    Constant,
    /// A separable Gaussian centred on the tile (nnU-Net's and MONAI's choice for segmentation).
    Gaussian,
}

/// Whose rule places the tiles and samples the Gaussian.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tiling {
    /// MONAI's `sliding_window_inference`: a tile every int(patch (1 - overlap)) voxels, the last flush
    /// with the end; Gaussian centred at (n - 1) / 2, clamped below at 1e-3.
    Monai,
    /// nnU-Net's predictor: tiles spread evenly (step at most patch x (1 - overlap)); scipy's Gaussian
    /// centred at voxel n // 2, truncated at 4 sigma.
    #[serde(rename = "nnunet")]
    NnUNet,
}

/// Sliding-window settings, MONAI's `SlidingWindowInferer` arguments.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct SlidingWindow {
    /// Tile size (D, H, W): the model's patch size.
    pub roi_size: [usize; 3],
    /// Overlap of neighbouring tiles, 0 <= overlap < 1 (MONAI's default 0.25; nnU-Net uses 0.5).
    pub overlap: f64,
    /// Weighting of the tiles.
    pub blend: Blend,
    /// Gaussian sigma as a share of the tile side (MONAI: 0.125).
    pub sigma_scale: f64,
    /// Tiles per forward.
    pub batch: usize,
    /// Where tiles start and how the Gaussian is sampled.
    pub tiling: Tiling,
    /// Value of the padding around a volume smaller than a tile, in the model's windowed input (MONAI's
    /// `cval`, 0; an nnU-Net model's is the value its normalisation maps to 0).
    pub cval: f32,
}

impl SlidingWindow {
    /// MONAI's defaults for `roi_size`: overlap 0.25, constant blending, sigma scale 0.125, one tile per
    /// forward.
    pub fn new(roi_size: [usize; 3]) -> Self {
        Self {
            roi_size,
            overlap: 0.25,
            blend: Blend::Constant,
            sigma_scale: 0.125,
            batch: 1,
            tiling: Tiling::Monai,
            cval: 0.0,
        }
    }

    /// nnU-Net's predictor for `patch`: tile step 0.5, Gaussian weighting, its tile positions.
    pub fn nnunet(patch: [usize; 3]) -> Self {
        Self { overlap: 0.5, blend: Blend::Gaussian, tiling: Tiling::NnUNet, ..Self::new(patch) }
    }

    /// The tiles of a volume of `image` (D, H, W) voxels.
    pub fn plan(&self, image: [usize; 3]) -> Result<Plan> {
        ensure!(
            (0.0..1.0).contains(&self.overlap),
            "sliding window: overlap must be >= 0 and < 1, got {}",
            self.overlap
        );
        ensure!(
            self.roi_size.iter().all(|&r| r > 0) && image.iter().all(|&v| v > 0),
            "sliding window: empty tile {:?} or volume {image:?}",
            self.roi_size
        );
        ensure!(self.batch >= 1, "sliding window: at least one tile per forward");
        let roi = self.roi_size;
        // Zero padding, split as MONAI does (half before, the rest after).
        let pad: [(usize, usize); 3] = std::array::from_fn(|a| {
            let diff = roi[a].saturating_sub(image[a]);
            (diff / 2, diff - diff / 2)
        });
        let padded: [usize; 3] = std::array::from_fn(|a| image[a].max(roi[a]));
        let starts: [Vec<usize>; 3] = std::array::from_fn(|a| match self.tiling {
            Tiling::Monai => {
                let interval =
                    if roi[a] == padded[a] { roi[a] } else { ((roi[a] as f64 * (1.0 - self.overlap)) as usize).max(1) };
                let count = (0..padded[a].div_ceil(interval))
                    .find(|&d| d * interval + roi[a] >= padded[a])
                    .map_or(1, |d| d + 1);
                (0..count).map(|i| (i * interval).min(padded[a] - roi[a])).collect()
            }
            // A 2d configuration's (1, H, W) tile: nnUNetPredictor visits each slice once (its step
            // rule would place slices twice).
            Tiling::NnUNet if roi[a] == 1 => (0..padded[a]).collect(),
            Tiling::NnUNet => {
                let target = roi[a] as f64 * (1.0 - self.overlap);
                let count = ((padded[a] - roi[a]) as f64 / target).ceil() as usize + 1;
                let step = if count > 1 { (padded[a] - roi[a]) as f64 / (count - 1) as f64 } else { 0.0 };
                (0..count).map(|i| (step * i as f64).round_ties_even() as usize).collect()
            }
        });
        let mut tiles = Vec::new();
        for &z in &starts[0] {
            for &y in &starts[1] {
                for &x in &starts[2] {
                    tiles.push([z, y, x]);
                }
            }
        }
        let weights = self.importance_map();
        // The blend's denominator, accumulated tile by tile in plan order (re-blending voxels in that same
        // order reproduces the blend exactly).
        let (mut weight_sum, [_, ph, pw], [rd, rh, rw]) = (vec![0f32; padded.iter().product()], padded, roi);
        for start in &tiles {
            for z in 0..rd {
                for y in 0..rh {
                    let at = ((start[0] + z) * ph + start[1] + y) * pw + start[2];
                    let w = &weights[(z * rh + y) * rw..][..rw];
                    weight_sum[at..at + rw].iter_mut().zip(w).for_each(|(c, &w)| *c += w);
                }
            }
        }
        Ok(Plan { window: *self, image, pad, padded, starts, tiles, weights, weight_sum })
    }

    /// The per-voxel weight of a tile (D, H, W row-major).
    pub fn importance_map(&self) -> Vec<f32> {
        let roi = self.roi_size;
        let axis = |a: usize| -> Vec<f32> {
            match (self.blend, self.tiling) {
                (Blend::Constant, _) => vec![1.0; roi[a]],
                (Blend::Gaussian, Tiling::Monai) => {
                    // In f32 as torch computes it: x from -(n-1)/2 in steps of 1, exp(x^2 / (-2 sigma^2)).
                    let sigma = (roi[a] as f64 * self.sigma_scale) as f32;
                    (0..roi[a])
                        .map(|i| {
                            let x = -((roi[a] - 1) as f32) / 2.0 + i as f32;
                            (x * x / (-2.0 * sigma * sigma)).exp()
                        })
                        .collect()
                }
                (Blend::Gaussian, Tiling::NnUNet) => {
                    // scipy's gaussian_filter1d kernel (radius int(4 sigma + 0.5), normalised to sum 1)
                    // placed at voxel n // 2; 0 beyond the radius.
                    let sigma = roi[a] as f64 * self.sigma_scale;
                    let radius = (4.0 * sigma + 0.5) as i64;
                    let phi = |x: i64| (-0.5 / (sigma * sigma) * (x * x) as f64).exp();
                    let sum: f64 = (-radius..=radius).map(phi).sum();
                    let centre = (roi[a] / 2) as i64;
                    (0..roi[a] as i64)
                        .map(|i| if (i - centre).abs() <= radius { (phi(i - centre) / sum) as f32 } else { 0.0 })
                        .collect()
                }
            }
        };
        let (wz, wy, wx) = (axis(0), axis(1), axis(2));
        let mut map = Vec::with_capacity(roi.iter().product());
        for &z in &wz {
            for &y in &wy {
                map.extend(wx.iter().map(|&x| z * y * x));
            }
        }
        match self.tiling {
            Tiling::Monai => {
                // No zero weights: MONAI clamps at max(minimum, 1e-3) so that no voxel divides by 0.
                let floor = map.iter().copied().fold(f32::INFINITY, f32::min).max(1e-3);
                map.iter_mut().for_each(|v| *v = v.max(floor));
            }
            Tiling::NnUNet => {
                // nnU-Net scales the peak to 10 and raises zeros to the least positive weight.
                let peak = map.iter().copied().fold(0f32, f32::max);
                map.iter_mut().for_each(|v| *v *= 10.0 / peak);
                let least = map.iter().copied().filter(|&v| v > 0.0).fold(f32::INFINITY, f32::min);
                map.iter_mut().filter(|v| **v == 0.0).for_each(|v| *v = least);
            }
        }
        map
    }
}

/// The tiles of one volume and how their outputs blend back.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The settings.
    pub window: SlidingWindow,
    /// The input's D, H, W.
    pub image: [usize; 3],
    /// Zero padding (before, after) per axis when the input is smaller than a tile.
    pub pad: [(usize, usize); 3],
    /// D, H, W after padding.
    pub padded: [usize; 3],
    /// Tile starts per axis on the padded grid; the tiles are their product.
    pub starts: [Vec<usize>; 3],
    /// Each tile's first voxel on the padded grid, in MONAI's order (D slowest): tile (i, j, k) of the
    /// per-axis starts is number (i * ny + j) * nx + k.
    pub tiles: Vec<[usize; 3]>,
    /// The importance map of one tile.
    pub weights: Vec<f32>,
    /// Summed importance weights of all tiles per voxel of the padded grid.
    pub weight_sum: Vec<f32>,
}

impl Plan {
    /// Tile `t` of `volume` (C, D, H, W of the input grid) as (C, roi), `cval` where it covers the padding.
    pub fn extract(&self, volume: &[f32], channels: usize, t: usize) -> Vec<f32> {
        let ([d, h, w], [rd, rh, rw]) = (self.image, self.window.roi_size);
        let start = self.tiles[t];
        let mut out = vec![self.window.cval; channels * rd * rh * rw];
        for c in 0..channels {
            for z in 0..rd {
                // Padded coordinate -> input coordinate; outside the input stays cval.
                let Some(iz) = (start[0] + z).checked_sub(self.pad[0].0).filter(|&v| v < d) else { continue };
                for y in 0..rh {
                    let Some(iy) = (start[1] + y).checked_sub(self.pad[1].0).filter(|&v| v < h) else { continue };
                    let row = &mut out[((c * rd + z) * rh + y) * rw..][..rw];
                    for (x, v) in row.iter_mut().enumerate() {
                        if let Some(ix) = (start[2] + x).checked_sub(self.pad[2].0).filter(|&v| v < w) {
                            *v = volume[((c * d + iz) * h + iy) * w + ix];
                        }
                    }
                }
            }
        }
        out
    }

    /// The blended output (K, D, H, W on the input grid) of the tiles' outputs, each (K, roi) in the
    /// order of `tiles`: sum of weight x output over the sum of weights, cropped to the input.
    pub fn blend(&self, outputs: &[Vec<f32>], channels: usize) -> Result<Vec<f32>> {
        ensure!(
            outputs.len() == self.tiles.len(),
            "sliding window: {} outputs for {} tiles",
            outputs.len(),
            self.tiles.len()
        );
        let ([pd, ph, pw], [rd, rh, rw]) = (self.padded, self.window.roi_size);
        let tile_len = rd * rh * rw;
        let plane = pd * ph * pw;
        let mut sum = vec![0f32; channels * plane];
        for (start, out) in self.tiles.iter().zip(outputs) {
            ensure!(
                out.len() == channels * tile_len,
                "sliding window: a tile output of {} values, expected {}",
                out.len(),
                channels * tile_len
            );
            for z in 0..rd {
                for y in 0..rh {
                    let at = ((start[0] + z) * ph + start[1] + y) * pw + start[2];
                    let wrow = &self.weights[(z * rh + y) * rw..][..rw];
                    for k in 0..channels {
                        let src = &out[k * tile_len + (z * rh + y) * rw..][..rw];
                        let dst = &mut sum[k * plane + at..][..rw];
                        dst.iter_mut().zip(src.iter().zip(wrow)).for_each(|(s, (&v, &w))| *s += v * w);
                    }
                }
            }
        }
        let [d, h, w] = self.image;
        let mut result = Vec::with_capacity(channels * d * h * w);
        for k in 0..channels {
            for z in 0..d {
                for y in 0..h {
                    let at = ((z + self.pad[0].0) * ph + y + self.pad[1].0) * pw + self.pad[2].0;
                    result.extend((0..w).map(|x| sum[k * plane + at + x] / self.weight_sum[at + x]));
                }
            }
        }
        Ok(result)
    }
}

/// `predict` over every tile of `volume` (1, C, D, H, W), `window.batch` tiles per call, blended: the
/// output (1, K, D, H, W) on the input grid. `predict` maps a batch (n, C, roi) to (n, K, roi).
pub fn sliding_window_inference<B: Backend>(
    backend: &B,
    volume: &Tensor,
    window: &SlidingWindow,
    mut predict: impl FnMut(&B::Tensor) -> Result<B::Tensor>,
) -> Result<Tensor> {
    let (n, c, image) = crate::backend::volume::ncdhw(volume.shape(), "sliding window input")?;
    ensure!(n == 1, "sliding window: one volume at a time, got a batch of {n}");
    let plan = window.plan(image)?;
    let roi = window.roi_size;
    let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(plan.tiles.len());
    let mut channels = 0;
    for first in (0..plan.tiles.len()).step_by(window.batch) {
        let batch: Vec<usize> = (first..(first + window.batch).min(plan.tiles.len())).collect();
        let data: Vec<f32> = batch.iter().flat_map(|&t| plan.extract(volume.data(), c, t)).collect();
        let x = backend.upload(&Tensor::new(&[batch.len(), c, roi[0], roi[1], roi[2]], data)?)?;
        let y = backend.download(&predict(&x)?)?;
        ensure!(
            y.shape().len() == 5 && y.shape()[0] == batch.len() && y.shape()[2..] == roi[..],
            "sliding window: the predictor returned {:?} for {} tiles of {roi:?}",
            y.shape(),
            batch.len()
        );
        channels = y.shape()[1];
        outputs.extend(y.data().chunks_exact(y.len() / batch.len()).map(<[f32]>::to_vec));
    }
    let blended = plan.blend(&outputs, channels)?;
    Tensor::new(&[1, channels, image[0], image[1], image[2]], blended)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tiles_follow_monai() {
        // 45 voxels, tiles of 32 at overlap 0.5: interval 16, starts 0 and 13 (the last flush with the end).
        let plan = SlidingWindow { overlap: 0.5, ..SlidingWindow::new([16, 32, 32]) }.plan([20, 45, 32]).unwrap();
        let starts: Vec<[usize; 3]> = plan.tiles.clone();
        assert_eq!(starts, vec![[0, 0, 0], [0, 13, 0], [4, 0, 0], [4, 13, 0]]);
        // Smaller than a tile: padded symmetrically, one tile.
        let plan = SlidingWindow::new([16, 32, 32]).plan([11, 32, 32]).unwrap();
        assert_eq!((plan.pad[0], plan.padded, plan.tiles.len()), ((2, 3), [16, 32, 32], 1));
        assert!(SlidingWindow { overlap: 1.0, ..SlidingWindow::new([4; 3]) }.plan([8; 3]).is_err());
    }

    #[test]
    fn tiles_follow_nnunet() {
        // nnU-Net's own example: 110 voxels, tiles of 64 at step 0.5 start at 0, 23, 46; 45 in tiles of
        // 32: two steps, 0 and 13.
        let plan = SlidingWindow::nnunet([16, 64, 32]).plan([16, 110, 45]).unwrap();
        assert_eq!(plan.starts, [vec![0], vec![0, 23, 46], vec![0, 13]]);
        let plan = SlidingWindow::nnunet([8, 8, 8]).plan([33, 8, 33]).unwrap();
        assert_eq!(plan.starts[0], vec![0, 4, 7, 11, 14, 18, 21, 25]);
        // A step of 2.5: numpy rounds half to even.
        let plan = SlidingWindow::nnunet([6, 6, 6]).plan([11, 6, 6]).unwrap();
        assert_eq!(plan.starts[0], vec![0, 2, 5]);
        // A 2d configuration's (1, H, W) tile: every slice once.
        let plan = SlidingWindow::nnunet([1, 6, 6]).plan([4, 6, 6]).unwrap();
        assert_eq!(plan.starts[0], vec![0, 1, 2, 3]);
        // The Gaussian peaks at n // 2 with 10 and has no zeros.
        let map = SlidingWindow::nnunet([4, 6, 8]).importance_map();
        let peak = (2 * 6 + 3) * 8 + 4;
        assert_eq!(map[peak], 10.0);
        assert!(map.iter().all(|&v| v > 0.0 && v <= 10.0));
    }

    #[test]
    fn blending_an_identity_predictor_returns_the_input() {
        let window = SlidingWindow { overlap: 0.5, blend: Blend::Gaussian, ..SlidingWindow::new([4, 6, 5]) };
        let image = [7, 9, 11];
        let volume: Vec<f32> = (0..2 * 7 * 9 * 11).map(|i| (i as f32 * 0.37).sin()).collect();
        let plan = window.plan(image).unwrap();
        let outputs: Vec<Vec<f32>> = (0..plan.tiles.len()).map(|t| plan.extract(&volume, 2, t)).collect();
        let back = plan.blend(&outputs, 2).unwrap();
        let err = back.iter().zip(&volume).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
        assert!(err < 1e-6, "{err}");
    }
}
