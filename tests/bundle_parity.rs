//! MONAI bundles laid out by monai.bundle.init_bundle (tests/fixtures/make_monai_bundle_fixtures.py):
//! the network xaiclip builds from network_def and models/model.pt against the one MONAI's ConfigParser
//! builds from the same files, and what the bundle says about classes, window and geometry.

use std::path::PathBuf;
use xaiclip::backend::{Backend, CpuBackend};
use xaiclip::models::SegModel;
use xaiclip::preprocess::Intensity;
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/monai_bundles").join(name)
}

fn check(name: &str, dims: usize) -> SegModel<CpuBackend> {
    let model = SegModel::load_dir(&CpuBackend, &fixture(name)).unwrap();
    assert!(matches!(model, SegModel::Bundle { .. }));
    assert_eq!(model.spatial_dims(), dims);
    let io = WeightsFile::open(&fixture(&format!("{name}.parity.safetensors"))).unwrap();
    let x = io.get("input").unwrap();
    let logits = CpuBackend.download(&model.forward_logits(&CpuBackend, &x).unwrap()).unwrap();
    let want = io.get("logits").unwrap();
    // Floored as in tests/unet_parity.rs.
    let err = logits.max_rel_error(&want, 0.01 * want.max_abs());
    println!("{name}: logits {:?}, max rel err {err:.2e}", want.shape());
    assert!(err < 1e-4, "{name}: {err}");
    assert_eq!(model.classes().unwrap(), ["background", "liver", "spleen"]);
    assert_eq!(model.intensity(), Some(Intensity::CtWindow { low: -57.0, high: 164.0 }));
    model
}

#[test]
fn a_2d_basicunet_bundle_with_a_reference_matches_monais_parser() {
    let model = check("basicunet_2d", 2);
    assert_eq!(model.out_channels(), 3, "out_channels came from @num_classes");
}

#[test]
fn a_3d_basicunet_bundle_with_batch_norm_matches_and_gives_its_patch() {
    let model = check("basicunet_3d", 3);
    assert_eq!(model.patch_size(), Some([32, 32, 16]));
}

#[test]
fn a_2d_unet_bundle_with_residual_units_batch_norm_and_prelu_matches() {
    let model = check("unet_2d", 2);
    assert_eq!(model.size_multiple(), 8, "three stride-2 levels");
    assert!(model.describe().contains("UNet 2-D, channels [8, 16, 32, 64]"), "{}", model.describe());
}

#[test]
fn a_3d_unet_bundle_with_anisotropic_strides_and_instance_norm_matches() {
    let model = check("unet_3d", 3);
    assert_eq!(model.patch_size(), Some([32, 32, 16]));
}

#[test]
fn a_3d_unet_bundle_of_plain_convolutions_with_the_norm_after_prelu_matches() {
    check("unet_3d_plain", 3);
}

#[test]
fn a_3d_segresnet_bundle_with_group_norm_matches() {
    let model = check("segresnet_3d", 3);
    assert_eq!((model.patch_size(), model.size_multiple()), (Some([32, 32, 16]), 4));
}

#[test]
fn a_2d_segresnet_bundle_with_deconv_upsampling_and_the_old_norm_name_matches() {
    let model = check("segresnet_2d", 2);
    assert!(model.describe().contains("group norm (2 groups)"), "{}", model.describe());
}

#[test]
fn a_3d_dynunet_bundle_with_residual_blocks_anisotropic_strides_and_supervision_heads_matches() {
    let model = check("dynunet_3d", 3);
    assert!(model.describe().contains("residual blocks"), "{}", model.describe());
}

#[test]
fn a_2d_dynunet_bundle_with_batch_norm_matches() {
    let model = check("dynunet_2d", 2);
    assert_eq!(model.size_multiple(), 8);
}

#[test]
fn a_unet_input_off_its_strides_is_refused_with_the_multiple() {
    let model = SegModel::load_dir(&CpuBackend, &fixture("unet_2d")).unwrap();
    let x = CpuBackend.upload(&xaiclip::tensor::Tensor::zeros(&[1, 1, 60, 64])).unwrap();
    let err = model.forward_logits(&CpuBackend, &x).unwrap_err().to_string();
    assert!(err.contains("every side must be a multiple of the strides' product [8, 8]"), "{err}");
}

