//! `xaiclip info`: what an image or a weights file holds.

use anyhow::{bail, Context, Result};
use std::path::{Path, PathBuf};
use xaiclip::backend::CpuBackend;
use xaiclip::io;
use xaiclip::models::{BasicUNet, UNetConfig};
use xaiclip::preprocess::{AxialLayout, Intensity};
use xaiclip::weights::WeightsFile;

#[derive(clap::Args, Debug)]
pub struct InfoCmd {
    /// A .nii/.nii.gz file, a DICOM series folder, a weights file (.safetensors, or a torch .pt/.pth
    /// checkpoint), or a model folder (a BasicUNet's, or an nnU-Net v2 result folder).
    #[arg(required_unless_present = "model")]
    pub path: Option<PathBuf>,
    /// A model folder, as explain --model takes it (the same as giving it as PATH).
    #[arg(long, conflicts_with = "path")]
    pub model: Option<PathBuf>,
}

fn is_weights_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors" || e == "pt" || e == "pth")
        || (path.is_dir() && xaiclip::weights::model_file(path).is_file())
}

/// Describes an image or a weights file/folder.
pub fn run(cmd: InfoCmd) -> Result<()> {
    let path = cmd.path.or(cmd.model).context("give a file or folder")?;
    let path = path.as_path();
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    if xaiclip::models::nnunet::is_result_folder(path) {
        return nnunet_info(path);
    }
    if xaiclip::models::bundle::is_bundle(path) {
        return bundle_info(path);
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
            _ => "input size not given (pass --size: the side it was trained on)".into(),
        };
        use xaiclip::models::unet::Upsample;
        let (norm, act) = (norm_words(config.norm, config.norm_eps), act_words(config.act));
        let upsample = match config.upsample {
            Upsample::Deconv => "deconv",
            Upsample::NonTrainable => "nontrainable",
        };
        let orientation = match config.spatial_dims {
            3 => config.orientation.describe_volume(),
            _ => config.orientation.describe(),
        };
        println!("config:     {}", config_path.display());
        println!(
            "model:      MONAI BasicUNet, {}-D, {} input channel(s) -> {} classes, features {:?}, {norm}, {act}, upsample {upsample}, {size}",
            config.spatial_dims, config.in_channels, config.out_channels, config.features
        );
        println!(
            "{}",
            if config.spatial_dims == 3 {
                format!("voxels:     {orientation}")
            } else {
                format!("slices:     {orientation}")
            }
        );
        match &config.modalities {
            Some(m) => println!(
                "modality:   {} (config.json modalities; others refused)",
                m.iter().map(|m| m.name()).collect::<Vec<_>>().join(", ")
            ),
            None => println!("modality:   not stated (--modality; default CT with the abdomen window)"),
        }
        let dims = config.spatial_dims;
        BasicUNet::load(&CpuBackend, config, &weights)?;
        println!("check:      every weight has the shape this {dims}-D model expects");
    }
    Ok(())
}

/// A MONAI bundle: its network, classes, window and orientation, after loading its weights.
fn bundle_info(path: &Path) -> Result<()> {
    use xaiclip::models::bundle::Network;
    let b = xaiclip::models::bundle::read(path)?;
    let net = &b.net;
    println!("folder:     {}", path.display());
    println!("format:     MONAI bundle (configs/inference.json network_def, {})", b.weights.display());
    let layers = match net {
        Network::BasicUNet(c) => {
            format!("features {:?}, {}, {}", c.features, norm_words(c.norm, c.norm_eps), act_words(c.act))
        }
        Network::UNet(c) => c.summary(),
        Network::SegResNet(c) => c.summary(),
        Network::DynUNet(c) => c.summary(),
    };
    println!(
        "model:      {} ({}-D), {} input channel(s) -> {} classes, {layers}",
        b.network,
        net.spatial_dims(),
        net.in_channels(),
        net.out_channels(),
    );
    match &b.classes {
        Some(names) => println!(
            "classes:    {} (metadata.json channel_def)",
            names.iter().enumerate().map(|(i, n)| format!("{i} {n}")).collect::<Vec<_>>().join(", ")
        ),
        None => println!("classes:    not named in metadata.json: organs are FLARE22 ids"),
    }
    match b.intensity {
        Some(Intensity::ZScore) => println!("intensity:  the volume's own [min, max] to [0, 1], nothing clipped"),
        Some(i) => println!("intensity:  {i:?} (ScaleIntensityRanged, clipped, to [0, 1])"),
        None => println!("intensity:  not fixed by the bundle (--window/--modality, default the abdomen window)"),
    }
    if !b.norms.is_empty() {
        let norms: Vec<String> = b.norms.iter().map(|n| n.describe()).collect();
        let grid = if b.norms_before_spacing { "the file's grid" } else { "the resampled grid" };
        println!("            then per volume, with its statistics on {grid}: {}", norms.join(", "));
    }
    match (net.spatial_dims(), b.patch_size, b.input_size) {
        (3, Some(p), _) => {
            let blend = b.window.map_or(String::new(), |w| {
                let mode = if w.gaussian { format!("gaussian, sigma {}", w.sigma_scale) } else { "constant".into() };
                format!(", overlap {}, {mode} blending", w.overlap)
            });
            println!("geometry:   patch {}x{}x{} (SlidingWindowInferer roi_size{blend})", p[0], p[1], p[2])
        }
        (_, _, Some(s)) => println!("geometry:   input {s}x{s} (Resized)"),
        _ => println!("geometry:   not stated (2-D: 256x256 unless --size; 3-D: --patch, default 96x96x96)"),
    }
    match net.spatial_dims() {
        3 => println!("voxels:     {}", b.describe_volume()),
        _ => println!("slices:     {}", b.orientation().describe()),
    }
    xaiclip::models::SegModel::load_dir(&CpuBackend, path)?;
    println!("check:      every weight has the shape the network_def expects");
    Ok(())
}

