//! Bad input in data sets, masks, weights and eval state: each case exits with status 2 and an error
//! line naming the file and the problem, never a panic. The table of all bad-input cases (this file and
//! bad_input.rs) with their messages is tests/BAD_INPUT.md; a test keeps the two in step.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// Runs a quick eval that must fail as `fails` checks, and returns its errors.jsonl.
fn failed_cases(kind: &str, root: &Path, out: &Path, expect: &[&str]) -> String {
    fails(&quick_eval(kind, root, out), expect);
    std::fs::read_to_string(out.join("errors.jsonl")).unwrap()
}

fn first_png(root: &Path) -> PathBuf {
    root.join("CT/1/Ground/liver_GT_000.png")
}

#[test]
fn nifti_with_wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    let o = xaiclip(&["phantom", "--size", "32", "--slices", "2", "--out", dir.path().to_str().unwrap()]);
    assert!(o.status.success());
    let gz = std::fs::read(dir.path().join("ct.nii.gz")).unwrap();
    let mut raw = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(&gz[..]), &mut raw).unwrap();
    raw[344..348].copy_from_slice(b"abc\0");
    let p = dir.path().join("magic.nii");
    std::fs::write(&p, raw).unwrap();
    fails(&["info", p.to_str().unwrap()], &["magic.nii: not a readable NIfTI-1 file"]);
}

#[test]
fn png_mask_truncated() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chaos");
    phantom_tree("chaos-ct", &root, 1);
    let png = first_png(&root);
    let raw = std::fs::read(&png).unwrap();
    std::fs::write(&png, &raw[..raw.len() / 2]).unwrap();
    let out = dir.path().join("out");
    let errors = failed_cases("chaos-ct", &root, &out, &["1 of 1 cases failed", "errors.jsonl"]);
    assert!(errors.contains("liver_GT_000.png: not a readable PNG mask"), "{errors}");
}

#[test]
fn png_mask_of_the_wrong_size() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chaos");
    phantom_tree("chaos-ct", &root, 1);
    image::GrayImage::new(20, 32).save(first_png(&root)).unwrap();
    let out = dir.path().join("out");
    let errors = failed_cases("chaos-ct", &root, &out, &["cases failed"]);
    assert!(
        errors.contains("liver_GT_000.png: mask is 20x32 pixels but its slice") && errors.contains("is 32x32"),
        "{errors}"
    );
}

#[test]
fn png_mask_count_differs_from_dicom_slices() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chaos");
    phantom_tree("chaos-ct", &root, 2);
    std::fs::remove_file(root.join("CT/2/Ground/liver_GT_002.png")).unwrap();
    let out = dir.path().join("out");
    let errors = failed_cases("chaos-ct", &root, &out, &["1 of 2 cases failed"]);
    assert!(errors.contains("CT/2/Ground: 2 PNG masks for 3 DICOM slices"), "{errors}");
    // The good case is complete; the failed one is retried by --resume.
    assert!(std::fs::read_to_string(out.join("results.jsonl")).unwrap().contains("\"CT/1\""));
    assert_eq!(std::fs::read_to_string(out.join("cases_done.txt")).unwrap(), "CT/1\n");
}

#[test]
fn mr_mask_grey_level_outside_the_documented_ranges() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("chaos");
    phantom_tree("chaos-mr", &root, 1);
    let png = root.join("MR/1/T2SPIR/Ground/liver_GT_001.png");
    let mut img = image::open(&png).unwrap().into_luma8();
    img.put_pixel(3, 3, image::Luma([100]));
    img.save(&png).unwrap();
    let out = dir.path().join("out");
    let errors = failed_cases("chaos-mr", &root, &out, &["1 of 3 cases failed"]);
    assert!(errors.contains("liver_GT_001.png: grey level 100 is not a CHAOS MR label"), "{errors}");
}

