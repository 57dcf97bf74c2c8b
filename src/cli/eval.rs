//! `xaiclip eval`: the data set evaluation of `xaiclip::eval`, with progress bars.

use super::{progress_bar, DeviceArgs, MethodArgs};
use anyhow::{anyhow, Result};
use clap::Args;
use indicatif::MultiProgress;
use std::io::IsTerminal;
use std::path::PathBuf;
use xaiclip::dataset::{DatasetKind, LabelIds};
use xaiclip::eval::{self, EvalModel, EvalPlan, Event};
use xaiclip::organs::{organ_class, organ_name};
use xaiclip::pipeline::{Method, Slices};
use xaiclip::preprocess::Modality;
use xaiclip::roi::RoiMode;

#[derive(Args, Debug)]
pub struct EvalCmd {
    /// Data set folder (flare22, chaos-ct, chaos-mr); pairs use --images/--labels instead.
    pub root: Option<PathBuf>,
    /// Layout of the data set.
    #[arg(long, value_enum, required_unless_present = "merge")]
    pub dataset: Option<DatasetKind>,
    /// --dataset pairs: folder of images (NIfTI files or DICOM series folders).
    #[arg(long)]
    pub images: Option<PathBuf>,
    /// --dataset pairs: folder of label maps named like the images.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// --dataset pairs: id scheme of the label maps (totalseg: TotalSegmentator's CT ids, totalseg-mr: its MR ids).
    #[arg(long, value_enum, default_value_t = LabelIds::Flare22)]
    pub label_ids: LabelIds,
    /// FLARE22: also explain the unlabeled imagesTs cases (slices from the U-Net's own prediction).
    #[arg(long)]
    pub unlabeled: bool,
    /// Methods to run, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "occlusion,rise,lime,kernelshap")]
    pub methods: Vec<Method>,
    /// ROI modes to run, comma separated ("none" is the full-image method).
    #[arg(long, value_enum, value_delimiter = ',', default_value = "none,clip")]
    pub roi: Vec<RoiMode>,
    /// Slices per case and organ: "organ-center" (largest organ area; from the prediction when a case
    /// has no labels) or "every-K" (every K-th slice; labeled slices without the organ are recorded as
    /// empty-organ and not explained).
    #[arg(long, default_value = "organ-center")]
    pub slices: String,
    /// Output folder: results.jsonl, summary.csv, summary.md, eval.json, cases_done.txt, errors.jsonl.
    #[arg(long)]
    pub out: PathBuf,
    /// Run only shard i of n (1-based): every n-th case. n jobs with i = 1..n cover the set once;
    /// default: every case.
    #[arg(long)]
    pub shard: Option<String>,
    /// Continue an interrupted run in --out: finished items are kept, never repeated.
    #[arg(long)]
    pub resume: bool,
    /// Also keep each item's saliency map in DIR/maps/<case>_<organ>_s<k>_<method>_<roi>.nii.gz: float32 on
    /// the case's grid and affine, zero outside the slice (as `explain` writes it); report.html links it.
    /// An output choice only: a --resume may add or drop it.
    #[arg(long)]
    pub save_maps: bool,
    /// Join the outputs of shard runs (folders) into --out instead of running anything.
    #[arg(long, num_args = 1.., conflicts_with_all = ["dataset", "resume", "shard"])]
    pub merge: Vec<PathBuf>,
    /// With --merge: join shards even when some are missing or did not finish (summary.md says which).
    #[arg(long, requires = "merge")]
    pub allow_partial: bool,
    /// Model input size (square); default: config.json's input_size (required when it has none).
    #[arg(long)]
    pub size: Option<usize>,
    #[command(flatten)]
    pub volume: super::volume::VolumeArgs,
    #[command(flatten)]
    pub method_args: MethodArgs,
    #[command(flatten)]
    pub device: super::DeviceOptions,
}

/// What explains the items: the slice explainer, or a 3-D model's whole-volume settings.
enum Engine {
    Slices(Box<xaiclip::Explainer>),
    Volumes(eval::VolumeModel),
}

