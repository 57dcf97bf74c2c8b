//! Network definitions that run on any `Backend`.

pub mod clip;
pub mod sliding;
pub mod unet;

pub use unet::{BasicUNet, UNetConfig};

/// Where programs that ship the bundled weights themselves (the Python package) put them; looked in first.
static BUNDLED_ROOT: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();

/// Makes `root/<name>` the bundled weights (once per process; a second call keeps the first root).
pub fn set_bundled_root(root: std::path::PathBuf) {
    let _ = BUNDLED_ROOT.set(root);
}

/// The bundled weights folder `weights/<name>` (unet, clip, coop): under the root set by
/// [`set_bundled_root`], beside the current directory, or in the source tree this crate was built from.
pub fn bundled(name: &str) -> anyhow::Result<std::path::PathBuf> {
    use anyhow::Context;
    use std::path::{Path, PathBuf};
    let candidates = BUNDLED_ROOT
        .get()
        .map(|r| r.join(name))
        .into_iter()
        .chain([PathBuf::from("weights").join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(name)]);
    let candidates: Vec<PathBuf> = candidates.collect();
    candidates.iter().find(|p| p.join("model.safetensors").is_file()).cloned().with_context(|| {
        format!(
            "bundled weights weights/{name} not found (looked in {}); pass the folder explicitly",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Refuses model outputs with NaN or infinity (weights that overflow in f32): an argmax over them would
/// quietly label every pixel one class.
pub fn check_finite_outputs(values: &[f32]) -> anyhow::Result<()> {
    if let Some(i) = values.iter().position(|v| !v.is_finite()) {
        crate::fail!(
            InvalidInput,
            "the U-Net produced a non-finite output ({} at value {i}); its weights overflow in f32 on this input",
            values[i]
        );
    }
    Ok(())
}
