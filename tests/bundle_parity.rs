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

/// A phantom CT (64 x 64 x 16) in a temporary folder, and `xaiclip explain --model <fixture> --image
/// it` with `args` after; the report when it succeeded.
struct Cli {
    tmp: tempfile::TempDir,
    runs: std::cell::Cell<usize>,
}

impl Cli {
    fn new() -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let case = tmp.path().join("case");
        assert!(Self::run(&["phantom", "--size", "64", "--slices", "16", "--out", case.to_str().unwrap()])
            .status
            .success());
        Self { tmp, runs: Default::default() }
    }

    fn run(args: &[&str]) -> std::process::Output {
        std::process::Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(args).output().unwrap()
    }

    fn ct(&self) -> PathBuf {
        self.tmp.path().join("case/ct.nii.gz")
    }

    /// explain with occlusion on `slice` of the organ; `extra` arguments after.
    fn explain(&self, bundle: &str, slice: &str, organ: &str, extra: &[&str]) -> (std::process::Output, PathBuf) {
        let (model, ct, out) =
            (fixture(bundle), self.ct(), self.tmp.path().join(format!("{bundle}-{}", self.runs.get())));
        self.runs.set(self.runs.get() + 1);
        let args = ["explain", "--model", model.to_str().unwrap(), "--image", ct.to_str().unwrap()];
        let rest = ["--slice", slice, "--organ", organ, "--method", "occlusion", "--out", out.to_str().unwrap()];
        (Self::run(&[&args[..], &rest, extra].concat()), out)
    }

    fn report(&self, bundle: &str, slice: &str, organ: &str, extra: &[&str]) -> (serde_json::Value, PathBuf) {
        let (o, out) = self.explain(bundle, slice, organ, extra);
        assert!(o.status.success(), "{bundle}: {}", String::from_utf8_lossy(&o.stderr));
        (serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap(), out)
    }
}

#[test]
fn explain_takes_a_bundle_as_model_with_its_classes_and_window() {
    let cli = Cli::new();
    let (report, _) = cli.report("basicunet_2d", "8", "spleen", &["--roi", "none", "--size", "64"]);
    assert_eq!((report["organ"].as_str(), report["class"].as_u64()), (Some("spleen"), Some(2)));
    let unet = &report["weights"]["unet"];
    assert!(unet["network"].as_str().unwrap().starts_with("MONAI bundle basicunet_2d (BasicUNet 2-D"), "{unet}");
    assert_eq!(unet["intensity"], "CtWindow { low: -57.0, high: 164.0 }");
    assert_eq!(unet["files"].as_array().unwrap().len(), 2);
    // The 3-D bundle explains the whole volume (its random weights predict only background here).
    let (_, out3) = cli.report("basicunet_3d", "all", "background", &["--roi", "none", "--occlusion-window", "16"]);
    assert!(out3.join("saliency.nii.gz").is_file());
    let (o, _) = cli.explain("basicunet_3d", "all", "pancreas", &[]);
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("organ \"pancreas\" is not one of the model's classes (0 background, 1 liver, 2 spleen)"));
}

#[test]
fn explain_takes_monai_unet_bundles_on_slices_and_whole_volumes() {
    let cli = Cli::new();
    let (r, _) = cli.report("unet_2d", "8", "liver", &["--roi", "none", "--size", "64"]);
    assert_eq!((r["organ"].as_str(), r["class"].as_u64()), (Some("liver"), Some(1)));
    assert!(r["weights"]["unet"]["network"].as_str().unwrap().contains("(UNet 2-D, channels [8, 16, 32, 64]"));
    // A model grid that is not a multiple of the strides' product is refused before any work.
    let (o, out) = cli.explain("unet_2d", "8", "liver", &["--size", "60"]);
    assert!(!o.status.success() && !out.exists());
    assert!(String::from_utf8_lossy(&o.stderr).contains("multiple of 8"), "{}", String::from_utf8_lossy(&o.stderr));
    let (r, out3) = cli.report("unet_3d", "all", "spleen", &["--roi", "none", "--occlusion-window", "16"]);
    assert_eq!((r["organ"].as_str(), r["class"].as_u64()), (Some("spleen"), Some(2)));
    assert_eq!(r["weights"]["unet"]["intensity"], "CtWindow { low: -57.0, high: 164.0 }");
    assert_eq!(r["weights"]["unet"]["files"].as_array().unwrap().len(), 2);
    let saliency = xaiclip::io::read_image(&out3.join("saliency.nii.gz")).unwrap();
    let image = xaiclip::io::read_image(&cli.ct()).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (image.dims, image.affine));
    assert!(saliency.data.iter().all(|v| v.is_finite()) && saliency.data.iter().any(|&v| v != 0.0));
}
