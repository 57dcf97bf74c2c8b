//! How good an explanation is: agreement of the saliency map with the ground-truth organ (Dice, IoU,
//! AUROC, pointing game) and faithfulness to the model (deletion and insertion AUC, Petsiuk et al. 2018).

use crate::backend::Backend;
use crate::explain::volume::{Perturbation, Region, VolumeScorer};
use crate::explain::Runner;
use crate::threshold::{min_max, otsu, top_k};
use anyhow::Result;
use serde::Serialize;

/// Dice and IoU of a binarised map against the ground truth.
#[derive(Clone, Copy, Debug, Serialize, PartialEq)]
pub struct Overlap {
    /// 2|A∩B| / (|A| + |B|).
    pub dice: f64,
    /// |A∩B| / |A∪B|.
    pub iou: f64,
}

/// Dice and IoU of two masks (1 when both are empty).
pub fn overlap(pred: &[bool], truth: &[bool]) -> Overlap {
    let (mut inter, mut p, mut t) = (0usize, 0usize, 0usize);
    for (&a, &b) in pred.iter().zip(truth) {
        inter += (a && b) as usize;
        p += a as usize;
        t += b as usize;
    }
    let union = p + t - inter;
    Overlap {
        dice: if p + t == 0 { 1.0 } else { 2.0 * inter as f64 / (p + t) as f64 },
        iou: if union == 0 { 1.0 } else { inter as f64 / union as f64 },
    }
}

/// Area under the ROC curve of saliency as a score for ground-truth pixels (Mann-Whitney, ties count
/// one half). 0.5 when either class is empty.
pub fn auroc(s: &[f32], truth: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..s.len()).collect();
    order.sort_by(|&a, &b| s[a].total_cmp(&s[b]));
    let (mut rank_sum, mut i) = (0.0f64, 0usize);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && s[order[j + 1]] == s[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        rank_sum += (i..=j).filter(|&r| truth[order[r]]).count() as f64 * avg_rank;
        i = j + 1;
    }
    let pos = truth.iter().filter(|&&t| t).count() as f64;
    let neg = truth.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return 0.5;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Pointing game: is the most salient pixel (first in raster order on ties) inside the ground truth?
pub fn pointing_game(s: &[f32], truth: &[bool]) -> bool {
    let best = (0..s.len()).fold(0, |b, q| if s[q] > s[b] { q } else { b });
    truth.get(best).copied().unwrap_or(false)
}

#[derive(Clone, Debug, Serialize)]
/// How well a saliency map agrees with the ground-truth organ.
pub struct Agreement {
    /// Binarised at the |GT| most salient pixels.
    pub top_k: Overlap,
    /// Binarised at Otsu's threshold of the min-max normalised map.
    pub otsu: Overlap,
    /// Binarised at 0.5 after min-max normalisation (the paper's likely protocol).
    pub half: Overlap,
    /// Area under the ROC curve of saliency as a score for organ pixels.
    pub auroc: f64,
    /// Whether the most salient pixel is in the organ.
    pub pointing_game: bool,
}

/// The agreement of `saliency` with `truth` at three binarisations, AUROC and the pointing game.
pub fn agreement(saliency: &[f32], truth: &[bool]) -> Agreement {
    let norm = min_max(saliency);
    let t = otsu(&norm);
    let k = truth.iter().filter(|&&b| b).count();
    Agreement {
        top_k: overlap(&top_k(saliency, k), truth),
        otsu: overlap(&norm.iter().map(|&v| v > t).collect::<Vec<_>>(), truth),
        half: overlap(&norm.iter().map(|&v| v >= 0.5).collect::<Vec<_>>(), truth),
        auroc: auroc(saliency, truth),
        pointing_game: pointing_game(saliency, truth),
    }
}

/// Pearson correlation of two maps (NaN when either is constant).
pub fn pearson(a: &[f32], b: &[f32]) -> f64 {
    let n = a.len().min(b.len()) as f64;
    let mean = |x: &[f32]| x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let (ma, mb) = (mean(a), mean(b));
    let (mut ab, mut aa, mut bb) = (0.0, 0.0, 0.0);
    for (&x, &y) in a.iter().zip(b) {
        let (x, y) = (x as f64 - ma, y as f64 - mb);
        ab += x * y;
        aa += x * x;
        bb += y * y;
    }
    ab / (aa * bb).sqrt()
}

#[derive(Clone, Debug, Serialize)]
/// Deletion and insertion curves of a map and their areas.
pub struct Faithfulness {
    /// Area under the deletion curve (lower: more faithful).
    pub deletion_auc: f64,
    /// Area under the insertion curve (higher: more faithful).
    pub insertion_auc: f64,
    /// Score after removing each step's share of the most salient pixels.
    pub deletion_curve: Vec<f64>,
    /// Score after restoring them, starting from the baseline.
    pub insertion_curve: Vec<f64>,
}

/// Rank of each pixel by decreasing saliency (ties in index order), and the pixels changed after each of
/// `steps` equal chunks.
fn ranking(saliency: &[f32], steps: usize) -> (Vec<usize>, impl Fn(usize) -> usize) {
    let n = saliency.len();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| saliency[b].total_cmp(&saliency[a]).then(a.cmp(&b)));
    let mut rank = vec![0usize; n];
    order.iter().enumerate().for_each(|(r, &q)| rank[q] = r);
    (rank, move |step: usize| (step * n).div_ceil(steps))
}

