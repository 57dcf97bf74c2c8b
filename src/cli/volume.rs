//! `xaiclip explain` with a 3-D U-Net: occlusion over the whole volume under sliding-window inference
//! (`xaiclip::volumes`), written as saliency volume, the three-plane overlay and report.json.

use super::explain::ExplainCmd;
use super::{DeviceArgs, Progress};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use xaiclip::explain::volume::Occlusion3d;
use xaiclip::io::{self, stage_text, Staging};
use xaiclip::models::sliding::Blend;
use xaiclip::models::UNetConfig;
use xaiclip::organs::{organ_class, organ_name};
use xaiclip::pipeline::Method;
use xaiclip::volumes::{explain_volume_on, VolumeSettings};
use xaiclip::{read_labels, render};

/// Options of whole-volume runs (3-D U-Nets).
#[derive(clap::Args, Debug)]
pub struct VolumeArgs {
    /// 3-D U-Nets: the sliding window's tile D,H,W in voxels; default: config.json's patch_size, else
    /// 96,96,96.
    #[arg(long, help_heading = "Volume (3-D U-Nets)")]
    pub patch: Option<String>,
    /// 3-D U-Nets: overlap of neighbouring tiles, 0 <= overlap < 1; default: 0.25 (MONAI's).
    #[arg(long, help_heading = "Volume (3-D U-Nets)")]
    pub overlap: Option<f64>,
    /// 3-D U-Nets: how overlapping tiles are weighted; default: gaussian.
    #[arg(long, value_enum, help_heading = "Volume (3-D U-Nets)")]
    pub blend: Option<Blend>,
    /// 3-D U-Nets: recompute every tile for every perturbed volume instead of only the tiles the
    /// perturbation touches (the same map, more tiles: for timing the reuse).
    #[arg(long, help_heading = "Volume (3-D U-Nets)")]
    pub no_tile_reuse: bool,
}

/// The config of the U-Net in `dir` when it is 3-D (config.json says spatial_dims 3). A missing or
/// broken config is reported by the loader that reads it properly; here only the rank matters.
pub fn volumetric_config(dir: &Path) -> Option<UNetConfig> {
    if xaiclip::models::bundle::is_bundle(dir) {
        return xaiclip::models::bundle::read(dir).ok().map(|b| b.config).filter(|c| c.spatial_dims == 3);
    }
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    UNetConfig::from_json(&text).ok().filter(|c| c.spatial_dims == 3)
}

fn parse_patch(text: &str) -> Result<[usize; 3]> {
    let sides: Vec<usize> =
        text.split(',').map(|s| s.trim().parse::<usize>()).collect::<Result<_, _>>().ok().unwrap_or_default();
    match sides[..] {
        [d, h, w] if sides.iter().all(|&v| v >= 16) => Ok([d, h, w]),
        _ => bail!("--patch {text:?}: expected D,H,W, three integers >= 16"),
    }
}

