//! The Rust BasicUNet against PyTorch/MONAI outputs saved by tests/fixtures/make_unet_fixtures.py.

use std::path::PathBuf;
use xaiclip::backend::{Backend, CpuBackend};
use xaiclip::models::BasicUNet;
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn check(case: &str) {
    let dir = fixture(&format!("unet_{case}"));
    let model = BasicUNet::load_dir(&CpuBackend, &dir).unwrap();
    let io = WeightsFile::open(&dir.join("io.safetensors")).unwrap();
    let x = io.get("input").unwrap();
    let logits = model.forward_logits(&CpuBackend, &x).unwrap();
    let probs = model.forward(&CpuBackend, &x).unwrap();
    // Element-wise relative error. Denominators are floored (logits: 1% of the largest |logit|;
    // probabilities: 1e-3) because a logit that crosses zero has no meaningful relative error: the
    // fixtures' worst raw case is 1.2e-3 vs 1.2e-3 + 5e-7, i.e. f32 rounding of a near-zero sum.
    let want_logits = io.get("logits").unwrap();
    let logit_err = CpuBackend.download(&logits).unwrap().max_rel_error(&want_logits, 0.01 * want_logits.max_abs());
    let prob_err = probs.max_rel_error(&io.get("probs").unwrap(), 1e-3);
    println!("{case}: logits max rel err {logit_err:.2e}, probs {prob_err:.2e}");
    assert!(logit_err < 1e-4, "{case}: logits max rel error {logit_err}");
    assert!(prob_err < 1e-4, "{case}: probabilities max rel error {prob_err}");
}

#[test]
fn instance_norm_leaky_relu_deconv_matches_pytorch() {
    check("instance_deconv");
}

#[test]
fn batch_norm_relu_nontrainable_odd_size_matches_pytorch() {
    check("batch_nontrainable");
}

#[test]
fn instance_norm_without_affine_odd_size_matches_pytorch() {
    check("instance_noaffine_odd");
}

#[test]
fn volumetric_instance_norm_deconv_odd_size_matches_pytorch() {
    check("volume_instance_deconv");
}

#[test]
fn volumetric_batch_norm_trilinear_odd_size_matches_pytorch() {
    check("volume_batch_nontrainable");
}

#[test]
fn a_3d_model_refuses_a_2d_batch_and_the_explainer_refuses_a_3d_model() {
    let dir = fixture("unet_volume_instance_deconv");
    let model = BasicUNet::load_dir(&CpuBackend, &dir).unwrap();
    let err = model.forward(&CpuBackend, &xaiclip::tensor::Tensor::zeros(&[1, 1, 32, 32])).unwrap_err().to_string();
    assert!(err.contains("this 3-D U-Net expects input (N, 1, D, H, W)"), "{err}");
    let err = xaiclip::Explainer::builder().unet(&dir).device(xaiclip::Device::Cpu).build().err().unwrap().to_string();
    assert!(err.contains("a 3-D U-Net (spatial_dims 3)") && err.contains("unet_volume_instance_deconv"), "{err}");
}

#[test]
fn torch_checkpoints_load_as_the_safetensors_do() {
    // The same weights saved by torch.save as a MONAI bundle's model.pt and as an nnU-Net checkpoint
    // (state dict under "network_weights", beside optimizer state and numpy scalars).
    let reference = WeightsFile::open(&fixture("unet_instance_deconv/model.safetensors")).unwrap();
    let io = WeightsFile::open(&fixture("unet_instance_deconv/io.safetensors")).unwrap();
    let x = io.get("input").unwrap();
    let want = BasicUNet::load_dir(&CpuBackend, &fixture("unet_instance_deconv"))
        .unwrap()
        .forward_logits(&CpuBackend, &x)
        .unwrap();
    for (file, name) in [("model.pt", "model.pt"), ("checkpoint_final.pth", "model.pth")] {
        let torch = WeightsFile::open(&fixture(&format!("torch_checkpoints/{file}"))).unwrap();
        let names: Vec<String> = torch.tensors().into_iter().map(|t| t.name).collect();
        assert_eq!(names, reference.tensors().into_iter().map(|t| t.name).collect::<Vec<_>>(), "{file}");
        for n in &names {
            assert_eq!(torch.get(n).unwrap(), reference.get(n).unwrap(), "{file}: {n}");
        }
        // A model folder with config.json and model.pt / model.pth instead of model.safetensors.
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(fixture("unet_instance_deconv/config.json"), dir.path().join("config.json")).unwrap();
        std::fs::copy(fixture(&format!("torch_checkpoints/{file}")), dir.path().join(name)).unwrap();
        let got = BasicUNet::load_dir(&CpuBackend, dir.path()).unwrap().forward_logits(&CpuBackend, &x).unwrap();
        assert_eq!(got, want, "{file}");
    }
}

#[test]
fn mismatched_weights_list_every_problem() {
    let dir = fixture("unet_instance_deconv");
    let text = std::fs::read_to_string(dir.join("config.json")).unwrap();
    // Wider features than stored: every conv weight has the wrong shape, and norm params mismatch.
    let mut config = xaiclip::models::UNetConfig::from_json(&text).unwrap();
    config.features[0] = 6;
    let weights = WeightsFile::open(&dir.join("model.safetensors")).unwrap();
    let err = format!("{:#}", BasicUNet::load(&CpuBackend, config, &weights).err().expect("must fail"));
    assert!(err.contains("conv_0.conv_0.conv.weight has shape [4, 1, 3, 3], expected [6, 1, 3, 3]"), "{err}");
    assert!(err.contains("conv_0.conv_1.adn.N.weight has shape [4], expected [6]"), "{err}");
    assert!(err.contains("model.safetensors"), "{err}");
    // A config asking for batch norm finds the running stats missing.
    let mut config = xaiclip::models::UNetConfig::from_json(&text).unwrap();
    config.norm = xaiclip::models::unet::NormKind::Batch;
    let err = format!("{:#}", BasicUNet::load(&CpuBackend, config, &weights).err().expect("must fail"));
    assert!(err.contains("missing conv_0.conv_0.adn.N.running_mean (expected shape [4])"), "{err}");
}