impl Faithfulness {
    fn of([deletion_curve, insertion_curve]: [Vec<f64>; 2], steps: usize) -> Self {
        let auc = |c: &[f64]| c.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / steps as f64;
        Self {
            deletion_auc: auc(&deletion_curve),
            insertion_auc: auc(&insertion_curve),
            deletion_curve,
            insertion_curve,
        }
    }
}

/// Deletion: pixels go to the baseline in order of decreasing saliency, `steps` equal chunks; insertion
/// starts from the baseline and restores them in the same order. AUC is the trapezoid area over the
/// fraction of pixels changed (0 to 1). Lower deletion and higher insertion mean a more faithful map.
/// Costs 2 (steps + 1) forward passes through `runner`.
pub fn faithfulness(runner: &mut Runner, saliency: &[f32], steps: usize) -> Result<Faithfulness> {
    let steps = steps.max(1);
    let (rank, changed) = ranking(saliency, steps);
    let mut curves = [vec![0.0; steps + 1], vec![0.0; steps + 1]];
    runner.run(
        2 * (steps + 1),
        |i, mask| {
            let (insertion, step) = (i > steps, i % (steps + 1));
            let cut = changed(step);
            for (q, m) in mask.iter_mut().enumerate() {
                let early = rank[q] < cut;
                *m = if early ^ insertion { 0.0 } else { 1.0 };
            }
        },
        |i, score, _| curves[(i > steps) as usize][i % (steps + 1)] = score as f64,
    )?;
    Ok(Faithfulness::of(curves, steps))
}

/// [`faithfulness`] over the voxels of a whole volume (`saliency` in the scorer's D, H, W order), the
/// whole volume perturbed whatever the ROI was. Each step is one pass over every tile the changed voxels
/// touch; the unchanged volume's score is the scorer's own.
pub fn volume_faithfulness<B: Backend>(
    scorer: &mut VolumeScorer<B>,
    saliency: &[f32],
    steps: usize,
) -> Result<Faithfulness> {
    let steps = steps.max(1);
    let (rank, _) = ranking(saliency, steps);
    // A voxel's label is its chunk, c = floor(rank steps / n): it changes at step c + 1, the first step
    // whose ceil(step n / steps) changed pixels exceed its rank.
    let n = saliency.len();
    let labels: std::sync::Arc<[i32]> = rank.iter().map(|&r| (r * steps / n) as i32).collect();
    scorer.set_roi(vec![true; saliency.len()])?;
    let whole = Region { lo: [0; 3], hi: scorer.plan().image };
    let mut curves = [vec![0.0; steps + 1], vec![0.0; steps + 1]];
    for (insertion, curve) in curves.iter_mut().enumerate() {
        for (step, score) in curve.iter_mut().enumerate() {
            let on: Vec<bool> = (0..steps).map(|chunk| (chunk < step) == (insertion == 1)).collect();
            *score = if on.iter().all(|&o| o) {
                scorer.base_score as f64
            } else {
                // One sample per call: the tiles' logits of a whole pass are held until it is scored.
                scorer.score(&[Perturbation::Coalition(whole, labels.clone(), on)])?[0] as f64
            };
        }
    }
    Ok(Faithfulness::of(curves, steps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pearson_of_known_maps() {
        assert!((pearson(&[1.0, 2.0, 3.0], &[2.0, 4.0, 6.5]) - 0.997949).abs() < 1e-6);
        assert!((pearson(&[1.0, 2.0, 3.0], &[3.0, 2.0, 1.0]) + 1.0).abs() < 1e-12);
        assert!(pearson(&[1.0, 1.0], &[1.0, 2.0]).is_nan());
    }

    #[test]
    fn overlap_of_known_masks() {
        let a = [true, true, false, false];
        let b = [true, false, true, false];
        let o = overlap(&a, &b);
        assert_eq!((o.dice, o.iou), (0.5, 1.0 / 3.0));
    }

    #[test]
    fn perfect_and_inverted_maps() {
        let truth: Vec<bool> = (0..100).map(|q| q % 10 < 3).collect();
        let perfect: Vec<f32> = truth.iter().map(|&t| if t { 2.0 } else { -1.0 }).collect();
        let a = agreement(&perfect, &truth);
        assert_eq!((a.top_k.dice, a.otsu.dice, a.half.dice, a.auroc, a.pointing_game), (1.0, 1.0, 1.0, 1.0, true));
        let inverted: Vec<f32> = perfect.iter().map(|v| -v).collect();
        let b = agreement(&inverted, &truth);
        assert_eq!((b.top_k.dice, b.auroc, b.pointing_game), (0.0, 0.0, false));
        // A constant map carries no information: AUROC one half.
        assert_eq!(auroc(&[1.0; 100], &truth), 0.5);
    }

    #[test]
    fn otsu_splits_two_clusters() {
        let v: Vec<f32> = (0..200).map(|i| if i < 120 { 0.2 } else { 0.8 }).collect();
        let t = otsu(&v);
        assert!(t > 0.2 && t < 0.8, "threshold {t}");
    }

    #[test]
    fn auroc_matches_pair_counting() {
        let s = [0.1, 0.4, 0.35, 0.8, 0.4, 0.2];
        let truth = [false, true, false, true, false, true];
        let (mut wins, mut pairs) = (0.0, 0.0);
        for i in 0..6 {
            for j in 0..6 {
                if truth[i] && !truth[j] {
                    pairs += 1.0;
                    wins += if s[i] > s[j] {
                        1.0
                    } else if s[i] == s[j] {
                        0.5
                    } else {
                        0.0
                    };
                }
            }
        }
        assert!((auroc(&s, &truth) - wins / pairs).abs() < 1e-12);
    }
}
