//! nnU-Net's resampling: xaiclip's against nnunetv2's own `resample_data_or_seg_to_shape` on random
//! arrays, and whole volumes at spacings other than the plans' against nnUNetPredictor
//! (tests/fixtures/make_nnunet_resampling_fixture.py).

mod common;
use common::*;
use std::path::PathBuf;
use xaiclip::backend::CpuBackend;
use xaiclip::models::SegModel;
use xaiclip::resample::{new_shape, resample, Orders};
use xaiclip::volumes::{predict_slice, predict_volume, segment_volume_on, volume_window};
use xaiclip::weights::WeightsFile;
use xaiclip::{Device, Precision};

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/fixtures/nnunet_resampling").join(name)
}

#[test]
fn resampling_matches_nnunet_on_every_path() {
    let cases: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("cases.json")).unwrap()).unwrap();
    let arrays = WeightsFile::open(&fixture("arrays.safetensors")).unwrap();
    let three = |v: &serde_json::Value| -> [f64; 3] { std::array::from_fn(|a| v[a].as_f64().unwrap()) };
    let cases = cases.as_object().unwrap();
    assert_eq!(cases.len(), 7);
    for (name, case) in cases {
        let shape = three(&case["shape"]).map(|v| v as usize);
        let target = three(&case["target_shape"]).map(|v| v as usize);
        let (current, new) = (three(&case["current"]), three(&case["new"]));
        assert_eq!(new_shape(shape, current, new), target, "{name}");
        let orders =
            Orders { order: case["order"].as_u64().unwrap() as u8, order_z: case["order_z"].as_u64().unwrap() as u8 };
        let input = arrays.get(&format!("{name}.input")).unwrap();
        let expected = arrays.get(&format!("{name}.output")).unwrap();
        let out = resample(input.data(), shape, target, current, new, orders);
        let (err, scale) = max_error(&out, expected.data());
        println!("{name}: {shape:?} -> {target:?}, {orders:?}: max |diff| {err:.2e} of max {scale:.2}");
        assert!(err <= 1e-5 * scale, "{name}: off by {err} (max {scale})");
    }
}

/// The three cases through `configuration`'s models of both data sets, against the predictor's logits
/// and labels in `reference`.
fn predicts_as_nnunet(configuration: &str, reference: &str) {
    let ct = repo().join(format!("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__{configuration}"));
    let mr = repo()
        .join(format!("tests/fixtures/nnunet_zscore/Dataset003_TinyMR/nnUNetTrainer__nnUNetPlans__{configuration}"));
    let reference_file = fixture(reference);
    let reference = WeightsFile::open(&reference_file).unwrap();
    let bytes = std::fs::read(&reference_file).unwrap();
    let raw = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    for (case, dir) in [("coarse", &ct), ("fine", &ct), ("cropped_mr", &mr)] {
        let model = SegModel::load_dir(&CpuBackend, dir).unwrap();
        let window = volume_window(dir).unwrap();
        let image = fixture(&format!("{case}.nii.gz"));
        let volume = xaiclip::io::read_image(&image).unwrap();
        let logits = predict_volume(&CpuBackend, &model, &volume, &window, None).unwrap();
        let expected = reference.get(&format!("{case}.logits")).unwrap();
        let (err, scale) = max_error(&logits, expected.data());
        println!(
            "{configuration} {case}: {:?} voxels at {:.2?} mm: logits max |diff| {err:.2e} of max |logit| {scale:.2}",
            volume.dims,
            volume.spacing()
        );
        assert!(err <= 1e-4 * scale, "{case}: logits off by {err} (max {scale})");
        let labels = segment_volume_on(Device::Cpu, Precision::F32, dir, &volume, None, None, false).unwrap();
        let predictor = raw.tensor(&format!("{case}.labels")).unwrap().data().to_vec();
        let (ties, moved) = predictor_label_differences(case, &labels, expected.data(), &predictor, err);
        let n = volume.voxel_count();
        println!(
            "{configuration} {case}: {n} voxels, {moved} labelled otherwise by nnUNetPredictor (its float16 sums), {ties} float32 ties"
        );
        assert!(ties * 1000 <= n && moved * 50 <= n, "{case}: {ties} ties, {moved} moved");
    }
}

