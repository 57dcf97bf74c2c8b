//! 3-D occlusion, RISE, LIME and Kernel SHAP under sliding-window inference: tile reuse gives the same
//! map, bit for bit, as recomputing every tile, with fewer tiles; the ROI bounds what is perturbed and
//! attributed.

use std::path::PathBuf;
use xaiclip::backend::perturb::RiseMask3d;
use xaiclip::backend::CpuBackend;
use xaiclip::explain::lime::{shapley_regression, KernelShap, Lime};
use xaiclip::explain::rise::Rise;
use xaiclip::explain::superpixels::Segmenter;
use xaiclip::explain::volume::{Occlusion3d, Perturbation, Region, VolumeExplanation, VolumeScorer};
use xaiclip::models::sliding::{Blend, SlidingWindow};
use xaiclip::models::{BasicUNet, SegModel};
use xaiclip::tensor::Tensor;
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

/// The 3-D fixture model on the sliding-window fixture's input, in 16-voxel tiles at MONAI's default
/// overlap: 2 x 3 x 3 tiles, so a window touches a few of them.
fn case() -> (SegModel<CpuBackend>, Tensor, SlidingWindow) {
    let model = SegModel::Basic(BasicUNet::load_dir(&CpuBackend, &fixture("unet_volume_instance_deconv")).unwrap());
    let x = WeightsFile::open(&fixture("sliding_window/io.safetensors")).unwrap().get("gaussian.input").unwrap();
    let window = SlidingWindow { blend: Blend::Gaussian, batch: 4, ..SlidingWindow::new([16, 16, 16]) };
    (model, x, window)
}

fn run(reuse: bool, roi: Option<Vec<bool>>) -> (VolumeExplanation, usize) {
    let occlusion = Occlusion3d { window: [6, 10, 12], stride: [6, 10, 12] };
    run_with(reuse, roi, |scorer| occlusion.explain(scorer, |_, _| {}).unwrap())
}

fn run_with(
    reuse: bool,
    roi: Option<Vec<bool>>,
    method: impl FnOnce(&mut VolumeScorer<CpuBackend>) -> VolumeExplanation,
) -> (VolumeExplanation, usize) {
    let (model, x, window) = case();
    let mut scorer = VolumeScorer::new(&CpuBackend, &model, &x, &window, 1, 0.0).unwrap();
    if let Some(roi) = roi {
        scorer.set_roi(roi).unwrap();
    }
    scorer.reuse = reuse;
    let m0 = scorer.m0().len();
    (method(&mut scorer), m0)
}

#[test]
fn tile_reuse_gives_the_recomputed_map_bit_for_bit_with_fewer_tiles() {
    let (reused, m0) = run(true, None);
    let (full, _) = run(false, None);
    assert!(m0 > 0);
    assert_eq!(reused.saliency, full.saliency, "maps differ");
    assert!(reused.saliency.iter().any(|&v| v != 0.0) && reused.saliency.iter().all(|v| v.is_finite()));
    // 3 x 4 x 3 windows on 18 x 40 x 36, 18 tiles: without reuse every tile per sample.
    assert_eq!(full.samples, 36);
    assert_eq!(full.tiles_evaluated, full.tiles_naive);
    assert_eq!(reused.tiles_naive, full.tiles_naive);
    println!(
        "tiles: {} with reuse, {} without ({} samples, {} forwards with reuse)",
        reused.tiles_evaluated, full.tiles_evaluated, reused.samples, reused.forward_passes
    );
    assert!(
        reused.tiles_evaluated * 2 < full.tiles_evaluated,
        "{} vs {}",
        reused.tiles_evaluated,
        full.tiles_evaluated
    );
}

#[test]
fn roi_mode_perturbs_and_attributes_inside_the_roi_only() {
    // A box ROI in one corner of the volume: windows outside it are not scored.
    let roi = corner_roi();
    let (reused, _) = run(true, Some(roi.clone()));
    let (full, _) = run(false, Some(roi.clone()));
    assert_eq!(reused.saliency, full.saliency);
    assert!(reused.saliency.iter().zip(&roi).all(|(&s, &r)| r || s == 0.0), "attribution outside the ROI");
    assert!(reused.saliency.iter().zip(&roi).any(|(&s, &r)| r && s != 0.0));
    // Windows touching the box: 2 along D (0, 6), 2 along H (0, 10), 2 along W (0, 12).
    assert_eq!(reused.samples, 8);
    assert!(reused.tiles_evaluated < full.tiles_evaluated);
}