#[test]
fn explain_takes_a_bundle_as_model_with_its_classes_and_window() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_xaiclip");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let case = tmp.path().join("case");
    assert!(run(&["phantom", "--size", "64", "--slices", "16", "--out", case.to_str().unwrap()]).status.success());
    let ct = case.join("ct.nii.gz");
    let out = tmp.path().join("2d");
    let model = fixture("basicunet_2d");
    let o = run(&[
        "explain",
        "--model",
        model.to_str().unwrap(),
        "--image",
        ct.to_str().unwrap(),
        "--slice",
        "8",
        "--organ",
        "spleen",
        "--method",
        "occlusion",
        "--roi",
        "none",
        "--size",
        "64",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!((report["organ"].as_str(), report["class"].as_u64()), (Some("spleen"), Some(2)));
    let unet = &report["weights"]["unet"];
    assert!(unet["network"].as_str().unwrap().starts_with("MONAI bundle basicunet_2d (BasicUNet 2-D"), "{unet}");
    assert_eq!(unet["intensity"], "CtWindow { low: -57.0, high: 164.0 }");
    assert_eq!(unet["files"].as_array().unwrap().len(), 2);
    // The 3-D bundle explains the whole volume (its random weights predict only background here).
    let out3 = tmp.path().join("3d");
    let model3 = fixture("basicunet_3d");
    let o = run(&[
        "explain",
        "--model",
        model3.to_str().unwrap(),
        "--image",
        ct.to_str().unwrap(),
        "--slice",
        "all",
        "--organ",
        "background",
        "--method",
        "occlusion",
        "--roi",
        "none",
        "--occlusion-window",
        "16",
        "--out",
        out3.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out3.join("saliency.nii.gz").is_file());
    let o = run(&[
        "explain",
        "--model",
        model3.to_str().unwrap(),
        "--image",
        ct.to_str().unwrap(),
        "--slice",
        "all",
        "--organ",
        "pancreas",
        "--method",
        "occlusion",
        "--out",
        out3.to_str().unwrap(),
    ]);
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("organ \"pancreas\" is not one of the model's classes (0 background, 1 liver, 2 spleen)"));
}

#[test]
fn explain_takes_monai_unet_bundles_on_slices_and_whole_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_xaiclip");
    let run = |args: &[&str]| std::process::Command::new(bin).args(args).output().unwrap();
    let case = tmp.path().join("case");
    assert!(run(&["phantom", "--size", "64", "--slices", "16", "--out", case.to_str().unwrap()]).status.success());
    let ct = case.join("ct.nii.gz");
    let report = |dir: &std::path::Path| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
    };
    let (out2, model2) = (tmp.path().join("2d"), fixture("unet_2d"));
    let args2 = ["explain", "--model", model2.to_str().unwrap(), "--image", ct.to_str().unwrap(), "--slice", "8"];
    let o = run(&[
        &args2[..],
        &[
            "--organ",
            "liver",
            "--method",
            "occlusion",
            "--roi",
            "none",
            "--size",
            "64",
            "--out",
            out2.to_str().unwrap(),
        ],
    ]
    .concat());
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&out2);
    assert_eq!((r["organ"].as_str(), r["class"].as_u64()), (Some("liver"), Some(1)));
    assert!(r["weights"]["unet"]["network"].as_str().unwrap().contains("(UNet 2-D, channels [8, 16, 32, 64]"));
    // A model grid that is not a multiple of the strides' product is refused before any work.
    let o =
        run(&[&args2[..], &["--organ", "liver", "--method", "occlusion", "--size", "60", "--out", "/nonexistent"]]
            .concat());
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("multiple of 8"), "{}", String::from_utf8_lossy(&o.stderr));
    let (out3, model3) = (tmp.path().join("3d"), fixture("unet_3d"));
    let o = run(&[
        "explain",
        "--model",
        model3.to_str().unwrap(),
        "--image",
        ct.to_str().unwrap(),
        "--slice",
        "all",
        "--organ",
        "spleen",
        "--method",
        "occlusion",
        "--roi",
        "none",
        "--occlusion-window",
        "16",
        "--out",
        out3.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let r = report(&out3);
    assert_eq!((r["organ"].as_str(), r["class"].as_u64()), (Some("spleen"), Some(2)));
    assert_eq!(r["weights"]["unet"]["intensity"], "CtWindow { low: -57.0, high: 164.0 }");
    assert_eq!(r["weights"]["unet"]["files"].as_array().unwrap().len(), 2);
    let saliency = xaiclip::io::read_image(&out3.join("saliency.nii.gz")).unwrap();
    let image = xaiclip::io::read_image(&ct).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (image.dims, image.affine));
    assert!(saliency.data.iter().all(|v| v.is_finite()) && saliency.data.iter().any(|&v| v != 0.0));
}