#[test]
fn volumes_at_other_spacings_or_with_zero_borders_are_cropped_and_resampled_as_nnunet_predicts_them() {
    predicts_as_nnunet("3d_fullres", "reference.safetensors");
}

#[test]
fn a_2d_configuration_predicts_volumes_slice_by_slice_as_nnunet_does() {
    // Cropped, resampled in plane (the spacing between slices kept), each slice tiled with the 2-D patch.
    predicts_as_nnunet("2d", "reference_2d.safetensors");
}

#[test]
fn one_slice_of_a_2d_configuration_gets_the_logits_nnunet_predicts_for_it() {
    // Each slice alone, on the grid of the whole volume (cropped and resampled as a whole), against the
    // predictor's logits of the volume on that slice.
    let ct = repo().join("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__2d");
    let mr = repo().join("tests/fixtures/nnunet_zscore/Dataset003_TinyMR/nnUNetTrainer__nnUNetPlans__2d");
    let reference = WeightsFile::open(&fixture("reference_2d.safetensors")).unwrap();
    for (case, dir) in [("coarse", &ct), ("fine", &ct), ("cropped_mr", &mr)] {
        let model = SegModel::load_dir(&CpuBackend, dir).unwrap();
        // These plans keep the file's axes: slices along k.
        assert_eq!(model.orientation(), xaiclip::preprocess::Orientation::Voxel([2, 1, 0]));
        let window = volume_window(dir).unwrap();
        let volume = xaiclip::io::read_image(&fixture(&format!("{case}.nii.gz"))).unwrap();
        let expected = reference.get(&format!("{case}.logits")).unwrap();
        let expected = expected.data();
        let [nx, ny, nz] = volume.dims;
        let plane = nx * ny;
        let (mut worst, mut scale, mut refused) = (0f32, 0f32, 0);
        for k in 0..nz {
            let logits = match predict_slice(&CpuBackend, &model, &volume, &window, None, k) {
                Ok(l) => l,
                Err(e) => {
                    // Only slices nnU-Net crops away (all zero) are refused, and it labels them background.
                    assert_eq!(xaiclip::error::kind_of(&e), xaiclip::ErrorKind::OrganAbsent, "{case} slice {k}: {e}");
                    assert!(volume.data[k * plane..(k + 1) * plane].iter().all(|&v| v == 0.0), "{case} slice {k}");
                    refused += 1;
                    continue;
                }
            };
            for (class, (got, want)) in
                logits.chunks_exact(volume.voxel_count()).zip(expected.chunks_exact(volume.voxel_count())).enumerate()
            {
                let (off, on) = (k * plane, (k + 1) * plane);
                let (err, s) = max_error(&got[off..on], &want[off..on]);
                (worst, scale) = (worst.max(err), scale.max(s));
                assert!(
                    got[..off].iter().chain(&got[on..]).all(|&v| v == 0.0),
                    "{case} slice {k} class {class}: off the slice"
                );
            }
        }
        println!("{case}: {nz} slices one at a time ({refused} cropped away): logits max |diff| {worst:.2e} of max {scale:.2}");
        assert!(worst <= 1e-4 * scale, "{case}: off by {worst} (max {scale})");
        assert_eq!(refused, if case == "cropped_mr" { 2 } else { 0 }, "{case}");
    }
}

