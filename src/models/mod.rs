//! Network definitions that run on any `Backend`.

pub mod clip;
pub mod unet;

pub use unet::{BasicUNet, UNetConfig};

/// The bundled weights folder `weights/<name>` (unet, clip, coop): beside the current directory, or in
/// the source tree this crate was built from.
pub fn bundled(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    use std::path::{Path, PathBuf};
    let candidates =
        [PathBuf::from("weights").join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(name)];
    candidates.iter().find(|p| p.join("model.safetensors").is_file()).cloned().with_context(|| {
        format!(
            "bundled weights weights/{name} not found (looked in {}); pass the folder explicitly",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}
