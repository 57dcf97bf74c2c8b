//! Every crash the fuzz targets (fuzz/fuzz_targets) found, replayed through the same entry point: each
//! must now end in Ok or a clear error, never a panic. The dicom_series "oom" inputs once made dicom-rs
//! allocate gigabytes (declared lengths beyond the file, an unknown VR, a binary value of a partial
//! unit); the reader now refuses them first, so the whole replay stays far below that. Files are named
//! <target>-<what>.

#[path = "../fuzz/fuzz_targets/inputs.rs"]
mod inputs;

use std::path::Path;

#[test]
fn fuzz_crashers_no_longer_panic() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz_regressions");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let target = name.split('-').next().unwrap();
        let scratch = tempfile::tempdir().unwrap();
        let outcome = inputs::run(target, &std::fs::read(&path).unwrap(), scratch.path());
        eprintln!("{name}: {}", outcome.map_or_else(|e| format!("error: {e}"), |_| "ok".into()));
        count += 1;
    }
    assert!(count >= 1);
    #[cfg(target_os = "linux")]
    {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let peak_kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        assert!(peak_kb < 512 * 1024, "replaying the crashers peaked at {peak_kb} kB of memory");
    }
}