#[test]
fn explain_runs_a_2d_configuration_on_the_predictors_grid_for_a_slice_or_the_volume() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__2d");
    let image = fixture("coarse.nii.gz");
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let args =
            ["explain", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--organ", "liver"];
        let rest = ["--method", "occlusion", "--occlusion-window", "8", "--roi", "none", "--faithfulness-steps", "0"];
        let o = xaiclip(&[&args[..], extra, &rest, &["--out", out.to_str().unwrap()]].concat());
        assert!(o.status.success(), "{}", stderr(&o));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        (o, report, out)
    };
    // One slice nnUNetPredictor would resample and tile: on its grid (47 x 49, four 40 x 48 tiles), no
    // warning, the map on that slice alone.
    let (o, report, out) = run("slice", &["--slice", "5"]);
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    assert_eq!(
        (&report["mode"], &report["slice"], &report["warnings"]),
        (&"slice".into(), &5.into(), &serde_json::json!([]))
    );
    assert_eq!(report["result"]["tiles"].as_u64(), Some(4), "{}", report["result"]);
    let saliency = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    let plane = saliency.dims[0] * saliency.dims[1];
    let on: Vec<usize> = (0..saliency.data.len()).filter(|&v| saliency.data[v] != 0.0).collect();
    assert!(!on.is_empty() && on.iter().all(|&v| v / plane == 5), "the map lies on slice 5 alone");
    // --size asks for the slice resized to a model grid: the slice path, with the warning.
    let (o, report, _) = run("resized", &["--slice", "5", "--size", "64"]);
    assert!(stderr(&o).contains("nnUNetPredictor would resample"), "{}", stderr(&o));
    assert_eq!(report["model_input_size"], 64);
    // Every slice: the whole volume, 4 tiles on each of its 10 slices.
    let (_, report, _) = run("volume", &["--slice", "all"]);
    assert_eq!((&report["mode"], report["result"]["tiles"].as_u64()), (&"volume".into(), Some(40)));
    // bench takes the same path: shares are of the slice's voxels.
    let json = dir.path().join("bench.json");
    let args = ["bench", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap(), "--slice", "5"];
    let rest = [
        "--methods",
        "occlusion",
        "--roi",
        "seg",
        "--margin-mm",
        "0",
        "--faithfulness-steps",
        "0",
        "--json",
        json.to_str().unwrap(),
    ];
    let o = xaiclip(&[&args[..], &rest].concat());
    assert!(o.status.success() && !stderr(&o).contains("warning"), "{}", stderr(&o));
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!((&table["context"]["mode"], &table["context"]["slice"]), (&"slice".into(), &5.into()));
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows[0]["roi_fraction"], 1.0, "{}", rows[0]);
    let roi = rows[1]["roi_fraction"].as_f64().unwrap();
    assert!(roi > 0.0 && roi < 1.0, "{}", rows[1]);
}

