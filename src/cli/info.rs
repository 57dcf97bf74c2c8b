//! `xaiclip info`: what an image or a weights file holds.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xaiclip::backend::CpuBackend;
use xaiclip::io;
use xaiclip::models::{BasicUNet, UNetConfig};
use xaiclip::preprocess::AxialLayout;
use xaiclip::weights::WeightsFile;

#[derive(clap::Args, Debug)]
pub struct InfoCmd {
    /// A .nii/.nii.gz file, a DICOM series folder, a weights file (.safetensors, or a torch .pt/.pth
    /// checkpoint), or a model folder.
    pub path: PathBuf,
}

fn is_weights_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors" || e == "pt" || e == "pth")
        || (path.is_dir() && xaiclip::weights::model_file(path).is_file())
}

/// Describes an image or a weights file/folder.
pub fn run(cmd: InfoCmd) -> Result<()> {
    let path = cmd.path.as_path();
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    if is_weights_path(path) {
        return weights_info(path);
    }
    let v = io::read_image(path)?;
    let layout = AxialLayout::of(&v)?;
    let s = v.spacing();
    let (min, max) = v.data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let kind = if v.nifti_header.is_some() { "NIfTI-1" } else { "DICOM series" };
    println!("file:        {}", path.display());
    println!("format:      {kind}");
    println!("grid:        {} x {} x {} voxels", v.dims[0], v.dims[1], v.dims[2]);
    println!("spacing:     {:.4} x {:.4} x {:.4} mm", s[0], s[1], s[2]);
    println!(
        "orientation: {} (axial slices along voxel axis {}: {} slices of {} x {} pixels)",
        v.orientation(),
        layout.slice_axis,
        layout.slices(&v),
        layout.slice_shape(&v).0,
        layout.slice_shape(&v).1
    );
    for row in &v.affine[..3] {
        println!("affine:      [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]", row[0], row[1], row[2], row[3]);
    }
    println!("values:      {min} to {max}");
    if v.check_labels().is_ok() && max <= 255.0 {
        println!("labels:      {:?}", v.labels_present());
    }
    Ok(())
}

fn weights_info(path: &Path) -> Result<()> {
    let (file, config) = if path.is_dir() {
        (xaiclip::weights::model_file(path), Some(path.join("config.json")))
    } else {
        (path.to_path_buf(), path.parent().map(|p| p.join("config.json")))
    };
    let weights = WeightsFile::open(&file)?;
    let tensors = weights.tensors();
    let params: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("file:       {}", file.display());
    println!("tensors:    {} ({} values)", tensors.len(), params);
    for t in &tensors {
        println!("  {:<50} {:<5} {:?}", t.name, t.dtype, t.shape);
    }
    if let Some(config_path) = config.filter(|c| c.is_file()) {
        let text =
            std::fs::read_to_string(&config_path).with_context(|| format!("{}: cannot read", config_path.display()))?;
        let config =
            UNetConfig::from_json(&text).with_context(|| format!("{}: bad U-Net config", config_path.display()))?;
        let size = match (config.spatial_dims, config.patch_size, config.input_size) {
            (3, Some(p), _) => format!("patch {}x{}x{} (sliding window)", p[0], p[1], p[2]),
            (3, None, _) => "patch not given (explain --patch; default 96x96x96)".into(),
            (_, _, Some(s)) => format!("input {s}x{s}"),
            _ => "input size not given (default 256x256)".into(),
        };
        use xaiclip::backend::Activation;
        use xaiclip::models::unet::{NormKind, Upsample};
        // MONAI's own spellings of the constructor arguments.
        let norm = match config.norm {
            NormKind::Instance { affine: true } => format!("instance norm (affine, eps {})", config.norm_eps),
            NormKind::Instance { affine: false } => format!("instance norm (eps {})", config.norm_eps),
            NormKind::Batch => format!("batch norm (eps {}, folded into the convs)", config.norm_eps),
            NormKind::None => "no norm".into(),
        };
        let act = match config.act {
            Activation::LeakyRelu(slope) => format!("LeakyReLU({slope})"),
            Activation::Relu => "ReLU".into(),
            other => format!("{other:?}"),
        };
        let upsample = match config.upsample {
            Upsample::Deconv => "deconv",
            Upsample::NonTrainable => "nontrainable",
        };
        println!("config:     {}", config_path.display());
        println!(
            "model:      MONAI BasicUNet, {}-D, {} input channel(s) -> {} classes, features {:?}, {norm}, {act}, upsample {upsample}, {size}",
            config.spatial_dims, config.in_channels, config.out_channels, config.features
        );
        let dims = config.spatial_dims;
        BasicUNet::load(&CpuBackend, config, &weights)?;
        println!("check:      every weight has the shape this {dims}-D model expects");
    }
    Ok(())
}