/// The whole-volume run: DIR/{saliency.nii.gz, overlay.png, report.json}.
pub fn run(device: &DeviceArgs, cmd: &ExplainCmd, dir: &Path, config: &UNetConfig) -> Result<()> {
    if cmd.method != Method::Occlusion {
        bail!(
            "--method {}: whole volumes (a 3-D U-Net) are explained by occlusion so far; RISE, LIME and Kernel SHAP in 3-D are not available yet",
            cmd.method.name()
        );
    }
    if cmd.case.slice != "all" {
        bail!("--slice {}: a 3-D U-Net explains the whole volume; pass --slice all", cmd.case.slice);
    }
    let v = &cmd.volume;
    let patch = match &v.patch {
        Some(p) => parse_patch(p)?,
        None => config.patch_size.unwrap_or([96; 3]),
    };
    let mut settings = VolumeSettings::new(patch);
    if let Some(o) = v.overlap {
        settings.window.overlap = o;
    }
    if let Some(b) = v.blend {
        settings.window.blend = b;
    }
    settings.reuse = !v.no_tile_reuse;
    let options = &cmd.method_args.options;
    let window = options.occlusion_window.unwrap_or(settings.occlusion.window[0]);
    let stride = options.occlusion_stride.unwrap_or(window);
    settings.occlusion = Occlusion3d { window: [window; 3], stride: [stride; 3] };
    settings.roi = cmd.roi;
    settings.margin_mm = options.margin_mm.unwrap_or(settings.margin_mm);
    // A bundle's own window and class names, where it states them.
    let bundle = xaiclip::models::bundle::is_bundle(dir).then(|| xaiclip::models::bundle::read(dir)).transpose()?;
    match (cmd.method_args.intensity.intensity()?, bundle.as_ref().and_then(|b| b.intensity)) {
        (Some(asked), Some(own)) if asked != own => {
            bail!("{}: the bundle normalises its input itself ({own:?}); drop --window/--modality", dir.display())
        }
        (Some(i), _) | (None, Some(i)) => settings.intensity = i,
        (None, None) => {}
    }
    let weights_file = bundle.as_ref().map_or_else(|| xaiclip::weights::model_file(dir), |b| b.weights.clone());
    let class = match bundle.as_ref().and_then(|b| b.classes.as_deref()) {
        Some(classes) => xaiclip::organs::class_in(classes, &cmd.method_args.organ)?,
        None => organ_class(&cmd.method_args.organ)?,
    };
    let volume = io::read_image(&cmd.case.image)?;
    let labels = cmd.case.label.as_ref().map(|l| read_labels(l, cmd.case.label_ids, &volume)).transpose()?;
    let bar = Progress::new(0, &format!("occlusion 3-D ({})", cmd.roi.name()));
    let result = explain_volume_on(
        device.device,
        device.precision,
        dir,
        &volume,
        labels.as_deref(),
        class,
        &settings,
        |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        },
    );
    bar.finish_and_clear();
    let (run, backend) = result?;
    std::fs::create_dir_all(&cmd.out).with_context(|| format!("{}: cannot create folder", cmd.out.display()))?;
    let mut staging = Staging::new();
    io::nifti::stage_like(&mut staging, &cmd.out.join("saliency.nii.gz"), &volume, &run.saliency)?;
    let truth: Option<Vec<bool>> = labels.as_ref().map(|l| l.iter().map(|&c| c as usize == class).collect());
    let organ = organ_name(class);
    let title = format!(
        "occlusion 3-D · {organ} · {:.1} s · {} tiles ({} without reuse)",
        run.seconds, run.tiles_evaluated, run.tiles_naive
    );
    let figure = xaiclip::report::volume_figure(
        &volume,
        &run,
        truth.as_deref(),
        settings.intensity.range(&volume),
        cmd.roi,
        &title,
    )?;
    render::stage_png(&mut staging, &cmd.out.join("overlay.png"), &figure)?;
    let roi_fraction = run.roi.iter().filter(|&&r| r).count() as f64 / run.roi.len() as f64;
    let w = &settings.window;
    let report = json!({
        "image": cmd.case.image, "label": cmd.case.label, "organ": organ, "class": class, "mode": "volume",
        "backend": backend,
        "settings": {
            "method": "occlusion", "roi": cmd.roi.name(), "margin_mm": settings.margin_mm,
            "occlusion": settings.occlusion,
            "sliding_window": {"patch": w.roi_size, "overlap": w.overlap, "blend": w.blend, "sigma_scale": w.sigma_scale, "tiles_per_forward": w.batch},
            "tile_reuse": settings.reuse, "baseline": 0.0, "score": "mean-prob",
        },
        "provenance": super::provenance(),
        "weights": {"unet": {"folder": dir, "sha256": xaiclip::explainer::sha256_file(&weights_file)?}},
        "result": {
            "seconds": run.seconds, "samples": run.samples, "tiles": run.tiles, "tiles_evaluated": run.tiles_evaluated,
            "tiles_naive": run.tiles_naive, "forward_passes": run.forward_passes, "unperturbed_score": run.base_score,
            "roi_fraction": roi_fraction, "roi_coverage": run.roi_coverage, "m0_voxels": run.m0.iter().filter(|&&m| m).count(),
            "agreement": run.agreement,
        },
    });
    stage_text(&mut staging, &cmd.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    staging.commit()?;
    eprintln!(
        "occlusion 3-D of the {organ} ({} ROI, {:.1}% of the volume): {:.2}s, {} windows, {} of {} tiles evaluated ({:.1}x fewer), {} forward passes; wrote {}/{{saliency.nii.gz, overlay.png, report.json}}",
        cmd.roi.name(),
        100.0 * roi_fraction,
        run.seconds,
        run.samples,
        run.tiles_evaluated,
        run.tiles_naive,
        run.tiles_naive as f64 / run.tiles_evaluated as f64,
        run.forward_passes,
        cmd.out.display()
    );
    Ok(())
}
