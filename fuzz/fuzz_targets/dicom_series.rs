//! DICOM series front end: the input split at "XSPLIT" into up to three files of one folder.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let dir = scratch::dir().join("series");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut rest = data;
    for i in 0..3 {
        let end = rest.windows(6).position(|w| w == b"XSPLIT").unwrap_or(rest.len());
        std::fs::write(dir.join(format!("{i}.dcm")), &rest[..end]).unwrap();
        if end == rest.len() {
            break;
        }
        rest = &rest[end + 6..];
    }
    if let Ok(volume) = xaiclip::io::read_image(&dir) {
        assert_eq!(volume.data.len(), volume.voxel_count());
    }
});
