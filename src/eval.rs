//! Data set evaluation: every case explained and scored, one JSON line per (case, organ, slice, method,
//! ROI mode), resumable after a kill and splittable into shards that [`merge`] joins (`xaiclip eval`).
//!
//! Durability: each result line is appended with one write and synced before the next item starts,
//! and a case is listed in `cases_done.txt` only after its last line; `resume` drops a torn last
//! line, skips listed cases and every item already present, so a kill loses at most the item in flight.

use crate::backend::{Device, Precision};
use crate::bench::volume_figures;
use crate::dataset::{self, natural_cmp, CaseEntry, DatasetKind, LabelIds};
use crate::error::{kind_of, ErrorKind};
use crate::explain::Cancel;
use crate::explainer::Explainer;
use crate::io::{write_text, Volume};
use crate::organs::organ_name;
use crate::pipeline::{Method, MethodRun, RunFigures, SliceInput, Slices};
use crate::preprocess::Intensity;
use crate::render::Sign;
use crate::roi::clip::{ClipOptions, ClipRoi, Prompts};
use crate::roi::RoiMode;
use crate::volumes::{explain_volume_on, VolumeSettings};
use anyhow::{bail, ensure, Context, Result};
use clap::ValueEnum;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

/// One evaluation run: the data set, what to explain on it, and where results go.
#[derive(Clone, Debug)]
pub struct EvalPlan {
    /// Layout of the data set.
    pub dataset: DatasetKind,
    /// Data set folder (flare22, chaos-ct, chaos-mr).
    pub root: Option<PathBuf>,
    /// Pairs layout: folder of images, and of FLARE22 label maps named like them.
    pub images: Option<PathBuf>,
    /// Pairs layout: the label folder.
    pub labels: Option<PathBuf>,
    /// Pairs layout: the id scheme of the label maps.
    pub label_ids: LabelIds,
    /// FLARE22: also the unlabeled imagesTs cases (slices from the U-Net's own prediction).
    pub unlabeled: bool,
    /// Pairs layout: the images are MR (percentile normalisation).
    pub mr: bool,
    /// FLARE22 class ids.
    pub organs: Vec<usize>,
    /// Methods to run on every slice.
    pub methods: Vec<Method>,
    /// ROI modes to run (`RoiMode::Full` is the full-image method).
    pub rois: Vec<RoiMode>,
    /// Slices per case and organ: organ-center or every-K.
    pub slices: Slices,
    /// Output folder: results.jsonl, summary.csv/md, eval.json, cases_done.txt, errors.jsonl.
    pub out: PathBuf,
    /// Run only shard i of n, as "i/n" (1-based).
    pub shard: Option<String>,
    /// Continue an interrupted run in `out`.
    pub resume: bool,
    /// Recorded in eval.json: the seed, the model folders and CLIP options, the CT window.
    pub seed: u64,
    /// The U-Net folder as given (None: bundled).
    pub unet: Option<PathBuf>,
    /// CLIP models, prompts and threshold.
    pub clip: ClipOptions,
    /// Normalisation of CT cases (MR cases use the percentile rule).
    pub window: Intensity,
    /// Also keep each item's saliency as a volume on its case's grid in DIR/maps (an output choice: not
    /// part of the resume/merge fingerprint).
    pub save_maps: bool,
}

/// A 3-D model explaining whole volumes: one result line per (case, organ, method, ROI mode), with a
/// null slice.
#[derive(Clone, Debug)]
pub struct VolumeModel {
    /// Where it runs.
    pub device: Device,
    /// The precision convolutions run at on a GPU.
    pub precision: Precision,
    /// The model folder (a 3-D BasicUNet folder or MONAI bundle).
    pub dir: PathBuf,
    /// The whole-volume settings of each of the plan's methods, in its order (the ROI mode is set per
    /// item; MR cases use the percentile rule).
    pub runs: Vec<VolumeSettings>,
    /// Stops the evaluation at the next batch of tiles (`ErrorKind::Cancelled`; --resume redoes the item).
    pub cancel: Cancel,
}

/// What explains the items of an evaluation.
#[derive(Clone, Copy)]
pub enum EvalModel<'a> {
    /// A 2-D model through the facade, slice by slice (its settings, model and device).
    Slices(&'a Explainer),
    /// A 3-D model over whole volumes.
    Volumes(&'a VolumeModel),
}

/// What an item's line says happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    /// Explained and scored.
    Ok,
    /// The labelled slice does not contain the organ (not explained).
    EmptyOrgan,
    /// No slice of the case contains the organ.
    OrganAbsent,
    /// The ROI missed the U-Net's own prediction of the organ (not explained; see `--roi-fallback`).
    RoiMiss,
}

