//! Reliability: outputs are written under their own names or not at all, several files appear together,
//! option values that cannot run are refused before any work, and eval is a single-writer log that
//! resume and merge cannot corrupt. Every test is a row of tests/BAD_INPUT.md.

mod common;
use common::*;
use std::path::Path;

fn phantom(dir: &Path) -> String {
    let o = xaiclip(&["phantom", "--size", "64", "--slices", "8", "--out", dir.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    dir.join("ct.nii.gz").to_str().unwrap().to_string()
}

#[test]
fn nifti_outputs_need_a_nifti_name() {
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = |name: &str| out.join(name).to_str().unwrap().to_string();
    fails(&["convert", "--image", &image, "--out", &o("vol.txt")], &["vol.txt", "must be named *.nii or *.nii.gz"]);
    let unet = repo().join("weights/unet");
    fails(
        &["--device", "cpu", "segment", "--image", &image, "--unet", unet.to_str().unwrap(), "--out", &o("labels")],
        &["labels", "must be named *.nii or *.nii.gz"],
    );
    assert!(files_in(&out).is_empty(), "refused writes left {:?}", files_in(&out));
    // Upper case is still NIfTI, and .GZ still means gzip.
    let ok = xaiclip(&["convert", "--image", &image, "--out", &o("VOL.NII.GZ")]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let bytes = std::fs::read(out.join("VOL.NII.GZ")).unwrap();
    assert_eq!(&bytes[..2], &[0x1f, 0x8b], "not gzip");
    let back = xaiclip::io::read_image(&out.join("VOL.NII.GZ")).unwrap();
    assert_eq!(back.dims, xaiclip::io::read_image(Path::new(&image)).unwrap().dims);
    assert_eq!(files_in(&out), ["VOL.NII.GZ"]);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(out.join("VOL.NII.GZ")).unwrap().permissions().mode() & 0o777;
        assert_ne!(mode & 0o044, 0, "outputs should follow the umask (0666 less it), got {mode:o}");
    }
}

#[test]
fn explain_writes_its_files_together() {
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let out = tmp.path().join("out");
    let run = |seed: &str| {
        xaiclip(&[
            "--device",
            "cpu",
            "explain",
            "--image",
            &image,
            "--slice",
            "4",
            "--method",
            "occlusion",
            "--roi",
            "none",
            "--occlusion-window",
            "128",
            "--occlusion-stride",
            "128",
            "--faithfulness-steps",
            "0",
            "--seed",
            seed,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    let first = run("0");
    assert!(first.status.success(), "{}", stderr(&first));
    let before: Vec<Vec<u8>> =
        ["saliency.nii.gz", "overlay.png"].iter().map(|f| std::fs::read(out.join(f)).unwrap()).collect();
    // report.json cannot be written (its name is taken by a folder): nothing may change.
    std::fs::remove_file(out.join("report.json")).unwrap();
    std::fs::create_dir(out.join("report.json")).unwrap();
    std::fs::write(out.join("saliency.nii.gz"), b"previous run").unwrap();
    let second = run("1");
    assert_eq!(second.status.code(), Some(2), "{}", stderr(&second));
    assert!(stderr(&second).contains("report.json"), "{}", stderr(&second));
    assert_eq!(std::fs::read(out.join("saliency.nii.gz")).unwrap(), b"previous run");
    assert_eq!(std::fs::read(out.join("overlay.png")).unwrap(), before[1]);
    let mut left = files_in(&out);
    left.sort();
    assert_eq!(left, ["overlay.png", "report.html", "report.json", "saliency.nii.gz"], "temporary files left behind");
}

#[test]
fn option_values_that_cannot_run_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let out = tmp.path().join("out");
    for (method, option, value, expect) in [
        ("occlusion", "--occlusion-stride", "0", "--occlusion-stride 0: must be 1 to"),
        ("occlusion", "--occlusion-window", "100000", "--occlusion-window 100000: must be 1 to"),
        ("rise", "--masks", "99999999999", "--masks 99999999999: must be 1 to"),
        ("rise", "--grid", "0", "--grid 0: must be 1 to"),
        ("rise", "--p1", "nan", "--p1 NaN: must be in (0, 1]"),
        ("lime", "--samples", "1", "--samples 1: must be 2 to"),
        ("lime", "--segments", "100000", "--segments 100000: must be 1 to"),
        ("occlusion", "--margin-mm", "nan", "--margin-mm NaN"),
        ("occlusion", "--faithfulness-steps", "999999", "--faithfulness-steps 999999"),
        ("occlusion", "--batch", "100000000", "--batch 100000000: needs about"),
        ("occlusion", "--size", "100000", "--size 100000: the model grid must be"),
    ] {
        let args = [
            "--device",
            "cpu",
            "explain",
            "--image",
            &image,
            "--slice",
            "4",
            "--method",
            method,
            "--roi",
            "none",
            option,
            value,
            "--out",
            out.to_str().unwrap(),
        ];
        fails(&args, &[expect]);
        assert!(!out.exists(), "{option} {value}: output folder created");
    }
}

/// A finished two-case eval in `out`.
fn finished_eval(root: &Path, out: &Path) {
    phantom_tree("flare22", root, 2);
    let o = xaiclip(&quick_eval("flare22", root, out));
    assert!(o.status.success(), "{}", stderr(&o));
}

#[test]
fn second_eval_writer_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("data"), tmp.path().join("out"));
    finished_eval(&root, &out);
    let lines = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    // Another process holds the folder (as a running eval does).
    let lock = std::fs::OpenOptions::new().write(true).open(out.join(".lock")).unwrap();
    lock.lock().unwrap();
    std::fs::write(out.join(".lock"), "pid 4242 on node7").unwrap();
    let mut resume = quick_eval("flare22", &root, &out);
    resume.push("--resume");
    fails(&resume, &["another xaiclip eval (pid 4242 on node7) is writing to this folder"]);
    drop(lock);
    assert_eq!(std::fs::read_to_string(out.join("results.jsonl")).unwrap(), lines);
    let again = xaiclip(&resume);
    assert!(again.status.success(), "{}", stderr(&again));
}

#[test]
fn resume_keeps_a_whole_last_line_without_its_newline() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("data"), tmp.path().join("out"));
    finished_eval(&root, &out);
    let results = out.join("results.jsonl");
    let full = std::fs::read_to_string(&results).unwrap();
    std::fs::write(&results, full.trim_end_matches('\n')).unwrap();
    let mut resume = quick_eval("flare22", &root, &out);
    resume.push("--resume");
    let o = xaiclip(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(!stderr(&o).contains("dropping"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(&results).unwrap(), full);
}

#[test]
fn resume_with_another_shard_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("data"), tmp.path().join("out"));
    phantom_tree("flare22", &root, 2);
    let mut first = quick_eval("flare22", &root, &out);
    first.extend(["--shard", "1/2"]);
    assert!(xaiclip(&first).status.success());
    let mut other = quick_eval("flare22", &root, &out);
    other.extend(["--shard", "2/2", "--resume"]);
    fails(&other, &["--resume with other settings", "shard: \"1/2\" vs \"2/2\""]);
}