/// A box ROI in one corner of the 18 x 40 x 36 volume.
fn corner_roi() -> Vec<bool> {
    let (d, h, w) = (18, 40, 36);
    (0..d * h * w).map(|v| v / (h * w) < 8 && (v / w) % h < 18 && v % w < 16).collect()
}

#[test]
fn rise_masks_are_trilinear_keep_masks_with_the_keep_rate() {
    let masks = Rise { masks: 64, grid: 4, p1: 0.3, seed: 9, tol: None }.mask_set();
    let dims = [18, 40, 36];
    let (mut total, mut count) = (0f64, 0usize);
    for i in 0..64 {
        let m = RiseMask3d::new(&masks, i, dims);
        for z in 0..dims[0] {
            for y in 0..dims[1] {
                for x in 0..dims[2] {
                    let v = m.value(z, y, x);
                    assert!((0.0..=1.0).contains(&v), "mask {i} at ({z}, {y}, {x}): {v}");
                    total += v as f64;
                    count += 1;
                }
            }
        }
        // The same (seed, i) gives the same mask; another i another one.
        assert_eq!(m.value(5, 7, 9), RiseMask3d::new(&masks, i, dims).value(5, 7, 9));
    }
    let mean = total / count as f64;
    assert!((mean - 0.3).abs() < 0.05, "mean keep {mean}");
    let (a, b) = (RiseMask3d::new(&masks, 0, dims), RiseMask3d::new(&masks, 1, dims));
    assert!((0..dims[1]).any(|y| a.value(3, y, 4) != b.value(3, y, 4)));
}

#[test]
fn rise_with_tile_reuse_gives_the_recomputed_map_bit_for_bit_inside_the_roi() {
    let rise = Rise { masks: 20, grid: 3, p1: 0.5, seed: 4, tol: None };
    let roi = corner_roi();
    let (reused, _) = run_with(true, Some(roi.clone()), |s| rise.explain_volume(s, |_, _| {}).unwrap());
    let (full, _) = run_with(false, Some(roi.clone()), |s| rise.explain_volume(s, |_, _| {}).unwrap());
    assert_eq!(reused.saliency, full.saliency, "maps differ");
    assert!(reused.saliency.iter().zip(&roi).all(|(&s, &r)| r || s == 0.0), "attribution outside the ROI");
    assert!(reused.saliency.iter().zip(&roi).filter(|(_, &r)| r).all(|(&s, _)| s.is_finite() && s > 0.0));
    assert_eq!((reused.samples, full.tiles_evaluated), (20, full.tiles_naive));
    // The corner box (8 x 18 x 16 voxels) lies in the first tiles along each axis only.
    println!("RISE tiles: {} with reuse, {} without", reused.tiles_evaluated, full.tiles_evaluated);
    assert!(
        reused.tiles_evaluated * 2 < full.tiles_evaluated,
        "{} vs {}",
        reused.tiles_evaluated,
        full.tiles_evaluated
    );
    // Another seed, another map; the same seed, the same map.
    let other = Rise { seed: 5, ..rise };
    let (again, _) = run_with(true, Some(roi.clone()), |s| rise.explain_volume(s, |_, _| {}).unwrap());
    let (moved, _) = run_with(true, Some(roi), |s| other.explain_volume(s, |_, _| {}).unwrap());
    assert_eq!(again.saliency, reused.saliency);
    assert_ne!(moved.saliency, reused.saliency);
}