/// One line of results.jsonl.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EvalRecord {
    /// Case id (file or folder stem).
    pub case: String,
    /// Organ name.
    pub organ: String,
    /// Slice index; None when the organ is absent from the case, and for whole volumes (3-D models).
    pub slice: Option<usize>,
    /// The method.
    pub method: Method,
    /// The ROI mode.
    pub roi: RoiMode,
    /// What happened.
    pub status: Status,
    /// The run's figures, for `ok` lines.
    #[serde(flatten)]
    pub figures: Option<RunFigures>,
}

impl EvalRecord {
    fn new(case: &str, organ: usize, slice: Option<usize>, method: Method, roi: RoiMode, status: Status) -> Self {
        Self { case: case.to_string(), organ: organ_name(organ), slice, method, roi, status, figures: None }
    }

    fn scored(mut self, run: &MethodRun) -> Self {
        self.figures = Some(run.summary().figures);
        self
    }

    /// Identity of the item: what resume and merge match on.
    fn key(&self) -> String {
        key(&serde_json::to_value(self).unwrap_or(Value::Null))
    }
}

/// One line of errors.jsonl: a case that failed, why, and the kind of failure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EvalError {
    /// Case id (file or folder stem).
    pub case: String,
    /// The kind of failure.
    pub kind: ErrorKind,
    /// The message, as the command line prints it.
    pub error: String,
}

/// What an evaluation reports as it goes, for progress displays.
pub enum Event<'a> {
    /// `cases` of `total` will run (a shard runs fewer).
    #[allow(missing_docs)]
    Start { cases: usize, total: usize },
    /// A case begins.
    #[allow(missing_docs)]
    CaseStart { id: &'a str },
    /// `n` more items are planned in the current case.
    Planned(usize),
    /// An item runs now.
    Item(String),
    /// An item is finished (or was found finished).
    ItemDone(usize),
    /// The case ended; with the error when it failed.
    #[allow(missing_docs)]
    CaseEnd { id: &'a str, error: Option<&'a anyhow::Error> },
}

/// How a finished run went.
pub struct EvalOutcome {
    /// Result lines now in results.jsonl.
    pub lines: usize,
    /// Cases that failed (listed in errors.jsonl).
    pub failed: usize,
    /// Cases run by this call.
    pub cases: usize,
}

const RESULTS: &str = "results.jsonl";
/// Folder of the per-item overlays.
const OVERLAYS: &str = "overlays";

/// Folder of the per-item saliency volumes (`--save-maps`).
const MAPS: &str = "maps";

/// File name stem of an item's overlay (DIR/overlays, .png) and map (DIR/maps, .nii.gz), from the names
/// results.jsonl records.
fn item_stem(case: &str, organ: &str, slice: Option<usize>, method: &str, roi: &str) -> String {
    let safe: String =
        case.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let at = slice.map_or("volume".to_string(), |k| format!("s{k}"));
    format!("{safe}_{organ}_{at}_{method}_{}", roi.replace('+', "-"))
}
const CONFIG: &str = "eval.json";
const DONE: &str = "cases_done.txt";
const ERRORS: &str = "errors.jsonl";
const LOCK: &str = ".lock";
/// Written last by a run that finished every case of its shard without failures.
const FINISHED: &str = "finished.json";

/// Identity of one result line: what --resume and --merge match on.
fn key(line: &Value) -> String {
    let f = |k: &str| line.get(k).map_or("null".to_string(), |v| v.to_string());
    format!("{}|{}|{}|{}|{}", f("case"), f("organ"), f("slice"), f("method"), f("roi"))
}

/// The result lines of `path`. A last line without its newline is kept when it parses as a whole
/// record (the write completed, only the newline is missing) and dropped otherwise (a write cut short
/// by a kill); with `repair`, the file is fixed to match.
fn read_results(path: &Path, repair: bool) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let complete_len = text.rfind('\n').map_or(0, |end| end + 1);
    let tail = &text[complete_len..];
    let mut parsed = text[..complete_len].to_string();
    if !tail.trim().is_empty() {
        let whole = serde_json::from_str::<Value>(tail).ok().filter(|v| EvalRecord::deserialize(v).is_ok());
        if whole.is_some() {
            parsed.push_str(tail);
            parsed.push('\n');
        }
        if repair {
            if whole.is_some() {
                append_text(path, "\n")?;
            } else {
                eprintln!("{}: dropping a partial last line (an interrupted write)", path.display());
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(path)
                    .with_context(|| format!("{}: cannot open for repair", path.display()))?;
                file.set_len(complete_len as u64)
                    .with_context(|| format!("{}: cannot truncate the partial line", path.display()))?;
            }
        }
    }
    parsed
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: not a result record ({e})", path.display(), i + 1))?;
            if let Err(e) = EvalRecord::deserialize(&v) {
                bail!("{} line {}: not a result record ({e})", path.display(), i + 1);
            }
            Ok(v)
        })
        .collect()
}

/// The exclusive claim of one writer on an output folder, held until dropped (flock on DIR/.lock, so
/// it ends with the process however that ends).
pub struct OutputLock {
    _file: std::fs::File,
}

