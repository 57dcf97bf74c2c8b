//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `../shared/data/totalsegmentator`, or None (with a message) when the shared data is absent, so that a
/// fresh clone without it still passes.
pub fn shared_data() -> Option<PathBuf> {
    let dir = repo().join("../shared/data/totalsegmentator");
    if dir.join("ct_small.nii.gz").is_file() {
        Some(dir)
    } else {
        eprintln!("SKIP: ../shared/data/totalsegmentator is absent; this test needs the shared reference CT");
        None
    }
}

pub fn xaiclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(args).output().expect("run xaiclip")
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Files in a folder (temporary files included): checks that nothing partial was left behind.
pub fn files_in(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

/// A synthetic data set tree of `cases` 32x32x3 phantoms in `layout`.
pub fn phantom_tree(layout: &str, dir: &Path, cases: usize) {
    let o = xaiclip(&[
        "phantom",
        "--layout",
        layout,
        "--cases",
        &cases.to_string(),
        "--size",
        "32",
        "--slices",
        "3",
        "--out",
        dir.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
}

/// `xaiclip phantom` (seed 7, 64 x 64 x 4) written to `dir/p`; returns its `ct.nii.gz`.
pub fn small_phantom(dir: &Path) -> PathBuf {
    let out = dir.join("p");
    let o = xaiclip(&["phantom", "--size", "64", "--slices", "4", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    out.join("ct.nii.gz")
}

/// Runs xaiclip, expects exit 2 with an error line holding every `expect` fragment; returns it.
pub fn fails(args: &[&str], expect: &[&str]) -> String {
    let o = xaiclip(args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "expected exit 2, got {:?}: {err}", o.status);
    assert!(!err.contains("panicked"), "panic: {err}");
    // The error is the last message; a list of problems (weights) continues on indented lines.
    let start = err.rfind("error: ").unwrap_or_else(|| panic!("no error line: {err}"));
    let message = &err[start..];
    for e in expect {
        assert!(message.contains(e), "error lacks {e:?}: {message}");
    }
    message.to_string()
}

/// eval arguments for a fast run: occlusion with 4 windows, full image, no faithfulness curves.
pub fn quick_eval<'a>(kind: &'a str, root: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "eval",
        "--dataset",
        kind,
        root.to_str().unwrap(),
        "--methods",
        "occlusion",
        "--roi",
        "none",
        "--occlusion-window",
        "128",
        "--occlusion-stride",
        "128",
        "--faithfulness-steps",
        "0",
        "--out",
        out.to_str().unwrap(),
    ]
}

/// (max |a - b|, max |b|): the largest difference from a reference and the reference's scale. A NaN
/// counts as an infinite difference (f32::max alone would skip it).
pub fn max_error(a: &[f32], b: &[f32]) -> (f32, f32) {
    assert_eq!(a.len(), b.len());
    let err = a
        .iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) });
    (err, b.iter().fold(0f32, |m, v| m.max(v.abs())))
}

/// Labels of an nnU-Net model against the float32 reference `logits` (K, voxels) and nnUNetPredictor's
/// `predictor` labels: a label off the float32 argmax must be a tie within `err`, and one off the
/// predictor's must be where the predictor's own float16 sums moved it from the float32 argmax.
/// Returns (ties, moved).
pub fn predictor_label_differences(
    case: &str,
    labels: &[u8],
    logits: &[f32],
    predictor: &[u8],
    err: f32,
) -> (usize, usize) {
    let n = labels.len();
    let classes = logits.len() / n;
    let argmax =
        |v: usize| (0..classes).fold(0, |b, k| if logits[k * n + v] > logits[b * n + v] { k } else { b }) as u8;
    let (mut ties, mut moved) = (0, 0);
    for v in 0..n {
        let exact = argmax(v);
        if labels[v] != exact {
            let mut top: Vec<f32> = (0..classes).map(|k| logits[k * n + v]).collect();
            top.sort_by(|a, b| b.total_cmp(a));
            assert!(top[0] - top[1] <= 2.0 * err, "{case}: voxel {v} labelled {} instead of {exact}", labels[v]);
            ties += 1;
        }
        if labels[v] != predictor[v] {
            assert_ne!(predictor[v], exact, "{case}: voxel {v}: {} vs the predictor's {}", labels[v], predictor[v]);
            moved += 1;
        }
    }
    (ties, moved)
}
