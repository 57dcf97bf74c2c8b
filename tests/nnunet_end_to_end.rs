//! A trained nnU-Net v2 2d result folder (tests/fixtures/make_nnunet_trained_fixture.py) end to end:
//! `segment` equals nnUNetPredictor's own prediction label for label, and `explain --model` explains
//! the model's own classes with the CLIP ROI, truth read in the model's ids.

mod common;
use common::*;
use std::path::PathBuf;

fn trained() -> PathBuf {
    repo().join("tests/fixtures/nnunet_trained")
}

fn model() -> PathBuf {
    trained().join("Dataset002_Phantom/nnUNetTrainer__nnUNetPlans__2d")
}

fn read(path: &std::path::Path) -> Vec<f32> {
    xaiclip::io::read_image(path).unwrap().data
}

#[test]
fn segment_equals_nnunet_predictor_label_for_label() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("seg.nii.gz");
    let case = trained().join("case.nii.gz");
    let o = xaiclip(&[
        "segment",
        "--model",
        model().to_str().unwrap(),
        "--image",
        case.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let ours = read(&out);
    let theirs = read(&trained().join("predicted.nii.gz"));
    assert_eq!(ours.len(), theirs.len());
    let differing = ours.iter().zip(&theirs).filter(|(a, b)| a != b).count();
    let organ_voxels = theirs.iter().filter(|&&v| v > 0.0).count();
    println!("{differing} of {} voxels differ from nnUNetPredictor ({organ_voxels} organ voxels)", ours.len());
    assert!(organ_voxels > 1000, "the fixture model segments something");
    assert_eq!(differing, 0);
}

#[test]
fn explain_uses_the_models_class_names_orientation_and_window() {
    let tmp = tempfile::tempdir().unwrap();
    for (organ, class, name) in [("liver", 1, "liver"), ("right-kidney", 2, "kidney_right"), ("spleen", 3, "spleen")] {
        let out = tmp.path().join(organ);
        let o = xaiclip(&[
            "explain",
            "--model",
            model().to_str().unwrap(),
            "--image",
            trained().join("case.nii.gz").to_str().unwrap(),
            "--label",
            trained().join("labels.nii.gz").to_str().unwrap(),
            "--label-ids",
            "model",
            "--slice",
            "organ-center",
            "--organ",
            organ,
            "--method",
            "occlusion",
            "--roi",
            "clip",
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{organ}: {}", stderr(&o));
        let report: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
        assert_eq!(report["organ"], name);
        assert_eq!(report["class"], class);
        let unet = &report["weights"]["unet"];
        assert_eq!(unet["network"], "nnU-Net 2d PlainConvUNet (1 fold)");
        assert!(unet["slices"].as_str().unwrap().starts_with("voxel order"), "{unet}");
        assert!(unet["intensity"].as_str().unwrap().starts_with("CtWindow"), "{unet}");
        assert_eq!(unet["files"].as_array().unwrap().len(), 3);
        let result = &report["result"];
        // The CLIP ROI holds the organ the model predicts, and the map agrees with the truth.
        let coverage = result["roi_coverage"].as_f64().unwrap();
        let dice = result["dice"].as_f64().unwrap();
        let unet_dice = result["unet_dice"].as_f64().unwrap();
        println!("{organ}: ROI coverage {coverage:.3}, ROI {:.3} of the slice, saliency Dice {dice:.3}, U-Net Dice {unet_dice:.3}", result["roi_fraction"]);
        assert!(coverage >= 0.9, "{organ}: {coverage}");
        assert!(unet_dice > 0.9, "{organ}: the trained model's own Dice {unet_dice}");
        assert!(dice > 0.3, "{organ}: {dice}");
    }
}

#[test]
fn labels_in_model_ids_need_a_model_that_lists_its_classes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("out");
    fails(
        &[
            "explain",
            "--image",
            trained().join("case.nii.gz").to_str().unwrap(),
            "--label",
            trained().join("labels.nii.gz").to_str().unwrap(),
            "--label-ids",
            "model",
            "--slice",
            "0",
            "--method",
            "occlusion",
            "--out",
            out.to_str().unwrap(),
        ],
        &["--label-ids model: this model does not list its classes"],
    );
    assert!(!out.exists());
}

#[test]
fn eval_maps_flare22_labels_onto_the_models_own_channels() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let o = xaiclip(&[
        "phantom",
        "--layout",
        "flare22",
        "--cases",
        "2",
        "--size",
        "128",
        "--slices",
        "8",
        "--seed",
        "30",
        "--out",
        data.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = tmp.path().join("out");
    // FLARE22's left kidney is 13; the model's kidney_left is channel 4.
    let o = xaiclip(&[
        "eval",
        "--dataset",
        "flare22",
        data.to_str().unwrap(),
        "--model",
        model().to_str().unwrap(),
        "--organ",
        "left-kidney",
        "--methods",
        "occlusion",
        "--roi",
        "clip",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert_eq!((l["organ"].as_str(), l["status"].as_str()), (Some("left kidney"), Some("ok")), "{l}");
        let (auroc, coverage) = (l["auroc"].as_f64().unwrap(), l["roi_coverage"].as_f64().unwrap());
        println!("{}: AUROC {auroc:.3}, ROI coverage {coverage:.3}", l["case"]);
        assert!(auroc > 0.9 && coverage >= 0.9, "{l}");
    }
}
