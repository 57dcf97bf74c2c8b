//! LIME (Ribeiro et al. 2016, as lime_image does it) and Kernel SHAP (Lundberg & Lee 2017) over the same
//! superpixels: both switch superpixels on and off, score the images, and fit a weighted linear model
//! whose coefficients are painted back onto the superpixels.

use super::superpixels::Segments;
use super::{distinct_by, Explanation, MaskBatch, Problem, Runner};
use crate::rng::Philox;
use anyhow::{bail, ensure, Result};

#[derive(Clone, Copy, Debug, serde::Serialize)]
/// LIME (Ribeiro et al. 2016) on superpixels, as lime_image does it.
pub struct Lime {
    /// Perturbed samples (coalitions of superpixels).
    pub samples: usize,
    /// Kernel width on cosine distance (lime_image: 0.25).
    pub kernel_width: f64,
    /// Ridge penalty (lime: sklearn Ridge(alpha=1)).
    pub alpha: f64,
    /// Seed of the coalitions.
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, serde::Serialize)]
/// Kernel SHAP (Lundberg & Lee 2017) on superpixels.
pub struct KernelShap {
    /// Coalitions sampled (the empty and full coalitions included).
    pub samples: usize,
    /// Seed of the coalitions.
    pub seed: u64,
}

/// Each superpixel's (supervoxel's) value over its pixels, 0 where none.
pub(crate) fn paint(segments: &Segments, coefficients: &[f64]) -> Vec<f32> {
    segments.labels.iter().map(|&l| if l < 0 { 0.0 } else { coefficients[l as usize] as f32 }).collect()
}

/// The coalitions of `rows` that build distinct images, and which of them each row builds. A superpixel
/// with no perturbable pixel changes nothing on or off, and Kernel SHAP's kernel draws one superpixel on
/// or off often, so repeats are common (demo slice at 128², 68 superpixels, 300 samples: 13 identical
/// rows); each image is scored once (as the shap package's KernelExplainer merges repeated samples).
fn distinct_coalitions(problem: &Problem, segments: &Segments, rows: &[Vec<bool>]) -> (Vec<Vec<bool>>, Vec<usize>) {
    let mut active = vec![false; segments.count];
    for (q, &l) in segments.labels.iter().enumerate() {
        if l >= 0 && problem.perturbable(q) {
            active[l as usize] = true;
        }
    }
    distinct_images(rows, &active)
}

/// The coalitions of `rows` that build distinct images where only the superpixels marked in `active`
/// change anything, and which of them each row builds (the others read as on).
pub(crate) fn distinct_images(rows: &[Vec<bool>], active: &[bool]) -> (Vec<Vec<bool>>, Vec<usize>) {
    distinct_by(rows, |row| row.iter().zip(active).map(|(&on, &a)| on || !a).collect::<Vec<bool>>())
}

/// Scores every coalition in `rows` through the runner, each distinct image once.
fn score_coalitions(runner: &mut Runner, segments: &Segments, rows: &[Vec<bool>]) -> Result<Vec<f64>> {
    let (unique, index) = distinct_coalitions(runner.problem, segments, rows);
    runner.plan(unique.len());
    let masks = MaskBatch::Coalitions { rows: &unique, labels: &segments.labels };
    let scores = runner.score_masks(unique.len(), &masks, false)?.scores;
    Ok(index.into_iter().map(|i| f64::from(scores[i])).collect())
}

impl Lime {
    /// Sample 0 is the unperturbed image; the others switch each superpixel on with probability 1/2.
    pub fn coalitions(&self, k: usize) -> Vec<Vec<bool>> {
        let rng = Philox::new(self.seed);
        (0..self.samples)
            .map(|i| {
                if i == 0 {
                    vec![true; k]
                } else {
                    (0..k).map(|j| rng.stream(i as u64).word(j as u64) & 1 == 1).collect()
                }
            })
            .collect()
    }

