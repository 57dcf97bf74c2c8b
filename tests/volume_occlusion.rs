//! 3-D occlusion under sliding-window inference: tile reuse gives the same map, bit for bit, as
//! recomputing every tile, with fewer tiles; the ROI bounds what is perturbed and attributed.

use std::path::PathBuf;
use xaiclip::backend::CpuBackend;
use xaiclip::explain::volume::{Occlusion3d, VolumeScorer};
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

fn run(reuse: bool, roi: Option<Vec<bool>>) -> (xaiclip::explain::volume::VolumeExplanation, usize) {
    let (model, x, window) = case();
    let mut scorer = VolumeScorer::new(&CpuBackend, &model, &x, &window, 1, 0.0).unwrap();
    if let Some(roi) = roi {
        scorer.set_roi(roi).unwrap();
    }
    scorer.reuse = reuse;
    let m0 = scorer.m0().len();
    let occlusion = Occlusion3d { window: [6, 10, 12], stride: [6, 10, 12] };
    (occlusion.explain(&mut scorer, |_, _| {}).unwrap(), m0)
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
    let (d, h, w) = (18, 40, 36);
    // A box ROI in one corner of the volume: windows outside it are not scored.
    let roi: Vec<bool> = (0..d * h * w).map(|v| v / (h * w) < 8 && (v / w) % h < 18 && v % w < 16).collect();
    let (reused, _) = run(true, Some(roi.clone()));
    let (full, _) = run(false, Some(roi.clone()));
    assert_eq!(reused.saliency, full.saliency);
    assert!(reused.saliency.iter().zip(&roi).all(|(&s, &r)| r || s == 0.0), "attribution outside the ROI");
    assert!(reused.saliency.iter().zip(&roi).any(|(&s, &r)| r && s != 0.0));
    // Windows touching the box: 2 along D (0, 6), 2 along H (0, 10), 2 along W (0, 12).
    assert_eq!(reused.samples, 8);
    assert!(reused.tiles_evaluated < full.tiles_evaluated);
}
