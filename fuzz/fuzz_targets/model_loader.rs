//! U-Net and CoOp loaders (config.json + model.safetensors); input layout in inputs.rs.
#![no_main]
use libfuzzer_sys::fuzz_target;

#[path = "inputs.rs"]
mod inputs;
#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    let _ = inputs::run("model_loader", data, scratch::dir());
});
