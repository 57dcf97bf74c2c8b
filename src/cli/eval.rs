//! `xaiclip eval`: every case of a data set explained and scored, one JSON line per (case, organ, slice,
//! method, ROI mode), resumable after a kill and splittable into shards that `--merge` joins.
//!
//! Durability: each result line is appended with one write and synced before the next item starts,
//! and a case is listed in `cases_done.txt` only after its last line; `--resume` drops a torn last
//! line, skips listed cases and every item already present, so a kill loses at most the item in flight.

use super::explain::{organ_center_slice, write_text, ClipRoiFinder, MethodArgs};
use super::{model_size, progress_bar};
use crate::backend::Backend;
use crate::dataset::{self, natural_cmp, CaseEntry, DatasetKind};
use crate::io::Volume;
use crate::models::BasicUNet;
use crate::pipeline::{organ_class, organ_name, run_method, ClipRoi, Method, MethodRun, Settings, SliceInput};
use crate::preprocess::{AxialLayout, Intensity};
use crate::roi::RoiMode;
use crate::segment::{segment_slices, SegmentOptions};
use anyhow::{bail, Context, Result};
use clap::Args;
use indicatif::MultiProgress;
use serde_json::{json, Map, Value};
use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::path::{Path, PathBuf};

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
    /// --dataset pairs: folder of FLARE22 label maps named like the images.
    #[arg(long)]
    pub labels: Option<PathBuf>,
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
    /// Run only shard i of n (1-based): every n-th case. n jobs with i = 1..n cover the set once.
    #[arg(long)]
    pub shard: Option<String>,
    /// Continue an interrupted run in --out: finished items are kept, never repeated.
    #[arg(long)]
    pub resume: bool,
    /// Join the outputs of shard runs (folders) into --out instead of running anything.
    #[arg(long, num_args = 1.., conflicts_with_all = ["dataset", "resume", "shard"])]
    pub merge: Vec<PathBuf>,
    /// Model input size (square); default: config.json's input_size, else 256.
    #[arg(long)]
    pub size: Option<usize>,
    #[command(flatten)]
    pub method_args: MethodArgs,
}

const RESULTS: &str = "results.jsonl";
const CONFIG: &str = "eval.json";
const DONE: &str = "cases_done.txt";
const ERRORS: &str = "errors.jsonl";

#[derive(Clone, Copy, Debug, PartialEq)]
enum SliceRule {
    OrganCenter,
    Every(usize),
}

fn slice_rule(spec: &str) -> Result<SliceRule> {
    if spec == "organ-center" {
        return Ok(SliceRule::OrganCenter);
    }
    match spec.strip_prefix("every-").and_then(|k| k.parse::<usize>().ok()) {
        Some(k) if k >= 1 => Ok(SliceRule::Every(k)),
        _ => bail!("--slices {spec:?}: expected organ-center or every-K with K >= 1 (e.g. every-5)"),
    }
}

/// Identity of one result line: what --resume and --merge match on.
fn key(line: &Value) -> String {
    let f = |k: &str| line.get(k).map_or("null".to_string(), |v| v.to_string());
    format!("{}|{}|{}|{}|{}", f("case"), f("organ"), f("slice"), f("method"), f("roi"))
}

/// The result lines of `path`, dropping a torn last line (a write cut short by a kill).
fn read_results(path: &Path) -> Result<Vec<Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("{}: cannot read", path.display())),
    };
    let complete = text.rfind('\n').map_or("", |end| &text[..end + 1]);
    if complete.len() < text.len() {
        eprintln!("{}: dropping a partial last line (an interrupted write)", path.display());
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .with_context(|| format!("{}: cannot open for repair", path.display()))?;
        file.set_len(complete.len() as u64)
            .with_context(|| format!("{}: cannot truncate the partial line", path.display()))?;
    }
    complete
        .lines()
        .enumerate()
        .map(|(i, l)| {
            let v: Value = serde_json::from_str(l)
                .map_err(|e| anyhow::anyhow!("{} line {}: not a result record ({e})", path.display(), i + 1))?;
            if v.get("case").is_none() || v.get("status").is_none() {
                bail!("{} line {}: not a result record (no case or status)", path.display(), i + 1);
            }
            Ok(v)
        })
        .collect()
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

fn record(
    case: &str,
    organ: usize,
    slice: Option<usize>,
    method: Method,
    roi: RoiMode,
    status: &str,
) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("case".into(), json!(case));
    m.insert("organ".into(), json!(organ_name(organ)));
    m.insert("slice".into(), json!(slice));
    m.insert("method".into(), json!(method.name()));
    m.insert("roi".into(), json!(roi.name()));
    m.insert("status".into(), json!(status));
    m
}

