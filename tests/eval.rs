//! `xaiclip eval` over synthetic FLARE22 and CHAOS trees: layouts, results, resume after SIGKILL, shards.

mod common;

use common::{shared_data, stderr, xaiclip};
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use xaiclip::dataset::{self, CaseEntry, DatasetKind, LabelIds, LabelSource, PngEncoding};

fn make_tree(dir: &Path, layout: &str, cases: usize, slices: usize) {
    let o = xaiclip(&[
        "phantom",
        "--layout",
        layout,
        "--cases",
        &cases.to_string(),
        "--size",
        "64",
        "--slices",
        &slices.to_string(),
        "--seed",
        "11",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// Waits (polling every `poll`, at most 2 minutes) until `results` holds `n` explained items.
fn wait_for_ok_lines(results: &Path, n: usize, poll: Duration) {
    let started = Instant::now();
    while std::fs::read_to_string(results).map_or(0, |t| t.matches("\"ok\"").count()) < n {
        assert!(started.elapsed() < Duration::from_secs(120), "no results appeared");
        std::thread::sleep(poll);
    }
}

/// Cheap explainer settings: a handful of forward passes per item.
const QUICK: [&str; 8] =
    ["--occlusion-window", "128", "--occlusion-stride", "128", "--masks", "12", "--faithfulness-steps", "2"];

fn eval(args: &[&str]) -> std::process::Output {
    let mut all = vec!["eval"];
    all.extend_from_slice(args);
    all.extend_from_slice(&QUICK);
    xaiclip(&all)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

/// Result lines without their timing, which legitimately differs between runs.
fn without_time(v: &[Value]) -> Vec<Value> {
    v.iter()
        .map(|l| {
            let mut l = l.clone();
            // Wall-clock figures differ between runs; everything else must not.
            for timing in ["seconds", "forward_fraction"] {
                l.as_object_mut().unwrap().remove(timing);
            }
            l
        })
        .collect()
}

#[test]
fn flare22_tree_every_slice_records_explained_and_empty_slices() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("flare"), tmp.path().join("out"));
    make_tree(&data, "flare22", 2, 4);
    let o = eval(&[
        "--dataset",
        "flare22",
        data.to_str().unwrap(),
        "--organs",
        "liver",
        "--methods",
        "occlusion,rise",
        "--roi",
        "none,seg",
        "--slices",
        "every-1",
        "--out",
        out.to_str().unwrap(),
        "--save-maps",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results = lines(&out.join("results.jsonl"));
    // 2 cases x 4 slices x 2 methods x 2 ROI modes, each recorded once.
    assert_eq!(results.len(), 32);
    let ok: Vec<&Value> = results.iter().filter(|l| l["status"] == "ok").collect();
    let empty = results.iter().filter(|l| l["status"] == "empty-organ").count();
    assert!(!ok.is_empty() && empty > 0 && ok.len() + empty == 32, "{} ok, {empty} empty", ok.len());
    for l in &ok {
        let dice = l["dice"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&dice) && l["forward_passes"].as_u64().unwrap() >= 2, "{l}");
    }
    // The seg ROI explains the organ better than the full image (the paper's claim, on the phantom).
    let mean = |roi: &str| {
        let v: Vec<f64> = ok.iter().filter(|l| l["roi"] == roi).map(|l| l["dice"].as_f64().unwrap()).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    assert!(mean("seg") > mean("none"), "seg {} none {}", mean("seg"), mean("none"));
    // --save-maps: each explained item's map on its case's grid, non-zero on its own slice only, linked
    // from report.html; no map for an item that was not explained.
    let maps: Vec<String> = common::files_in(&out.join("maps"));
    assert_eq!(maps.len(), ok.len(), "{maps:?}");
    let report = std::fs::read_to_string(out.join("report.html")).unwrap();
    for l in &ok {
        let (case, k) = (l["case"].as_str().unwrap(), l["slice"].as_u64().unwrap() as usize);
        let stem = format!("{case}_liver_s{k}_{}_{}", l["method"].as_str().unwrap(), l["roi"].as_str().unwrap());
        let map = xaiclip::io::read_image(&out.join("maps").join(format!("{stem}.nii.gz"))).unwrap();
        let image = xaiclip::io::read_image(&data.join("imagesTr").join(format!("{case}_0000.nii.gz"))).unwrap();
        assert_eq!((map.dims, map.affine), (image.dims, image.affine), "{stem}");
        let plane = map.dims[0] * map.dims[1];
        let nonzero: Vec<usize> =
            (0..map.dims[2]).filter(|z| map.data[z * plane..(z + 1) * plane].iter().any(|&v| v != 0.0)).collect();
        assert_eq!(nonzero, vec![k], "{stem}");
        assert!(report.contains(&format!("href=\"maps/{stem}.nii.gz\"")), "{stem} not linked");
    }
    let csv = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(csv.starts_with("organ,method,roi,n,skipped,dice_mean,dice_std"));
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("| liver | rise | seg |"));
    // A second run into the same folder without --resume is refused, results untouched.
    let again = eval(&[
        "--dataset",
        "flare22",
        data.to_str().unwrap(),
        "--methods",
        "occlusion",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success() && stderr(&again).contains("pass --resume"), "{}", stderr(&again));
    assert_eq!(lines(&out.join("results.jsonl")).len(), 32);
}

/// CHAOS PNG masks land on the DICOM slice they belong to: the labels read back equal the phantom's.
#[test]
fn chaos_trees_load_labels_slice_for_slice() {
    let tmp = tempfile::tempdir().unwrap();
    for (layout, kind, expected_cases) in [("chaos-ct", DatasetKind::ChaosCt, 2), ("chaos-mr", DatasetKind::ChaosMr, 6)]
    {
        let data = tmp.path().join(layout);
        make_tree(&data, layout, 2, 5);
        let cases = dataset::discover(kind, Some(&data), None, None, dataset::LabelIds::Flare22, false, false).unwrap();
        assert_eq!(cases.len(), expected_cases, "{cases:?}");
        for case in &cases {
            let (volume, labels) = dataset::load(case).unwrap();
            let seed = 11 + case.id.split('/').nth(1).unwrap().parse::<u64>().unwrap() - 1;
            let phantom = xaiclip::phantom::generate(seed, 64, 5);
            assert_eq!(volume.dims, phantom.image.dims);
            let expected: Vec<u8> = phantom
                .labels
                .iter()
                .map(|&l| match (kind, l) {
                    (DatasetKind::ChaosCt, 1) => 1,
                    (DatasetKind::ChaosMr, 1 | 2 | 3 | 13) => l,
                    _ => 0,
                })
                .collect();
            // The reader may order slices differently from the files; compare on the world grid.
            let phantom_on_grid =
                xaiclip::io::Volume { data: expected.iter().map(|&l| l as f32).collect(), ..phantom.image.clone() }
                    .labels_on_grid_of(&volume)
                    .0;
            assert_eq!(labels.unwrap(), phantom_on_grid, "{}", case.id);
        }
    }
}

#[test]
fn chaos_mr_eval_scores_every_sequence() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("chaos"), tmp.path().join("out"));
    make_tree(&data, "chaos-mr", 1, 5);
    let o = eval(&[
        "--dataset",
        "chaos-mr",
        data.to_str().unwrap(),
        "--organs",
        "liver,spleen",
        "--methods",
        "occlusion",
        "--roi",
        "seg",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results = lines(&out.join("results.jsonl"));
    let cases: std::collections::BTreeSet<&str> = results.iter().map(|l| l["case"].as_str().unwrap()).collect();
    assert_eq!(cases.into_iter().collect::<Vec<_>>(), ["MR/1/T1DUAL-InPhase", "MR/1/T1DUAL-OutPhase", "MR/1/T2SPIR"]);
    assert_eq!(results.len(), 6);
    assert!(results.iter().all(|l| l["status"] == "ok" && l["dice"].as_f64().unwrap() > 0.2), "{results:?}");
}

#[test]
fn killed_run_resumes_to_the_same_lines_as_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("flare");
    make_tree(&data, "flare22", 2, 4);
    let args = |out: &Path| -> Vec<String> {
        let mut a: Vec<String> = [
            "eval",
            "--dataset",
            "flare22",
            data.to_str().unwrap(),
            "--organs",
            "liver",
            "--methods",
            "occlusion,rise",
            "--roi",
            "none,seg",
            "--slices",
            "every-1",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        a.extend(QUICK.iter().map(|s| s.to_string()));
        a
    };
    let (reference, killed) = (tmp.path().join("reference"), tmp.path().join("killed"));
    let o = Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(args(&reference)).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let expected = lines(&reference.join("results.jsonl"));

    let mut child = Command::new(env!("CARGO_BIN_EXE_xaiclip"))
        .args(args(&killed))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let results = killed.join("results.jsonl");
    // Kill once a few explained items are on disk: mid-case, mid-run.
    wait_for_ok_lines(&results, 3, Duration::from_millis(5));
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let partial = std::fs::read_to_string(&results).unwrap().lines().count();
    assert!(partial < expected.len(), "the run finished before the kill ({partial} lines)");

    let mut resume = args(&killed);
    resume.push("--resume".into());
    let o = Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(&resume).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(without_time(&lines(&results)), without_time(&expected));
    // Resuming a finished run adds nothing.
    let o = Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(&resume).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(lines(&results).len(), expected.len());
}

#[test]
fn torn_last_line_is_dropped_and_redone_on_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("flare"), tmp.path().join("out"));
    make_tree(&data, "flare22", 1, 3);
    let base = [
        "--dataset",
        "flare22",
        data.to_str().unwrap(),
        "--methods",
        "occlusion",
        "--roi",
        "none",
        "--slices",
        "every-1",
        "--out",
        out.to_str().unwrap(),
    ];
    assert!(eval(&base).status.success());
    let path = out.join("results.jsonl");
    let full = std::fs::read_to_string(&path).unwrap();
    // Cut the last line in half, as a kill during the write would, and forget that the case finished.
    let keep = full.trim_end().rfind('\n').unwrap() + 1 + 20;
    std::fs::write(&path, &full[..keep]).unwrap();
    std::fs::remove_file(out.join("cases_done.txt")).unwrap();
    let mut resume = base.to_vec();
    resume.push("--resume");
    let o = eval(&resume);
    assert!(o.status.success() && stderr(&o).contains("dropping a partial last line"), "{}", stderr(&o));
    assert_eq!(
        without_time(&lines(&path)),
        without_time(&full.lines().map(|l| serde_json::from_str(l).unwrap()).collect::<Vec<Value>>())
    );
}

#[test]
fn two_shards_merged_equal_the_unsharded_run() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs");
    make_tree(&data, "pairs", 3, 3);
    let run = |out: &Path, shard: Option<&str>| {
        let mut a = vec![
            "--dataset",
            "pairs",
            "--images",
            data.join("images").to_str().unwrap(),
            "--labels",
            data.join("labels").to_str().unwrap(),
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        a.extend(
            ["--methods", "occlusion,rise", "--roi", "none,bbox", "--out", out.to_str().unwrap()].map(String::from),
        );
        if let Some(s) = shard {
            a.extend(["--shard".to_string(), s.to_string()]);
        }
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        let o = eval(&refs);
        assert!(o.status.success(), "{}", stderr(&o));
    };
    let [whole, s1, s2, merged] = ["whole", "s1", "s2", "merged"].map(|n| tmp.path().join(n));
    run(&whole, None);
    run(&s1, Some("1/2"));
    run(&s2, Some("2/2"));
    let (a, b) = (lines(&s1.join("results.jsonl")), lines(&s2.join("results.jsonl")));
    assert!(!a.is_empty() && !b.is_empty());
    assert!(a.iter().all(|l| b.iter().all(|m| l["case"] != m["case"])), "shards overlap");
    let o =
        xaiclip(&["eval", "--merge", s1.to_str().unwrap(), s2.to_str().unwrap(), "--out", merged.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    let (m, w) = (lines(&merged.join("results.jsonl")), lines(&whole.join("results.jsonl")));
    assert_eq!(m.len(), 12);
    assert_eq!(without_time(&m), without_time(&w));
    let summary = |d: &Path| {
        std::fs::read_to_string(d.join("summary.csv"))
            .unwrap()
            .lines()
            .map(|l| l.split(',').take(7).collect::<Vec<_>>().join(","))
            .collect::<Vec<_>>()
    };
    assert_eq!(summary(&merged), summary(&whole));
}

/// The real DICOM series as a CHAOS case: masks drawn from the TotalSegmentator liver, one PNG per DICOM
/// file in file-name order, read back onto the series' slices.
#[test]
fn real_dicom_series_with_png_masks() {
    let Some(shared) = shared_data() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let series = shared.join("ct_dicom");
    let (volume, files) = xaiclip::io::dicom::read_series_with_files(&series).unwrap();
    let labels = dataset::load_labels(&shared.join("ct_dicom_seg.nii.gz"), LabelIds::Totalseg, &volume).unwrap();
    let ground = tmp.path().join("Ground");
    std::fs::create_dir_all(&ground).unwrap();
    let [nx, ny, _] = volume.dims;
    let mut by_name: Vec<_> = files.iter().collect();
    by_name.sort_by(|a, b| dataset::natural_cmp(&a.to_string_lossy(), &b.to_string_lossy()));
    for (k, f) in files.iter().enumerate() {
        let order = by_name.iter().position(|g| *g == f).unwrap();
        let grey: Vec<u8> =
            labels[k * nx * ny..(k + 1) * nx * ny].iter().map(|&l| if l == 1 { 255 } else { 0 }).collect();
        image::GrayImage::from_raw(nx as u32, ny as u32, grey)
            .unwrap()
            .save(ground.join(format!("liver_GT_{order:03}.png")))
            .unwrap();
    }
    let case = CaseEntry {
        id: "CT/real".into(),
        image: series,
        labels: LabelSource::Png(ground, PngEncoding::ChaosCt),
        mr: false,
    };
    let (_, read) = dataset::load(&case).unwrap();
    let read = read.unwrap();
    let liver: Vec<u8> = labels.iter().map(|&l| (l == 1) as u8).collect();
    assert!(liver.iter().filter(|&&l| l == 1).count() > 1000);
    assert_eq!(read, liver);
}

#[test]
fn eval_reads_totalsegmentator_labels_with_label_ids() {
    let Some(shared) = shared_data() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (images, labels) = (dir.path().join("images"), dir.path().join("labels"));
    std::fs::create_dir_all(&images).unwrap();
    std::fs::create_dir_all(&labels).unwrap();
    // Links, not copies: the shared data stays where it is.
    std::os::unix::fs::symlink(shared.join("ct_small.nii.gz"), images.join("ct_small.nii.gz")).unwrap();
    std::os::unix::fs::symlink(shared.join("ct_small_seg.nii.gz"), labels.join("ct_small.nii.gz")).unwrap();
    let run = |out: &Path, extra: &[&str]| {
        let mut args = vec![
            "--device",
            "cpu",
            "eval",
            "--dataset",
            "pairs",
            "--images",
            images.to_str().unwrap(),
            "--labels",
            labels.to_str().unwrap(),
            "--methods",
            "occlusion",
            "--roi",
            "none",
            "--occlusion-window",
            "64",
            "--occlusion-stride",
            "64",
            "--faithfulness-steps",
            "0",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend(extra);
        xaiclip(&args)
    };
    // Without --label-ids the TotalSegmentator ids are refused, and the message says what to pass.
    let plain = dir.path().join("plain");
    let o = run(&plain, &[]);
    assert!(!o.status.success());
    let errors = std::fs::read_to_string(plain.join("errors.jsonl")).unwrap();
    assert!(errors.contains("--label-ids totalseg"), "{errors}");
    let out = dir.path().join("ts");
    let o = run(&out, &["--label-ids", "totalseg"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line: Value =
        serde_json::from_str(std::fs::read_to_string(out.join("results.jsonl")).unwrap().lines().next().unwrap())
            .unwrap();
    assert_eq!(line["status"], "ok", "{line}");
    assert!(line["dice"].as_f64().is_some_and(|d| d > 0.0), "{line}");
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(config["label_ids"], "totalseg");
    assert_eq!(config["settings"]["occlusion"]["window"], 64);
    assert!(config["settings"].get("batch").is_none(), "batch is speed only: {config}");
}

#[test]
fn ctrl_c_stops_at_the_next_batch_and_says_how_to_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let (data, out) = (tmp.path().join("flare"), tmp.path().join("out"));
    make_tree(&data, "flare22", 1, 2);
    // Occlusion finishes at once; RISE with 200000 masks would run for hours.
    let args = [
        "--device",
        "cpu",
        "eval",
        "--dataset",
        "flare22",
        data.to_str().unwrap(),
        "--organs",
        "liver",
        "--methods",
        "occlusion,rise",
        "--roi",
        "none",
        "--masks",
        "200000",
        "--batch",
        "8",
        "--faithfulness-steps",
        "0",
        "--occlusion-window",
        "128",
        "--occlusion-stride",
        "128",
        "--out",
        out.to_str().unwrap(),
    ];
    let child =
        Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(args).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let results = out.join("results.jsonl");
    wait_for_ok_lines(&results, 1, Duration::from_millis(20));
    std::thread::sleep(Duration::from_millis(500)); // into the RISE item
                                                    // SAFETY: sending a signal to our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let interrupted = Instant::now();
    let o = child.wait_with_output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(130), "{err}");
    assert!(interrupted.elapsed() < Duration::from_secs(20), "took {:?} to stop", interrupted.elapsed());
    assert!(err.contains("interrupted: stopping after the batch in flight"), "{err}");
    let resume = err.lines().skip_while(|l| !l.contains("continue with:")).nth(1).unwrap_or_default().trim();
    assert!(resume.ends_with(&format!("{} --resume", out.to_str().unwrap())), "{err}");
    assert!(resume.contains("--masks 200000"), "{resume}");
    // The finished item stays, the one in flight is not recorded as a failure.
    assert_eq!(std::fs::read_to_string(&results).unwrap().lines().count(), 1);
    assert!(!out.join("errors.jsonl").exists());
}

/// A 3-D U-Net explains each case's whole volume: one line per case, organ, method and ROI mode (slice
/// null) with its three-plane overlay; a resume finds every item done.
#[test]
fn a_3d_unet_evaluates_whole_volumes() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("pairs");
    make_tree(&data, "pairs", 2, 32);
    let unet = common::repo().join("tests/fixtures/unet_volume_instance_deconv");
    let (out, images, labels) = (tmp.path().join("out"), data.join("images"), data.join("labels"));
    let run = |extra: &[&str]| {
        let mut args = vec!["--dataset", "pairs", "--images", images.to_str().unwrap()];
        args.extend(["--labels", labels.to_str().unwrap(), "--unet", unet.to_str().unwrap()]);
        args.extend(["--patch", "32,32,32", "--methods", "occlusion,rise", "--roi", "none,seg", "--margin-mm", "6"]);
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        eval(&args)
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let results = lines(&out.join("results.jsonl"));
    assert_eq!(results.len(), 2 * 2 * 2, "{results:?}");
    for l in &results {
        assert!(l["slice"].is_null() && l["status"] == "ok", "{l}");
        assert!(l["dice"].as_f64().is_some() && l["deletion_auc"].as_f64().is_some(), "{l}");
        let roi = l["roi_fraction"].as_f64().unwrap();
        assert!(if l["roi"] == "none" { roi == 1.0 } else { roi < 1.0 && l["roi_coverage"] == 1.0 }, "{l}");
        let stem = format!(
            "{}_liver_volume_{}_{}",
            l["case"].as_str().unwrap(),
            l["method"].as_str().unwrap(),
            l["roi"].as_str().unwrap()
        );
        assert!(out.join("overlays").join(format!("{stem}.png")).is_file(), "{stem}");
    }
    let config: Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    assert_eq!(config["settings"][1]["method"]["rise"]["masks"], 12, "{config}");
    assert!(std::fs::read_to_string(out.join("summary.md")).unwrap().contains("rise"));
    let o = run(&["--resume"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(without_time(&lines(&out.join("results.jsonl"))), without_time(&results));
    // Slice choices do not apply to whole volumes.
    let o = run(&["--slices", "every-2", "--resume"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("a 3-D U-Net explains each case's whole volume"), "{}", stderr(&o));
}