#[test]
fn merge_needs_every_shard_finished() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("data");
    phantom_tree("flare22", &root, 3);
    let shard = |i: &str| {
        let dir = tmp.path().join(format!("s{}", &i[..1]));
        let mut args = quick_eval("flare22", &root, &dir);
        args.extend(["--shard", i]);
        let o = xaiclip(&args);
        assert!(o.status.success(), "{}", stderr(&o));
        dir.to_str().unwrap().to_string()
    };
    let (a, b) = (shard("1/3"), shard("2/3"));
    let merged = tmp.path().join("merged");
    let m = merged.to_str().unwrap();
    fails(&["eval", "--merge", &a, &b, "--out", m], &["shards 3/3 are missing", "--allow-partial"]);
    assert!(!merged.exists());
    fails(&["eval", "--merge", &a, &a, &b, "--out", m], &["shard 1/3 is given twice"]);
    let c = shard("3/3");
    std::fs::remove_file(Path::new(&c).join("finished.json")).unwrap();
    fails(&["eval", "--merge", &a, &b, &c, "--out", m], &["shard 3/3", "did not finish"]);
    let partial = xaiclip(&["eval", "--merge", &a, &b, &c, "--out", m, "--allow-partial"]);
    assert!(partial.status.success(), "{}", stderr(&partial));
    let summary = std::fs::read_to_string(merged.join("summary.md")).unwrap();
    assert!(summary.starts_with("**Partial merge**: shard 3/3"), "{summary}");
}

#[test]
fn duplicate_result_lines_count_once_in_summaries() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("data"), tmp.path().join("out"));
    finished_eval(&root, &out);
    let summary = std::fs::read_to_string(out.join("summary.csv")).unwrap();
    let results = out.join("results.jsonl");
    let text = std::fs::read_to_string(&results).unwrap();
    let last = text.lines().last().unwrap().to_string();
    std::fs::write(&results, format!("{text}{last}\n")).unwrap();
    let mut resume = quick_eval("flare22", &root, &out);
    resume.push("--resume");
    let o = xaiclip(&resume);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 duplicate result lines counted once"), "{}", stderr(&o));
    assert_eq!(std::fs::read_to_string(out.join("summary.csv")).unwrap(), summary);
}

