//! nnU-Net's test-time mirroring (`--mirror`): xaiclip against nnunetv2's own mirrored prediction
//! (tests/fixtures/make_nnunet_mirroring_fixture.py), and the cases where it must be refused.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use xaiclip::backend::{Backend, CpuBackend};
use xaiclip::models::SegModel;
use xaiclip::pipeline::SliceInput;
use xaiclip::tensor::Tensor;
use xaiclip::volumes::{model_window, predict_volume};
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures").join(name)
}

fn folder_3d() -> PathBuf {
    fixture("nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres")
}

fn folder_2d() -> PathBuf {
    fixture("nnunet_trained/Dataset002_Phantom/nnUNetTrainer__nnUNetPlans__2d")
}

fn reference() -> WeightsFile {
    WeightsFile::open(&fixture("nnunet_mirroring/reference.safetensors")).unwrap()
}

fn mirrored(dir: &Path) -> SegModel<CpuBackend> {
    let mut model = SegModel::load_dir(&CpuBackend, dir).unwrap();
    model.enable_mirroring(&CpuBackend).unwrap();
    model
}

#[test]
fn whole_volume_logits_match_nnunets_mirrored_sliding_window() {
    let model = mirrored(&folder_3d());
    assert!(model.describe().contains("mirrored along axes [0, 1, 2]"), "{}", model.describe());
    let volume = xaiclip::io::read_image(&fixture("nnunet_volume/big.nii.gz")).unwrap();
    let logits = predict_volume(&CpuBackend, &model, &volume, &model_window(&folder_3d()).unwrap(), None).unwrap();
    let (err, scale) = max_error(&logits, reference().get("big.logits").unwrap().data());
    println!("3d_fullres mirrored over 3 axes: logits max |diff| {err:.2e} of max |logit| {scale:.2}");
    assert!(err <= 1e-4 * scale, "logits off by {err} (max {scale})");
    // Mirroring changes the prediction (random weights are not symmetric): the check above is not vacuous.
    let plain = SegModel::load_dir(&CpuBackend, &folder_3d()).unwrap();
    let unmirrored = predict_volume(&CpuBackend, &plain, &volume, &model_window(&folder_3d()).unwrap(), None).unwrap();
    assert!(max_error(&unmirrored, &logits).0 > 100.0 * err.max(1e-6));
}

#[test]
fn slice_logits_and_labels_match_nnunet_predictor_with_mirroring() {
    let dir = folder_2d();
    let model = mirrored(&dir);
    let case = fixture("nnunet_trained/case.nii.gz");
    let volume = xaiclip::io::read_image(&case).unwrap();
    let intensity = model.input_intensity(None).unwrap();
    let input = SliceInput::new(&volume, 4, intensity.range(&volume), 128, None, 1, model.orientation()).unwrap();
    let x = Tensor::new(&[1, 1, 128, 128], input.image).unwrap();
    let logits = CpuBackend.download(&model.forward_logits(&CpuBackend, &x).unwrap()).unwrap();
    let (err, scale) = max_error(logits.data(), reference().get("case2d.slice4").unwrap().data());
    println!("2d mirrored over 2 axes, slice 4: logits max |diff| {err:.2e} of max |logit| {scale:.2}");
    assert!(err <= 1e-4 * scale, "logits off by {err} (max {scale})");

    // End to end, label for label: the predictor's own segmentation, except where its float16 sums moved
    // a label away from the float32 argmax (the fixture lists those voxels and the float32 label there).
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("labels.nii.gz");
    let args =
        ["segment", "--model", dir.to_str().unwrap(), "--image", case.to_str().unwrap(), "--slice", "all", "--out"];
    let o = xaiclip(&[&args[..], &[out.to_str().unwrap(), "--mirror"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = xaiclip::io::read_image(&out).unwrap().data;
    let theirs = xaiclip::io::read_image(&fixture("nnunet_mirroring/predicted_2d.nii.gz")).unwrap().data;
    let bytes = std::fs::read(fixture("nnunet_mirroring/reference.safetensors")).unwrap();
    let raw = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let moved: Vec<usize> = raw
        .tensor("case2d.moved")
        .unwrap()
        .data()
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as usize)
        .collect();
    let moved_labels = raw.tensor("case2d.moved_labels").unwrap().data().to_vec();
    let mut differ = 0;
    for (v, (&a, &b)) in ours.iter().zip(&theirs).enumerate() {
        match moved.iter().position(|&m| m == v) {
            Some(i) => assert_eq!(a, moved_labels[i] as f32, "voxel {v}: not the float32 argmax"),
            None => assert_eq!(a, b, "voxel {v}: {a} where nnUNetPredictor has {b}"),
        }
        differ += usize::from(a != b);
    }
    println!(
        "labels equal nnUNetPredictor's at {} of {} voxels (the rest: its float16 sums)",
        ours.len() - differ,
        ours.len()
    );
    // Without --mirror the labels are the unmirrored predictor's, which differ here.
    let o = xaiclip(&[&args[..], &[out.to_str().unwrap()]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let plain = xaiclip::io::read_image(&out).unwrap().data;
    assert!(plain.iter().zip(&theirs).filter(|(a, b)| a != b).count() > 1000);
}

#[test]
fn mirroring_is_refused_where_nothing_states_its_axes() {
    // A BasicUNet states no mirroring axes.
    let tmp = tempfile::tempdir().unwrap();
    let ct = small_phantom(tmp.path());
    let out = tmp.path().join("labels.nii.gz");
    fails(
        &["segment", "--image", ct.to_str().unwrap(), "--out", out.to_str().unwrap(), "--mirror"],
        &["weights/unet", "--mirror is nnU-Net's test-time mirroring", "states none"],
    );
    assert!(!out.exists());
    // A checkpoint whose trainer disabled mirroring (inference_allowed_mirroring_axes None).
    let dir = tmp.path().join("nnUNetTrainer__nnUNetPlans__3d_fullres");
    std::fs::create_dir_all(dir.join("fold_0")).unwrap();
    for f in ["plans.json", "dataset.json"] {
        std::fs::copy(folder_3d().join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(fixture("nnunet_mirroring/no_mirroring.pth"), dir.join("fold_0/checkpoint_final.pth")).unwrap();
    let mut model = SegModel::load_dir(&CpuBackend, &dir).unwrap();
    let Err(err) = model.enable_mirroring(&CpuBackend) else { panic!("mirroring without axes accepted") };
    assert!(format!("{err:#}").contains("allows no mirroring"), "{err:#}");
    // A bare state dict has no such entry at all.
    std::fs::copy(fixture("torch_checkpoints/model.pt"), dir.join("fold_0/checkpoint_final.pth")).unwrap();
    let err = xaiclip::models::nnunet::mirroring_axes(&dir.join("fold_0/checkpoint_final.pth")).unwrap_err();
    assert!(format!("{err:#}").contains("no usable inference_allowed_mirroring_axes"), "{err:#}");
}