/// Takes the output folder's lock, or refuses naming the process that holds it.
pub fn lock_output(dir: &Path) -> Result<OutputLock> {
    let path = dir.join(LOCK);
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("{}: cannot open the lock file", path.display()))?;
    match file.try_lock() {
        Ok(()) => {
            let holder = format!("pid {} on {}", std::process::id(), hostname());
            file.set_len(0).and_then(|_| file.write_all(holder.as_bytes())).and_then(|_| file.sync_data()).ok();
            Ok(OutputLock { _file: file })
        }
        Err(std::fs::TryLockError::WouldBlock) => {
            let holder = std::fs::read_to_string(&path).unwrap_or_default();
            let holder = if holder.trim().is_empty() { "another process".to_string() } else { holder };
            bail!(
                "{}: another xaiclip eval ({}) is writing to this folder; wait for it to finish or choose another --out",
                dir.display(),
                holder.trim()
            )
        }
        Err(std::fs::TryLockError::Error(e)) => Err(e).with_context(|| format!("{}: cannot lock", path.display())),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "this host".into())
}

/// Appends one line with a single write and syncs it, so a kill leaves whole lines only (plus at most
/// one torn tail, which `read_results` drops).
fn append_line(path: &Path, line: &Value) -> Result<()> {
    append_text(path, &format!("{line}\n"))
}

fn append_text(path: &Path, text: &str) -> Result<()> {
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .with_context(|| format!("{}: cannot open for appending", path.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|_| file.sync_data())
        .with_context(|| format!("{}: cannot append", path.display()))
}

/// Everything that decides the results, compared on resume and merge.
fn config_json(plan: &EvalPlan, model: EvalModel) -> Value {
    let window = match plan.window {
        Intensity::CtWindow { low, high } => format!("{low},{high}"),
        Intensity::MrPercentile => "mr".to_string(),
        Intensity::ZScore => "zscore".to_string(),
    };
    let (size, settings, precision) = match model {
        EvalModel::Slices(e) => (json!(e.model_size()), e.settings().results_json(), e.precision()),
        EvalModel::Volumes(v) => {
            let runs: Vec<Value> = v.runs.iter().map(volume_settings_json).collect();
            (json!(v.runs.first().map(|r| r.window.roi_size)), json!(runs), v.precision)
        }
    };
    json!({
        "dataset": cli_name(plan.dataset),
        "root": plan.root, "images": plan.images, "labels": plan.labels, "unlabeled": plan.unlabeled,
        "label_ids": cli_name(plan.label_ids),
        "organs": plan.organs.iter().map(|&o| organ_name(o)).collect::<Vec<_>>(),
        "methods": plan.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "roi": plan.rois.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "slices": plan.slices.to_string(), "size": size, "seed": plan.seed,
        "unet": plan.unet, "clip": plan.clip.clip, "coop": plan.clip.coop,
        "prompt": match &plan.clip.prompts { Prompts::Custom(p) => Some(p.clone()), _ => None },
        "no_coop": plan.clip.prompts != Prompts::Coop, "roi_threshold": plan.clip.threshold.to_string(),
        "modality": if plan.mr { "mr" } else { "ct" }, "window": window,
        "settings": settings,
        "precision": cli_name(precision),
        "shard": plan.shard,
    })
}

/// What decides a whole-volume item's result (tile reuse does not: same map).
fn volume_settings_json(s: &VolumeSettings) -> Value {
    let w = &s.window;
    json!({
        "method": s.method, "patch": w.roi_size, "overlap": w.overlap, "blend": w.blend, "sigma_scale": w.sigma_scale,
        "scale_roi_budget": s.scale_roi_budget, "roi_min_coverage": s.min_coverage,
        "roi_fallback": s.fallback.map(|m| m.name()), "margin_mm": s.margin_mm,
        "faithfulness_steps": s.faithfulness_steps,
    })
}

/// An option value as the command line spells it.
fn cli_name(value: impl ValueEnum) -> Option<String> {
    value.to_possible_value().map(|v| v.get_name().to_string())
}

/// The settings that differ between two eval.json files, by dotted path ("settings.rise.masks: 200 vs
/// 300"); `shard` counts unless `ignore_shard` (merge).
fn differing_fields(old: &Value, new: &Value, ignore_shard: bool) -> Vec<String> {
    if !(old.is_object() && new.is_object()) {
        return vec!["(whole file)".into()];
    }
    let mut out = Vec::new();
    differing(old, new, "", &mut out);
    out.retain(|d| !(ignore_shard && d.starts_with("shard:")));
    out
}

fn differing(old: &Value, new: &Value, at: &str, out: &mut Vec<String>) {
    match (old.as_object(), new.as_object()) {
        (Some(o), Some(n)) => {
            let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let path = if at.is_empty() { k.clone() } else { format!("{at}.{k}") };
                differing(o.get(k).unwrap_or(&Value::Null), n.get(k).unwrap_or(&Value::Null), &path, out);
            }
        }
        _ if old != new => out.push(format!("{at}: {old} vs {new}")),
        _ => {}
    }
}

fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read (not an eval output folder?)", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: invalid JSON ({e})", path.display()))
}

/// Runs `plan` with `model` (a 2-D explainer's settings, model and device, or a 3-D model's whole-volume
/// settings); `events` sees the progress. Cases that
/// fail are listed in errors.jsonl and the others continue; the run then ends with an error naming them.
pub fn run(model: EvalModel, plan: &EvalPlan, mut events: impl FnMut(Event)) -> Result<EvalOutcome> {
    if plan.methods.is_empty() || plan.rois.is_empty() || plan.organs.is_empty() {
        bail!("--organs, --methods and --roi need at least one value each");
    }
    if let EvalModel::Volumes(v) = model {
        ensure!(v.runs.len() == plan.methods.len(), "one whole-volume setting per method");
    }
    if matches!(plan.slices, Slices::All | Slices::List(_)) && plan.unlabeled {
        bail!("--slices {}: unlabeled cases take organ-center or every-K", plan.slices);
    }
    let mut cases = dataset::discover(
        plan.dataset,
        plan.root.as_deref(),
        plan.images.as_deref(),
        plan.labels.as_deref(),
        plan.label_ids,
        plan.unlabeled,
        plan.mr,
    )?;
    let total = cases.len();
    if let Some(spec) = &plan.shard {
        cases = dataset::shard(cases, dataset::parse_shard(spec)?);
    }
    let config = config_json(plan, model);
    let out = &plan.out;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create folder", out.display()))?;
    let _lock = lock_output(out)?;
    for folder in [Some(OVERLAYS), plan.save_maps.then_some(MAPS)].into_iter().flatten() {
        let folder = out.join(folder);
        std::fs::create_dir_all(&folder).with_context(|| format!("{}: cannot create folder", folder.display()))?;
    }
    let results_path = out.join(RESULTS);
    let existing = if plan.resume {
        if out.join(CONFIG).is_file() {
            let diff = differing_fields(&read_config(out)?, &config, false);
            if !diff.is_empty() {
                bail!(
                    "{}: --resume with other settings than the interrupted run ({})",
                    out.join(CONFIG).display(),
                    diff.join("; ")
                );
            }
        }
        read_results(&results_path, true)?
    } else {
        if results_path.metadata().is_ok_and(|m| m.len() > 0) {
            bail!(
                "{}: already holds results; pass --resume to continue that run, or choose another --out",
                results_path.display()
            );
        }
        for stale in [DONE, ERRORS, FINISHED] {
            let _ = std::fs::remove_file(out.join(stale));
        }
        Vec::new()
    };
    write_text(&out.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    let mut done: HashSet<String> = existing.iter().map(key).collect();
    let finished: HashSet<String> =
        std::fs::read_to_string(out.join(DONE)).unwrap_or_default().lines().map(str::to_string).collect();
    events(Event::Start { cases: cases.len(), total });
    let mut failed = 0;
    for case in &cases {
        if finished.contains(&case.id) {
            events(Event::CaseEnd { id: &case.id, error: None });
            continue;
        }
        events(Event::CaseStart { id: &case.id });
        let evaluated = match model {
            EvalModel::Slices(explainer) => evaluate_case(explainer, plan, case, &mut done, &results_path, &mut events),
            EvalModel::Volumes(v) => evaluate_volumes(v, plan, case, &mut done, &results_path, &mut events),
        };
        match evaluated {
            Ok(()) => {
                append_text(&out.join(DONE), &format!("{}\n", case.id))?;
                events(Event::CaseEnd { id: &case.id, error: None });
            }
            // A cancelled run stops here: nothing of the item in flight was written, --resume redoes it.
            Err(e) if kind_of(&e) == ErrorKind::Cancelled => return Err(e),
            Err(e) => {
                failed += 1;
                let record = EvalError { case: case.id.clone(), kind: kind_of(&e), error: format!("{e:#}") };
                append_line(&out.join(ERRORS), &serde_json::to_value(&record)?)?;
                events(Event::CaseEnd { id: &case.id, error: Some(&e) });
            }
        }
    }
    let all = read_results(&results_path, false)?;
    write_summaries(out, &all, &config)?;
    let _ = std::fs::remove_file(out.join(FINISHED));
    if failed == 0 {
        let finished = json!({"cases": cases.len(), "lines": all.len(), "shard": plan.shard});
        write_text(&out.join(FINISHED), serde_json::to_string_pretty(&finished)?)?;
    }
    if failed > 0 {
        bail!("{failed} of {} cases failed (see {}); --resume retries them", cases.len(), out.join(ERRORS).display());
    }
    Ok(EvalOutcome { lines: all.len(), failed, cases: cases.len() })
}

/// Slices of `volume` to explain for `class`, or None when the organ is absent from the case.
fn pick_slices(
    slices: &Slices,
    volume: &Volume,
    labels: Option<&[u8]>,
    class: usize,
    orientation: crate::preprocess::Orientation,
) -> Result<Option<Vec<usize>>> {
    match slices.resolve(volume, labels, class, orientation) {
        Ok(k) => Ok(Some(k)),
        Err(e) if kind_of(&e) == ErrorKind::OrganAbsent => Ok(None),
        Err(e) => Err(e),
    }
}

/// Appends `line` to results.jsonl unless an item with its key is there already, and counts it done.
fn emit_line(
    line: EvalRecord,
    done: &mut HashSet<String>,
    results: &Path,
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    if done.insert(line.key()) {
        append_line(results, &serde_json::to_value(&line)?)?;
    }
    events(Event::ItemDone(1));
    Ok(())
}

fn evaluate_case(
    explainer: &Explainer,
    plan: &EvalPlan,
    case: &CaseEntry,
    done: &mut HashSet<String>,
    results: &Path,
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    let (volume, labels) = dataset::load(case)?;
    let intensity = if case.mr { Intensity::MrPercentile } else { plan.window };
    let range = intensity.range(&volume);
    let size = explainer.model_size();
    // Unlabeled cases find their organ-center slices in the U-Net's own prediction.
    let predicted;
    let slice_labels = match (&labels, &plan.slices) {
        (None, Slices::OrganCenter) => {
            let n = explainer.orientation().layout(&volume)?.slices(&volume);
            let batch = explainer.settings().batch.min(16);
            predicted = explainer.segment(&volume, &(0..n).collect::<Vec<_>>(), intensity, batch, |_| {})?;
            Some(&predicted[..])
        }
        (l, _) => l.as_deref(),
    };
    let per_slice = plan.methods.len() * plan.rois.len();
    let items =
        |slice: Option<usize>| plan.methods.iter().flat_map(move |&m| plan.rois.iter().map(move |&r| (slice, m, r)));
    for &class in &plan.organs {
        // `class` is FLARE22's (the labels'); the model's own output channel may differ. Predicted
        // labels are the model's own ids.
        let channel = explainer.class_of(&organ_name(class))?;
        let pick = if labels.is_some() { class } else { channel };
        let Some(slices) = pick_slices(&plan.slices, &volume, slice_labels, pick, explainer.orientation())? else {
            for (_, method, roi) in items(None) {
                emit_line(
                    EvalRecord::new(&case.id, class, None, method, roi, Status::OrganAbsent),
                    done,
                    results,
                    events,
                )?;
            }
            continue;
        };
        events(Event::Planned(slices.len() * per_slice));
        for k in slices {
            let todo: Vec<(Method, RoiMode)> = items(Some(k))
                .filter(|&(s, m, r)| !done.contains(&EvalRecord::new(&case.id, class, s, m, r, Status::Ok).key()))
                .map(|(_, m, r)| (m, r))
                .collect();
            if todo.len() < per_slice {
                events(Event::ItemDone(per_slice - todo.len()));
            }
            if todo.is_empty() {
                continue;
            }
            let input = SliceInput::new(&volume, k, range, size, labels.as_deref(), class, explainer.orientation())?;
            if input.truth.as_ref().is_some_and(|t| !t.contains(&true)) {
                for (method, roi) in todo {
                    emit_line(
                        EvalRecord::new(&case.id, class, Some(k), method, roi, Status::EmptyOrgan),
                        done,
                        results,
                        events,
                    )?;
                }
                continue;
            }
            let clip_roi = if todo.iter().any(|(_, r)| r.uses_clip()) {
                explainer.clip_roi(&input, channel, intensity.modality())?
            } else {
                ClipRoi::default()
            };
            for (method, roi) in todo {
                events(Event::Item(format!(
                    "{} {} slice {k} {} ({})",
                    case.id,
                    organ_name(class),
                    method.name(),
                    roi.name()
                )));
                let record = EvalRecord::new(&case.id, class, Some(k), method, roi, Status::Ok);
                let line = match explainer.run(&input, &clip_roi, channel, method, roi, explainer.settings(), |_, _| {})
                {
                    Ok(run) => {
                        let mut panel = run.panel(&input, explainer.settings().score, run.colouring(Sign::All));
                        // Small: one per item, to look at afterwards (report.html links them).
                        panel.long_side = input.size;
                        panel.title.insert(0, format!("{} · {} · slice {k}", case.id, organ_name(class)));
                        let img = crate::render::figure(&[panel.render()?], 1, &[], &[])?;
                        let stem = item_stem(&case.id, &organ_name(class), Some(k), method.name(), roi.name());
                        crate::render::save_png(&plan.out.join(OVERLAYS).join(format!("{stem}.png")), &img)?;
                        if plan.save_maps {
                            let map = crate::pipeline::saliency_volume(&input, &volume, k, &run.saliency);
                            let path = plan.out.join(MAPS).join(format!("{stem}.nii.gz"));
                            crate::io::nifti::write_like(&path, &volume, &map)?;
                        }
                        record.scored(&run)
                    }
                    // Not predicted by the U-Net, or outside the ROI finder's view: recorded, not a failure.
                    Err(e) if e.kind() == ErrorKind::OrganAbsent => {
                        EvalRecord { status: Status::OrganAbsent, ..record }
                    }
                    Err(e) if e.kind() == ErrorKind::RoiMiss => EvalRecord { status: Status::RoiMiss, ..record },
                    Err(e) => return Err(e.into()),
                };
                emit_line(line, done, results, events)?;
            }
        }
    }
    Ok(())
}

/// One case with a 3-D model: each organ, method and ROI mode over the whole volume (slice null), with
/// the three-plane overlay in DIR/overlays and, with `save_maps`, the map in DIR/maps.
fn evaluate_volumes(
    model: &VolumeModel,
    plan: &EvalPlan,
    case: &CaseEntry,
    done: &mut HashSet<String>,
    results: &Path,
    events: &mut dyn FnMut(Event),
) -> Result<()> {
    let (volume, labels) = dataset::load(case)?;
    let items = || plan.methods.iter().zip(&model.runs).flat_map(|(&m, s)| plan.rois.iter().map(move |&r| (m, s, r)));
    for &class in &plan.organs {
        let organ = organ_name(class);
        let record = |method, roi, status| EvalRecord::new(&case.id, class, None, method, roi, status);
        events(Event::Planned(plan.methods.len() * plan.rois.len()));
        if labels.as_ref().is_some_and(|l| !l.contains(&(class as u8))) {
            for (method, _, roi) in items() {
                emit_line(record(method, roi, Status::OrganAbsent), done, results, events)?;
            }
            continue;
        }
        for (method, settings, roi) in items() {
            if done.contains(&record(method, roi, Status::Ok).key()) {
                events(Event::ItemDone(1));
                continue;
            }
            model.cancel.check()?;
            events(Event::Item(format!("{} {organ} whole volume {} ({})", case.id, method.name(), roi.name())));
            let mut settings = VolumeSettings { roi, ..settings.clone() };
            if case.mr {
                settings.intensity = Some(Intensity::MrPercentile);
            }
            settings.cancel = model.cancel.clone();
            // One item per call (the model and CLIP ROI loaded again, under a second each): its line is
            // durable before the next starts, and a RoiMiss stays that item's.
            let explained = explain_volume_on(
                model.device,
                model.precision,
                &model.dir,
                &volume,
                labels.as_deref(),
                &organ,
                &settings,
                |_, _, _| {},
            );
            let line = match explained {
                Ok(e) => {
                    let run = &e.run;
                    let title = format!("{} · {organ} · {} 3-D ({})", case.id, method.name(), roi.name());
                    let range = run.intensity.range(&volume);
                    let img = crate::report::volume_figure(&volume, run, e.truth.as_deref(), range, roi, &title)?;
                    let stem = item_stem(&case.id, &organ, None, method.name(), roi.name());
                    crate::render::save_png(&plan.out.join(OVERLAYS).join(format!("{stem}.png")), &img)?;
                    if plan.save_maps {
                        let path = plan.out.join(MAPS).join(format!("{stem}.nii.gz"));
                        crate::io::nifti::write_like(&path, &volume, &run.saliency)?;
                    }
                    EvalRecord { figures: Some(volume_figures(run)), ..record(method, roi, Status::Ok) }
                }
                // Not predicted by the model, or missed by the ROI: recorded, not a failure.
                Err(e) if kind_of(&e) == ErrorKind::OrganAbsent => record(method, roi, Status::OrganAbsent),
                Err(e) if kind_of(&e) == ErrorKind::RoiMiss => record(method, roi, Status::RoiMiss),
                Err(e) => return Err(e),
            };
            emit_line(line, done, results, events)?;
        }
    }
    Ok(())
}

/// Where `v` stands in the run's `list` ("organs", "methods", "roi") of eval.json: the order of results
/// and summary rows.
fn position_in(config: &Value, list: &str, v: &Value) -> usize {
    config[list].as_array().and_then(|a| a.iter().position(|x| x == v)).unwrap_or(usize::MAX)
}

/// Canonical order of result lines: case (natural), organ, slice, method and ROI in the run's order.
fn sort_results(lines: &mut [Value], config: &Value) {
    let position = |list: &str, v: &Value| position_in(config, list, v);
    lines.sort_by(|a, b| {
        natural_cmp(a["case"].as_str().unwrap_or(""), b["case"].as_str().unwrap_or(""))
            .then_with(|| position("organs", &a["organ"]).cmp(&position("organs", &b["organ"])))
            .then_with(|| a["slice"].as_i64().cmp(&b["slice"].as_i64()))
            .then_with(|| position("methods", &a["method"]).cmp(&position("methods", &b["method"])))
            .then_with(|| position("roi", &a["roi"]).cmp(&position("roi", &b["roi"])))
    });
}

/// Joins the outputs of shard runs (`dirs`) into `out`: same settings required, duplicates dropped,
/// lines in the unsharded order. Returns the number of result lines.
pub fn merge(dirs: &[PathBuf], out: &Path, allow_partial: bool) -> Result<usize> {
    let first = read_config(&dirs[0])?;
    let gaps = shard_gaps(dirs)?;
    if !gaps.is_empty() && !allow_partial {
        bail!(
            "the shards do not cover the data set: {}; finish them (--resume) or pass --allow-partial",
            gaps.join("; ")
        );
    }
    for gap in &gaps {
        eprintln!("warning: partial merge: {gap}");
    }
    let mut lines: BTreeMap<String, Value> = BTreeMap::new();
    for dir in dirs {
        let config = read_config(dir)?;
        let diff = differing_fields(&first, &config, true);
        if !diff.is_empty() {
            bail!(
                "{}: shard run with other settings than {} ({})",
                dir.join(CONFIG).display(),
                dirs[0].join(CONFIG).display(),
                diff.join("; ")
            );
        }
        if dir.join(ERRORS).metadata().is_ok_and(|m| m.len() > 0) {
            eprintln!("warning: {} lists failed cases; rerun that shard with --resume", dir.join(ERRORS).display());
        }
        for line in read_results(&dir.join(RESULTS), false)? {
            let k = key(&line);
            if let Some(previous) = lines.get(&k) {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    // Wall-clock figures differ between runs of the same item.
                    if let Some(o) = v.as_object_mut() {
                        o.remove("seconds");
                        o.remove("forward_fraction");
                    }
                    v
                };
                if strip(previous) != strip(&line) {
                    bail!("{}: result {k} differs from the same item in another shard", dir.join(RESULTS).display());
                }
                continue;
            }
            lines.insert(k, line);
        }
    }
    let mut all: Vec<Value> = lines.into_values().collect();
    sort_results(&mut all, &first);
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create folder", out.display()))?;
    let _lock = lock_output(out)?;
    let mut config = first;
    config["shard"] = Value::Null;
    config["partial"] = json!(gaps);
    let text: String = all.iter().map(|l| format!("{l}\n")).collect();
    write_text(&out.join(RESULTS), text)?;
    write_text(&out.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    write_summaries(out, &all, &config)?;
    Ok(all.len())
}

/// What a set of shard folders lacks: shards of 1..n missing or given twice, shards not finished.
fn shard_gaps(dirs: &[PathBuf]) -> Result<Vec<String>> {
    let mut seen: BTreeMap<usize, &PathBuf> = BTreeMap::new();
    let mut count = None;
    let mut gaps = Vec::new();
    for dir in dirs {
        let config = read_config(dir)?;
        let (i, n) = match config["shard"].as_str() {
            Some(spec) => {
                dataset::parse_shard(spec).with_context(|| format!("{}: bad shard", dir.join(CONFIG).display()))?
            }
            None => (1, 1),
        };
        match count {
            None => count = Some(n),
            Some(m) if m != n => bail!("{}: shard {i}/{n} does not belong with shards of {m}", dir.display()),
            Some(_) => {}
        }
        if let Some(other) = seen.insert(i, dir) {
            bail!("shard {i}/{n} is given twice: {} and {}", other.display(), dir.display());
        }
        if !dir.join(FINISHED).is_file() {
            gaps.push(format!("shard {i}/{n} in {} did not finish", dir.display()));
        }
    }
    let n = count.unwrap_or(0);
    let missing: Vec<String> = (1..=n).filter(|i| !seen.contains_key(i)).map(|i| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        gaps.insert(0, format!("shards {} are missing", missing.join(", ")));
    }
    Ok(gaps)
}

const METRICS: [&str; 8] =
    ["dice", "iou", "dice_topk", "auroc", "deletion_auc", "insertion_auc", "seconds", "forward_passes"];

fn mean_std(values: &[f64]) -> (f64, f64) {
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = if values.len() > 1 { values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// One summary row: organ, method, ROI names, the explained lines, and how many items were skipped.
type SummaryGroup<'a> = (String, String, String, Vec<&'a Value>, usize);

/// summary.csv and summary.md: per organ, method and ROI mode, mean ± sample std of every metric over
/// the explained slices, plus the counts of slices skipped as empty-organ / organ-absent.
fn write_summaries(out: &Path, lines: &[Value], config: &Value) -> Result<()> {
    // An item counts once, however often it was written (e.g. by a writer before the lock existed).
    let mut keys = HashSet::new();
    let unique: Vec<&Value> = lines.iter().filter(|l| keys.insert(key(l))).collect();
    if unique.len() < lines.len() {
        eprintln!(
            "warning: {}: {} duplicate result lines counted once in the summaries",
            out.join(RESULTS).display(),
            lines.len() - unique.len()
        );
    }
    let lines = unique;
    let mut groups: BTreeMap<(usize, usize, usize), SummaryGroup> = BTreeMap::new();
    let position = |list: &str, v: &Value| position_in(config, list, v);
    for &l in &lines {
        let g = groups
            .entry((position("organs", &l["organ"]), position("methods", &l["method"]), position("roi", &l["roi"])))
            .or_insert_with(|| {
                let s = |k: &str| l[k].as_str().unwrap_or("?").to_string();
                (s("organ"), s("method"), s("roi"), Vec::new(), 0)
            });
        if l["status"] == "ok" {
            g.3.push(l);
        } else {
            g.4 += 1;
        }
    }
    let mut csv = String::from("organ,method,roi,n,skipped");
    let mut md = match config["partial"].as_array() {
        Some(gaps) if !gaps.is_empty() => {
            let gaps: Vec<&str> = gaps.iter().filter_map(Value::as_str).collect();
            format!("**Partial merge**: {}.\n\n| organ | method | roi | n | skipped |", gaps.join("; "))
        }
        _ => String::from("| organ | method | roi | n | skipped |"),
    };
    for m in METRICS {
        csv += &format!(",{m}_mean,{m}_std");
        md += &format!(" {m} |");
    }
    csv += "\n";
    md += &format!("\n|---|---|---|---:|---:|{}\n", "---:|".repeat(METRICS.len()));
    for (organ, method, roi, ok, skipped) in groups.values() {
        csv += &format!("{organ},{method},{roi},{},{skipped}", ok.len());
        md += &format!("| {organ} | {method} | {roi} | {} | {skipped} |", ok.len());
        for m in METRICS {
            let values: Vec<f64> = ok.iter().filter_map(|l| l[m].as_f64()).filter(|v| v.is_finite()).collect();
            if values.is_empty() {
                csv += ",,";
                md += " – |";
            } else {
                let (mean, std) = mean_std(&values);
                csv += &format!(",{mean:.6},{std:.6}");
                md += &format!(" {mean:.3} ± {std:.3} |");
            }
        }
        csv += "\n";
        md += "\n";
    }
    write_text(&out.join("summary.csv"), csv)?;
    write_text(&out.join("report.html"), report_html(out, &lines, config, &md)?)?;
    write_text(&out.join("summary.md"), md)
}

/// DIR/report.html: the summary per organ, method and ROI mode, then one row per item with its figures
/// and a link to its overlay (where this folder has it: a merge links the shards' own).
fn report_html(out: &Path, lines: &[&Value], config: &Value, summary_md: &str) -> Result<String> {
    use crate::report::{escape, Html};
    let mut html = Html::new(&format!("xaiclip eval: {}", out.display()));
    html.section("summary", "Summary: mean ± std per organ, method and ROI mode", Html::markdown(summary_md));
    let mut rows = String::from("<table>\n<tr><th>case</th><th>organ</th><th>slice</th><th>method</th><th>roi</th><th>status</th><th>Dice</th><th>insertion AUC</th><th>deletion AUC</th><th>seconds</th><th>forward passes</th><th>overlay</th></tr>\n");
    for l in lines {
        let text = |k: &str| l[k].as_str().map(str::to_string).unwrap_or_else(|| l[k].to_string());
        let number = |k: &str| l[k].as_f64().map_or("–".to_string(), |v| format!("{v:.3}"));
        let stem = (|| {
            let name = |k: &str| l[k].as_str();
            let slice = l["slice"].as_u64().map(|k| k as usize);
            Some(item_stem(name("case")?, name("organ")?, slice, name("method")?, name("roi")?))
        })();
        let link = |folder: &str, ext: &str, text: &str| {
            let name = format!("{}.{ext}", stem.as_deref()?);
            out.join(folder).join(&name).is_file().then(|| format!("<a href=\"{folder}/{}\">{text}</a>", escape(&name)))
        };
        let overlay = [link(OVERLAYS, "png", "view"), link(MAPS, "nii.gz", "map")]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" · ");
        rows += &format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{overlay}</td></tr>\n",
            escape(&text("case")), escape(&text("organ")), escape(&text("slice")), escape(&text("method")), escape(&text("roi")), escape(&text("status")),
            number("dice"), number("insertion_auc"), number("deletion_auc"), number("seconds"), escape(&text("forward_passes")),
        );
    }
    rows += "</table>\n";
    html.section("cases", "Every item", rows);
    html.section("metadata", "Settings", format!("<pre>{}</pre>", escape(&serde_json::to_string_pretty(config)?)));
    Ok(html.finish())
}
