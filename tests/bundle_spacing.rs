//! MONAI bundles whose preprocessing resamples (`Spacingd`, after `Orientationd`, before or after the
//! intensity window) and normalises each volume with its own statistics (`ScaleIntensityd`,
//! `NormalizeIntensityd`): xaiclip's whole-volume logits against the bundle's own preprocessing,
//! sliding window and `Invertd` (tests/fixtures/make_monai_spacing_fixture.py).

mod common;
use common::*;
use std::path::PathBuf;
use xaiclip::backend::CpuBackend;
use xaiclip::models::sliding::Blend;
use xaiclip::models::SegModel;
use xaiclip::volumes::{model_window, predict_volume};
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/monai_spacing").join(name)
}

#[test]
fn resampling_and_normalising_bundles_predict_as_monai_and_invert_to_the_file_grid() {
    let reference = WeightsFile::open(&fixture("reference.safetensors")).unwrap();
    let bundles = [
        "spacing_first",
        "window_first",
        "normalize_after_spacing",
        "normalize_before_spacing",
        "scale_only",
        "spleen_inferer",
    ];
    for bundle in bundles {
        let dir = fixture(bundle);
        let model = SegModel::load_dir(&CpuBackend, &dir).unwrap();
        let window = model_window(&dir).unwrap();
        let (overlap, blend) =
            if bundle == "spleen_inferer" { (0.5, Blend::Constant) } else { (0.25, Blend::Gaussian) };
        assert_eq!((window.overlap, window.blend), (overlap, blend), "{bundle}: the bundle's own inferer");
        for case in ["ras", "lps"] {
            let volume = xaiclip::io::read_image(&fixture(&format!("{case}.nii.gz"))).unwrap();
            let logits = predict_volume(&CpuBackend, &model, &volume, &window, None).unwrap();
            let expected = reference.get(&format!("{bundle}.{case}.logits")).unwrap();
            let (err, scale) = max_error(&logits, expected.data());
            println!(
                "{bundle} {case}: {:?} at {:.2?} mm: logits max |diff| {err:.2e} of max {scale:.2}",
                volume.dims,
                volume.spacing()
            );
            assert!(err <= 1e-4 * scale, "{bundle} {case}: logits off by {err} (max {scale})");
        }
    }
    // The order of the window and the resampling shows in MONAI's own logits, well above the bound.
    for case in ["ras", "lps"] {
        let [a, b] = ["spacing_first", "window_first"].map(|b| reference.get(&format!("{b}.{case}.logits")).unwrap());
        let (differ, scale) = max_error(a.data(), b.data());
        assert!(differ > 0.01 * scale, "{case}: {differ}");
    }
}

/// `xaiclip explain` of the LPS volume with `bundle`, occlusion over the whole volume, into `out`; its
/// report.
fn explain(bundle: &str, out: &std::path::Path) -> serde_json::Value {
    let image = fixture("lps.nii.gz");
    let o = xaiclip(&[
        "explain",
        "--image",
        image.to_str().unwrap(),
        "--model",
        fixture(bundle).to_str().unwrap(),
        "--organ",
        "spleen",
        "--slice",
        "all",
        "--method",
        "occlusion",
        "--occlusion-window",
        "8",
        "--roi",
        "none",
        "--faithfulness-steps",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap()
}

#[test]
fn explain_with_a_spacingd_bundle_writes_maps_on_the_input_grid_and_says_how_it_resampled() {
    let dir = tempfile::tempdir().unwrap();
    let (image, out) = (fixture("lps.nii.gz"), dir.path().join("out"));
    let report = explain("spacing_first", &out);
    let voxels = report["weights"]["unet"]["voxels"].as_str().unwrap();
    assert!(
        voxels.contains("reoriented to RAS")
            && voxels.contains("resampled to [1.5, 1.5, 2] mm as Spacingd (bilinear, before the intensity window)"),
        "{voxels}"
    );
    // The model's grid is 24 x 19 x 17 voxels: 3 x 3 x 3 windows of 8.
    assert_eq!(report["result"]["samples"].as_u64(), Some(27), "{}", report["result"]);
    let saliency = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    let volume = xaiclip::io::read_image(&image).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (volume.dims, volume.affine));
    assert!(saliency.data.iter().any(|&v| v != 0.0));
    // A bundle that z-scores each volume: its view of this volume runs every occlusion.
    let out = dir.path().join("normalized");
    let report = explain("normalize_after_spacing", &out);
    assert_eq!(report["weights"]["unet"]["intensity"], "ZScore");
    let normalized = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    assert!(normalized.data.iter().any(|&v| v != 0.0) && normalized.data != saliency.data);
}
