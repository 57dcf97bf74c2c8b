//! NIfTI header and volume reader, uncompressed and (first byte odd) through the gzip path.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "inputs.rs"]
mod inputs;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let _ = inputs::run("nifti_reader", data, scratch::dir());
});