/// Runs (or merges) the evaluation.
pub fn run(device: &DeviceArgs, cmd: EvalCmd) -> Result<()> {
    if !cmd.merge.is_empty() {
        let lines = eval::merge(&cmd.merge, &cmd.out, cmd.allow_partial)?;
        eprintln!(
            "merged {} folders: {lines} result lines in {}",
            cmd.merge.len(),
            cmd.out.join("results.jsonl").display()
        );
        return Ok(());
    }
    let dataset = cmd.dataset.ok_or_else(|| anyhow!("--dataset is required"))?;
    let slices = super::parse_slices("--slices", &cmd.slices)?;
    if !matches!(slices, Slices::OrganCenter | Slices::Every(_)) {
        anyhow::bail!("--slices {:?}: expected organ-center or every-K with K >= 1 (e.g. every-5)", cmd.slices);
    }
    let organs: Vec<usize> = cmd.method_args.organ.split(',').map(organ_class).collect::<Result<_>>()?;
    // The shard and data set are checked before the models load, so a bad option fails at once.
    if let Some(spec) = &cmd.shard {
        xaiclip::dataset::parse_shard(spec)?;
    }
    // A 3-D U-Net explains whole volumes: one line per case, organ, method and ROI mode.
    let volumetric = cmd.method_args.unet.as_deref().and_then(|d| xaiclip::volumes::model_window(d).map(|w| (d, w)));
    let engine = match volumetric {
        Some((dir, window)) => {
            if cmd.size.is_some() || cmd.slices != "organ-center" {
                anyhow::bail!("--size and --slices are for slices; a 3-D U-Net explains each case's whole volume");
            }
            let runs = cmd
                .methods
                .iter()
                .map(|&m| super::volume::settings(&cmd.volume, &cmd.method_args, m, window))
                .collect::<Result<Vec<_>>>()?;
            Engine::Volumes(eval::VolumeModel {
                device: device.device,
                precision: device.precision,
                dir: dir.to_path_buf(),
                runs,
                cancel: Default::default(),
            })
        }
        None => Engine::Slices(Box::new(cmd.method_args.explainer(device, cmd.size)?)),
    };
    let model = match &engine {
        Engine::Slices(e) => EvalModel::Slices(e.as_ref()),
        Engine::Volumes(v) => EvalModel::Volumes(v),
    };
    let window = match model {
        EvalModel::Slices(e) => e.intensity(),
        EvalModel::Volumes(v) => xaiclip::volumes::model_intensity(&v.dir, v.runs[0].intensity)?,
    };
    let plan = EvalPlan {
        dataset,
        root: cmd.root.clone(),
        images: cmd.images.clone(),
        labels: cmd.labels.clone(),
        label_ids: cmd.label_ids,
        unlabeled: cmd.unlabeled,
        mr: cmd.method_args.intensity.modality == Some(Modality::Mr),
        organs: organs.clone(),
        methods: cmd.methods.clone(),
        rois: cmd.roi.clone(),
        slices,
        out: cmd.out.clone(),
        shard: cmd.shard.clone(),
        resume: cmd.resume,
        seed: cmd.method_args.options.seed,
        unet: cmd.method_args.unet.clone(),
        clip: cmd.method_args.clip.clip_options()?,
        // --window, else the model's own, else the abdomen window.
        window,
        save_maps: cmd.save_maps,
    };
    // Ctrl-C or SIGTERM (scancel) stops at the next batch, keeping every finished line; a second one
    // exits at once.
    let cancel = match model {
        EvalModel::Slices(e) => e.cancel_token(),
        EvalModel::Volumes(v) => v.cancel.clone(),
    };
    ctrlc::set_handler(move || {
        if cancel.is_cancelled() {
            std::process::exit(130);
        }
        eprintln!("\ninterrupted: stopping after the batch in flight (again to quit now)");
        cancel.cancel();
    })?;
    let bars = MultiProgress::new();
    let mut overall = None;
    let mut item = None;
    // Progress bars draw only on a terminal; a Slurm or nohup log gets one line per case instead.
    let log_lines = !std::io::stderr().is_terminal();
    let (started, mut ended, mut total_cases) = (std::time::Instant::now(), 0usize, 0usize);
    let outcome = eval::run(model, &plan, |event| match event {
        Event::Start { cases, total } => {
            eprintln!(
                "eval: {cases} of {total} cases{}, organs {}, {} methods x {} ROI modes -> {}",
                plan.shard.as_ref().map_or(String::new(), |s| format!(" (shard {s})")),
                organs.iter().map(|&o| organ_name(o)).collect::<Vec<_>>().join(", "),
                plan.methods.len(),
                plan.rois.len(),
                plan.out.display()
            );
            overall = Some(bars.add(progress_bar(cases as u64, "cases")));
            total_cases = cases;
        }
        Event::CaseStart { id } => {
            if let Some(o) = &overall {
                o.set_message(format!("cases ({id})"));
            }
            item = Some(bars.add(progress_bar(0, id)));
        }
        Event::Planned(n) => {
            if let Some(b) = &item {
                b.inc_length(n as u64);
            }
        }
        Event::Item(what) => {
            if let Some(b) = &item {
                b.set_message(what);
            }
        }
        Event::ItemDone(n) => {
            if let Some(b) = &item {
                b.inc(n as u64);
            }
        }
        Event::CaseEnd { id, error } => {
            if let Some(b) = item.take() {
                b.finish_and_clear();
                bars.remove(&b);
            }
            if let Some(e) = error {
                bars.suspend(|| eprintln!("case {id}: {e:#}"));
            }
            ended += 1;
            if log_lines {
                let state = if error.is_some() { "failed" } else { "done" };
                eprintln!("case {id} {state} ({ended}/{total_cases}, {:.0} s)", started.elapsed().as_secs_f64());
            }
            if let Some(o) = &overall {
                o.inc(1);
            }
        }
    });
    if let Some(o) = overall {
        o.finish_and_clear();
    }
    if let Err(e) = &outcome {
        if xaiclip::error::kind_of(e) == xaiclip::ErrorKind::Cancelled {
            let mut command: Vec<String> = std::env::args().collect();
            if !command.iter().any(|a| a == "--resume") {
                command.push("--resume".into());
            }
            eprintln!(
                "stopped: the finished items are in {}; continue with:\n  {}",
                plan.out.join("results.jsonl").display(),
                command.iter().map(|a| shell_quote(a)).collect::<Vec<_>>().join(" ")
            );
        }
    }
    let outcome = outcome?;
    eprintln!(
        "wrote {} ({} lines), summary.csv, summary.md, report.html (and overlays/) in {}",
        plan.out.join("results.jsonl").display(),
        outcome.lines,
        plan.out.display()
    );
    Ok(())
}

/// `arg` as a POSIX shell word (quoted when it holds anything but plain characters).
fn shell_quote(arg: &str) -> String {
    if !arg.is_empty() && arg.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=,+@%".contains(c)) {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}
