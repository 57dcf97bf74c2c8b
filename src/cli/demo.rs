//! `xaiclip demo`: the whole job on the bundled phantom, in CT and in MR.

use super::explain::{bench_rows, Case};
use super::{DeviceArgs, FigureArgs, MethodArgs};
use anyhow::{Context, Result};
use serde_json::json;
use std::path::PathBuf;
use std::time::Instant;
use xaiclip::bench::{bench_tables, Runs};
use xaiclip::io::{self, write_text};
use xaiclip::organs::organ_name;
use xaiclip::pipeline::{Method, Slices};
use xaiclip::preprocess::Modality;
use xaiclip::report::{runs_report, ReportContext};
use xaiclip::roi::RoiMode;
use xaiclip::{phantom, render, Explainer};

#[derive(clap::Args, Debug)]
pub struct DemoCmd {
    /// Output folder (created if missing).
    #[arg(long, default_value = "xaiclip-demo")]
    pub out: PathBuf,
    /// RISE masks in the demo (kept small so the demo's two cases run in about two minutes on 2 cores).
    #[arg(long, default_value_t = 500)]
    pub masks: usize,
    /// LIME / Kernel SHAP samples in the demo.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Seed of the explainers' random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub figures: FigureArgs,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// One demo case: the phantom in one modality, where its files go and how reports name it.
struct DemoCase<'a> {
    phantom: phantom::Phantom,
    /// The image's file name under `phantom/`.
    file: &'a str,
    /// "CT" or "MR T2-SPIR", in titles.
    what: &'a str,
    out: PathBuf,
}

/// Segments and explains the phantom's liver with every method, on CT and on MR (T2-SPIR, the same
/// anatomy), writes overlays, reports and the bench tables.
pub fn run(device: &DeviceArgs, cmd: DemoCmd) -> Result<()> {
    let started = Instant::now();
    let mut args = MethodArgs::parse_from_defaults(cmd.seed);
    let ct = DemoCase { phantom: phantom::generate(7, 256, 32), file: "ct.nii.gz", what: "CT", out: cmd.out.clone() };
    explain_case(&args.explainer(device, None)?, &cmd, ct)?;
    // CHAOS-like MR: 8 mm slices, percentile normalisation and the MR prompts.
    args.intensity.modality = Some(Modality::Mr);
    let mr = DemoCase {
        phantom: phantom::generate_mr(7, 256, 20, phantom::Sequence::T2Spir),
        file: "mr_t2_spir.nii.gz",
        what: "MR T2-SPIR",
        out: cmd.out.join("mr"),
    };
    explain_case(&args.explainer(device, None)?, &cmd, mr)?;
    println!("demo finished in {:.0}s; wrote to {}:", started.elapsed().as_secs_f64(), cmd.out.display());
    println!("  phantom/ct.nii.gz, phantom/labels.nii.gz   the CT case (seed 7)");
    println!("  segmentation.nii.gz                       U-Net labels on the explained slice");
    println!("  report.html                               everything below in one page (open it in a browser)");
    println!("  overlays.png                              all methods; top row full image, bottom row ROI");
    println!("  curves.png                                deletion/insertion curves per method, full vs ROI");
    println!("  <method>_<roi>.png                        each overlay alone");
    println!("  bench.md, bench.json                      the table above");
    println!("  mr/                                       the same for the MR case (T2-SPIR, same anatomy)");
    Ok(())
}

fn explain_case(explainer: &Explainer, cmd: &DemoCmd, demo: DemoCase) -> Result<()> {
    let DemoCase { phantom: p, file, what, out } = demo;
    let out = &out;
    let phantom_dir = out.join("phantom");
    std::fs::create_dir_all(&phantom_dir)
        .with_context(|| format!("{}: cannot create folder", phantom_dir.display()))?;
    io::nifti::write_like(
        &phantom_dir.join(file),
        &p.image,
        &p.image.data.iter().map(|&v| v as i16).collect::<Vec<_>>(),
    )?;
    io::nifti::write_like(&phantom_dir.join("labels.nii.gz"), &p.image, &p.labels)?;
    let case = Case::new(explainer, p.image, Some(p.labels), &Slices::OrganCenter, 1)?;
    let clip = case.clip(explainer, true)?;
    let labels = explainer.segment(&case.volume, &[case.slice], explainer.intensity(), 1, |_| {})?;
    io::nifti::write_like(&out.join("segmentation.nii.gz"), &case.volume, &labels)?;
    let mut settings = explainer.settings().clone();
    settings.rise.masks = cmd.masks;
    settings.lime.samples = cmd.samples;
    settings.shap.samples = cmd.samples;
    settings.faithfulness_steps = 16;
    eprintln!(
        "explaining {} on {what} phantom slice {} (ROI: CLIP organ map + {} mm)",
        organ_name(1),
        case.slice,
        settings.margin_mm
    );
    let rows = bench_rows(explainer, &case, &clip, &Method::ALL, RoiMode::Clip, &settings, Runs::default())?;
    let image = format!("{what} phantom seed 7");
    let context = json!({"image": image, "slice": case.slice, "organ": "liver", "backend": explainer.device_name(), "settings": settings.to_json(), "provenance": super::provenance(), "weights": explainer.weights_json()?});
    let (md, table) = bench_tables(&rows, context.clone());
    for r in &rows {
        let img = r.overlay(&case.input, settings.score, cmd.figures.sign)?;
        render::save_png(&out.join(format!("{}_{}.png", r.method.name(), r.roi_mode.name())), &img)?;
    }
    let title = format!("xaiclip demo: the {what} phantom's liver, every method, full image and CLIP ROI");
    let report = runs_report(
        &rows,
        &case.input,
        &ReportContext {
            title: &title,
            case: format!(
                "{what} phantom seed 7, axial slice {}, organ liver; backend {}.",
                case.slice,
                explainer.device_name()
            ),
            organ: "liver",
            score: settings.score,
            margin_mm: settings.margin_mm,
            options: cmd.figures.options(),
            tables_md: md.clone(),
            metadata: context,
        },
    )?;
    render::save_png(&out.join("overlays.png"), &report.overlays)?;
    if let Some(curves) = &report.curves {
        render::save_png(&out.join("curves.png"), curves)?;
    }
    write_text(&out.join("report.html"), &report.html)?;
    write_text(&out.join("bench.md"), &md)?;
    write_text(&out.join("bench.json"), serde_json::to_string_pretty(&table)?)?;
    println!("## {what}\n\n{md}");
    Ok(())
}
