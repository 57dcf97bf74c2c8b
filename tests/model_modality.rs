//! A model's own input conventions are read from it or required, and an image that does not fit them is
//! refused (the file says so) or warned about (its values say so): the modality a model was trained on,
//! its input size, and TotalSegmentator's CT and MR label tables.

mod common;
use common::{fails, phantom_tree, repo, small_phantom, stderr, xaiclip};
use std::path::{Path, PathBuf};
use xaiclip::backend::CpuBackend;
use xaiclip::dataset::LabelIds;
use xaiclip::io::Volume;
use xaiclip::models::SegModel;
use xaiclip::preprocess::{check_modality, Intensity, Modality};

/// A copy of the small BasicUNet fixture whose config.json adds `extra` (JSON object members).
fn fixture_with(dir: &Path, extra: &str) -> PathBuf {
    let fixture = repo().join("tests/fixtures/unet_instance_deconv");
    let unet = dir.join("unet");
    std::fs::create_dir_all(&unet).unwrap();
    std::fs::copy(fixture.join("model.safetensors"), unet.join("model.safetensors")).unwrap();
    let config = std::fs::read_to_string(fixture.join("config.json")).unwrap();
    let body = config.trim().trim_end_matches('}').trim_end();
    std::fs::write(unet.join("config.json"), format!("{body}, {extra}}}")).unwrap();
    unet
}