#[test]
fn rise_in_a_roi_scores_masks_in_proportion_to_the_grid_cells_it_touches() {
    let rise = Rise { masks: 100, grid: 3, p1: 0.5, seed: 0, tol: None };
    let dims = [18, 40, 36];
    // Cells of 6 x 14 x 12 voxels: the corner box touches 2 x 2 x 2 of the 27.
    assert_eq!(rise.volume_budget(&corner_roi(), dims), (100.0f64 * 8.0 / 27.0).ceil() as usize);
    assert_eq!(rise.volume_budget(&vec![true; 18 * 40 * 36], dims), 100);
}

#[test]
fn lime_and_kernel_shap_over_supervoxels_reuse_tiles_exactly_and_shap_adds_up() {
    let roi = corner_roi();
    let (_, x, _) = case();
    let segments = Segmenter::slic(12).segment_volume(&x.data()[..18 * 40 * 36], [18, 40, 36], &roi).unwrap();
    assert!(segments.count >= 2 && segments.labels.iter().zip(&roi).all(|(&l, &r)| (l >= 0) == r));
    let lime = Lime { samples: 24, kernel_width: 0.25, alpha: 1.0, seed: 3 };
    let shap = KernelShap { samples: 24, seed: 3 };
    for reuse in [true, false] {
        let (a, _) = run_with(reuse, Some(roi.clone()), |s| lime.explain_volume(s, &segments, |_, _| {}).unwrap());
        let (b, _) = run_with(!reuse, Some(roi.clone()), |s| lime.explain_volume(s, &segments, |_, _| {}).unwrap());
        assert_eq!(a.saliency, b.saliency, "LIME maps differ with and without reuse");
    }
    let (reused, _) = run_with(true, Some(roi.clone()), |s| shap.explain_volume(s, &segments, |_, _| {}).unwrap());
    let (full, _) = run_with(false, Some(roi.clone()), |s| shap.explain_volume(s, &segments, |_, _| {}).unwrap());
    assert_eq!(reused.saliency, full.saliency, "SHAP maps differ with and without reuse");
    assert!(reused.tiles_evaluated < full.tiles_evaluated, "{} vs {}", reused.tiles_evaluated, full.tiles_evaluated);
    // One value per supervoxel, none outside the ROI.
    let mut phi = vec![None; segments.count];
    for (&l, &v) in segments.labels.iter().zip(&reused.saliency) {
        match usize::try_from(l) {
            Ok(l) => assert_eq!(*phi[l].get_or_insert(v), v, "supervoxel {l} is not constant"),
            Err(_) => assert_eq!(v, 0.0),
        }
    }
    // Efficiency: the Shapley values add up to the unperturbed score less the score with every
    // supervoxel switched off, scored here on its own.
    let (model, x, window) = case();
    let mut scorer = VolumeScorer::new(&CpuBackend, &model, &x, &window, 1, 0.0).unwrap();
    scorer.set_roi(roi).unwrap();
    let off = Perturbation::Coalition(
        Region { lo: [0; 3], hi: [8, 18, 16] },
        segments.labels.clone().into(),
        vec![false; segments.count],
    );
    let f0 = scorer.score(&[off]).unwrap()[0] as f64;
    let total: f64 = phi.iter().map(|v| v.unwrap() as f64).sum();
    assert!(
        (total - (scorer.base_score as f64 - f0)).abs() < 1e-5,
        "sum {total}, f1 - f0 {}",
        scorer.base_score as f64 - f0
    );
}

