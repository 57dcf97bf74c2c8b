//! Occlusion (Zeiler & Fergus 2014) with Captum's conventions: a k x k window slides with stride t
//! (origins 0, t, 2t, ... while the window still starts inside the image, the last one clipped at the
//! border); each pixel's attribution is the mean, over the windows covering it, of s(x) - s(x with the
//! window set to the baseline). ROI mode evaluates only windows that intersect the ROI and occludes only
//! their part inside it.

use super::{Explanation, MaskBatch, Runner};
use anyhow::{ensure, Result};

#[derive(Clone, Copy, Debug, serde::Serialize)]
/// Occlusion with a square window sliding by a stride.
pub struct Occlusion {
    /// Window side (model pixels).
    pub window: usize,
    /// Stride (model pixels).
    pub stride: usize,
}

/// Window origins along one axis of `size` samples: 0, stride, 2 stride, ... while the window still starts
/// inside (Captum's shifts; the last window is clipped at the border).
pub fn window_origins(size: usize, window: usize, stride: usize) -> Vec<usize> {
    let shifts = size.saturating_sub(window).div_ceil(stride) + 1;
    (0..shifts).map(|k| k * stride).collect()
}

impl Occlusion {
    fn origins(&self, size: usize) -> Vec<usize> {
        window_origins(size, self.window, self.stride)
    }

    /// Window origins (y, x) to evaluate: all of them, or those touching the ROI.
    pub fn windows(&self, size: usize, roi: &[bool]) -> Vec<(usize, usize)> {
        let origins = self.origins(size);
        let mut out = Vec::new();
        for &y in &origins {
            for &x in &origins {
                let touches = (y..(y + self.window).min(size))
                    .any(|yy| (x..(x + self.window).min(size)).any(|xx| roi[yy * size + xx]));
                if touches {
                    out.push((y, x));
                }
            }
        }
        out
    }

    /// The map: per pixel, the mean score drop of the windows covering it.
    pub fn explain(&self, runner: &mut Runner) -> Result<Explanation> {
        ensure!(self.window >= 1 && self.stride >= 1, "occlusion window and stride must be >= 1");
        let size = runner.problem.size;
        let windows = self.windows(size, &runner.problem.roi);
        let base = runner.base_score()?;
        let mut sum = vec![0f64; size * size];
        let mut count = vec![0u32; size * size];
        let k = self.window;
        let roi = &runner.problem.roi;
        let scores =
            runner.score_masks(windows.len(), &MaskBatch::Windows { origins: &windows, window: k }, false)?.scores;
        for (&(y0, x0), score) in windows.iter().zip(scores) {
            let drop = (base - score) as f64;
            // The runner occluded the window's part inside the ROI only.
            for y in y0..(y0 + k).min(size) {
                for x in x0..(x0 + k).min(size) {
                    let q = y * size + x;
                    if roi[q] {
                        sum[q] += drop;
                        count[q] += 1;
                    }
                }
            }
        }
        let saliency = sum.iter().zip(&count).map(|(&s, &c)| if c > 0 { (s / c as f64) as f32 } else { 0.0 }).collect();
        Ok(Explanation { saliency, forward_passes: runner.forward_passes, samples: windows.len(), convergence: None })
    }
}
