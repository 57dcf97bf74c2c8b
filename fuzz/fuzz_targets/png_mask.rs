//! CHAOS PNG mask reader (first byte's low bit: CT or MR grey levels).
#![no_main]
use libfuzzer_sys::fuzz_target;
use xaiclip::dataset::{read_png_mask, PngEncoding};

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, bytes)) = data.split_first() else { return };
    let path = scratch::dir().join("mask.png");
    std::fs::write(&path, bytes).unwrap();
    let encoding = if selector & 1 == 1 { PngEncoding::ChaosMr } else { PngEncoding::ChaosCt };
    if let Ok((h, w, labels)) = read_png_mask(&path, encoding) {
        assert_eq!(labels.len(), h * w);
    }
});