#[test]
fn explain_resamples_and_maps_come_back_on_the_input_grid() {
    let dir = tempfile::tempdir().unwrap();
    let (image, out) = (fixture("coarse.nii.gz"), dir.path().join("out"));
    let model = repo().join("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres");
    let o = xaiclip(&[
        "explain",
        "--image",
        image.to_str().unwrap(),
        "--model",
        model.to_str().unwrap(),
        "--organ",
        "liver",
        "--slice",
        "all",
        "--method",
        "occlusion",
        "--occlusion-window",
        "12",
        "--roi",
        "seg",
        "--faithfulness-steps",
        "2",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let voxels = report["weights"]["unet"]["voxels"].as_str().unwrap();
    assert!(
        voxels.contains("resampled to the plans' spacing [2.5, 0.800000011920929, 0.800000011920929] mm"),
        "{voxels}"
    );
    // The model's grid is (20, 47, 49): 4 tiles of (20, 40, 48).
    assert_eq!(report["result"]["tiles"].as_u64(), Some(4), "{}", report["result"]);
    let saliency = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    let volume = xaiclip::io::read_image(&image).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (volume.dims, volume.affine));
    assert!(saliency.data.iter().any(|&v| v > 0.0));
}

#[test]
fn slices_through_a_2d_model_warn_where_nnunet_would_prepare_them_otherwise() {
    let dir = repo().join("tests/fixtures/nnunet_trained/Dataset002_Phantom/nnUNetTrainer__nnUNetPlans__2d");
    let model = SegModel::load_dir(&CpuBackend, &dir).unwrap();
    let SegModel::NnUNet { model: nnunet, .. } = &model else { panic!("an nnU-Net folder") };
    let grid = nnunet.default_grid();
    // The fixture's case is one patch at the plans' spacing: exactly what nnUNetPredictor runs.
    let volume = xaiclip::io::read_image(&repo().join("tests/fixtures/nnunet_trained/case.nii.gz")).unwrap();
    assert_eq!(model.slice_geometry_warning(&volume, grid), None);
    // Another in-plane spacing: nnU-Net would resample; a zero border: it would crop.
    let mut coarse = volume.clone();
    coarse.affine[0][0] *= 1.5;
    let warning = model.slice_geometry_warning(&coarse, grid).unwrap();
    assert!(warning.contains("resample its") && warning.contains("predict them with its"), "{warning}");
    let mut border = volume.clone();
    let slice = border.dims[0] * border.dims[1];
    border.data[..slice].iter_mut().for_each(|v| *v = 0.0);
    let warning = model.slice_geometry_warning(&border, grid).unwrap();
    assert!(warning.contains("crop it to its nonzero voxels") && !warning.contains("resample"), "{warning}");
    // A 3-D configuration does all of it itself.
    let ct = repo().join("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__3d_fullres");
    assert_eq!(SegModel::load_dir(&CpuBackend, &ct).unwrap().slice_geometry_warning(&coarse, grid), None);
    // explain and bench route a slice from plans.json alone (no weights read): the same decision.
    for (v, exact) in [(&volume, true), (&coarse, false), (&border, false)] {
        assert_eq!(xaiclip::volumes::slice_needs_predictor_grid(&dir, v).unwrap(), !exact);
        assert_eq!(
            xaiclip::models::nnunet::default_slice_warning(&dir, v).unwrap(),
            model.slice_geometry_warning(v, grid)
        );
    }
    assert!(!xaiclip::volumes::slice_needs_predictor_grid(&ct, &coarse).unwrap());
    assert!(!xaiclip::volumes::slice_needs_predictor_grid(&repo().join("weights/unet"), &coarse).unwrap());
}

#[test]
fn segment_runs_a_2d_configuration_over_the_whole_volume_unless_slices_are_asked() {
    let dir = tempfile::tempdir().unwrap();
    let model = repo().join("tests/fixtures/nnunet/Dataset001_Tiny/nnUNetTrainer__nnUNetPlans__2d");
    let image = fixture("coarse.nii.gz");
    let (whole, some) = (dir.path().join("whole.nii.gz"), dir.path().join("some.nii.gz"));
    let run = |out: &std::path::Path, slices: &str| {
        let args = ["segment", "--model", model.to_str().unwrap(), "--image", image.to_str().unwrap()];
        xaiclip(&[&args[..], &["--slice", slices, "--out", out.to_str().unwrap()]].concat())
    };
    let o = run(&whole, "all");
    assert!(o.status.success() && stderr(&o).contains("segmented the whole volume"), "{}", stderr(&o));
    let labels: Vec<u8> = xaiclip::io::read_image(&whole).unwrap().data.iter().map(|&v| v as u8).collect();
    let bytes = std::fs::read(fixture("reference_2d.safetensors")).unwrap();
    let raw = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let predictor = raw.tensor("coarse.labels").unwrap().data().to_vec();
    let differ = labels.iter().zip(&predictor).filter(|(a, b)| a != b).count();
    assert!(differ <= 2, "{differ} of {} labels differ from nnUNetPredictor's", labels.len());
    // Asked slices go through the slice path, resized to the model grid, with the warning that says so.
    let o = run(&some, "3,4");
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("nnUNetPredictor would resample") && stderr(&o).contains("segmented 2 slices"),
        "{}",
        stderr(&o)
    );
    // info says so.
    let o = xaiclip(&["info", "--model", model.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("volumes:    segment --slice all") && out.contains("in plane, the spacing between slices kept"),
        "{out}"
    );
}