#[test]
fn png_mask_with_absurd_dimensions_refused_before_decoding() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("huge.png");
    // A valid PNG header claiming 100000 x 100000 pixels, with no image data behind it.
    let mut png = image::GrayImage::new(1, 1);
    png.put_pixel(0, 0, image::Luma([0]));
    png.save(&p).unwrap();
    let mut raw = std::fs::read(&p).unwrap();
    raw[16..20].copy_from_slice(&100_000u32.to_be_bytes());
    raw[20..24].copy_from_slice(&100_000u32.to_be_bytes());
    let mut crc = flate2::Crc::new();
    crc.update(&raw[12..29]);
    raw[29..33].copy_from_slice(&crc.sum().to_be_bytes());
    std::fs::write(&p, raw).unwrap();
    let err = xaiclip::dataset::read_png_mask(&p, xaiclip::dataset::PngEncoding::ChaosCt).unwrap_err().to_string();
    assert!(err.contains("huge.png: not a readable PNG mask") && err.to_lowercase().contains("limit"), "{err}");
}

#[test]
fn flare22_image_without_label() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 2);
    std::fs::remove_file(root.join("labelsTr/case_0002.nii.gz")).unwrap();
    fails(
        &quick_eval("flare22", &root, &dir.path().join("out")),
        &["case_0002_0000.nii.gz: no label", "labelsTr/case_0002.nii.gz"],
    );
}

#[test]
fn not_a_data_set_folder() {
    let dir = tempfile::tempdir().unwrap();
    fails(&quick_eval("flare22", dir.path(), &dir.path().join("out")), &["not a FLARE22 folder (no imagesTr/)"]);
    fails(&quick_eval("chaos-mr", dir.path(), &dir.path().join("out")), &["not a CHAOS MR folder"]);
}

#[test]
fn labels_on_another_grid() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    // Labels of a 64-pixel phantom beside a 32-pixel image with the same field of view cover it, so
    // shift the labels' origin instead: half the image falls outside them.
    let labels = root.join("labelsTr/case_0001.nii.gz");
    let mut v = xaiclip::io::read_image(&labels).unwrap();
    v.affine[0][3] += 200.0;
    let data: Vec<u8> = v.data.iter().map(|&x| x as u8).collect();
    v.nifti_header = None;
    xaiclip::io::nifti::write_like(&labels, &v, &data).unwrap();
    let out = dir.path().join("out");
    let errors = failed_cases("flare22", &root, &out, &["cases failed"]);
    assert!(errors.contains("case_0001.nii.gz: labels cover") && errors.contains("do not share a grid"), "{errors}");
}

#[test]
fn labels_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    let labels = root.join("labelsTr/case_0001.nii.gz");
    let v = xaiclip::io::read_image(&labels).unwrap();
    let data: Vec<u8> = v.data.iter().map(|&x| if x == 1.0 { 20 } else { x as u8 }).collect();
    xaiclip::io::nifti::write_like(&labels, &v, &data).unwrap();
    let out = dir.path().join("out");
    let errors = failed_cases("flare22", &root, &out, &["cases failed"]);
    assert!(errors.contains("label 20 is not a FLARE22 id"), "{errors}");
}

#[test]
fn organ_absent_from_a_case_is_recorded() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    let labels = root.join("labelsTr/case_0001.nii.gz");
    let v = xaiclip::io::read_image(&labels).unwrap();
    let data: Vec<u8> = v.data.iter().map(|&x| if x == 3.0 { 0 } else { x as u8 }).collect();
    xaiclip::io::nifti::write_like(&labels, &v, &data).unwrap();
    let out = dir.path().join("out");
    let mut args = quick_eval("flare22", &root, &out);
    args.extend(["--organs", "spleen"]);
    let o = xaiclip(&args);
    assert!(o.status.success(), "{}", stderr(&o));
    let results = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    assert!(results.contains("\"status\":\"organ-absent\"") && results.contains("\"slice\":null"), "{results}");
}

