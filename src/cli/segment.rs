//! `xaiclip segment`: U-Net labels of whole slices (or, with a 3-D model, of the whole volume), on the
//! input's grid.

use super::{DeviceArgs, IntensityArgs, Progress};
use anyhow::Result;
use std::path::PathBuf;
use std::time::Instant;
use xaiclip::{io, Explainer};

#[derive(clap::Args, Debug)]
pub struct SegmentCmd {
    /// Input image: NIfTI file or DICOM series folder.
    #[arg(long)]
    pub image: PathBuf,
    /// Axial slice(s) to segment: an index along the file's slice axis (0-based), a comma list
    /// (3,7,9), or "all".
    #[arg(long, default_value = "all")]
    pub slice: String,
    /// Model folder (a BasicUNet's config.json + weights, a MONAI bundle, or an nnU-Net v2 result
    /// folder); default: the bundled weights/unet.
    #[arg(long, visible_alias = "model")]
    pub unet: Option<PathBuf>,
    /// Output label volume (.nii or .nii.gz), uint8 class ids.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub intensity: IntensityArgs,
    /// Model input size (square); default: config.json's input_size (required when it has none).
    #[arg(long)]
    pub size: Option<usize>,
    /// Slices per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch: usize,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// Segments the asked slices and writes the label volume.
pub fn run(device: &DeviceArgs, cmd: SegmentCmd) -> Result<()> {
    // Refused before any work: the name decides the format.
    io::nifti::output_suffix(&cmd.out)?;
    let volume = io::read_image(&cmd.image)?;
    // A 3-D model segments the whole volume with its own sliding window; so does an nnU-Net 2d
    // configuration asked for every slice, as nnUNetPredictor does (crop, resampling, its 2-D patch).
    let whole = |d: &std::path::Path| match cmd.slice == "all" && cmd.size.is_none() {
        true => xaiclip::volumes::volume_window(d),
        false => xaiclip::volumes::model_window(d),
    };
    if let Some((dir, window)) = cmd.unet.as_deref().and_then(|d| Some((d, whole(d)?))) {
        if cmd.slice != "all" || cmd.size.is_some() {
            anyhow::bail!("--slice and --size are for slices; a 3-D model segments the whole volume (--slice all)");
        }
        let started = Instant::now();
        let labels = xaiclip::volumes::segment_volume_on(
            device.device,
            device.precision,
            dir,
            &volume,
            Some(window),
            cmd.intensity.intensity()?,
            cmd.intensity.mirror,
        )?;
        io::nifti::write_like(&cmd.out, &volume, &labels)?;
        eprintln!(
            "segmented the whole volume in {:.2}s; wrote {} (labels present: {:?})",
            started.elapsed().as_secs_f64(),
            cmd.out.display(),
            label_counts(&labels).iter().map(|(l, _)| *l).collect::<Vec<_>>()
        );
        return Ok(());
    }
    let spec = super::parse_slices("--slice", &cmd.slice)?;
    let mut builder = Explainer::builder()
        .device(device.device)
        .precision(device.precision)
        .size(cmd.size)
        .mirror(cmd.intensity.mirror);
    if let Some(intensity) = cmd.intensity.intensity()? {
        builder = builder.intensity(intensity);
    }
    if let Some(unet) = &cmd.unet {
        builder = builder.unet(unet);
    }
    let explainer = builder.build()?;
    super::warn_image(&explainer, &volume)?;
    let intensity = explainer.intensity();
    let slices = spec.resolve(&volume, None, 0, explainer.orientation())?;
    let started = Instant::now();
    let bar = Progress::new(slices.len() as u64, "segment slices");
    let labels = explainer.segment(&volume, &slices, intensity, cmd.batch, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    io::nifti::write_like(&cmd.out, &volume, &labels)?;
    eprintln!(
        "segmented {} slices in {:.2}s; wrote {} (labels present: {:?})",
        slices.len(),
        started.elapsed().as_secs_f64(),
        cmd.out.display(),
        label_counts(&labels).iter().map(|(l, _)| *l).collect::<Vec<_>>()
    );
    Ok(())
}

fn label_counts(labels: &[u8]) -> Vec<(u8, usize)> {
    let mut counts = [0usize; 256];
    labels.iter().for_each(|&l| counts[l as usize] += 1);
    (0..=255u8).zip(counts).filter(|(_, c)| *c > 0).collect()
}