fn scored(mut m: Map<String, Value>, run: &MethodRun) -> Value {
    let a = run.agreement.as_ref();
    let f = run.faithfulness.as_ref();
    for (k, v) in [
        ("dice", a.map(|a| a.half.dice)),
        ("iou", a.map(|a| a.half.iou)),
        ("dice_topk", a.map(|a| a.top_k.dice)),
        ("auroc", a.map(|a| a.auroc)),
        ("deletion_auc", f.map(|f| f.deletion_auc)),
        ("insertion_auc", f.map(|f| f.insertion_auc)),
        ("seconds", Some(run.seconds)),
        ("roi_fraction", Some(run.roi_fraction())),
    ] {
        m.insert(k.into(), json!(v));
    }
    m.insert("forward_passes".into(), json!(run.forward_passes));
    m.insert("samples".into(), json!(run.samples));
    Value::Object(m)
}

/// Everything that decides the results, compared on --resume and --merge.
fn config_json(cmd: &EvalCmd, organs: &[usize], size: usize, settings: &Settings) -> Value {
    json!({
        "dataset": cmd.dataset.map(|d| format!("{d:?}")),
        "root": cmd.root, "images": cmd.images, "labels": cmd.labels, "unlabeled": cmd.unlabeled,
        "organs": organs.iter().map(|&o| organ_name(o)).collect::<Vec<_>>(),
        "methods": cmd.methods.iter().map(|m| m.name()).collect::<Vec<_>>(),
        "roi": cmd.roi.iter().map(|r| r.name()).collect::<Vec<_>>(),
        "slices": cmd.slices, "size": size, "seed": cmd.method_args.seed,
        "unet": cmd.method_args.unet, "clip": cmd.method_args.clip, "coop": cmd.method_args.coop,
        "prompt": cmd.method_args.prompt, "no_coop": cmd.method_args.no_coop, "roi_threshold": cmd.method_args.roi_threshold,
        "modality": format!("{:?}", cmd.method_args.intensity.modality), "window": cmd.method_args.intensity.window,
        "settings": format!("{settings:?}"),
    })
}

fn differing_fields(old: &Value, new: &Value) -> Vec<String> {
    let (Some(o), Some(n)) = (old.as_object(), new.as_object()) else { return vec!["(whole file)".into()] };
    let mut keys: Vec<&String> = o.keys().chain(n.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| o.get(*k) != n.get(*k) && k.as_str() != "shard")
        .map(|k| format!("{k}: {} vs {}", o.get(k).unwrap_or(&Value::Null), n.get(k).unwrap_or(&Value::Null)))
        .collect()
}

fn read_config(dir: &Path) -> Result<Value> {
    let path = dir.join(CONFIG);
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("{}: cannot read (not an eval output folder?)", path.display()))?;
    serde_json::from_str(&text).map_err(|e| anyhow::anyhow!("{}: invalid JSON ({e})", path.display()))
}

pub fn eval_command(cmd: EvalCmd, device: &super::device::DeviceArgs) -> Result<()> {
    if !cmd.merge.is_empty() {
        return merge(&cmd.merge, &cmd.out);
    }
    crate::on_backend!(device.select()?, |b| run_eval(b, cmd))
}

