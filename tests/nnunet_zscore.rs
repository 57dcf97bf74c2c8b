//! nnU-Net models planned for MR (ZScoreNormalization: each volume z-scored with its own statistics)
//! against nnunetv2's own preprocessor and networks (tests/fixtures/make_nnunet_zscore_fixture.py).

mod common;
use common::*;
use std::path::PathBuf;
use xaiclip::backend::{Backend, CpuBackend};
use xaiclip::models::SegModel;
use xaiclip::pipeline::SliceInput;
use xaiclip::preprocess::{normalise_values, Intensity};
use xaiclip::tensor::Tensor;
use xaiclip::volumes::{model_window, predict_volume};
use xaiclip::weights::WeightsFile;

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/nnunet_zscore").join(name)
}

fn folder(configuration: &str) -> PathBuf {
    fixture(&format!("Dataset003_TinyMR/nnUNetTrainer__nnUNetPlans__{configuration}"))
}

fn reference(name: &str) -> Tensor {
    WeightsFile::open(&fixture("reference.safetensors")).unwrap().get(name).unwrap()
}

/// max |a - b| over max |b| (a NaN is infinite).
fn relative_error(a: &[f32], b: &[f32]) -> f32 {
    let (err, scale) = max_error(a, b);
    err / scale
}

#[test]
fn the_volumes_own_zscore_reaches_the_network_as_nnunet_computes_it() {
    let model = SegModel::load_dir(&CpuBackend, &folder("2d")).unwrap();
    let volume = xaiclip::io::read_image(&fixture("case.nii.gz")).unwrap();
    assert_eq!(model.input_intensity(None).unwrap(), Intensity::ZScore);
    // Another window is refused: the model normalises its input itself.
    let err = model.input_intensity(Some(Intensity::MrPercentile)).unwrap_err();
    assert!(format!("{err:#}").contains("normalises its input itself"), "{err:#}");
    let [scale, shift] = model.input_map_of(&volume).unwrap().unwrap();
    // The volume's [min, max] holds every value, so windowing clips nothing, and the map gives nnU-Net's
    // z-scores; (k, j, i) order is the file's (i fastest).
    let windowed = normalise_values(&volume.data, Intensity::ZScore.range(&volume));
    let ours: Vec<f32> = windowed.iter().map(|v| v * scale + shift).collect();
    let err = relative_error(&ours, reference("zscored").data());
    println!("z-scored volume: max error {err:.2e} of max");
    assert!(err < 1e-5, "z-scores off by {err} of max");
    // Without a volume the model refuses to run rather than guess the statistics.
    let x = CpuBackend.upload(&Tensor::zeros(&[1, 1, 48, 48])).unwrap();
    let Err(e) = model.forward_logits(&CpuBackend, &x) else { panic!("ran without the volume's statistics") };
    assert!(format!("{e:#}").contains("own statistics"), "{e:#}");
}

#[test]
fn slice_and_volume_logits_match_nnunets_networks() {
    let volume = xaiclip::io::read_image(&fixture("case.nii.gz")).unwrap();
    // 2d: each slice (rows j, columns i) through the model's view of this volume.
    let model = SegModel::load_dir(&CpuBackend, &folder("2d")).unwrap();
    let view = model.view(&CpuBackend, &volume).unwrap().unwrap();
    let want = reference("2d.logits");
    let (plane, slices) = (48 * 48, 16);
    let mut worst = 0f32;
    for k in 0..slices {
        let input =
            SliceInput::new(&volume, k, Intensity::ZScore.range(&volume), 48, None, 1, model.orientation()).unwrap();
        let x = CpuBackend.upload(&Tensor::new(&[1, 1, 48, 48], input.image).unwrap()).unwrap();
        let logits = CpuBackend.download(&view.forward_logits(&CpuBackend, &x).unwrap()).unwrap();
        let expected: Vec<f32> =
            (0..3).flat_map(|c| want.data()[(c * slices + k) * plane..][..plane].iter().copied()).collect();
        worst = worst.max(relative_error(logits.data(), &expected));
    }
    println!("2d ZScore model: logits max error {worst:.2e} of max over {slices} slices");
    assert!(worst < 1e-4, "2d logits off by {worst}");
    // 3d_fullres: the whole volume in one tile.
    let dir = folder("3d_fullres");
    let model = SegModel::load_dir(&CpuBackend, &dir).unwrap();
    let logits = predict_volume(&CpuBackend, &model, &volume, &model_window(&dir).unwrap(), None).unwrap();
    let err = relative_error(&logits, reference("3d.logits").data());
    println!("3d_fullres ZScore model: logits max error {err:.2e} of max");
    assert!(err < 1e-4, "3d logits off by {err}");
}