#[test]
fn multi_member_gzip_reads_like_one_member() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(&image).unwrap()).read_to_end(&mut raw).unwrap();
    // Two gzip members back to back, as `cat a.gz b.gz` or some writers produce; nibabel reads them.
    let mut joined = Vec::new();
    for part in [&raw[..raw.len() / 3], &raw[raw.len() / 3..]] {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(part).unwrap();
        joined.extend(enc.finish().unwrap());
    }
    let two = tmp.path().join("two-members.nii.gz");
    std::fs::write(&two, joined).unwrap();
    let a = xaiclip::io::read_image(Path::new(&image)).unwrap();
    let b = xaiclip::io::read_image(&two).unwrap();
    assert_eq!((a.dims, a.affine), (b.dims, b.affine));
    assert_eq!(a.data, b.data);
}

#[test]
fn weights_that_overflow_are_an_error_not_one_class() {
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let unet = tmp.path().join("unet");
    std::fs::create_dir(&unet).unwrap();
    std::fs::copy(repo().join("weights/unet/config.json"), unet.join("config.json")).unwrap();
    let bytes = std::fs::read(repo().join("weights/unet/model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    // Finite weights whose first convolution overflows f32 on any input.
    let mut tensors: Vec<(String, Vec<u8>, Vec<usize>)> = Vec::new();
    for (name, view) in file.tensors() {
        let mut data = view.data().to_vec();
        if name == "conv_0.conv_0.conv.bias" || name == "conv_0.conv_0.conv.weight" {
            data = data.chunks(4).flat_map(|_| 3.0e38f32.to_le_bytes()).collect();
        }
        tensors.push((name.to_string(), data, view.shape().to_vec()));
    }
    let views: Vec<(&str, safetensors::tensor::TensorView)> = tensors
        .iter()
        .map(|(n, d, s)| {
            (n.as_str(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d).unwrap())
        })
        .collect();
    std::fs::write(unet.join("model.safetensors"), safetensors::serialize(views, None).unwrap()).unwrap();
    let out = tmp.path().join("labels.nii.gz");
    fails(
        &[
            "--device",
            "cpu",
            "segment",
            "--image",
            &image,
            "--unet",
            unet.to_str().unwrap(),
            "--slice",
            "4",
            "--out",
            out.to_str().unwrap(),
        ],
        &["the U-Net produced a non-finite output", "overflow"],
    );
    assert!(!out.exists());
}

#[test]
fn an_empty_roi_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let out = tmp.path().join("out");
    fails(
        &[
            "--device",
            "cpu",
            "explain",
            "--image",
            &image,
            "--slice",
            "4",
            "--method",
            "occlusion",
            "--roi",
            "clip",
            "--roi-threshold",
            "fixed:2",
            "--out",
            out.to_str().unwrap(),
        ],
        &["the clip ROI is empty on this slice", "--roi seg"],
    );
    assert!(!out.exists());
}

#[test]
fn dicom_series_with_a_missing_slice_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("chaos");
    let o = xaiclip(&[
        "phantom",
        "--layout",
        "chaos-ct",
        "--cases",
        "1",
        "--size",
        "32",
        "--slices",
        "5",
        "--out",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let series = root.join("CT/1/DICOM_anon");
    let mut files: Vec<_> = std::fs::read_dir(&series).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(xaiclip::io::read_image(&series).is_ok(), "the whole series reads");
    std::fs::remove_file(&files[2]).unwrap();
    let out = tmp.path().join("x.nii.gz");
    fails(
        &["convert", "--image", series.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &["DICOM_anon: slices are not evenly spaced", "a missing slice?"],
    );
    assert!(!out.exists());
}

#[cfg(unix)]
#[test]
fn a_dangling_case_symlink_is_an_error_not_a_gap() {
    let tmp = tempfile::tempdir().unwrap();
    let (root, out) = (tmp.path().join("data"), tmp.path().join("out"));
    phantom_tree("flare22", &root, 2);
    // case_0003: an image symlink whose target is gone (a moved data set), with its label present.
    let (images, labels) = (root.join("imagesTr"), root.join("labelsTr"));
    std::os::unix::fs::symlink(tmp.path().join("moved/case_0003_0000.nii.gz"), images.join("case_0003_0000.nii.gz"))
        .unwrap();
    std::fs::copy(labels.join("case_0001.nii.gz"), labels.join("case_0003.nii.gz")).unwrap();
    let o = xaiclip(&quick_eval("flare22", &root, &out));
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("1 of 3 cases failed"), "{}", stderr(&o));
    let errors = std::fs::read_to_string(out.join("errors.jsonl")).unwrap();
    let e: serde_json::Value = serde_json::from_str(errors.lines().next().unwrap()).unwrap();
    assert_eq!(e["case"], "case_0003");
    assert_eq!(e["kind"], "invalid-input");
    assert!(e["error"].as_str().unwrap().contains("case_0003_0000.nii.gz: cannot open"), "{e}");
    assert!(!out.join("finished.json").exists(), "a run with a failed case is not finished");
}

#[test]
fn dicom_element_longer_than_the_file_is_refused_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("chaos");
    let o = xaiclip(&[
        "phantom",
        "--layout",
        "chaos-ct",
        "--cases",
        "1",
        "--size",
        "32",
        "--slices",
        "2",
        "--out",
        root.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let series = root.join("CT/1/DICOM_anon");
    let mut files: Vec<_> = std::fs::read_dir(&series).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // A private OB element at the end that claims 2 GiB: dicom-rs would allocate all of it first.
    let mut bytes = std::fs::read(&files[1]).unwrap();
    bytes.extend([0x09, 0x00, 0x10, 0x10, b'O', b'B', 0, 0]);
    bytes.extend(0x7fff_fff0u32.to_le_bytes());
    bytes.extend([0u8; 16]);
    std::fs::write(&files[1], bytes).unwrap();
    let out = tmp.path().join("x.nii.gz");
    fails(
        &["convert", "--image", series.to_str().unwrap(), "--out", out.to_str().unwrap()],
        &["element (0009,1010) declares 2147483632 bytes but the file has 16 left"],
    );
}

#[test]
fn a_roi_that_misses_the_prediction_stops_or_falls_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ph = tmp.path().join("in");
    let ok = xaiclip(&["phantom", "--out", ph.to_str().unwrap()]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let (ct, labels) = (ph.join("ct.nii.gz"), ph.join("labels.nii.gz"));
    let out = tmp.path().join("out");
    // The 0.5% most probable pixels, no margin: far less than the liver the U-Net predicts.
    let args = |extra: &[&str]| {
        let mut a: Vec<String> = [
            "--device",
            "cpu",
            "explain",
            "--image",
            ct.to_str().unwrap(),
            "--label",
            labels.to_str().unwrap(),
            "--slice",
            "organ-center",
            "--method",
            "occlusion",
            "--roi",
            "clip",
            "--roi-threshold",
            "top:0.005",
            "--margin-mm",
            "0",
            "--occlusion-window",
            "64",
            "--occlusion-stride",
            "64",
            "--faithfulness-steps",
            "0",
            "--out",
            out.to_str().unwrap(),
        ]
        .map(String::from)
        .to_vec();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let refused: Vec<String> = args(&[]);
    let refused: Vec<&str> = refused.iter().map(String::as_str).collect();
    fails(&refused, &["the clip ROI covers", "of the U-Net's own liver prediction", "--roi-fallback seg"]);
    assert!(!out.exists());
    let fallback = args(&["--roi-fallback", "seg"]);
    let o = xaiclip(&fallback.iter().map(String::as_str).collect::<Vec<_>>());
    assert!(o.status.success(), "{}", stderr(&o));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let r = &report["result"];
    assert_eq!(r["roi_fallback"], "seg", "{r}");
    assert!(r["roi_coverage"].as_f64().unwrap() < 0.9, "{r}");
    // A normal CLIP ROI covers the prediction and says so.
    let normal = xaiclip(&[
        "--device",
        "cpu",
        "explain",
        "--image",
        ct.to_str().unwrap(),
        "--slice",
        "16",
        "--method",
        "occlusion",
        "--occlusion-window",
        "64",
        "--occlusion-stride",
        "64",
        "--faithfulness-steps",
        "0",
        "--out",
        tmp.path().join("normal").to_str().unwrap(),
    ]);
    assert!(normal.status.success(), "{}", stderr(&normal));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("normal/report.json")).unwrap()).unwrap();
    assert!(report["result"]["roi_coverage"].as_f64().unwrap() >= 0.9, "{}", report["result"]);
    assert!(report["result"]["roi_fallback"].is_null());
}

#[cfg(unix)]
#[test]
fn batch_auto_fits_a_memory_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let image = phantom(&tmp.path().join("in"));
    let out = tmp.path().join("out");
    // 1.2 GB of address space: a 64-image batch at 256x256 (about 1.4 GB of activations) cannot fit, so
    // --batch auto must read the limit and pick a smaller batch.
    let script = format!(
        "ulimit -v 1200000 && exec '{}' --device cpu explain --image '{image}' --slice 4 --method rise --masks 128 --roi none --faithfulness-steps 0 --out '{}'",
        env!("CARGO_BIN_EXE_xaiclip"),
        out.display()
    );
    let o = std::process::Command::new("bash").args(["-c", &script]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(out.join("saliency.nii.gz").is_file());
}
