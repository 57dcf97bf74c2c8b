//! `xaiclip explain` with a 3-D U-Net: whole-volume occlusion on a phantom with the 3-D fixture model.

mod common;
use common::*;
use std::path::Path;

/// `explain` on the phantom in `dir/case` into `dir/name`; `extra` options override the defaults here.
fn explain(dir: &Path, name: &str, extra: &[&str]) -> std::process::Output {
    let (ct, labels) = (dir.join("case/ct.nii.gz"), dir.join("case/labels.nii.gz"));
    let unet = repo().join("tests/fixtures/unet_volume_instance_deconv");
    let out = dir.join(name);
    let mut args = vec![
        "explain",
        "--image",
        ct.to_str().unwrap(),
        "--label",
        labels.to_str().unwrap(),
        "--unet",
        unet.to_str().unwrap(),
        "--occlusion-window",
        "16",
        "--out",
        out.to_str().unwrap(),
    ];
    for (flag, default) in [("--method", "occlusion"), ("--slice", "all"), ("--patch", "32,32,32")] {
        if !extra.contains(&flag) {
            args.extend([flag, default]);
        }
    }
    args.extend_from_slice(extra);
    xaiclip(&args)
}

#[test]
fn a_3d_unet_explains_the_whole_volume_with_tile_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case");
    let o = xaiclip(&["phantom", "--seed", "3", "--size", "64", "--slices", "32", "--out", case.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = explain(dir.path(), "full", &["--roi", "none"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let image = xaiclip::io::read_image(&case.join("ct.nii.gz")).unwrap();
    let saliency = xaiclip::io::read_image(&dir.path().join("full/saliency.nii.gz")).unwrap();
    assert_eq!((saliency.dims, saliency.affine), (image.dims, image.affine));
    assert!(saliency.data.iter().any(|&v| v != 0.0));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("full/report.json")).unwrap()).unwrap();
    let r = &report["result"];
    // 64 x 64 x 32 in windows of 16: 4 x 4 x 2 = 32 samples; tiles of 32 at overlap 0.25: 3 x 3 x 1.
    assert_eq!((r["samples"].as_u64(), r["tiles"].as_u64()), (Some(32), Some(9)), "{r}");
    assert_eq!(r["tiles_naive"].as_u64(), Some(33 * 9));
    assert!(r["tiles_evaluated"].as_u64().unwrap() < 33 * 9 / 2, "{r}");
    let full_tiles = r["tiles_evaluated"].as_u64();
    assert!((0.0..=1.0).contains(&r["agreement"]["auroc"].as_f64().unwrap()), "{r}");
    // Deletion/insertion over the voxels, 10 steps by default, from the unperturbed score.
    let deletion = r["faithfulness"]["deletion_curve"].as_array().unwrap();
    assert_eq!((deletion.len(), &deletion[0]), (11, &r["unperturbed_score"]), "{r}");
    assert!(image::open(dir.path().join("full/overlay.png")).unwrap().width() >= 3 * 512);
    // Recomputing every tile gives the same map, byte for byte.
    let o = explain(dir.path(), "no_reuse", &["--roi", "none", "--no-tile-reuse"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let a = std::fs::read(dir.path().join("full/saliency.nii.gz")).unwrap();
    assert_eq!(a, std::fs::read(dir.path().join("no_reuse/saliency.nii.gz")).unwrap());
    // The seg ROI: perturbed and attributed inside the grown prediction only.
    let o = explain(dir.path(), "seg", &["--roi", "seg", "--margin-mm", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("seg/report.json")).unwrap()).unwrap();
    let r = &report["result"];
    assert!(r["roi_fraction"].as_f64().unwrap() < 1.0 && r["roi_coverage"].as_f64() == Some(1.0), "{r}");
    assert!(r["samples"].as_u64().unwrap() <= 32);
    // The CLIP ROI over the axial slices: perturbations stay inside it, and a miss falls back when asked.
    let report = |name: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(dir.path().join(name).join("report.json")).unwrap()).unwrap()
    };
    let o = explain(dir.path(), "clip", &["--roi", "clip", "--roi-min-coverage", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r = &report("clip")["result"];
    assert_eq!((r["clip"]["slices"].as_u64(), r["roi_fallback"].as_str()), (Some(32), None), "{r}");
    assert!(r["roi_fraction"].as_f64().unwrap() < 0.5 && r["samples"].as_u64().unwrap() < 32, "{r}");
    assert!(r["tiles_evaluated"].as_u64() < full_tiles, "{r}");
    let clip_map = xaiclip::io::read_image(&dir.path().join("clip/saliency.nii.gz")).unwrap();
    let full_map = xaiclip::io::read_image(&dir.path().join("full/saliency.nii.gz")).unwrap();
    assert!(clip_map.data.iter().filter(|&&v| v != 0.0).count() < full_map.data.iter().filter(|&&v| v != 0.0).count());
    let o = explain(dir.path(), "fallback", &["--roi", "clip", "--roi-fallback", "seg", "--margin-mm", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (r, seg) = (&report("fallback")["result"], &report("seg")["result"]);
    assert_eq!(r["roi_fallback"].as_str(), Some("seg"), "{r}");
    assert!(r["roi_coverage"].as_f64().unwrap() < 0.9, "{r}");
    assert_eq!((&r["roi_fraction"], &r["samples"]), (&seg["roi_fraction"], &seg["samples"]), "{r}");
    // RISE over the volume: masks on the seg ROI only, the same map with and without tile reuse.
    let rise = ["--method", "rise", "--masks", "16", "--grid", "4", "--roi", "seg", "--margin-mm", "6"];
    let o = explain(dir.path(), "rise", &rise);
    assert!(o.status.success(), "{}", stderr(&o));
    let o = explain(dir.path(), "rise_no_reuse", &[&rise[..], &["--no-tile-reuse"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let rise_map = std::fs::read(dir.path().join("rise/saliency.nii.gz")).unwrap();
    assert_eq!(rise_map, std::fs::read(dir.path().join("rise_no_reuse/saliency.nii.gz")).unwrap());
    let report_rise = report("rise");
    let (settings, r) = (&report_rise["settings"], &report_rise["result"]);
    assert_eq!((settings["method"].as_str(), settings["rise"]["grid"].as_u64()), (Some("rise"), Some(4)), "{settings}");
    assert!((1..=16).contains(&r["samples"].as_u64().unwrap()), "{r}");
    let map = xaiclip::io::read_image(&dir.path().join("rise/saliency.nii.gz")).unwrap();
    let roi_voxels = (r["roi_fraction"].as_f64().unwrap() * map.data.len() as f64).round() as usize;
    let nonzero = map.data.iter().filter(|&&v| v != 0.0).count();
    assert!(nonzero > 0 && nonzero <= roi_voxels, "{nonzero} attributed voxels, ROI {roi_voxels}");
    // Kernel SHAP on SLIC supervoxels of the seg ROI: samples scale with the supervoxels kept.
    let shap = ["--method", "kernelshap", "--samples", "64", "--segments", "32", "--roi", "seg", "--margin-mm", "6"];
    let o = explain(dir.path(), "shap", &shap);
    assert!(o.status.success(), "{}", stderr(&o));
    let report_shap = report("shap");
    let (settings, r) = (&report_shap["settings"], &report_shap["result"]);
    assert_eq!(settings["kernelshap"]["segmenter"]["segments"].as_u64(), Some(32), "{settings}");
    assert!((16..64).contains(&r["samples"].as_u64().unwrap()), "{r}");
    // clip+seg holds M0 by construction.
    let o = explain(dir.path(), "clipseg", &["--roi", "clip+seg", "--margin-mm", "6"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report("clipseg")["result"]["roi_coverage"].as_f64(), Some(1.0));
    // What a 3-D model cannot do yet is refused before any work, naming the option.
    for (extra, expect) in [
        (&["--method", "lime", "--segmenter", "felzenszwalb"][..], "--segmenter felzenszwalb is for slices"),
        (&["--method", "rise", "--rise-tol", "0.1"][..], "--rise-tol: the adaptive RISE stop is for slices"),
        (&["--slice", "5"][..], "--slice 5: a 3-D U-Net explains the whole volume; pass --slice all"),
        // The fixture's random weights predict "liver" in scattered places the CLIP ROI does not hold.
        (&["--roi", "clip"][..], "of the model's own liver prediction in this volume (at least 90% needed)"),
        (&["--patch", "8,32,32"][..], "--patch \"8,32,32\": expected D,H,W, three integers >= 16"),
    ] {
        let o = explain(dir.path(), "bad", extra);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(expect) && !err.contains("panicked"), "{err}");
        assert!(!dir.path().join("bad").exists());
    }
}

#[test]
fn bench_with_a_3d_unet_compares_each_method_over_the_volume_and_in_the_roi() {
    let dir = tempfile::tempdir().unwrap();
    let case = dir.path().join("case");
    let o = xaiclip(&["phantom", "--seed", "3", "--size", "64", "--slices", "32", "--out", case.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (ct, labels) = (case.join("ct.nii.gz"), case.join("labels.nii.gz"));
    let unet = repo().join("tests/fixtures/unet_volume_instance_deconv");
    let (md, json) = (dir.path().join("bench.md"), dir.path().join("bench.json"));
    let bench = |extra: &[&str]| {
        let mut args = vec!["bench", "--image", ct.to_str().unwrap(), "--label", labels.to_str().unwrap()];
        args.extend(["--unet", unet.to_str().unwrap(), "--patch", "32,32,32", "--occlusion-window", "16"]);
        args.extend(["--masks", "16", "--grid", "4", "--roi", "seg", "--margin-mm", "6", "--faithfulness-steps", "4"]);
        args.extend(["--md", md.to_str().unwrap(), "--json", json.to_str().unwrap()]);
        args.extend_from_slice(extra);
        xaiclip(&args)
    };
    let o = bench(&["--methods", "occlusion,rise"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let table: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let rows = table["rows"].as_array().unwrap();
    let names: Vec<_> = rows.iter().map(|r| (r["method"].as_str().unwrap(), r["roi"].as_str().unwrap())).collect();
    assert_eq!(names, [("occlusion", "none"), ("occlusion", "seg"), ("rise", "none"), ("rise", "seg")]);
    for pair in rows.chunks(2) {
        let (full, roi) = (&pair[0], &pair[1]);
        assert_eq!(full["roi_fraction"].as_f64(), Some(1.0), "{full}");
        assert!(roi["roi_fraction"].as_f64().unwrap() < 1.0 && roi["roi_coverage"].as_f64() == Some(1.0), "{roi}");
        assert!(roi["tiles_evaluated"].as_u64() < full["tiles_evaluated"].as_u64(), "{full} {roi}");
        for r in pair {
            assert!(r["deletion_auc"].as_f64().is_some() && r["dice"].as_f64().is_some(), "{r}");
            assert!(r["tiles_evaluated"].as_u64() <= r["tiles_naive"].as_u64(), "{r}");
        }
    }
    // The occlusion rows are the explain runs' maps: the same tiles as `explain` counts.
    let o = explain(dir.path(), "full", &["--roi", "none", "--faithfulness-steps", "0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("full/report.json")).unwrap()).unwrap();
    assert_eq!(report["result"]["tiles_evaluated"], rows[0]["tiles_evaluated"]);
    assert!(report["result"]["faithfulness"].is_null());
    let comparison = &table["comparison"].as_array().unwrap()[0];
    let r = comparison["in_roi_pearson_r"].as_f64().unwrap();
    assert!((-1.0..=1.0).contains(&r) && comparison["tile_reduction_pct"].as_f64().unwrap() > 0.0, "{comparison}");
    assert!(std::fs::read_to_string(&md).unwrap().contains("| occlusion | seg |"));
    // Slice-only outputs are refused before any work, naming the option.
    for (extra, expect) in [
        (&["--html", "x.html"][..], "--html is for slices"),
        (&["--repeat", "3"][..], "--repeat 3: a 3-D bench runs each row once"),
        (&["--warmup", "1"][..], "--warmup 1: a 3-D bench runs each row once"),
        (&["--slice", "12"][..], "a 3-D U-Net benches a whole volume"),
    ] {
        std::fs::remove_file(&json).unwrap();
        let o = bench(extra);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains(expect) && !err.contains("panicked"), "{err}");
        assert!(!json.exists());
        std::fs::write(&json, "").unwrap();
    }
}

#[test]
fn info_describes_a_3d_model_folder() {
    let dir = repo().join("tests/fixtures/unet_volume_instance_deconv");
    let o = xaiclip(&["info", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("model:      MONAI BasicUNet, 3-D, 1 input channel(s) -> 2 classes, features [4, 4, 6, 6, 8, 4]"),
        "{out}"
    );
    assert!(out.contains("instance norm (affine, eps 0.00001), LeakyReLU(0.1), upsample deconv"), "{out}");
    assert!(out.contains("check:      every weight has the shape this 3-D model expects"), "{out}");
}
