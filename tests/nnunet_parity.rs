//! nnU-Net v2 result folders made by nnunetv2's own planners and networks
//! (tests/fixtures/make_nnunet_fixtures.py): the Rust PlainConvUNet / ResidualEncoderUNet against
//! dynamic_network_architectures' logits, and what a result folder tells about the model.

use std::path::PathBuf;
use xaiclip::backend::{Backend, CpuBackend};
use xaiclip::models::nnunet::{Architecture, Normalization};
use xaiclip::models::{NnUNet, SegModel};
use xaiclip::weights::WeightsFile;

fn folder(plans: &str, configuration: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/nnunet/Dataset001_Tiny")
        .join(format!("nnUNetTrainer__{plans}__{configuration}"))
}

fn check(plans: &str, configuration: &str, architecture: Architecture, dims: usize) {
    let model = NnUNet::load_dir(&CpuBackend, &folder(plans, configuration)).unwrap();
    assert_eq!(model.config().architecture, architecture);
    assert_eq!(model.config().spatial_dims, dims);
    let io = WeightsFile::open(
        &PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join(format!("tests/fixtures/nnunet/parity/{plans}__{configuration}.safetensors")),
    )
    .unwrap();
    let x = io.get("input").unwrap();
    let logits = CpuBackend.download(&model.forward_logits(&CpuBackend, &x).unwrap()).unwrap();
    // The reference is the network run in float64. Stacks of instance norms over a few voxels amplify
    // f32 rounding: PyTorch's own f32 logits are off the exact ones by ~1.3e-6 of the largest logit,
    // and by up to 1.5e-4 element-wise with denominators floored at 1% of it (tests/unet_parity.rs's
    // measure). So: within 1e-5 of the largest logit (the 1e-4 bound with a margin of 10), and
    // element-wise within 2e-4, where PyTorch's own f32 result lands at up to 1.1e-4 on these fixtures.
    let exact = io.get("logits_f64").unwrap();
    assert_eq!(logits.shape(), exact.shape());
    let scale = exact.max_abs();
    let of_max = logits.data().iter().zip(exact.data()).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max) / scale;
    let err = logits.max_rel_error(&exact, 0.01 * scale);
    let torch_err = io.get("logits").unwrap().max_rel_error(&exact, 0.01 * scale);
    println!(
        "{plans} {configuration}: logits {:?}, max diff {of_max:.2e} of max, element-wise {err:.2e} (PyTorch f32: {torch_err:.2e})",
        exact.shape()
    );
    assert!(of_max < 1e-5, "{plans} {configuration}: max diff {of_max} of the largest logit");
    assert!(err < 2e-4, "{plans} {configuration}: element-wise {err} (PyTorch's own f32: {torch_err})");
}

#[test]
fn plain_conv_unet_2d_matches_dynamic_network_architectures() {
    check("nnUNetPlans", "2d", Architecture::Plain, 2);
}

#[test]
fn plain_conv_unet_3d_fullres_with_anisotropic_kernels_matches() {
    check("nnUNetPlans", "3d_fullres", Architecture::Plain, 3);
}

#[test]
fn residual_encoder_unet_2d_matches_dynamic_network_architectures() {
    check("nnUNetResEncUNetMPlans", "2d", Architecture::ResidualEncoder, 2);
}

#[test]
fn residual_encoder_unet_3d_fullres_matches_dynamic_network_architectures() {
    check("nnUNetResEncUNetMPlans", "3d_fullres", Architecture::ResidualEncoder, 3);
}

#[test]
fn a_result_folder_gives_classes_folds_geometry_and_ct_normalisation() {
    let dir = folder("nnUNetPlans", "2d");
    let model = NnUNet::load_dir(&CpuBackend, &dir).unwrap();
    assert_eq!(model.classes, ["background", "liver", "spleen"]);
    assert_eq!(model.configuration, "2d");
    assert_eq!(model.folds.len(), 1);
    assert_eq!(model.patch_size, [40, 48]);
    let plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("plans.json")).unwrap()).unwrap();
    let fg = &plans["foreground_intensity_properties_per_channel"]["0"];
    let Normalization::Ct { low, high, mean, std } = model.normalization.clone() else { panic!("CT normalisation") };
    assert_eq!(
        (low as f64, high as f64),
        (fg["percentile_00_5"].as_f64().unwrap() as f32 as f64, fg["percentile_99_5"].as_f64().unwrap() as f32 as f64)
    );
    // The window + input map reproduce nnU-Net's clip-then-z-score for any HU value.
    let [scale, shift] = model.fixed_input_map().unwrap();
    for hu in [-500.0f32, low, 0.0, 60.0, high, 900.0] {
        let v = ((hu - low) / (high - low)).clamp(0.0, 1.0);
        let want = (hu.clamp(low, high) - mean) / std;
        assert!((v * scale + shift - want).abs() < 1e-5 * want.abs().max(1.0), "{hu} HU");
    }
    // One fold given directly: the same model.
    let fold = NnUNet::load_dir(&CpuBackend, &dir.join("fold_0")).unwrap();
    assert_eq!(fold.folds.len(), 1);
    // Through the common interface: the model grid is the patch's longer side rounded to the stride.
    let seg = SegModel::load_dir(&CpuBackend, &dir).unwrap();
    assert_eq!(seg.classes().unwrap().len(), 3);
    assert_eq!(seg.size_multiple(), 8);
    assert_eq!(seg.input_size(), Some(48));
}

#[test]
fn two_folds_are_ensembled_by_their_mean_logits() {
    let dir = folder("nnUNetPlans", "2d");
    let tmp = tempfile::tempdir().unwrap();
    let copy = tmp.path().join("nnUNetTrainer__nnUNetPlans__2d");
    for sub in ["fold_0", "fold_1"] {
        std::fs::create_dir_all(copy.join(sub)).unwrap();
        std::fs::copy(dir.join("fold_0/checkpoint_final.pth"), copy.join(sub).join("checkpoint_final.pth")).unwrap();
    }
    for f in ["plans.json", "dataset.json"] {
        std::fs::copy(dir.join(f), copy.join(f)).unwrap();
    }
    let two = NnUNet::load_dir(&CpuBackend, &copy).unwrap();
    let one = NnUNet::load_dir(&CpuBackend, &dir).unwrap();
    assert_eq!(two.folds.iter().map(|f| f.0.as_str()).collect::<Vec<_>>(), ["fold_0", "fold_1"]);
    let x =
        xaiclip::tensor::Tensor::new(&[1, 1, 40, 48], (0..1920).map(|i| (i as f32 * 0.37).sin()).collect()).unwrap();
    let a = two.forward_logits(&CpuBackend, &x).unwrap();
    let b = one.forward_logits(&CpuBackend, &x).unwrap();
    // Two identical folds: their mean is the one fold's logits (up to the rounding of (a + a) / 2: none).
    assert_eq!(a.data(), b.data());
}
