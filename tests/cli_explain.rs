//! explain, roi and bench end to end on a phantom with the bundled weights (small settings).

mod common;
use common::*;
use std::path::Path;

fn phantom(dir: &Path) -> (String, String) {
    let out = dir.join("case");
    let o = xaiclip(&["phantom", "--seed", "21", "--out", out.to_str().unwrap(), "--size", "256", "--slices", "12"]);
    assert!(o.status.success(), "{}", stderr(&o));
    (out.join("ct.nii.gz").to_str().unwrap().into(), out.join("labels.nii.gz").to_str().unwrap().into())
}

#[test]
fn explain_writes_aligned_saliency_overlay_and_report() {
    let dir = tempfile::tempdir().unwrap();
    let (ct, labels) = phantom(dir.path());
    let run = |name: &str, extra: &[&str]| {
        let out = dir.path().join(name);
        let mut args = vec![
            "explain",
            "--image",
            &ct,
            "--label",
            &labels,
            "--slice",
            "organ-center",
            "--out",
            out.to_str().unwrap(),
            "--faithfulness-steps",
            "4",
        ];
        args.extend_from_slice(extra);
        let o = xaiclip(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        out
    };
    let out = run("occ", &["--method", "occlusion", "--occlusion-window", "64", "--occlusion-stride", "64"]);
    let image = xaiclip::io::read_image(Path::new(&ct)).unwrap();
    let saliency = xaiclip::io::read_image(&out.join("saliency.nii.gz")).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (image.dims, image.affine));
    assert!(saliency.data.iter().any(|&v| v != 0.0));
    let png = image::open(out.join("overlay.png")).unwrap();
    // A labelled panel at least 512 pixels wide (the phantom's slice is square: as high as wide, plus text).
    assert!(png.width() >= 512 && png.height() > png.width(), "{:?}", (png.width(), png.height()));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let r = &report["result"];
    assert_eq!(r["method"], "occlusion");
    assert_eq!(r["roi"], "clip");
    assert!(r["forward_passes"].as_u64().unwrap() >= 2 && r["forward_passes"].as_u64().unwrap() <= 18, "{r}");
    let auroc = r["agreement"]["auroc"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&auroc));
    // The default score is the mean organ probability over M0, where the organ wins the argmax: above
    // 1 / classes, at most 1.
    let base = r["unperturbed_score"].as_f64().unwrap();
    assert!(base > 1.0 / 14.0 && base <= 1.0, "{r}");
    // Same seed, same bytes; another seed, another map.
    let rise = ["--method", "rise", "--masks", "12", "--roi", "none"];
    let a = std::fs::read(run("r1", &rise).join("saliency.nii.gz")).unwrap();
    let b = std::fs::read(run("r2", &rise).join("saliency.nii.gz")).unwrap();
    let c = std::fs::read(run("r3", &[&rise[..], &["--seed", "3"]].concat()).join("saliency.nii.gz")).unwrap();
    assert_eq!(a, b);
    assert_ne!(a, c);
    // Adaptive RISE records its checks in report.json and plots them in report.html.
    let out = run("adaptive", &["--method", "rise", "--masks", "600", "--rise-tol", "10", "--roi", "none"]);
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let c = &report["result"]["rise_convergence"];
    assert_eq!(c["tol"], 10.0, "{report}");
    // The first check is after the second block of 250; a change below 10 stops the run there.
    assert_eq!(c["steps"].as_array().map(|s| s.len()), Some(1), "{c}");
    assert_eq!(report["result"]["samples"], 500, "{report}");
    assert!(std::fs::read_to_string(out.join("report.html")).unwrap().contains("RISE convergence"));
}

