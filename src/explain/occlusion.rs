//! Occlusion (Zeiler & Fergus 2014) with Captum's conventions: a k x k window slides with stride t
//! (origins 0, t, 2t, ... while the window still starts inside the image, the last one clipped at the
//! border); each pixel's attribution is the mean, over the windows covering it, of s(x) - s(x with the
//! window set to the baseline). ROI mode evaluates only windows that intersect the ROI and occludes only
//! their part inside it.

use super::{distinct_by, Explanation, MaskBatch, Problem, Runner};
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

/// What an occlusion run evaluates ([`Occlusion::plan`]).
struct Plan {
    /// Every window's origin (y, x).
    windows: Vec<(usize, usize)>,
    /// The windows scored, one per distinct perturbed image other than the input itself.
    scored: Vec<(usize, usize)>,
    /// Per window, the scored window that builds its image (None: the input itself, scored as the base).
    which: Vec<Option<usize>>,
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

    /// The pixels window (y0, x0) changes: its pixels that are [`Problem::perturbable`].
    fn changes(&self, problem: &Problem, (y0, x0): (usize, usize)) -> Vec<usize> {
        let (size, k) = (problem.size, self.window);
        (y0..(y0 + k).min(size))
            .flat_map(|y| (x0..(x0 + k).min(size)).map(move |x| y * size + x))
            .filter(|&q| problem.perturbable(q))
            .collect()
    }

    /// The windows to evaluate and the ones to score: windows that change the same pixels build the same
    /// image, scored once (those over background that already is the baseline change none: demo slice,
    /// 32/16 windows, 4 of 49 at 128², 76 of 225 at 256²), and one that changes nothing is not scored
    /// where an all-ones mask gives the input back (the zero baseline): its score is the base.
    fn plan(&self, problem: &Problem) -> Plan {
        let windows = self.windows(problem.size, &problem.roi);
        let (mut scored, which) = distinct_by(&windows, |&w| self.changes(problem, w));
        let idle =
            if problem.keeps_input() { scored.iter().position(|&w| self.changes(problem, w).is_empty()) } else { None };
        if let Some(i) = idle {
            scored.remove(i);
        }
        let which = which
            .into_iter()
            .map(|j| match idle {
                Some(i) if j == i => None,
                Some(i) if j > i => Some(j - 1),
                _ => Some(j),
            })
            .collect();
        Plan { windows, scored, which }
    }

    /// The map: per pixel, the mean score drop of the windows covering it.
    pub fn explain(&self, runner: &mut Runner) -> Result<Explanation> {
        ensure!(self.window >= 1 && self.stride >= 1, "occlusion window and stride must be >= 1");
        let size = runner.problem.size;
        let Plan { windows, scored, which } = self.plan(runner.problem);
        runner.plan(scored.len());
        let base = runner.base_score()?;
        let mut sum = vec![0f64; size * size];
        let mut count = vec![0u32; size * size];
        let k = self.window;
        let roi = &runner.problem.roi;
        let scores =
            runner.score_masks(scored.len(), &MaskBatch::Windows { origins: &scored, window: k }, false)?.scores;
        for (&(y0, x0), i) in windows.iter().zip(which) {
            let drop = (base - i.map_or(base, |i| scores[i])) as f64;
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