/// A norm in PyTorch's words.
fn norm_words(norm: xaiclip::models::unet::NormKind, eps: f32) -> String {
    use xaiclip::models::unet::NormKind;
    match norm {
        NormKind::Instance { affine: true } => format!("instance norm (affine, eps {eps})"),
        NormKind::Instance { affine: false } => format!("instance norm (eps {eps})"),
        NormKind::Batch => format!("batch norm (eps {eps}, folded into the convs)"),
        NormKind::None => "no norm".into(),
    }
}

/// An activation in PyTorch's words.
fn act_words(act: xaiclip::backend::Activation) -> String {
    use xaiclip::backend::Activation;
    match act {
        Activation::LeakyRelu(slope) => format!("LeakyReLU({slope})"),
        Activation::Relu => "ReLU".into(),
        other => format!("{other:?}"),
    }
}

/// An nnU-Net v2 result folder: the network the plans describe, its classes, folds, geometry,
/// normalisation and slice orientation, after loading every fold's weights.
fn nnunet_info(path: &Path) -> Result<()> {
    use xaiclip::models::nnunet::Normalization;
    use xaiclip::models::NnUNet;
    let model = NnUNet::load_dir(&CpuBackend, path)?;
    let c = model.config();
    let axes = |v: &[usize; 3]| v[3 - c.spatial_dims..].iter().map(|n| n.to_string()).collect::<Vec<_>>().join("x");
    println!("folder:     {}", model.dir.display());
    println!("format:     nnU-Net v2 result folder, configuration {}", model.configuration);
    println!(
        "model:      {} ({}-D), {} input channel(s) -> {} classes, {} stages, features {:?}",
        c.architecture.name(),
        c.spatial_dims,
        c.in_channels,
        c.num_classes,
        c.features.len(),
        c.features
    );
    println!("kernels:    {}", c.kernels.iter().map(axes).collect::<Vec<_>>().join(", "));
    println!("strides:    {}", c.strides.iter().map(axes).collect::<Vec<_>>().join(", "));
    let unit = if c.nonlin_first { "conv, nonlinearity, norm" } else { "conv, norm, nonlinearity" };
    println!(
        "blocks:     {} per encoder stage {:?}, conv units per decoder stage {:?}; each unit {unit}: {}, {}",
        if c.architecture == xaiclip::models::nnunet::Architecture::Plain { "conv units" } else { "residual blocks" },
        c.encoder_depth,
        c.decoder_depth,
        norm_words(c.norm, c.norm_eps),
        act_words(c.act)
    );
    println!(
        "classes:    {}",
        model.classes.iter().enumerate().map(|(i, n)| format!("{i} {n}")).collect::<Vec<_>>().join(", ")
    );
    for (fold, checkpoint) in &model.folds {
        println!("fold:       {fold}: {}", checkpoint.display());
    }
    if model.folds.len() > 1 {
        println!("ensemble:   the mean of the {} folds' logits (as nnUNetPredictor)", model.folds.len());
    }
    println!("geometry:   patch {:?}, spacing {:?} mm (the plans' axis order)", model.patch_size, model.spacing);
    match &model.normalization {
        Normalization::Ct { low, high, mean, std } => println!(
            "intensity:  CTNormalization: clip to [{low}, {high}] HU, then (HU - {mean}) / {std} (the window xaiclip uses)"
        ),
        Normalization::ZScore { .. } => println!(
            "intensity:  ZScoreNormalization: (v - mean) / std with each volume's own mean and std, nothing clipped (xaiclip windows the volume's [min, max] and maps it to that)"
        ),
        Normalization::Other(name) => println!("intensity:  {name} (not supported by explain/segment yet)"),
    }
    println!(
        "mirroring:  off unless --mirror (nnUNetPredictor's default; {})",
        match xaiclip::models::nnunet::mirroring_axes(&model.folds[0].1) {
            Ok(axes) if axes.is_empty() => "this checkpoint allows none".to_string(),
            Ok(axes) => format!("the checkpoint allows axes {axes:?}"),
            Err(e) => format!("{e:#}"),
        }
    );
    if c.spatial_dims == 3 {
        println!("voxels:     {}", model.describe_volume());
        println!("inference:  nnUNetPredictor's sliding window: tiles of the patch at step 0.5, its Gaussian weighting, 0 padding after normalisation; mirroring with --mirror");
    } else {
        println!("slices:     {}", model.orientation.describe());
    }
    if c.spatial_dims == 2 {
        println!(
            "model grid: {0}x{0} by default (the longer patch side, a multiple of the total stride {1}); --size must be a multiple of {1}",
            model.default_grid(),
            model.grid_multiple()
        );
        println!("volumes:    segment --slice all (the default) predicts as nnUNetPredictor: {}; every slice tiled with the 2-D patch at step 0.5, its Gaussian weighting; explain (no --size) runs a slice, or the volume with --slice all, on that grid where it differs from the model grid", model.describe_volume());
    }
    println!("check:      every fold's weights have the shapes the plans' architecture expects");
    Ok(())
}
