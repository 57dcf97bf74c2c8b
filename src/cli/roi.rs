//! `xaiclip roi`: the CLIP ROI of one slice, as an overlay or a mask volume.

use super::explain::load_case;
use super::{CaseArgs, ClipArgs, DeviceArgs, IntensityArgs, MethodArgs};
use anyhow::{bail, Context, Result};
use std::path::PathBuf;
use xaiclip::io;

use xaiclip::preprocess::resize_nearest;
use xaiclip::render;
use xaiclip::roi::{area_fraction, region, RoiMode};

#[derive(clap::Args, Debug)]
pub struct RoiCmd {
    #[command(flatten)]
    pub case: CaseArgs,
    /// Organ to localise (liver, spleen, right-kidney, left-kidney, pancreas, aorta, ...) or class id.
    #[arg(long, default_value = "liver", help_heading = "Input")]
    pub organ: String,
    /// Model input size (square); default: the U-Net config's input_size (required when it has none).
    #[arg(long)]
    pub size: Option<usize>,
    /// Output: .png (overlay) or .nii/.nii.gz (ROI mask on the input's grid).
    #[arg(long)]
    pub out: PathBuf,
    /// ROI margin around the thresholded CLIP map, in millimetres [default: 15].
    #[arg(long, help_heading = "ROI")]
    pub margin_mm: Option<f64>,
    #[command(flatten)]
    pub clip: ClipArgs,
    #[command(flatten)]
    pub intensity: IntensityArgs,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// Writes the ROI overlay (.png) or mask (.nii/.nii.gz).
pub fn run(device: &DeviceArgs, cmd: RoiCmd) -> Result<()> {
    let name = cmd.out.to_string_lossy().to_lowercase();
    let png = name.ends_with(".png");
    if !png && !name.ends_with(".nii") && !name.ends_with(".nii.gz") {
        bail!("{}: --out must end in .png, .nii or .nii.gz", cmd.out.display());
    }
    // The explainer's defaults with the options this command has.
    let mut args = MethodArgs::parse_from_defaults(0);
    args.organ = cmd.organ.clone();
    args.clip = cmd.clip.clone();
    args.intensity = cmd.intensity.clone();
    args.options.margin_mm = cmd.margin_mm;
    let explainer = args.explainer(device, cmd.size)?;
    let case = load_case(&explainer, &cmd.case, &cmd.organ)?;
    let clip = case.clip(&explainer, true)?;
    let size = explainer.model_size();
    let margin_mm = explainer.settings().margin_mm;
    let mask = clip.mask.as_deref().context("CLIP ROI missing")?;
    let roi = region(RoiMode::Clip, &vec![false; size * size], Some(mask), size, margin_mm / case.input.mm_per_pixel)?;
    let area = area_fraction(&roi);
    if png {
        let probability = clip.probability.as_deref().context("CLIP map missing")?;
        let organ = explainer.class_name(case.class);
        let panel = render::Panel {
            image: &case.input.image,
            size,
            extent_mm: case.input.extent_mm,
            values: probability,
            colouring: render::Colouring::of(probability, None, render::Sign::All),
            roi: Some(&roi),
            truth: case.input.truth.as_deref(),
            title: vec![
                format!("CLIP ROI of the {organ}, slice {}", case.slice),
                format!("{:.1}% of the slice, + {margin_mm} mm margin", 100.0 * area),
            ],
            unit: format!("CLIP probability of the {organ} per patch"),
            long_side: case.input.figure_long_side(),
        };
        render::save_png(&cmd.out, &render::figure(&[panel.render()?], 1, &[], &[])?)?;
    } else {
        let layout = case.input.layout;
        let shape = layout.slice_shape(&case.volume);
        let plane = resize_nearest(&roi.iter().map(|&b| b as u8).collect::<Vec<_>>(), (size, size), shape);
        let mut volume = vec![0u8; case.volume.voxel_count()];
        layout.insert(case.volume.dims, case.slice, &plane, &mut volume);
        io::nifti::write_like(&cmd.out, &case.volume, &volume)?;
    }
    let coverage = case.input.truth.as_ref().map(|t| {
        let organ = t.iter().filter(|&&b| b).count().max(1);
        t.iter().zip(&roi).filter(|(a, b)| **a && **b).count() as f64 / organ as f64
    });
    eprintln!(
        "{} ROI on slice {}: {:.1}% of the slice{}; {:.3}s; wrote {}",
        explainer.class_name(case.class),
        case.slice,
        100.0 * area,
        coverage.map_or(String::new(), |c| format!(", covers {:.1}% of the ground-truth organ", 100.0 * c)),
        clip.seconds,
        cmd.out.display()
    );
    Ok(())
}