fn run_eval<B: Backend>(backend: &B, cmd: EvalCmd) -> Result<()> {
    let kind = cmd.dataset.context("--dataset is required")?;
    let rule = slice_rule(&cmd.slices)?;
    let organs: Vec<usize> = cmd.method_args.organ.split(',').map(organ_class).collect::<Result<_>>()?;
    if cmd.methods.is_empty() || cmd.roi.is_empty() {
        bail!("--methods and --roi need at least one value each");
    }
    let mut cases = dataset::discover(
        kind,
        cmd.root.as_deref(),
        cmd.images.as_deref(),
        cmd.labels.as_deref(),
        cmd.unlabeled,
        cmd.method_args.intensity.modality == super::Modality::Mr,
    )?;
    let total_cases = cases.len();
    if let Some(spec) = &cmd.shard {
        cases = dataset::shard(cases, dataset::parse_shard(spec)?);
    }
    let model = cmd.method_args.load_unet(backend)?;
    let size = model_size(cmd.size, &model);
    let settings = cmd.method_args.settings(backend, size, &model)?;
    let ct_intensity = cmd.method_args.intensity.intensity()?;
    let mut config = config_json(&cmd, &organs, size, &settings);
    config["shard"] = json!(cmd.shard);

    std::fs::create_dir_all(&cmd.out).with_context(|| format!("{}: cannot create folder", cmd.out.display()))?;
    let results_path = cmd.out.join(RESULTS);
    let existing = if cmd.resume {
        if cmd.out.join(CONFIG).is_file() {
            let diff = differing_fields(&read_config(&cmd.out)?, &config);
            if !diff.is_empty() {
                bail!(
                    "{}: --resume with other settings than the interrupted run ({})",
                    cmd.out.join(CONFIG).display(),
                    diff.join("; ")
                );
            }
        }
        read_results(&results_path)?
    } else {
        if results_path.metadata().is_ok_and(|m| m.len() > 0) {
            bail!(
                "{}: already holds results; pass --resume to continue that run, or choose another --out",
                results_path.display()
            );
        }
        for stale in [DONE, ERRORS] {
            let _ = std::fs::remove_file(cmd.out.join(stale));
        }
        Vec::new()
    };
    write_text(&cmd.out.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    let mut done: HashSet<String> = existing.iter().map(key).collect();
    let finished: HashSet<String> =
        std::fs::read_to_string(cmd.out.join(DONE)).unwrap_or_default().lines().map(str::to_string).collect();
    let uses_clip = cmd.roi.iter().any(|r| r.uses_clip());
    let clip = if uses_clip { Some(ClipRoiFinder::load(backend, &cmd.method_args)?) } else { None };

    eprintln!(
        "eval: {} of {total_cases} cases{}, organs {}, {} methods x {} ROI modes -> {}",
        cases.len(),
        cmd.shard.as_ref().map_or(String::new(), |s| format!(" (shard {s})")),
        organs.iter().map(|&o| organ_name(o)).collect::<Vec<_>>().join(", "),
        cmd.methods.len(),
        cmd.roi.len(),
        cmd.out.display()
    );
    let bars = MultiProgress::new();
    let overall = bars.add(progress_bar(cases.len() as u64, "cases"));
    let mut failed = 0;
    for case in &cases {
        overall.set_message(format!("cases ({})", case.id));
        if !finished.contains(&case.id) {
            let item_bar = bars.add(progress_bar(0, &case.id));
            let outcome = evaluate_case(
                backend,
                &cmd,
                case,
                &organs,
                rule,
                &model,
                size,
                &settings,
                ct_intensity,
                clip.as_ref(),
                &mut done,
                &results_path,
                &item_bar,
            );
            item_bar.finish_and_clear();
            bars.remove(&item_bar);
            match outcome {
                Ok(()) => append_text(&cmd.out.join(DONE), &format!("{}\n", case.id))?,
                Err(e) => {
                    failed += 1;
                    bars.suspend(|| eprintln!("case {}: {e:#}", case.id));
                    append_line(&cmd.out.join(ERRORS), &json!({"case": case.id, "error": format!("{e:#}")}))?;
                }
            }
        }
        overall.inc(1);
    }
    overall.finish_and_clear();
    let all = read_results(&results_path)?;
    write_summaries(&cmd.out, &all, &config)?;
    eprintln!(
        "wrote {} ({} lines), summary.csv and summary.md in {}",
        results_path.display(),
        all.len(),
        cmd.out.display()
    );
    if failed > 0 {
        bail!(
            "{failed} of {} cases failed (see {}); --resume retries them",
            cases.len(),
            cmd.out.join(ERRORS).display()
        );
    }
    Ok(())
}

/// Slices of `volume` to explain for `class`, or None when the organ is absent from the case.
fn pick_slices(rule: SliceRule, volume: &Volume, labels: Option<&[u8]>, class: usize) -> Result<Option<Vec<usize>>> {
    let n = AxialLayout::of(volume)?.slices(volume);
    Ok(match (rule, labels) {
        (SliceRule::Every(k), _) => Some((0..n).step_by(k).collect()),
        (SliceRule::OrganCenter, Some(l)) => organ_center_slice(volume, l, class).ok().map(|k| vec![k]),
        (SliceRule::OrganCenter, None) => unreachable!("organ-center slices come from labels or the prediction"),
    })
}

#[allow(clippy::too_many_arguments)]
fn evaluate_case<B: Backend>(
    backend: &B,
    cmd: &EvalCmd,
    case: &CaseEntry,
    organs: &[usize],
    rule: SliceRule,
    model: &BasicUNet<B>,
    size: usize,
    settings: &Settings,
    ct_intensity: Intensity,
    clip: Option<&ClipRoiFinder<B>>,
    done: &mut HashSet<String>,
    results: &Path,
    bar: &indicatif::ProgressBar,
) -> Result<()> {
    let (volume, labels) = dataset::load(case)?;
    let intensity = if case.mr { Intensity::MrPercentile } else { ct_intensity };
    let range = intensity.range(&volume);
    // Unlabeled cases find their organ-center slices in the U-Net's own prediction.
    let predicted;
    let slice_labels = match (&labels, rule) {
        (None, SliceRule::OrganCenter) => {
            let n = AxialLayout::of(&volume)?.slices(&volume);
            let options = SegmentOptions { intensity, input_size: size, batch: settings.batch.min(16) };
            predicted = segment_slices(backend, model, &volume, &(0..n).collect::<Vec<_>>(), &options, |_| {})?;
            Some(&predicted[..])
        }
        (l, _) => l.as_deref(),
    };
    let per_slice = cmd.methods.len() * cmd.roi.len();
    let emit = |line: Value, done: &mut HashSet<String>| -> Result<()> {
        if done.insert(key(&line)) {
            append_line(results, &line)?;
        }
        bar.inc(1);
        Ok(())
    };
    for &class in organs {
        let Some(slices) = pick_slices(rule, &volume, slice_labels, class)? else {
            for &method in &cmd.methods {
                for &roi in &cmd.roi {
                    emit(Value::Object(record(&case.id, class, None, method, roi, "organ-absent")), done)?;
                }
            }
            continue;
        };
        bar.inc_length((slices.len() * per_slice) as u64);
        for k in slices {
            let todo: Vec<(Method, RoiMode)> = cmd
                .methods
                .iter()
                .flat_map(|&m| cmd.roi.iter().map(move |&r| (m, r)))
                .filter(|&(m, r)| !done.contains(&key(&Value::Object(record(&case.id, class, Some(k), m, r, "")))))
                .collect();
            bar.inc((per_slice - todo.len()) as u64);
            if todo.is_empty() {
                continue;
            }
            let input = SliceInput::new(&volume, k, range, size, labels.as_deref(), class)?;
            if input.truth.as_ref().is_some_and(|t| !t.contains(&true)) {
                for (method, roi) in todo {
                    emit(Value::Object(record(&case.id, class, Some(k), method, roi, "empty-organ")), done)?;
                }
                continue;
            }
            let clip_roi = match clip {
                Some(finder) if todo.iter().any(|(_, r)| r.uses_clip()) => finder.roi(&input, class)?,
                _ => ClipRoi::default(),
            };
            for (method, roi) in todo {
                bar.set_message(format!(
                    "{} {} slice {k} {} ({})",
                    case.id,
                    organ_name(class),
                    method.name(),
                    roi.name()
                ));
                let run = run_method(backend, model, &input, &clip_roi, class, method, roi, settings, |_, _| {})?;
                emit(scored(record(&case.id, class, Some(k), method, roi, "ok"), &run), done)?;
            }
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

fn merge(dirs: &[PathBuf], out: &Path) -> Result<()> {
    let first = read_config(&dirs[0])?;
    let mut lines: BTreeMap<String, Value> = BTreeMap::new();
    for dir in dirs {
        let config = read_config(dir)?;
        let diff = differing_fields(&first, &config);
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
        for line in read_results(&dir.join(RESULTS))? {
            let k = key(&line);
            if let Some(previous) = lines.get(&k) {
                let strip = |v: &Value| {
                    let mut v = v.clone();
                    v.as_object_mut().map(|o| o.remove("seconds"));
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
    let mut config = first;
    config["shard"] = Value::Null;
    let text: String = all.iter().map(|l| format!("{l}\n")).collect();
    write_text(&out.join(RESULTS), text)?;
    write_text(&out.join(CONFIG), serde_json::to_string_pretty(&config)?)?;
    write_summaries(out, &all, &config)?;
    eprintln!("merged {} folders: {} result lines in {}", dirs.len(), all.len(), out.join(RESULTS).display());
    Ok(())
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
    let mut groups: BTreeMap<(usize, usize, usize), SummaryGroup> = BTreeMap::new();
    let position = |list: &str, v: &Value| position_in(config, list, v);
    for l in lines {
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
    let mut md = String::from("| organ | method | roi | n | skipped |");
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
    write_text(&out.join("summary.md"), md)
}