    /// lime_image's sample weight: sqrt(exp(-d^2 / w^2)) with d the cosine distance to all-on.
    pub fn weight(&self, z: &[bool]) -> f64 {
        let on = z.iter().filter(|&&b| b).count() as f64;
        let d = if on == 0.0 { 1.0 } else { 1.0 - on / (on.sqrt() * (z.len() as f64).sqrt()) };
        (-(d * d) / (self.kernel_width * self.kernel_width)).exp().sqrt()
    }

    /// The superpixels' coefficients: the weighted ridge of the scores `y` on the coalitions `rows`.
    pub fn fit(&self, rows: &[Vec<bool>], y: &[f64]) -> Result<Vec<f64>> {
        let x: Vec<Vec<f64>> = rows.iter().map(|r| r.iter().map(|&b| b as u8 as f64).collect()).collect();
        let w: Vec<f64> = rows.iter().map(|r| self.weight(r)).collect();
        Ok(weighted_ridge(&x, y, &w, self.alpha)?.0)
    }

    /// The map: each superpixel's coefficient spread over its pixels.
    pub fn explain(&self, runner: &mut Runner, segments: &Segments) -> Result<Explanation> {
        ensure!(self.samples >= 2, "LIME needs at least 2 samples");
        if segments.count == 0 {
            bail!("no superpixels to perturb (empty ROI)");
        }
        let rows = self.coalitions(segments.count);
        let y = score_coalitions(runner, segments, &rows)?;
        let coefficients = self.fit(&rows, &y)?;
        Ok(Explanation {
            saliency: paint(segments, &coefficients),
            forward_passes: runner.forward_passes,
            samples: rows.len(),
            convergence: None,
        })
    }
}

/// sklearn's Ridge(alpha, fit_intercept=True) with sample weights: centre X and y on their weighted
/// means, solve (Xc' W Xc + alpha I) b = Xc' W yc, intercept = mean(y) - mean(X) b.
pub fn weighted_ridge(x: &[Vec<f64>], y: &[f64], w: &[f64], alpha: f64) -> Result<(Vec<f64>, f64)> {
    let k = x.first().map_or(0, Vec::len);
    let wsum: f64 = w.iter().sum();
    ensure!(wsum > 0.0, "all sample weights are zero");
    let xm: Vec<f64> = (0..k).map(|j| x.iter().zip(w).map(|(r, wi)| wi * r[j]).sum::<f64>() / wsum).collect();
    let ym = y.iter().zip(w).map(|(a, b)| a * b).sum::<f64>() / wsum;
    let mut a = vec![vec![0.0; k]; k];
    let mut rhs = vec![0.0; k];
    for ((r, &yi), &wi) in x.iter().zip(y).zip(w) {
        let centred: Vec<f64> = r.iter().zip(&xm).map(|(v, m)| v - m).collect();
        for (i, row) in a.iter_mut().enumerate() {
            rhs[i] += wi * centred[i] * (yi - ym);
            for (j, cell) in row.iter_mut().enumerate() {
                *cell += wi * centred[i] * centred[j];
            }
        }
    }
    for (i, row) in a.iter_mut().enumerate() {
        row[i] += alpha;
    }
    let b = solve_spd(a, rhs)?;
    let intercept = ym - xm.iter().zip(&b).map(|(m, c)| m * c).sum::<f64>();
    Ok((b, intercept))
}

/// Cholesky solve of a symmetric positive definite system.
pub fn solve_spd(mut a: Vec<Vec<f64>>, mut b: Vec<f64>) -> Result<Vec<f64>> {
    let n = b.len();
    for j in 0..n {
        let d = a[j][j] - (0..j).map(|k| a[j][k] * a[j][k]).sum::<f64>();
        ensure!(d > 0.0, "normal equations are not positive definite (pivot {j})");
        a[j][j] = d.sqrt();
        for i in j + 1..n {
            a[i][j] = (a[i][j] - (0..j).map(|k| a[i][k] * a[j][k]).sum::<f64>()) / a[j][j];
        }
    }
    for i in 0..n {
        b[i] = (b[i] - (0..i).map(|k| a[i][k] * b[k]).sum::<f64>()) / a[i][i];
    }
    for i in (0..n).rev() {
        b[i] = (b[i] - (i + 1..n).map(|k| a[k][i] * b[k]).sum::<f64>()) / a[i][i];
    }
    Ok(b)
}

