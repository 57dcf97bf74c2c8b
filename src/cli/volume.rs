//! `xaiclip explain` with a 3-D U-Net: occlusion, RISE, LIME or Kernel SHAP over the whole volume under
//! sliding-window inference (`xaiclip::volumes`), written as saliency volume, the three-plane overlay
//! and report.json.

use super::bench::BenchCmd;
use super::explain::ExplainCmd;
use super::{DeviceArgs, MethodArgs, Progress};
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::Path;
use xaiclip::explain::superpixels::Segmenter;
use xaiclip::explain::volume::Occlusion3d;
use xaiclip::io::{self, stage_text, Staging};
use xaiclip::models::sliding::{Blend, SlidingWindow};
use xaiclip::pipeline::Method;
use xaiclip::render;
use xaiclip::volumes::{explain_volumes_on, model_labels, VolumeMethod, VolumeSettings, OCCLUSION_WINDOW};

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

fn parse_patch(text: &str) -> Result<[usize; 3]> {
    let sides: Vec<usize> =
        text.split(',').map(|s| s.trim().parse::<usize>()).collect::<Result<_, _>>().ok().unwrap_or_default();
    match sides[..] {
        [d, h, w] if sides.iter().all(|&v| v >= 16) => Ok([d, h, w]),
        _ => bail!("--patch {text:?}: expected D,H,W, three integers >= 16"),
    }
}

/// The whole-volume settings of `method` with the model's own sliding window (`model`; --patch,
/// --overlap and --blend override it); the ROI mode stays the whole volume.
pub fn settings(v: &VolumeArgs, args: &MethodArgs, method: Method, model: SlidingWindow) -> Result<VolumeSettings> {
    let options = &args.options;
    if method == Method::Rise && options.rise_tol.is_some() {
        bail!("--rise-tol: the adaptive RISE stop is for slices; whole volumes score every --masks");
    }
    let patch = match &v.patch {
        Some(p) => parse_patch(p)?,
        None => model.roi_size,
    };
    let mut settings = VolumeSettings::new(patch);
    settings.window = SlidingWindow { roi_size: patch, ..model };
    if let Some(o) = v.overlap {
        settings.window.overlap = o;
    }
    if let Some(b) = v.blend {
        settings.window.blend = b;
    }
    settings.reuse = !v.no_tile_reuse;
    settings.faithfulness_steps = options.faithfulness_steps.unwrap_or(settings.faithfulness_steps);
    let method_settings = options.settings(patch[1]);
    if matches!(method, Method::Lime | Method::KernelShap)
        && matches!(method_settings.segmenter, Segmenter::Felzenszwalb { .. })
    {
        bail!("--segmenter felzenszwalb is for slices; volumes use SLIC supervoxels (--segmenter slic, --segments N)");
    }
    settings.method = match method {
        Method::Rise => VolumeMethod::Rise(method_settings.rise),
        Method::Lime => VolumeMethod::Lime { settings: method_settings.lime, segmenter: method_settings.segmenter },
        Method::KernelShap => {
            VolumeMethod::KernelShap { settings: method_settings.shap, segmenter: method_settings.segmenter }
        }
        Method::Occlusion => {
            let window = options.occlusion_window.unwrap_or(OCCLUSION_WINDOW);
            let stride = options.occlusion_stride.unwrap_or(window);
            VolumeMethod::Occlusion(Occlusion3d { window: [window; 3], stride: [stride; 3] })
        }
    };
    settings.scale_roi_budget = !options.same_budget;
    settings.clip = args.clip.clip_options()?;
    settings.min_coverage = options.roi_min_coverage.unwrap_or(settings.min_coverage);
    settings.fallback = options.roi_fallback;
    settings.margin_mm = options.margin_mm.unwrap_or(settings.margin_mm);
    settings.intensity = args.intensity.intensity()?;
    settings.mirror = args.intensity.mirror;
    Ok(settings)
}

/// One progress bar per stage of a whole-volume run: CLIP's axial slices, then each run's samples.
#[derive(Default)]
struct Bars(Option<(String, Progress)>);

impl Bars {
    fn update(&mut self, stage: &str, done: usize, total: usize) {
        if self.0.as_ref().is_none_or(|(s, _)| s != stage) {
            self.finish();
            let what = if stage == "clip" { "CLIP ROI, axial slices" } else { stage };
            self.0 = Some((stage.to_string(), Progress::new(total as u64, what)));
        }
        if let Some((_, b)) = &self.0 {
            b.set_length(total as u64);
            b.set_position(done as u64);
        }
    }

    fn finish(&mut self) {
        self.0.take().inspect(|(_, b)| b.finish_and_clear());
    }
}