#[test]
fn weights_holding_nan() {
    let dir = tempfile::tempdir().unwrap();
    let unet = dir.path().join("unet");
    std::fs::create_dir(&unet).unwrap();
    let fixture = repo().join("tests/fixtures/unet_instance_deconv");
    std::fs::copy(fixture.join("config.json"), unet.join("config.json")).unwrap();
    let mut raw = std::fs::read(fixture.join("model.safetensors")).unwrap();
    let header = u64::from_le_bytes(raw[..8].try_into().unwrap()) as usize;
    raw[8 + header..8 + header + 4].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(unet.join("model.safetensors"), raw).unwrap();
    let img = dir.path().join("p");
    assert!(xaiclip(&["phantom", "--size", "32", "--slices", "2", "--out", img.to_str().unwrap()]).status.success());
    fails(
        &[
            "segment",
            "--image",
            img.join("ct.nii.gz").to_str().unwrap(),
            "--unet",
            unet.to_str().unwrap(),
            "--out",
            dir.path().join("o.nii.gz").to_str().unwrap(),
        ],
        &["model.safetensors: tensor", "non-finite value (NaN)"],
    );
    assert!(!dir.path().join("o.nii.gz").exists());
}

#[test]
fn broken_coop_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let ct = small_phantom(dir.path());
    let coop = dir.path().join("coop");
    std::fs::create_dir(&coop).unwrap();
    std::fs::copy(repo().join("weights/coop/model.safetensors"), coop.join("model.safetensors")).unwrap();
    let png = dir.path().join("roi.png");
    let run = |extra: &[&str], expect: &[&str]| {
        let mut args = vec![
            "roi",
            "--image",
            ct.to_str().unwrap(),
            "--slice",
            "2",
            "--coop",
            coop.to_str().unwrap(),
            "--out",
            png.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        fails(&args, expect)
    };
    let config = |classes: &str, modalities: &str| {
        std::fs::write(coop.join("config.json"), format!("{{\"classes\": [{classes}]{modalities}}}")).unwrap()
    };
    config("\"background\", \"liver\", \"kidney of mars\"", ", \"modalities\": {\"ct\": \"a CT image of the {}\"}");
    run(&[], &["coop/model.safetensors", "ct/kidney of mars"]);
    // Contexts for CT only: MR images are refused, not described with CT prompts.
    run(&["--modality", "mr"], &["coop/config.json: CoOp contexts for ct only, not mr", "--no-coop"]);
    config("\"background\", \"liver\"", "");
    run(&["--modality", "mr"], &["coop/config.json: CoOp contexts without a \"modalities\" list are CT contexts"]);
    std::fs::write(coop.join("config.json"), "[1, 2").unwrap();
    run(&[], &["coop/config.json: invalid JSON"]);
    assert!(!png.exists());
}

#[test]
fn bad_shard_spec() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    let out = dir.path().join("out");
    let mut args = quick_eval("flare22", &root, &out);
    args.extend(["--shard", "3/2"]);
    fails(&args, &["--shard \"3/2\": expected i/n with 1 <= i <= n"]);
}

#[test]
fn resume_with_other_settings_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    let out = dir.path().join("out");
    assert!(xaiclip(&quick_eval("flare22", &root, &out)).status.success());
    let before = std::fs::read_to_string(out.join("results.jsonl")).unwrap();
    let mut args = quick_eval("flare22", &root, &out);
    args.extend(["--resume", "--seed", "5"]);
    fails(&args, &["eval.json: --resume with other settings", "seed: 0 vs 5"]);
    assert_eq!(std::fs::read_to_string(out.join("results.jsonl")).unwrap(), before);
}

