//! `xaiclip explain`: one method on one slice, written as saliency volume, overlay and report.

use super::{CaseArgs, DeviceArgs, MethodArgs, Progress};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;
use xaiclip::io::{self, stage_text, Staging, Volume};
use xaiclip::pipeline::{Method, MethodRun, Settings, SliceInput, Slices};
use xaiclip::report::{runs_report, FigureOptions, ReportContext};
use xaiclip::roi::clip::ClipRoi;
use xaiclip::roi::RoiMode;
use xaiclip::{render, Explainer, Request, Runs};

#[derive(clap::Args, Debug)]
pub struct ExplainCmd {
    #[command(flatten)]
    pub case: CaseArgs,
    /// Perturbation method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Region of interest: none (full image), clip (CLIP organ map + margin), seg (predicted organ +
    /// margin), bbox, clip+seg.
    #[arg(long, value_enum, default_value_t = RoiMode::default())]
    pub roi: RoiMode,
    /// Model input size (square); default: the U-Net config's input_size (required when it has none).
    #[arg(long)]
    pub size: Option<usize>,
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    /// The part of a signed map the overlay shows: all (diverging map centred at 0 where the map has both
    /// signs), positive, negative, absolute_value (Captum's visualize_image_attr choices).
    #[arg(long, value_enum, default_value_t = xaiclip::render::Sign::All)]
    pub sign: xaiclip::render::Sign,
    #[command(flatten)]
    pub volume: super::volume::VolumeArgs,
    #[command(flatten)]
    pub method_args: MethodArgs,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// Explains and writes DIR/{saliency.nii.gz, overlay.png, report.json, report.html}.
pub fn run(device: &DeviceArgs, cmd: ExplainCmd) -> Result<()> {
    // A 3-D U-Net explains the whole volume instead of a slice.
    if let Some(dir) = &cmd.method_args.unet {
        if let Some(window) = xaiclip::volumes::model_window(dir) {
            return super::volume::run(device, &cmd, dir, window, false, None);
        }
    }
    // An nnU-Net 2d configuration explains the whole volume, and any slice that nnUNetPredictor would
    // crop, resample or tile, on its predictor's grid (unless --size asks for slices resized to a grid).
    let nnunet_2d = cmd.method_args.unet.as_deref().filter(|_| cmd.size.is_none());
    let nnunet_2d = nnunet_2d.and_then(|d| Some((d, xaiclip::volumes::volume_window(d)?)));
    if let Some((dir, window)) = nnunet_2d.filter(|_| cmd.case.slice == "all") {
        return super::volume::run(device, &cmd, dir, window, true, None);
    }
    let started = std::time::Instant::now();
    let volume = io::read_image(&cmd.case.image)?;
    if let Some((dir, window)) = nnunet_2d {
        if xaiclip::volumes::slice_needs_predictor_grid(dir, &volume)? {
            return super::volume::run(device, &cmd, dir, window, true, Some(volume));
        }
    }
    let explainer = cmd.method_args.explainer(device, cmd.size)?;
    super::warn_image(&explainer, &volume)?;
    let mut request = Request::new(&cmd.method_args.organ, cmd.method).roi(cmd.roi).slices(cmd.case.slices()?);
    if let Some(label) = &cmd.case.label {
        request = request.labels(explainer.read_labels(label, cmd.case.label_ids, &volume)?);
    }
    let loading = started.elapsed().as_secs_f64();
    let bar = Progress::new(0, &format!("{} ({})", cmd.method.name(), cmd.roi.name()));
    let explanation = explainer.explain_with(&volume, &request, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    let explanation = explanation?;
    let run = &explanation.run;
    std::fs::create_dir_all(&cmd.out).with_context(|| format!("{}: cannot create folder", cmd.out.display()))?;
    // The four files appear together or not at all (a failed write leaves the previous run's set).
    let mut staging = Staging::new();
    let saliency = explanation.saliency_volume(&volume)?;
    io::nifti::stage_like(&mut staging, &cmd.out.join("saliency.nii.gz"), &volume, &saliency)?;
    render::stage_png(&mut staging, &cmd.out.join("overlay.png"), &explanation.overlay_with(cmd.sign)?)?;
    let settings = &explanation.settings;
    let report = json!({
        "image": cmd.case.image, "label": cmd.case.label, "slice": explanation.slice, "organ": explanation.organ,
        "class": explanation.class, "model_input_size": explainer.model_size(), "seed": cmd.method_args.options.seed,
        "backend": explainer.device_name(), "settings": settings.json_for(cmd.method), "provenance": super::provenance(), "weights": explainer.weights_json()?, "result": explanation.result_json(),
        "warnings": explanation.warnings,
    });
    let mut md = String::from("| figure | value |\n|---|---:|\n");
    if let serde_json::Value::Object(fields) = serde_json::to_value(run.summary().figures)? {
        for (k, v) in fields.iter().filter(|(_, v)| !v.is_null()) {
            md += &format!(
                "| {k} | {} |\n",
                match v.as_f64() {
                    Some(x) if v.is_f64() => format!("{x:.4}"),
                    _ => v.to_string(),
                }
            );
        }
    }
    let context = ReportContext {
        title: &format!(
            "xaiclip explain: {} of the {}, slice {}",
            cmd.method.name(),
            explanation.organ,
            explanation.slice
        ),
        case: format!(
            "{}, axial slice {}, organ {}; ROI mode {}; backend {}.",
            cmd.case.image.display(),
            explanation.slice,
            explanation.organ,
            cmd.roi.name(),
            explainer.device_name()
        ),
        organ: &explanation.organ,
        score: settings.score,
        margin_mm: settings.margin_mm,
        options: FigureOptions { sign: cmd.sign, shared: false },
        tables_md: md,
        metadata: json!({"settings": report["settings"], "provenance": report["provenance"], "weights": report["weights"]}),
    };
    let html = runs_report(std::slice::from_ref(run), &explanation.input, &context)?.html;
    stage_text(&mut staging, &cmd.out.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    stage_text(&mut staging, &cmd.out.join("report.html"), html)?;
    staging.commit()?;
    eprintln!(
        "{} on slice {} ({} ROI, {:.1}% of the slice): {}, {} forward passes; wrote {}/{{saliency.nii.gz, overlay.png, report.json, report.html}}",
        cmd.method.name(),
        explanation.slice,
        cmd.roi.name(),
        100.0 * run.roi_fraction(),
        seconds_note(run, loading),
        run.forward_passes,
        cmd.out.display()
    );
    if let Some(note) = budget_note(run, settings) {
        eprintln!("{note}");
    }
    Ok(())
}

/// The run's seconds and what they hold: the CLIP ROI and the perturbations; the curves and loading are
/// not in them.
fn seconds_note(run: &MethodRun, loading: f64) -> String {
    let clip = if run.clip_seconds > 0.0 { format!("CLIP ROI {:.2}s + ", run.clip_seconds) } else { String::new() };
    format!(
        "{:.2}s ({clip}explanation {:.2}s; not included: curves and metrics {:.2}s, loading {:.2}s)",
        run.seconds,
        run.seconds - run.clip_seconds,
        run.metrics_seconds,
        loading
    )
}

/// In ROI mode the sample counts scale with the ROI's share of the features: say so when they did.
fn budget_note(run: &MethodRun, settings: &Settings) -> Option<String> {
    let (asked, what) = match run.method {
        Method::Occlusion => return None,
        Method::Rise => (settings.rise.masks, "RISE masks"),
        Method::Lime => (settings.lime.samples, "LIME samples"),
        Method::KernelShap => (settings.shap.samples, "Kernel SHAP samples"),
    };
    (run.roi_mode != RoiMode::Full && settings.scale_roi_budget && run.samples < asked).then(|| {
        format!("{what} {asked} -> {} for the ROI's share of the image (--same-budget keeps {asked})", run.samples)
    })
}

/// Reads the image (and labels), converts the slice option, and picks the slice for the organ.
pub fn load_case(explainer: &Explainer, case: &CaseArgs, organ: &str) -> Result<Case> {
    case_of(explainer, io::read_image(&case.image)?, case, organ)
}

/// [`load_case`] of a volume already read from `case.image`.
pub fn case_of(explainer: &Explainer, volume: Volume, case: &CaseArgs, organ: &str) -> Result<Case> {
    super::warn_image(explainer, &volume)?;
    let class = explainer.class_of(organ)?;
    let labels = case.label.as_deref().map(|l| explainer.read_labels(l, case.label_ids, &volume)).transpose()?;
    Case::new(explainer, volume, labels, &case.slices()?, class)
}

/// A slice ready to explain: the volume, its labels, the slice and the organ, prepared on the model grid.
pub struct Case {
    pub volume: Volume,
    pub slice: usize,
    pub class: usize,
    pub input: SliceInput,
}

impl Case {
    pub fn new(
        explainer: &Explainer,
        volume: Volume,
        labels: Option<Vec<u8>>,
        slices: &Slices,
        class: usize,
    ) -> Result<Self> {
        let slice = explainer.pick_slice(&volume, labels.as_deref(), slices, class)?;
        let input = explainer.prepare(&volume, labels.as_deref(), slice, class, explainer.intensity())?;
        Ok(Self { volume, slice, class, input })
    }

    /// The CLIP ROI when `needed`, else none.
    pub fn clip(&self, explainer: &Explainer, needed: bool) -> Result<ClipRoi> {
        Ok(if needed {
            explainer.clip_roi(&self.input, self.class, explainer.intensity().modality())?
        } else {
            ClipRoi::default()
        })
    }
}

/// The bench rows with one progress bar per run and a line per finished row.
pub fn bench_rows(
    explainer: &Explainer,
    case: &Case,
    clip: &ClipRoi,
    methods: &[Method],
    roi: RoiMode,
    settings: &Settings,
    runs: Runs,
) -> Result<Vec<MethodRun>> {
    let mut bar: Option<(Method, RoiMode, Progress)> = None;
    let rows = explainer.bench(
        &case.input,
        clip,
        case.class,
        methods,
        roi,
        settings,
        runs,
        |method, mode, done, total| {
            if !bar.as_ref().is_some_and(|(m, r, _)| (*m, *r) == (method, mode)) {
                if let Some((_, _, b)) = bar.take() {
                    b.finish_and_clear();
                }
                bar = Some((method, mode, Progress::new(0, &format!("{} ({})", method.name(), mode.name()))));
            }
            if let Some((_, _, b)) = &bar {
                b.set_length(total as u64);
                b.set_position(done as u64);
            }
        },
        |row| {
            eprintln!(
                "{:<10} {:<8} {:>8.2}s {:>6} forward passes",
                row.method.name(),
                row.roi_mode.name(),
                row.seconds,
                row.forward_passes
            );
        },
    );
    if let Some((_, _, b)) = bar {
        b.finish_and_clear();
    }
    Ok(rows?)
}