#[test]
fn an_mr_nnunet_model_explains_and_segments_from_the_command_line() {
    let tmp = tempfile::tempdir().unwrap();
    let case = fixture("case.nii.gz");
    let out = tmp.path().join("labels.nii.gz");
    let o = xaiclip(&[
        "segment",
        "--model",
        folder("2d").to_str().unwrap(),
        "--image",
        case.to_str().unwrap(),
        "--slice",
        "all",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    // The labels are the argmax of nnU-Net's own logits (random weights: whatever they say).
    let ours = xaiclip::io::read_image(&out).unwrap().data;
    let want = reference("2d.logits");
    let n = ours.len();
    let argmax = |v: usize| (0..3).fold(0, |b, c| if want.data()[c * n + v] > want.data()[b * n + v] { c } else { b });
    let agree = (0..n).filter(|&v| ours[v] as usize == argmax(v)).count();
    println!("segment --model (2d ZScore): {agree} of {n} labels are nnU-Net's argmax");
    assert!(agree as f64 >= 0.999 * n as f64, "{agree} of {n}");
    let dir = tmp.path().join("explained");
    let o = xaiclip(&[
        "explain",
        "--model",
        folder("3d_fullres").to_str().unwrap(),
        "--image",
        case.to_str().unwrap(),
        "--slice",
        "all",
        "--organ",
        "liver",
        "--method",
        "occlusion",
        "--roi",
        "none",
        "--occlusion-window",
        "16",
        "--faithfulness-steps",
        "0",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["weights"]["unet"]["intensity"], "ZScore");
    assert_eq!(report["warnings"], serde_json::json!([]));
}

#[test]
fn statistics_are_those_of_the_box_nnunet_crops_to_and_a_masked_norm_with_zeros_inside_it_is_refused() {
    // Plans that z-score only the nonzero region (use_mask_for_norm): its statistics are those of the
    // box nnU-Net crops to; zero voxels inside the box would be left out of them, which xaiclip does not do.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("nnUNetTrainer__nnUNetPlans__2d");
    std::fs::create_dir_all(dir.join("fold_0")).unwrap();
    std::fs::copy(folder("2d").join("dataset.json"), dir.join("dataset.json")).unwrap();
    std::fs::copy(folder("2d").join("fold_0/checkpoint_final.pth"), dir.join("fold_0/checkpoint_final.pth")).unwrap();
    let mut plans: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(folder("2d").join("plans.json")).unwrap()).unwrap();
    plans["configurations"]["2d"]["use_mask_for_norm"] = serde_json::json!([true]);
    std::fs::write(dir.join("plans.json"), serde_json::to_string(&plans).unwrap()).unwrap();
    let model = SegModel::load_dir(&CpuBackend, &dir).unwrap();
    let mut volume = xaiclip::io::read_image(&fixture("case.nii.gz")).unwrap();
    // Without zeros the nonzero region is the whole volume: the same statistics as without the mask.
    assert_eq!(
        model.input_map_of(&volume).unwrap(),
        SegModel::load_dir(&CpuBackend, &folder("2d")).unwrap().input_map_of(&volume).unwrap()
    );
    // A zero border slice is cropped away: the statistics are those of the other slices.
    let slice = volume.dims[0] * volume.dims[1];
    let mut bordered = volume.clone();
    bordered.data[..slice].iter_mut().for_each(|v| *v = 0.0);
    let mut inner = volume.clone();
    inner.data.drain(..slice);
    inner.dims[2] -= 1;
    // The windows differ (the bordered volume's starts at 0); the z-score of the maximum (v = 1) does not.
    let top = |map: Option<[f32; 2]>| map.map(|[scale, shift]| scale + shift).unwrap();
    let (cropped, inside) = (top(model.input_map_of(&bordered).unwrap()), top(model.input_map_of(&inner).unwrap()));
    assert!((cropped - inside).abs() < 1e-5, "{cropped} vs {inside}");
    // Over the whole bordered volume (zeros included) it would be another.
    let n = bordered.data.len() as f64;
    let mean = bordered.data.iter().map(|&v| v as f64).sum::<f64>() / n;
    let std = (bordered.data.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
    let max = bordered.data.iter().copied().fold(f32::MIN, f32::max) as f64;
    assert!(((max - mean) / std - cropped as f64).abs() > 0.01);
    volume.data[0] = 0.0;
    let err = model.input_map_of(&volume).unwrap_err();
    assert!(format!("{err:#}").contains("use_mask_for_norm") && format!("{err:#}").contains("case.nii.gz"), "{err:#}");
}
