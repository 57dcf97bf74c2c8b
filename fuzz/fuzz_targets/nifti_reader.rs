//! NIfTI header and volume reader, uncompressed and (first byte odd) through the gzip path.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let path = scratch::dir().join(if selector & 1 == 1 { "input.nii.gz" } else { "input.nii" });
    std::fs::write(&path, bytes).unwrap();
    if let Ok(volume) = xaiclip::io::read_image(&path) {
        assert_eq!(volume.data.len(), volume.voxel_count());
    }
});
