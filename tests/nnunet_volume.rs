//! A 3-D nnU-Net result folder over whole volumes: xaiclip's sliding window (nnU-Net's tile positions,
//! Gaussian and padding) against nnunetv2's own pieces in float32, and its labels against
//! nnUNetPredictor's end-to-end segmentation (tests/fixtures/make_nnunet_volume_fixture.py).

mod common;
use common::*;
use std::path::PathBuf;
use xaiclip::backend::CpuBackend;
use xaiclip::models::sliding::Tiling;
use xaiclip::models::SegModel;
use xaiclip::volumes::{model_window, predict_volume, segment_volume_on};
use xaiclip::weights::WeightsFile;
use xaiclip::{Device, Precision};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn folder() -> PathBuf {
    fixture("nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres")
}

#[test]
fn whole_volume_logits_match_nnunet_and_labels_differ_from_its_predictor_only_where_float16_moved_them() {
    let dir = folder();
    let model = SegModel::load_dir(&CpuBackend, &dir).unwrap();
    let window = model_window(&dir).unwrap();
    assert_eq!((window.roi_size, window.overlap, window.tiling), ([20, 40, 48], 0.5, Tiling::NnUNet));
    let reference = WeightsFile::open(&fixture("nnunet_volume/reference.safetensors")).unwrap();
    let bytes = std::fs::read(fixture("nnunet_volume/reference.safetensors")).unwrap();
    let raw = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for case in ["big", "small"] {
        let volume = xaiclip::io::read_image(&fixture(&format!("nnunet_volume/{case}.nii.gz"))).unwrap();
        let logits = predict_volume(&CpuBackend, &model, &volume, &window, None).unwrap();
        // (3, k, j, i) row-major: i fastest, as xaiclip's file order.
        let expected = reference.get(&format!("{case}.logits")).unwrap();
        let (err, scale) = max_error(&logits, expected.data());
        println!("{case}: logits max |diff| {err:.2e} of max |logit| {scale:.2}");
        assert!(err <= 1e-4 * scale, "{case}: logits off by {err} (max {scale})");
        let n = volume.voxel_count();
        let labels = segment_volume_on(Device::Cpu, Precision::F32, &dir, &volume, None, None, false).unwrap();
        let predictor = raw.tensor(&format!("{case}.labels")).unwrap().data().to_vec();
        // nnUNetPredictor sums tiles in float16: where it labels otherwise, that moved its argmax.
        let (ties, moved) = predictor_label_differences(case, &labels, expected.data(), &predictor, err);
        println!(
            "{case}: {n} voxels, {moved} labelled otherwise by nnUNetPredictor (its float16 sums), {ties} float32 ties"
        );
        // `xaiclip segment` writes the same labels on the input's grid.
        let out = tempfile::tempdir().unwrap();
        let path = out.path().join("labels.nii.gz");
        let image = fixture(&format!("nnunet_volume/{case}.nii.gz"));
        let o = xaiclip(&[
            "segment",
            "--image",
            image.to_str().unwrap(),
            "--model",
            dir.to_str().unwrap(),
            "--out",
            path.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let written = xaiclip::io::read_image(&path).unwrap();
        assert_eq!(written.affine, volume.affine);
        assert!(written.data.iter().zip(&labels).all(|(&w, &l)| w == l as f32), "{case}: segment wrote other labels");
        assert!(ties * 1000 <= n && moved * 50 <= n, "{case}: {ties} ties, {moved} moved");
    }
}

#[test]
fn explain_takes_a_3d_nnunet_result_folder_and_crops_a_zero_border_away() {
    let dir = tempfile::tempdir().unwrap();
    let image = fixture("nnunet_volume/big.nii.gz");
    let (out, model) = (dir.path().join("out"), folder());
    let explain = |image: &std::path::Path, extra: &[&str]| {
        let mut args = vec!["explain", "--image", image.to_str().unwrap(), "--model", model.to_str().unwrap()];
        args.extend(["--organ", "liver", "--slice", "all", "--method", "occlusion", "--occlusion-window", "12"]);
        args.extend(["--faithfulness-steps", "2", "--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        xaiclip(&args)
    };
    let o = explain(&image, &["--roi", "clip", "--roi-fallback", "seg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let r = &report["result"];
    assert_eq!(r["tiles"].as_u64(), Some(8), "{r}");
    assert!(r["tiles_evaluated"].as_u64() < r["tiles_naive"].as_u64(), "{r}");
    assert_eq!(report["settings"]["sliding_window"]["overlap"].as_f64(), Some(0.5));
    let voxels = report["weights"]["unet"]["voxels"].as_str().unwrap();
    assert!(
        voxels.contains("(k, j, i) transposed by transpose_forward, (D, H, W) along file axes 2, 1, 0"),
        "{voxels}"
    );
    let saliency = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    let volume = xaiclip::io::read_image(&image).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (volume.dims, volume.affine));
    assert!(saliency.data.iter().any(|&v| v != 0.0));
    // With a zero border nnU-Net crops it away and labels it background: the map is 0 there
    // (parity of cropping: tests/nnunet_resampling.rs).
    let slice = volume.dims[0] * volume.dims[1];
    let mut zeros = volume.clone();
    zeros.data[..slice].iter_mut().for_each(|v| *v = 0.0);
    let cropped = dir.path().join("border.nii.gz");
    xaiclip::io::nifti::write_like(&cropped, &volume, &zeros.data).unwrap();
    std::fs::remove_dir_all(&out).unwrap();
    let o = explain(&cropped, &["--roi", "seg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let saliency = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    assert!(saliency.data[..slice].iter().all(|&v| v == 0.0));
    assert!(saliency.data[slice..].iter().any(|&v| v != 0.0));
}
