//! examples/embed.rs (the README's library example) prints the same forward passes and ROI fraction as
//! `xaiclip explain` with the same options on the same slice.

mod common;

use std::process::Command;

#[test]
fn the_embedding_example_agrees_with_the_command_line() {
    // cargo builds examples for `cargo test`, beside the test binaries' profile folder.
    let exe = std::env::current_exe().unwrap();
    let example = exe.parent().unwrap().parent().unwrap().join("examples").join("embed");
    assert!(example.is_file(), "{} was not built", example.display());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ok = Command::new(env!("CARGO_BIN_EXE_xaiclip")).args(["phantom", "--out"]).arg(d).status().unwrap();
    assert!(ok.success());
    let image = d.join("ct.nii.gz");
    let out = Command::new(&example).arg(&image).arg("16").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8(out.stdout).unwrap();
    let cli = Command::new(env!("CARGO_BIN_EXE_xaiclip"))
        .args(["explain", "--slice", "16", "--method", "occlusion", "--roi", "clip", "--image"])
        .arg(&image)
        .arg("--out")
        .arg(d.join("out"))
        .output()
        .unwrap();
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("out/report.json")).unwrap()).unwrap();
    let r = &report["result"];
    let expected = format!(
        "forward_passes {} roi_fraction {:.6}\n",
        r["forward_passes"].as_u64().unwrap(),
        r["roi_fraction"].as_f64().unwrap()
    );
    assert_eq!(printed, expected);
    assert!(r["forward_passes"].as_u64().unwrap() > 1);
}
