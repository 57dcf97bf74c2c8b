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
