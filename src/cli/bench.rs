//! `xaiclip bench`: each method in full-image and ROI mode, side by side.

use super::explain::{bench_rows, case_of, Case};
use super::{CaseArgs, DeviceArgs, FigureArgs, MethodArgs};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;
use xaiclip::bench::bench_tables;
use xaiclip::dataset::LabelIds;
use xaiclip::io::{self, check_output_file, stage_text, write_text, Staging};

use xaiclip::phantom;
use xaiclip::pipeline::Method;
use xaiclip::report::{runs_report, ReportContext};
use xaiclip::roi::RoiMode;
use xaiclip::Runs;

#[derive(clap::Args, Debug)]
pub struct BenchCmd {
    /// Input image (NIfTI or DICOM folder); or --demo.
    #[arg(long, required_unless_present = "demo")]
    pub image: Option<PathBuf>,
    /// Ground-truth labels (needed for Dice/IoU and for --slice organ-center).
    #[arg(long)]
    pub label: Option<PathBuf>,
    /// Id scheme of --label (totalseg: TotalSegmentator's CT ids, totalseg-mr: its MR ids).
    #[arg(long, value_enum, default_value_t = LabelIds::Flare22)]
    pub label_ids: LabelIds,
    /// Use the bundled phantom (seed 7) and its labels.
    #[arg(long, conflicts_with_all = ["image", "label"])]
    pub demo: bool,
    /// Axial slice index, or organ-center.
    #[arg(long, default_value = "organ-center")]
    pub slice: String,
    /// Methods, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "occlusion,rise,lime,kernelshap")]
    pub methods: Vec<Method>,
    /// The ROI mode compared against the full image.
    #[arg(long, value_enum, default_value_t = RoiMode::default())]
    pub roi: RoiMode,
    /// Timed runs per row; seconds are their median.
    #[arg(long, default_value_t = Runs::default().repeat, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
    pub repeat: usize,
    /// Untimed runs per row before the timed ones (the first run computes the maps and metrics either
    /// way): seconds of a warm process, as a peer timed in a Python session that has run the model.
    #[arg(long, default_value_t = Runs::default().warmup)]
    pub warmup: usize,
    /// Model input size (square); default: the U-Net config's input_size (required when it has none).
    #[arg(long)]
    pub size: Option<usize>,
    /// Write the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the table as Markdown here.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// Write report.html here: the case, every overlay (labelled), the deletion/insertion curves and the
    /// tables, one self-contained file.
    #[arg(long)]
    pub html: Option<PathBuf>,
    #[command(flatten)]
    pub figures: FigureArgs,
    /// Write each run's arrays on the model grid to DIR/<method>-<roi>.safetensors (input, baseline,
    /// roi, saliency, and LIME/SHAP segments and coalitions): what benches/peers compares other libraries
    /// against.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub volume: super::volume::VolumeArgs,
    #[command(flatten)]
    pub method_args: MethodArgs,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// Runs the bench and prints (and writes) the table.
pub fn run(device: &DeviceArgs, cmd: BenchCmd) -> Result<()> {
    for p in [&cmd.md, &cmd.json, &cmd.html].into_iter().flatten() {
        check_output_file(p)?;
    }
    // A 3-D U-Net benches the whole volume.
    if let Some(dir) = &cmd.method_args.unet {
        if let Some(window) = xaiclip::volumes::model_window(dir) {
            return super::volume::bench(device, &cmd, dir, window, false, None);
        }
    }
    // An nnU-Net 2d configuration benches on nnUNetPredictor's grid, as explain does: the volume with
    // --slice all, and a slice it would crop, resample or tile (unless --size asks for the model grid, or
    // --html or --export for the slice path's report or exported inputs: those warn).
    let slice_path = cmd.size.is_some() || cmd.demo || cmd.html.is_some() || cmd.export.is_some();
    let nnunet_2d = cmd.method_args.unet.as_deref().filter(|_| !slice_path);
    let nnunet_2d = nnunet_2d.and_then(|d| Some((d, xaiclip::volumes::volume_window(d)?)));
    if let Some((dir, window)) = nnunet_2d.filter(|_| cmd.slice == "all") {
        return super::volume::bench(device, &cmd, dir, window, true, None);
    }
    let volume = match (&cmd.image, cmd.demo) {
        (Some(image), false) => Some(io::read_image(image)?),
        _ => None,
    };
    if let (Some((dir, window)), Some(v)) = (nnunet_2d, &volume) {
        if xaiclip::volumes::slice_needs_predictor_grid(dir, v)? {
            return super::volume::bench(device, &cmd, dir, window, true, volume);
        }
    }
    let explainer = cmd.method_args.explainer(device, cmd.size)?;
    let case = if cmd.demo {
        let p = phantom::generate(7, 256, 32);
        let class = explainer.class_of(&cmd.method_args.organ)?;
        let slices = super::parse_slices("--slice", &cmd.slice)?;
        Case::new(&explainer, p.image, Some(p.labels), &slices, class)?
    } else {
        let image = cmd.image.as_deref().context("--image or --demo is required")?;
        let args = CaseArgs {
            image: image.to_path_buf(),
            label: cmd.label.clone(),
            label_ids: cmd.label_ids,
            slice: cmd.slice.clone(),
        };
        case_of(&explainer, volume.context("--image or --demo is required")?, &args, &cmd.method_args.organ)?
    };
    let clip = case.clip(&explainer, cmd.roi.uses_clip())?;
    let settings = explainer.settings();
    let size = explainer.model_size();
    let runs = Runs { warmup: cmd.warmup, repeat: cmd.repeat };
    let rows = bench_rows(&explainer, &case, &clip, &cmd.methods, cmd.roi, settings, runs)?;
    let image = if cmd.demo { "phantom seed 7".into() } else { case.volume.source.display().to_string() };
    let context = json!({"image": image, "slice": case.slice, "organ": explainer.class_name(case.class), "repeat": cmd.repeat, "warmup": cmd.warmup, "backend": explainer.device_name(), "settings": settings.to_json(), "provenance": super::provenance(), "weights": explainer.weights_json()?});
    let (md, json_table) = bench_tables(&rows, context.clone());
    println!("{md}");
    // The tables and the report are written together or not at all.
    let mut staging = Staging::new();
    if let Some(p) = &cmd.md {
        stage_text(&mut staging, p, &md)?;
    }
    if let Some(p) = &cmd.json {
        stage_text(&mut staging, p, serde_json::to_string_pretty(&json_table)?)?;
    }
    if let Some(p) = &cmd.html {
        let organ = explainer.class_name(case.class);
        let report = runs_report(
            &rows,
            &case.input,
            &ReportContext {
                title: &format!("xaiclip bench: the {organ}, full image and {} ROI", cmd.roi.name()),
                case: format!(
                    "{image}, axial slice {}, organ {organ}; backend {}.",
                    case.slice,
                    explainer.device_name()
                ),
                organ: &organ,
                score: settings.score,
                margin_mm: settings.margin_mm,
                options: cmd.figures.options(),
                tables_md: md.clone(),
                metadata: context,
            },
        )?;
        stage_text(&mut staging, p, &report.html)?;
    }
    staging.commit()?;
    if let Some(dir) = &cmd.export {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let baseline = xaiclip::explain::baseline_image(settings.baseline, &case.input.image, size);
        for r in &rows {
            let path = dir.join(format!("{}-{}.safetensors", r.method.name(), r.roi_mode.name()));
            let roi: Vec<f32> = r.roi.iter().map(|&b| b as u8 as f32).collect();
            let plane = vec![size, size];
            let mut arrays: Vec<(&str, Vec<u8>, safetensors::Dtype, Vec<usize>)> = vec![
                ("input", bytemuck::cast_slice(&case.input.image).to_vec(), safetensors::Dtype::F32, plane.clone()),
                ("baseline", bytemuck::cast_slice(&baseline).to_vec(), safetensors::Dtype::F32, plane.clone()),
                ("roi", bytemuck::cast_slice(&roi).to_vec(), safetensors::Dtype::F32, plane.clone()),
                ("saliency", bytemuck::cast_slice(&r.saliency).to_vec(), safetensors::Dtype::F32, plane.clone()),
            ];
            if let Some(s) = &r.segments {
                arrays.push(("segments", bytemuck::cast_slice(s).to_vec(), safetensors::Dtype::I32, plane));
                // The coalitions (sample x superpixel, 1 = kept) let a peer refit on exactly these samples.
                let count = s.iter().map(|&l| l + 1).max().unwrap_or(0) as usize;
                let rows = match r.method {
                    Method::Lime => Some(settings.lime.coalitions(count)),
                    Method::KernelShap => Some(settings.shap.coalitions(count)),
                    Method::Occlusion | Method::Rise => None,
                };
                if let Some(rows) = rows {
                    let bytes: Vec<u8> = rows.iter().flatten().map(|&b| b as u8).collect();
                    arrays.push(("coalitions", bytes, safetensors::Dtype::U8, vec![rows.len(), count]));
                }
            }
            let views = arrays
                .iter()
                .map(|(name, bytes, dtype, shape)| {
                    Ok((*name, safetensors::tensor::TensorView::new(*dtype, shape.clone(), bytes)?))
                })
                .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
            let meta = std::collections::HashMap::from([
                ("class".to_string(), case.class.to_string()),
                ("forward_passes".to_string(), r.forward_passes.to_string()),
                ("seconds".to_string(), r.seconds.to_string()),
                ("samples".to_string(), r.samples.to_string()),
            ]);
            let bytes = safetensors::serialize(views, Some(meta))?;
            write_text(&path, &bytes)?;
        }
        eprintln!("wrote the runs' arrays to {}", dir.display());
    }
    Ok(())
}
