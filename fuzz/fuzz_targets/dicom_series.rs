//! DICOM series front end: the input split at "XSPLIT" into up to three files of one folder.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "inputs.rs"]
mod inputs;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let _ = inputs::run("dicom_series", data, scratch::dir());
});