#[test]
fn resume_with_another_batch_is_accepted_and_batch_changes_no_result() {
    // --batch is speed only: a requeue on other hardware (another batch) must resume, and the numbers
    // must be those of any other batch size.
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let with_batch = |out, batch| {
        let mut args = quick_eval("flare22", &root, out);
        args.extend(["--device", "cpu", "--batch", batch]);
        args
    };
    assert!(xaiclip(&with_batch(&a, "3")).status.success());
    // Another precision changes the maps (the CPU's tf32 runs Winograd F(4x4, 3x3)), so it is refused.
    let mut other = with_batch(&a, "7");
    other.extend(["--resume", "--precision", "tf32"]);
    fails(&other, &["eval.json: --resume with other settings", "precision: \"f32\" vs \"tf32\""]);
    let mut resumed = with_batch(&a, "7");
    resumed.push("--resume");
    let out = xaiclip(&resumed);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(xaiclip(&with_batch(&b, "16")).status.success());
    let records = |dir: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(dir.join("results.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                for speed in ["seconds", "forward_fraction", "clip_seconds", "metrics_seconds"] {
                    v.as_object_mut().unwrap().remove(speed);
                }
                v
            })
            .collect()
    };
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.join("eval.json")).unwrap()).unwrap();
    assert_eq!(config["precision"], "f32");
    let (ra, rb) = (records(&a), records(&b));
    // Four windows: batches of 3 split them, batches of 16 do not.
    assert!(!ra.is_empty() && ra[0]["forward_passes"].as_u64() >= Some(5), "{ra:?}");
    assert_eq!(ra, rb);
}

#[test]
fn corrupt_results_line_on_resume() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 1);
    let out = dir.path().join("out");
    assert!(xaiclip(&quick_eval("flare22", &root, &out)).status.success());
    let path = out.join("results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, format!("{{\"case\": oops}}\n{text}")).unwrap();
    let mut args = quick_eval("flare22", &root, &out);
    args.push("--resume");
    fails(&args, &["results.jsonl line 1: not a result record"]);
}

#[test]
fn merge_of_shards_with_other_settings() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("flare");
    phantom_tree("flare22", &root, 2);
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let mut first = quick_eval("flare22", &root, &a);
    first.extend(["--shard", "1/2"]);
    assert!(xaiclip(&first).status.success());
    let mut second = quick_eval("flare22", &root, &b);
    second.extend(["--shard", "2/2", "--masks", "7"]);
    assert!(xaiclip(&second).status.success());
    let merged = dir.path().join("m");
    fails(
        &["eval", "--merge", a.to_str().unwrap(), b.to_str().unwrap(), "--out", merged.to_str().unwrap()],
        &["b/eval.json: shard run with other settings", "settings.rise.masks: 1000 vs 7"],
    );
    assert!(!merged.join("results.jsonl").exists());
}

/// Every test of the bad-input files has a row in tests/BAD_INPUT.md, and every row a test.
#[test]
fn bad_input_table_lists_every_case() {
    let table = std::fs::read_to_string(repo().join("tests/BAD_INPUT.md")).unwrap();
    let rows: Vec<&str> =
        table.lines().filter(|l| l.starts_with("| `")).map(|l| l.split('`').nth(1).unwrap()).collect();
    let mut tests = Vec::new();
    for file in ["tests/bad_input.rs", "tests/bad_input_data.rs", "tests/reliability.rs", "tests/model_modality.rs"] {
        let src = std::fs::read_to_string(repo().join(file)).unwrap();
        let mut lines = src.lines().peekable();
        while let Some(l) = lines.next() {
            if l.trim() == "#[test]" {
                let name =
                    lines.next().unwrap().trim().trim_start_matches("fn ").split('(').next().unwrap().to_string();
                tests.push(name);
            }
        }
    }
    let not_cases = ["nifti_roundtrip_keeps_values_and_geometry", "bad_input_table_lists_every_case"];
    let cases: Vec<&String> = tests.iter().filter(|t| !not_cases.contains(&t.as_str())).collect();
    for t in &cases {
        assert!(rows.contains(&t.as_str()), "tests/BAD_INPUT.md lacks a row for {t}");
    }
    for r in &rows {
        assert!(cases.iter().any(|t| t == r), "tests/BAD_INPUT.md row {r} has no test");
    }
    assert!(table.lines().filter(|l| l.starts_with("| `")).count() >= 25, "fewer than 25 cases");
}
