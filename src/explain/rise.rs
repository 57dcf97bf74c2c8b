//! RISE (Petsiuk et al. 2018): random masks from an s x s Bernoulli(p1) grid, bilinearly upsampled to
//! (s + 1) * cell pixels (cell = ceil(size / s)) and cropped at a random shift in [0, cell), so the
//! mask edges fall anywhere. Saliency = sum_i s(x * m_i) m_i / (N p1).
//!
//! Mask i depends only on (seed, i) through Philox, so any device or thread regenerates it exactly.
//! ROI mode applies m_i inside the ROI only (the runner keeps the rest), and the map is 0 outside.
//! Adaptive mode stops once the map's relative change over the last block of masks falls below `tol`.

use super::{Explanation, MaskBatch, Runner};
use crate::rng::Philox;
use anyhow::{ensure, Context, Result};

#[derive(Clone, Copy, Debug)]
pub struct Rise {
    pub masks: usize,
    pub grid: usize,
    pub p1: f32,
    pub seed: u64,
    /// Stop early once the relative L2 change of the map over one block of masks is below this.
    pub tol: Option<f32>,
}

/// Masks per convergence check in adaptive mode.
const BLOCK: usize = 250;

impl Rise {
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
        // Grid coordinate of upsampled pixel u: (u + 0.5) * s / up - 0.5, clamped to [0, s - 1].
        let tap = |u: usize| {
            let pos = ((u as f32 + 0.5) * s as f32 / up as f32 - 0.5).clamp(0.0, (s - 1) as f32);
            let g0 = pos.floor() as usize;
            (g0, (g0 + 1).min(s - 1), pos - g0 as f32)
        };
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

    pub fn explain(&self, runner: &mut Runner) -> Result<Explanation> {
        ensure!(
            self.masks >= 1 && self.grid >= 1 && self.p1 > 0.0 && self.p1 <= 1.0,
            "RISE needs masks >= 1, grid >= 1, 0 < p1 <= 1"
        );
        let size = runner.problem.size;
        let roi = runner.problem.roi.clone();
        let mut sum = vec![0f64; size * size];
        let mut used = 0;
        let mut previous: Option<Vec<f64>> = None;
        // Blocks only matter for the adaptive stop; a fixed run is one block of all masks.
        let block = if self.tol.is_some() { BLOCK } else { self.masks };
        while used < self.masks {
            let n = block.min(self.masks - used);
            let result = runner.score_masks(n, &MaskBatch::Rise { rise: self, first: used }, true)?;
            for (acc, v) in sum.iter_mut().zip(result.weighted_sum.context("the scorer returned no weighted sum")?) {
                *acc += v;
            }
            used += n;
            if let Some(tol) = self.tol {
                let current: Vec<f64> = sum.iter().map(|v| v / used as f64).collect();
                if let Some(prev) = &previous {
                    let diff: f64 = current.iter().zip(prev).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
                    let norm: f64 = current.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
                    if diff / norm < tol as f64 {
                        break;
                    }
                }
                previous = Some(current);
            }
        }
        let scale = 1.0 / (used as f64 * self.p1 as f64);
        let saliency =
            sum.iter().zip(&roi).map(|(&v, &inside)| if inside { (v * scale) as f32 } else { 0.0 }).collect();
        Ok(Explanation { saliency, forward_passes: runner.forward_passes, samples: used })
    }
}
