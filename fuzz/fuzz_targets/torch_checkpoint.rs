//! Torch checkpoint reader (.pt/.pth through pytorch-reader); input layout in inputs.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "inputs.rs"]
mod inputs;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let _ = inputs::run("torch_checkpoint", data, scratch::dir());
});
