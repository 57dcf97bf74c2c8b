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