impl KernelShap {
    /// Coalitions: all-off and all-on first (they pin phi_0 and the efficiency constraint), then sizes
    /// drawn with the Shapley kernel's size weights (M-1)/(k(M-k)) and a uniform subset of that size.
    pub fn coalitions(&self, m: usize) -> Vec<Vec<bool>> {
        let mut rows = vec![vec![false; m], vec![true; m]];
        if m < 2 {
            return rows;
        }
        let weights: Vec<f64> = (1..m).map(|k| (m - 1) as f64 / (k * (m - k)) as f64).collect();
        let total: f64 = weights.iter().sum();
        for i in 2..self.samples.max(3) {
            let rng = Philox::new(self.seed).stream(i as u64);
            let mut u = rng.uniform(0) as f64 * total;
            let mut size = m - 1;
            for (k, w) in weights.iter().enumerate() {
                if u < *w {
                    size = k + 1;
                    break;
                }
                u -= w;
            }
            // Partial Fisher-Yates: the first `size` of a random permutation are on.
            let mut order: Vec<usize> = (0..m).collect();
            for j in 0..size {
                let pick = j + (rng.word(1 + j as u64) as usize) % (m - j);
                order.swap(j, pick);
            }
            let mut z = vec![false; m];
            order[..size].iter().for_each(|&j| z[j] = true);
            rows.push(z);
        }
        rows
    }

    /// The map: each superpixel's Shapley value spread over its pixels.
    pub fn explain(&self, runner: &mut Runner, segments: &Segments) -> Result<Explanation> {
        if segments.count == 0 {
            bail!("no superpixels to perturb (empty ROI)");
        }
        let rows = self.coalitions(segments.count);
        let y = score_coalitions(runner, segments, &rows)?;
        let phi = shapley_regression(&rows, &y)?;
        Ok(Explanation {
            saliency: paint(segments, &phi),
            forward_passes: runner.forward_passes,
            samples: rows.len(),
            convergence: None,
        })
    }
}

/// Least squares for y_i = f0 + z_i . phi subject to sum(phi) = f1 - f0 (rows 0 and 1 are all-off and
/// all-on), by eliminating the last coefficient. Sampling already follows the kernel, so the remaining
/// rows carry equal weight.
pub fn shapley_regression(rows: &[Vec<bool>], y: &[f64]) -> Result<Vec<f64>> {
    let m = rows[0].len();
    let (f0, f1) = (y[0], y[1]);
    if m == 1 {
        return Ok(vec![f1 - f0]);
    }
    let mut a = vec![vec![0.0; m - 1]; m - 1];
    let mut b = vec![0.0; m - 1];
    for (z, &yi) in rows[2..].iter().zip(&y[2..]) {
        let last = z[m - 1] as u8 as f64;
        let target = yi - f0 - last * (f1 - f0);
        let row: Vec<f64> = (0..m - 1).map(|j| z[j] as u8 as f64 - last).collect();
        for i in 0..m - 1 {
            b[i] += row[i] * target;
            for j in 0..m - 1 {
                a[i][j] += row[i] * row[j];
            }
        }
    }
    // A tiny ridge keeps features that no sample separated solvable (they get ~0 beyond the constraint).
    for (i, r) in a.iter_mut().enumerate() {
        r[i] += 1e-9;
    }
    let mut phi = solve_spd(a, b)?;
    phi.push((f1 - f0) - phi.iter().sum::<f64>());
    Ok(phi)
}