#[test]
fn roi_and_bench_report_coverage_and_rows() {
    let dir = tempfile::tempdir().unwrap();
    let (ct, labels) = phantom(dir.path());
    let roi = dir.path().join("roi.nii.gz");
    let o = xaiclip(&[
        "roi",
        "--image",
        &ct,
        "--label",
        &labels,
        "--slice",
        "organ-center",
        "--out",
        roi.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("of the ground-truth organ"), "{}", stderr(&o));
    let mask = xaiclip::io::read_image(&roi).unwrap();
    assert!(mask.data.contains(&1.0) && mask.labels_present() == vec![0, 1]);

    let json = dir.path().join("bench.json");
    let o = xaiclip(&[
        "bench",
        "--image",
        &ct,
        "--label",
        &labels,
        "--methods",
        "occlusion,rise",
        "--masks",
        "16",
        "--occlusion-window",
        "64",
        "--occlusion-stride",
        "64",
        "--faithfulness-steps",
        "2",
        "--json",
        json.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = table["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 4);
    for key in ["method", "roi", "seconds", "forward_passes", "dice", "iou", "auroc", "deletion_auc", "insertion_auc"] {
        assert!(rows.iter().all(|r| !r[key].is_null()), "{key} missing");
    }
    // ROI mode evaluates fewer occlusion windows, and fewer RISE masks (same masks per touched grid cell).
    assert!(rows[1]["forward_passes"].as_u64() < rows[0]["forward_passes"].as_u64(), "{rows:?}");
    assert!(rows[3]["forward_passes"].as_u64() < rows[2]["forward_passes"].as_u64(), "{rows:?}");
    assert_eq!(table["comparison"].as_array().unwrap().len(), 2);
}

#[test]
fn a_slice_without_the_organ_is_refused_with_a_reason() {
    let dir = tempfile::tempdir().unwrap();
    let (ct, labels) = phantom(dir.path());
    let out = dir.path().join("x");
    // Slice 0 is the inferior end of the phantom: no liver there.
    let o = xaiclip(&[
        "explain",
        "--image",
        &ct,
        "--label",
        &labels,
        "--slice",
        "0",
        "--method",
        "occlusion",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("slice 0 has no liver"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
fn bench_times_the_runs_after_its_warmups_and_keeps_the_first_runs_map() {
    use xaiclip::{Device, ErrorKind, Explainer, Method, RoiMode, Runs, Slices};
    let phantom = xaiclip::phantom::generate(7, 128, 8);
    let explainer = Explainer::builder().device(Device::Cpu).size(Some(64)).build().unwrap();
    let class = explainer.class_of("liver").unwrap();
    let k = explainer.pick_slice(&phantom.image, Some(&phantom.labels), &Slices::OrganCenter, class).unwrap();
    let input = explainer.prepare(&phantom.image, Some(&phantom.labels), k, class, explainer.intensity()).unwrap();
    let mut settings = explainer.settings().clone();
    settings.occlusion.window = 32;
    settings.occlusion.stride = 32;
    settings.faithfulness_steps = 2;
    // Runs per row, counted as the progress callbacks that end a run (done == total).
    let bench = |runs: Runs| {
        let mut ends = 0;
        let rows = explainer.bench(
            &input,
            &Default::default(),
            class,
            &[Method::Occlusion],
            RoiMode::Full,
            &settings,
            runs,
            |_, _, done, total| ends += (done == total) as usize,
            |_| {},
        );
        (rows, ends)
    };
    let (plain, ends) = bench(Runs::default());
    assert_eq!(ends, 2, "one run for each of the two rows");
    let plain = plain.unwrap();
    let (warm, ends) = bench(Runs { warmup: 2, repeat: 3 });
    assert_eq!(ends, 2 * 5, "2 warm-ups + 3 timed runs per row");
    let warm = warm.unwrap();
    for (a, b) in warm.iter().zip(&plain) {
        // The maps and the metrics come from the first run (the only one with the curves).
        assert_eq!(a.saliency, b.saliency);
        assert!(a.faithfulness.is_some() && a.seconds > 0.0);
    }
    let (zero, ends) = bench(Runs { warmup: 1, repeat: 0 });
    assert_eq!((zero.err().map(|e| e.kind()), ends), (Some(ErrorKind::InvalidInput), 0));
}

#[test]
fn bench_exports_the_lime_and_shap_coalitions_it_scored() {
    use xaiclip::explain::lime::{KernelShap, Lime};
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("arrays");
    let o = xaiclip(&[
        "bench",
        "--demo",
        "--size",
        "64",
        "--methods",
        "lime,kernelshap",
        "--samples",
        "12",
        "--seed",
        "5",
        "--roi",
        "seg",
        "--faithfulness-steps",
        "0",
        "--export",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    for (method, roi) in [("lime", "none"), ("lime", "seg"), ("kernelshap", "none"), ("kernelshap", "seg")] {
        let bytes = std::fs::read(out.join(format!("{method}-{roi}.safetensors"))).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let segments: Vec<i32> = bytemuck::pod_collect_to_vec(st.tensor("segments").unwrap().data());
        assert_eq!(segments.len(), 64 * 64);
        // Peers (lime_image) number the features 0..k-1 by the labels present: no label may be missing.
        let k = (segments.iter().max().unwrap() + 1) as usize;
        assert!((0..k as i32).all(|l| segments.contains(&l)), "{method}-{roi}: labels not 0..{k}");
        assert_eq!(segments.contains(&-1), roi == "seg", "{method}-{roi}: pixels outside the ROI are -1");
        let c = st.tensor("coalitions").unwrap();
        assert_eq!((c.dtype(), c.shape()), (safetensors::Dtype::U8, &[12, k][..]), "{method}-{roi}");
        let rows: Vec<Vec<bool>> = c.data().chunks(k).map(|r| r.iter().map(|&b| b == 1).collect()).collect();
        let expect = if method == "lime" {
            Lime { samples: 12, kernel_width: 0.25, alpha: 1.0, seed: 5 }.coalitions(k)
        } else {
            KernelShap { samples: 12, seed: 5 }.coalitions(k)
        };
        assert_eq!(rows, expect, "{method}-{roi}: not the coalitions of --seed 5");
        let first = if method == "lime" { vec![true; k] } else { vec![false; k] };
        assert_eq!(rows[0], first, "{method}-{roi}: sample 0");
    }
}