/// `runs` on the volume with one progress bar per stage.
fn explain_with_bars(
    device: &DeviceArgs,
    dir: &Path,
    volume: &xaiclip::io::Volume,
    labels: Option<&[u8]>,
    organ: &str,
    runs: &[VolumeSettings],
) -> Result<Vec<xaiclip::volumes::VolumeExplained>> {
    let mut bars = Bars::default();
    let result =
        explain_volumes_on(device.device, device.precision, dir, volume, labels, organ, runs, |stage, d, t| {
            bars.update(stage, d, t)
        });
    bars.finish();
    result
}

/// The whole-volume run, or with `slices` (an nnU-Net 2d configuration) one slice's unless --slice all,
/// on `volume` when it has been read: DIR/{saliency.nii.gz, overlay.png, report.json}.
pub fn run(
    device: &DeviceArgs,
    cmd: &ExplainCmd,
    dir: &Path,
    model_window: SlidingWindow,
    slices: bool,
    volume: Option<xaiclip::io::Volume>,
) -> Result<()> {
    let whole = cmd.case.slice == "all";
    if !whole && !slices {
        bail!("--slice {}: a 3-D U-Net explains the whole volume; pass --slice all", cmd.case.slice);
    }
    let mut settings = settings(&cmd.volume, &cmd.method_args, cmd.method, model_window)?;
    settings.roi = cmd.roi;
    settings.slice = (!whole).then(|| cmd.case.slices()).transpose()?;
    let volume = match volume {
        Some(v) => v,
        None => io::read_image(&cmd.case.image)?,
    };
    let labels = cmd.case.label.as_ref().map(|l| model_labels(dir, l, cmd.case.label_ids, &volume)).transpose()?;
    let runs = std::slice::from_ref(&settings);
    let explained = explain_with_bars(device, dir, &volume, labels.as_deref(), &cmd.method_args.organ, runs)?.remove(0);
    let run = &explained.run;
    run.warnings.iter().for_each(|w| eprintln!("warning: {w}"));
    std::fs::create_dir_all(&cmd.out).with_context(|| format!("{}: cannot create folder", cmd.out.display()))?;
    let mut staging = Staging::new();
    io::nifti::stage_like(&mut staging, &cmd.out.join("saliency.nii.gz"), &volume, &run.saliency)?;
    let (organ, class) = (&explained.organ, explained.class);
    let method = settings.method.name();
    let what = run.slice.map_or("3-D".to_string(), |(_, k)| format!("slice {k}"));
    let title = format!(
        "{method} {what} · {organ} · {:.1} s · {} tiles ({} without reuse)",
        run.seconds, run.tiles_evaluated, run.tiles_naive
    );
    let figure = xaiclip::report::volume_figure(
        &volume,
        run,
        explained.truth.as_deref(),
        run.intensity.range(&volume),
        cmd.roi,
        &title,
    )?;
    render::stage_png(&mut staging, &cmd.out.join("overlay.png"), &figure)?;
    let roi_fraction = run.roi_fraction();
    // What was explained: the report's mode and the summary's "of the ...".
    let scope = if run.slice.is_some() { "slice" } else { "volume" };
    let w = &settings.window;
    let mut unet = xaiclip::explainer::weights_entry(dir, &explained.files)?;
    unet["network"] = explained.network.clone().into();
    unet["intensity"] = format!("{:?}", run.intensity).into();
    unet["voxels"] = explained.orientation.clone().into();
    let mut report = json!({
        "image": cmd.case.image, "label": cmd.case.label, "organ": organ, "class": class,
        "mode": scope, "slice": run.slice.map(|(_, k)| k),
        "backend": explained.backend,
        "settings": {
            "method": method, "roi": cmd.roi.name(), "margin_mm": settings.margin_mm, "same_budget": !settings.scale_roi_budget,
            "roi_min_coverage": settings.min_coverage, "roi_fallback": settings.fallback.map(|m| m.name()),
            "roi_threshold": settings.clip.threshold.to_string(),
            "sliding_window": {"patch": w.roi_size, "overlap": w.overlap, "blend": w.blend, "sigma_scale": w.sigma_scale, "tiles_per_forward": w.batch},
            "tile_reuse": settings.reuse, "faithfulness_steps": settings.faithfulness_steps, "baseline": 0.0, "score": "mean-prob",
        },
        "provenance": super::provenance(),
        "weights": {"unet": unet},
        "result": {
            "seconds": run.seconds, "samples": run.samples, "tiles": run.tiles, "tiles_evaluated": run.tiles_evaluated,
            "tiles_naive": run.tiles_naive, "forward_passes": run.forward_passes, "unperturbed_score": run.base_score,
            "roi_fraction": roi_fraction, "roi_coverage": run.roi_coverage, "m0_voxels": run.m0.iter().filter(|&&m| m).count(),
            "roi_fallback": run.roi_fallback.map(|m| m.name()),
            "clip": run.clip.as_ref().map(|c| json!({"slices": c.slices, "seconds": c.seconds, "voxels": c.mask.iter().filter(|&&m| m).count()})),
            "agreement": run.agreement, "unet_dice": run.unet_dice,
            "faithfulness": run.faithfulness,
        },
        "warnings": run.warnings,
    });
    // The method's own parameters under its name: "occlusion": {window, stride} or "rise": {masks, ...}.
    if let serde_json::Value::Object(parameters) = serde_json::to_value(settings.method)? {
        report["settings"].as_object_mut().context("settings is an object")?.extend(parameters);
    }
    stage_text(&mut staging, &cmd.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    staging.commit()?;
    eprintln!(
        "{method} {what} of the {organ} ({} ROI, {:.1}% of the {scope}): {:.2}s, {} samples, {} of {} tiles evaluated ({:.1}x fewer), {} forward passes; wrote {}/{{saliency.nii.gz, overlay.png, report.json}}",
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

/// `xaiclip bench` with a 3-D U-Net: each method over the whole volume and in `cmd.roi`, the model
/// loaded and the CLIP ROI found once; with `slices` (an nnU-Net 2d configuration) over one slice
/// unless --slice all; on `volume` when it has been read. Prints the table and writes --md/--json.
pub fn bench(
    device: &DeviceArgs,
    cmd: &BenchCmd,
    dir: &Path,
    model_window: SlidingWindow,
    slices: bool,
    volume: Option<xaiclip::io::Volume>,
) -> Result<()> {
    if cmd.demo || !slices && cmd.slice != "organ-center" && cmd.slice != "all" {
        bail!("a 3-D U-Net benches a whole volume: pass --image (and --label), without --demo or --slice");
    }
    let slice = (slices && cmd.slice != "all").then(|| super::parse_slices("--slice", &cmd.slice)).transpose()?;
    for (given, flag) in
        [(cmd.html.is_some(), "--html"), (cmd.export.is_some(), "--export"), (cmd.size.is_some(), "--size")]
    {
        if given {
            bail!("{flag} is for slices; with a 3-D U-Net bench writes --md and --json (explain writes each run's map and overlay)");
        }
    }
    for (flag, given, plain) in [("--repeat", cmd.repeat, 1), ("--warmup", cmd.warmup, 0)] {
        if given != plain {
            bail!(
                "{flag} {given}: a 3-D bench runs each row once (minutes per row); compare runs side by side instead"
            );
        }
    }
    let image = cmd.image.as_deref().context("--image is required")?;
    let mut runs = Vec::new();
    for &method in &cmd.methods {
        let full =
            VolumeSettings { slice: slice.clone(), ..settings(&cmd.volume, &cmd.method_args, method, model_window)? };
        let roi = VolumeSettings { roi: cmd.roi, ..full.clone() };
        runs.extend([full, roi]);
    }
    let volume = match volume {
        Some(v) => v,
        None => io::read_image(image)?,
    };
    let labels = cmd.label.as_ref().map(|l| model_labels(dir, l, cmd.label_ids, &volume)).transpose()?;
    let explained = explain_with_bars(device, dir, &volume, labels.as_deref(), &cmd.method_args.organ, &runs)?;
    let first = explained.first().context("no method to bench")?;
    let w = &runs[0].window;
    let context = json!({
        "image": image, "label": cmd.label, "organ": first.organ, "class": first.class,
        "mode": if first.run.slice.is_some() { "slice" } else { "volume" }, "slice": first.run.slice.map(|(_, k)| k),
        "backend": first.backend, "network": first.network, "voxels": first.orientation,
        "sliding_window": {"patch": w.roi_size, "overlap": w.overlap, "blend": w.blend, "tiles_per_forward": w.batch},
        "tile_reuse": runs[0].reuse, "faithfulness_steps": runs[0].faithfulness_steps, "margin_mm": runs[0].margin_mm,
        "provenance": super::provenance(),
        "weights": {"unet": xaiclip::explainer::weights_entry(dir, &first.files)?},
    });
    let rows: Vec<_> = runs.iter().zip(&explained).map(|(s, e)| (s, &e.run)).collect();
    let (md, table) = xaiclip::bench::volume_bench_tables(&rows, context);
    println!("{md}");
    let mut staging = Staging::new();
    if let Some(p) = &cmd.md {
        stage_text(&mut staging, p, &md)?;
    }
    if let Some(p) = &cmd.json {
        stage_text(&mut staging, p, serde_json::to_string_pretty(&table)?)?;
    }
    staging.commit()
}
