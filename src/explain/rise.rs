//! RISE (Petsiuk et al. 2018): random masks from an s x s Bernoulli(p1) grid, bilinearly upsampled to
//! (s + 1) * cell pixels (cell = ceil(size / s)) and cropped at a random shift in [0, cell), so the
//! mask edges fall anywhere. Saliency = sum_i s(x * m_i) m_i / (N p1).
//!
//! Mask i depends only on (seed, i) through Philox, so any device or thread regenerates it exactly.
//! ROI mode applies m_i inside the ROI only (the runner keeps the rest), and the map is 0 outside.
//! Adaptive mode stops once the map's relative change over the last block of masks falls below `tol`.

use super::{Convergence, Explanation, MaskBatch, RiseMasks, Runner};
use anyhow::{ensure, Context, Result};

#[derive(Clone, Copy, Debug, serde::Serialize)]
/// RISE settings.
pub struct Rise {
    /// Masks to score (the most, in adaptive mode).
    pub masks: usize,
    /// Grid cells per side.
    pub grid: usize,
    /// Probability a cell is kept.
    pub p1: f32,
    /// Seed of the masks.
    pub seed: u64,
    /// Stop early once the relative L2 change of the map over one block of masks is below this.
    pub tol: Option<f32>,
}

/// Masks per convergence check in adaptive mode.
const BLOCK: usize = 250;

impl Rise {
    /// The masks' description, which a backend expands (kernels/perturb.cu or its CPU twin).
    pub fn mask_set(&self) -> RiseMasks {
        RiseMasks { grid: self.grid, p1: self.p1, seed: self.seed }
    }

    /// The map: sum of score-weighted masks over N p1, 0 outside the ROI.
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
        let mut steps = Vec::new();
        // Blocks only matter for the adaptive stop; a fixed run is one block of all masks.
        let block = if self.tol.is_some() { BLOCK } else { self.masks };
        runner.plan(self.masks);
        while used < self.masks {
            let n = block.min(self.masks - used);
            let result = runner.score_masks(n, &MaskBatch::Rise { masks: self.mask_set(), first: used }, true)?;
            for (acc, v) in sum.iter_mut().zip(result.weighted_sum.context("the scorer returned no weighted sum")?) {
                *acc += v;
            }
            used += n;
            if let Some(tol) = self.tol {
                let current: Vec<f64> = sum.iter().map(|v| v / used as f64).collect();
                if let Some(prev) = &previous {
                    let diff: f64 = current.iter().zip(prev).map(|(a, b)| (a - b).powi(2)).sum::<f64>().sqrt();
                    let norm: f64 = current.iter().map(|a| a * a).sum::<f64>().sqrt().max(1e-12);
                    steps.push((used, diff / norm));
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
        Ok(Explanation {
            saliency,
            forward_passes: runner.forward_passes,
            samples: used,
            convergence: self.tol.map(|tol| Convergence { tol, steps }),
        })
    }
}