#[test]
fn the_model_states_its_modalities() {
    let dir = tempfile::tempdir().unwrap();
    let mr_only = fixture_with(dir.path(), r#""input_size": 32, "modalities": ["MR"]"#);
    let model = SegModel::load_dir(&CpuBackend, &mr_only).unwrap();
    assert_eq!(model.modalities(), Some(vec![Modality::Mr]));
    // Nothing asked: the one modality's normalisation, not the CT window.
    assert_eq!(model.input_intensity(None).unwrap(), Intensity::MrPercentile);
    let err = model.input_intensity(Some(Intensity::ABDOMEN)).unwrap_err();
    assert!(format!("{err:#}").contains("trained on MR only"), "{err:#}");
    // The bundled 2-D U-Net takes both; the bundled 3-D one CT only.
    let bundled = SegModel::load_dir(&CpuBackend, &repo().join("weights/unet")).unwrap();
    assert_eq!(bundled.modalities(), Some(vec![Modality::Ct, Modality::Mr]));
    assert_eq!(bundled.input_intensity(None).unwrap(), Intensity::ABDOMEN);
    assert_eq!(bundled.input_intensity(Some(Intensity::MrPercentile)).unwrap(), Intensity::MrPercentile);

    let bad = fixture_with(&dir.path().join("bad"), r#""modalities": ["PET"]"#);
    let Err(err) = SegModel::load_dir(&CpuBackend, &bad) else { panic!("modality PET accepted") };
    assert!(format!("{err:#}").contains("modalities must be"), "{err:#}");
}

#[test]
fn a_modality_the_model_lacks_is_refused_before_any_output() {
    let dir = tempfile::tempdir().unwrap();
    let ct = small_phantom(dir.path());
    let out = dir.path().join("out");
    fails(
        &[
            "explain",
            "--image",
            ct.to_str().unwrap(),
            "--unet",
            repo().join("weights/unet3d").to_str().unwrap(),
            "--slice",
            "all",
            "--modality",
            "mr",
            "--method",
            "occlusion",
            "--roi",
            "none",
            "--out",
            out.to_str().unwrap(),
        ],
        &["weights/unet3d", "trained on CT only", "MR"],
    );
    assert!(!out.exists(), "output written");
}

#[test]
fn a_model_without_an_input_size_needs_size() {
    let dir = tempfile::tempdir().unwrap();
    let ct = small_phantom(dir.path());
    let unet = repo().join("tests/fixtures/unet_instance_deconv");
    let out = dir.path().join("labels.nii.gz");
    let args = ["segment", "--image", ct.to_str().unwrap(), "--unet", unet.to_str().unwrap(), "--out"];
    fails(&[&args[..], &[out.to_str().unwrap()]].concat(), &["unet_instance_deconv", "no input size", "--size"]);
    assert!(!out.exists());
    let o = xaiclip(&[&args[..], &[out.to_str().unwrap(), "--size", "32"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn a_dicom_series_of_another_modality_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    phantom_tree("chaos-mr", dir.path(), 1);
    let series = dir.path().join("MR/1/T2SPIR/DICOM_anon");
    let out = dir.path().join("labels.nii.gz");
    let image = ["segment", "--image", series.to_str().unwrap(), "--out", out.to_str().unwrap()];
    fails(&image, &["DICOM_anon", "the series is MR (DICOM Modality)", "--modality mr"]);
    assert!(!out.exists());
    let o = xaiclip(&[&image[..], &["--modality", "mr"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("warning"), "{}", stderr(&o));
    // The library refuses it too.
    let volume = xaiclip::read_volume(&series).unwrap();
    assert_eq!(volume.modality.as_deref(), Some("MR"));
    assert!(check_modality(&volume, Modality::Ct).is_err());
    assert_eq!(check_modality(&volume, Modality::Mr).unwrap(), None);
}

#[test]
fn values_that_cannot_be_the_modality_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let ct = small_phantom(dir.path());
    let mr_dir = dir.path().join("mr");
    let o =
        xaiclip(&["phantom", "--size", "64", "--slices", "4", "--mr", "t2-spir", "--out", mr_dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mr = mr_dir.join("mr_t2_spir.nii.gz");
    let segment = |image: &Path, extra: &[&str]| {
        let out = dir.path().join("labels.nii.gz");
        let o = xaiclip(
            &[&["segment", "--image", image.to_str().unwrap(), "--out", out.to_str().unwrap()], extra].concat(),
        );
        assert!(o.status.success(), "{}", stderr(&o));
        stderr(&o).lines().filter(|l| l.starts_with("warning:")).map(str::to_string).collect::<Vec<_>>()
    };
    let warned = segment(&mr, &[]);
    assert!(warned.len() == 1 && warned[0].contains("not CT in Hounsfield units"), "{warned:?}");
    assert!(warned[0].contains("mr_t2_spir.nii.gz") && warned[0].contains("--modality mr"), "{warned:?}");
    let warned = segment(&ct, &["--modality", "mr"]);
    assert!(warned.len() == 1 && warned[0].contains("a CT image?"), "{warned:?}");
    assert!(segment(&ct, &[]).is_empty());
    assert!(segment(&mr, &["--modality", "mr"]).is_empty());

    // explain records the warning in report.json.
    let out = dir.path().join("explained");
    let o = xaiclip(&[
        "explain",
        "--image",
        mr.to_str().unwrap(),
        "--slice",
        "2",
        "--method",
        "occlusion",
        "--roi",
        "none",
        "--occlusion-window",
        "64",
        "--faithfulness-steps",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let warnings = report["warnings"].as_array().unwrap();
    assert!(warnings.len() == 1 && warnings[0].as_str().unwrap().contains("not CT"), "{warnings:?}");
}

/// A 4x4x1 label volume on a 1 mm grid holding `ids`.
fn labels(dir: &Path, ids: [u8; 4]) -> (PathBuf, Volume) {
    let image = Volume {
        dims: [2, 2, 1],
        data: vec![0.0; 4],
        affine: [[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 1.0]],
        source: PathBuf::from("image"),
        nifti_header: None,
        modality: None,
    };
    let path = dir.join("labels.nii.gz");
    xaiclip::io::nifti::write_like(&path, &image, &ids).unwrap();
    (path, image)
}

#[test]
fn totalsegmentator_ct_and_mr_tables() {
    let dir = tempfile::tempdir().unwrap();
    // total_mr: 5 liver, 15 colon (not a FLARE22 organ), 23 aorta, 3 left kidney.
    let (path, image) = labels(dir.path(), [5, 15, 23, 3]);
    let mr = xaiclip::read_labels(&path, LabelIds::TotalsegMr, &image).unwrap();
    assert_eq!(mr, vec![1, 0, 5, 13]);
    // The same numbers read as the CT task: 5 liver, 15 esophagus, 23 (kidney cyst) dropped, 3 left kidney.
    let ct = xaiclip::read_labels(&path, LabelIds::Totalseg, &image).unwrap();
    assert_eq!(ct, vec![1, 10, 0, 13]);
    // An id beyond the MR table (52, the CT task's aorta) is refused, naming the file and both tables.
    let (path, image) = labels(dir.path(), [5, 52, 0, 0]);
    let err = format!("{:#}", xaiclip::read_labels(&path, LabelIds::TotalsegMr, &image).unwrap_err());
    assert!(err.contains("labels.nii.gz") && err.contains("label 52") && err.contains("1-50"), "{err}");
    assert_eq!(xaiclip::read_labels(&path, LabelIds::Totalseg, &image).unwrap(), vec![1, 5, 0, 0]);
    let (path, image) = labels(dir.path(), [118, 0, 0, 0]);
    let err = format!("{:#}", xaiclip::read_labels(&path, LabelIds::Totalseg, &image).unwrap_err());
    assert!(err.contains("label 118") && err.contains("1-117"), "{err}");
}
