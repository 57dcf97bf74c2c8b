//! CHAOS PNG mask reader (first byte's low bit: CT or MR grey levels).
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "inputs.rs"]
mod inputs;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let _ = inputs::run("png_mask", data, scratch::dir());
});
