//! Weights + JSON config loaders: input = u16 config length, config.json bytes, model.safetensors
//! bytes; the first byte's low bit picks the U-Net loader or the CoOp context loader.
#![no_main]
use libfuzzer_sys::fuzz_target;
use xaiclip::backend::CpuBackend;

#[path = "scratch.rs"]
mod scratch;

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let selector = data[0];
    let n = (u16::from_le_bytes([data[1], data[2]]) as usize).min(data.len() - 3);
    let (config, weights) = data[3..].split_at(n);
    let dir = scratch::dir().join("model");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("config.json"), config).unwrap();
    std::fs::write(dir.join("model.safetensors"), weights).unwrap();
    if selector & 1 == 0 {
        let _ = xaiclip::models::BasicUNet::load_dir(&CpuBackend, &dir);
    } else {
        let _ = xaiclip::roi::clip::CoopContexts::load_dir(&dir);
    }
});