#[test]
fn coalitions_that_build_the_same_volume_are_scored_once_with_the_same_map() {
    let roi = corner_roi();
    let (model, mut x, window) = case();
    let voxels = 18 * 40 * 36;
    let segments = Segmenter::slic(12).segment_volume(&x.data()[..voxels], [18, 40, 36], &roi).unwrap();
    // The first half of the supervoxels already is the baseline (0) in every channel: switching them off
    // changes nothing.
    let (channels, inert) = (x.len() / voxels, segments.count as i32 / 2);
    assert!(inert >= 2, "{} supervoxels", segments.count);
    for v in (0..voxels).filter(|&v| (0..inert).contains(&segments.labels[v])) {
        (0..channels).for_each(|c| x.data_mut()[c * voxels + v] = 0.0);
    }
    let shap = KernelShap { samples: 40, seed: 5 };
    let rows = shap.coalitions(segments.count);
    let mut distinct: Vec<Vec<bool>> =
        rows.iter().map(|r| r.iter().enumerate().map(|(l, &on)| on || (l as i32) < inert).collect()).collect();
    distinct.sort();
    distinct.dedup();
    assert!(distinct.len() < rows.len(), "{} of {}", distinct.len(), rows.len());
    let scorer = || {
        let mut s = VolumeScorer::new(&CpuBackend, &model, &x, &window, 1, 0.0).unwrap();
        s.set_roi(roi.clone()).unwrap();
        s
    };
    let mut planned = 0;
    let e = shap.explain_volume(&mut scorer(), &segments, |_, total| planned = total).unwrap();
    assert_eq!((planned, e.samples), (distinct.len(), rows.len()));
    // Every row scored on its own gives the same Shapley values, bit for bit.
    let mut alone = scorer();
    let region = Region { lo: [0; 3], hi: [8, 18, 16] };
    let y: Vec<f64> = rows
        .iter()
        .map(|on| {
            let p = Perturbation::Coalition(region, segments.labels.clone().into(), on.clone());
            alone.score(&[p]).unwrap()[0] as f64
        })
        .collect();
    let phi = shapley_regression(&rows, &y).unwrap();
    for (v, &l) in segments.labels.iter().enumerate() {
        let want = usize::try_from(l).map_or(0.0, |l| phi[l] as f32);
        assert_eq!(e.saliency[v].to_bits(), want.to_bits(), "voxel {v}");
    }
}

#[test]
fn deletion_and_insertion_over_voxels_reuse_tiles_exactly_and_meet_at_the_baseline() {
    let mut curves = Vec::new();
    for reuse in [true, false] {
        let (model, x, window) = case();
        let mut scorer = VolumeScorer::new(&CpuBackend, &model, &x, &window, 1, 0.0).unwrap();
        scorer.reuse = reuse;
        let map = Occlusion3d { window: [6, 10, 12], stride: [6, 10, 12] }.explain(&mut scorer, |_, _| {}).unwrap();
        curves.push((xaiclip::metrics::volume_faithfulness(&mut scorer, &map.saliency, 5).unwrap(), scorer.base_score));
    }
    let [(reused, base), (recomputed, _)] = &curves[..] else { unreachable!() };
    assert_eq!(reused.deletion_curve, recomputed.deletion_curve);
    assert_eq!(reused.insertion_curve, recomputed.insertion_curve);
    let (del, ins) = (&reused.deletion_curve, &reused.insertion_curve);
    assert_eq!(del.len(), 6);
    // Nothing deleted is the unperturbed volume; everything deleted is the baseline volume, which the
    // insertion curve starts from (scored independently).
    assert_eq!((del[0], ins[5]), (*base as f64, *base as f64));
    assert_eq!(del[5], ins[0]);
    assert!(del.iter().chain(ins).all(|v| (0.0..=1.0).contains(v)), "{del:?} {ins:?}");
    assert!(del[1..5].iter().any(|&v| v != del[0]) && ins[1..5].iter().any(|&v| v != ins[0]), "{del:?} {ins:?}");
    let auc = |c: &[f64]| c.windows(2).map(|w| (w[0] + w[1]) / 2.0).sum::<f64>() / 5.0;
    assert_eq!((reused.deletion_auc, reused.insertion_auc), (auc(del), auc(ins)));
}

#[test]
fn a_cancelled_scorer_stops_at_its_next_batch_of_tiles() {
    let (model, x, window) = case();
    let mut scorer = VolumeScorer::new(&CpuBackend, &model, &x, &window, 1, 0.0).unwrap();
    let before = scorer.tiles_evaluated;
    scorer.cancel.cancel();
    let err = Occlusion3d { window: [6, 10, 12], stride: [6, 10, 12] }.explain(&mut scorer, |_, _| {}).unwrap_err();
    assert_eq!(xaiclip::error::kind_of(&err), xaiclip::ErrorKind::Cancelled, "{err:#}");
    assert_eq!(scorer.tiles_evaluated, before);
}
