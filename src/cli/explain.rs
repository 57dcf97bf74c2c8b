//! `xaiclip explain`, `bench` and `demo`: explanations of one organ on one slice, their cost and quality.

use super::{progress_bar, CaseArgs, IntensityArgs};
use crate::backend::Backend;
pub use crate::dataset::{load_labels, LabelIds};
use crate::explain::lime::{KernelShap, Lime};
use crate::explain::occlusion::Occlusion;
use crate::explain::rise::Rise;
use crate::explain::superpixels::{Segmenter, SegmenterKind};
use crate::explain::{BaselineKind, ScoreKind};
use crate::io::{self, Volume};
use crate::models::clip::ClipModel;
use crate::models::BasicUNet;
use crate::phantom::FLARE22_ORGANS;
use crate::pipeline::{organ_class, organ_name, run_method, ClipRoi, Method, MethodRun, Settings, SliceInput};
use crate::preprocess::{resize_bilinear, AxialLayout};
use crate::render;
use crate::roi::clip::{binarise, keep_large_components, ClipLocaliser, CoopContexts, Threshold};
use crate::roi::RoiMode;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Preset {
    /// xaiclip's defaults (see each option).
    Default,
    /// The paper's likely settings: occlusion 64/32 on 512-pixel slices (scaled to the model grid), RISE
    /// 2000 masks 7x7 p1 0.5, LIME/SHAP 500 samples on Felzenszwalb superpixels (100, 0.5, 50) kept at
    /// >= 10% ROI overlap, score = Dice drop against the unperturbed mask.
    Paper,
}

/// Options shared by explain, bench and demo. Unset method options take the preset's value.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Organ to explain (liver, spleen, right-kidney, left-kidney, pancreas, aorta, ...) or class id;
    /// eval takes a comma list (--organs liver,spleen).
    #[arg(long, visible_alias = "organs", default_value = "liver")]
    pub organ: String,
    /// U-Net folder (model.safetensors + config.json); default: the bundled weights/unet.
    #[arg(long)]
    pub unet: Option<PathBuf>,
    /// Base settings that the options below refine.
    #[arg(long, value_enum, default_value_t = Preset::Default)]
    pub preset: Preset,
    /// Target score [default: mean-prob; paper: dice].
    #[arg(long, value_enum)]
    pub score: Option<ScoreKind>,
    /// Fill of perturbed pixels, in model-input space [default: zero].
    #[arg(long, value_enum)]
    pub baseline: Option<BaselineKind>,
    /// Occlusion window side in model pixels [default: 32; paper: 64 at 512 px].
    #[arg(long)]
    pub occlusion_window: Option<usize>,
    /// Occlusion stride in model pixels [default: 16; paper: 32 at 512 px].
    #[arg(long)]
    pub occlusion_stride: Option<usize>,
    /// RISE masks [default: 1000; paper: 2000].
    #[arg(long)]
    pub masks: Option<usize>,
    /// RISE grid side s (s x s cells) [default: 8; paper: 7].
    #[arg(long)]
    pub grid: Option<usize>,
    /// RISE probability that a cell is kept [default: 0.5].
    #[arg(long)]
    pub p1: Option<f32>,
    /// RISE adaptive mode: stop when the map changes by less than this (relative L2) over 250 masks.
    #[arg(long)]
    pub rise_tol: Option<f32>,
    /// LIME / Kernel SHAP samples [default: 300; paper: 500].
    #[arg(long)]
    pub samples: Option<usize>,
    /// LIME kernel width on cosine distance [default: 0.25].
    #[arg(long)]
    pub kernel_width: Option<f64>,
    /// Superpixel algorithm [default: slic; paper: felzenszwalb].
    #[arg(long, value_enum)]
    pub segmenter: Option<SegmenterKind>,
    /// SLIC: number of superpixels wanted [default: 64].
    #[arg(long)]
    pub segments: Option<usize>,
    /// ROI margin around the CLIP (or predicted) organ region, in millimetres [default: 15].
    #[arg(long)]
    pub margin_mm: Option<f64>,
    /// Perturbed images per forward pass: a number, or "auto" (activations within 2 GiB and at most 64
    /// images on the CPU; a quarter of the free memory and at most 512 images on a GPU).
    #[arg(long, default_value = "auto")]
    pub batch: String,
    /// Deletion/insertion curve steps; 0 skips those metrics [default: 32].
    #[arg(long)]
    pub faithfulness_steps: Option<usize>,
    /// In ROI mode, keep the full run's sample counts (RISE masks, LIME/SHAP samples) instead of scaling
    /// them to the ROI's share of the perturbed features.
    #[arg(long)]
    pub same_budget: bool,
    /// CLIP folder (transformers CLIPModel: model.safetensors + config.json); default: weights/clip.
    #[arg(long)]
    pub clip: Option<PathBuf>,
    /// CoOp context vectors folder; default: weights/coop (ignored with --prompt or --no-coop).
    #[arg(long)]
    pub coop: Option<PathBuf>,
    /// Use hand-written prompts ("a CT image of the {organ}") instead of CoOp's learned contexts.
    #[arg(long)]
    pub no_coop: bool,
    /// Hand-written prompt for the organ, e.g. "a CT image of the liver" (implies --no-coop).
    #[arg(long)]
    pub prompt: Option<String>,
    /// CLIP ROI threshold on the organ probability map: otsu, fixed:VALUE, or top:FRACTION.
    #[arg(long, default_value = "otsu")]
    pub roi_threshold: String,
    /// Seed of every random choice (RISE masks, LIME/SHAP coalitions): same seed, same map.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[command(flatten)]
    pub intensity: IntensityArgs,
}

impl MethodArgs {
    /// Every option at its default (as if none were given on the command line).
    pub fn parse_from_defaults(seed: u64) -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: MethodArgs,
        }
        let mut w = <Wrapper as clap::Parser>::parse_from(["xaiclip"]);
        w.args.seed = seed;
        w.args
    }

    pub fn settings<B: Backend>(&self, backend: &B, size: usize, model: &BasicUNet<B>) -> Result<Settings> {
        let mut s = match self.preset {
            Preset::Default => Settings::defaults(self.seed),
            Preset::Paper => Settings::paper(self.seed, size),
        };
        s.score = self.score.unwrap_or(s.score);
        s.baseline = self.baseline.unwrap_or(s.baseline);
        s.occlusion = Occlusion {
            window: self.occlusion_window.unwrap_or(s.occlusion.window),
            stride: self.occlusion_stride.unwrap_or(s.occlusion.stride),
        };
        s.rise = Rise {
            masks: self.masks.unwrap_or(s.rise.masks),
            grid: self.grid.unwrap_or(s.rise.grid),
            p1: self.p1.unwrap_or(s.rise.p1),
            seed: self.seed,
            tol: self.rise_tol.or(s.rise.tol),
        };
        let samples = self.samples.unwrap_or(s.lime.samples);
        s.lime =
            Lime { samples, kernel_width: self.kernel_width.unwrap_or(s.lime.kernel_width), seed: self.seed, ..s.lime };
        s.shap = KernelShap { samples, seed: self.seed };
        s.segmenter = match (self.segmenter, s.segmenter) {
            (Some(SegmenterKind::Slic), Segmenter::Felzenszwalb { .. })
            | (None | Some(SegmenterKind::Slic), Segmenter::Slic { .. }) => {
                Segmenter::Slic { segments: self.segments.unwrap_or(64), compactness: 0.1 }
            }
            (Some(SegmenterKind::Felzenszwalb), Segmenter::Slic { .. }) => {
                Segmenter::Felzenszwalb { scale: 100.0, sigma: 0.5, min_size: 50 }
            }
            (_, f) => f,
        };
        s.margin_mm = self.margin_mm.unwrap_or(s.margin_mm);
        s.faithfulness_steps = self.faithfulness_steps.unwrap_or(s.faithfulness_steps);
        s.scale_roi_budget = !self.same_budget;
        s.batch = if self.batch == "auto" {
            auto_batch(backend, size, model)
        } else {
            self.batch
                .parse()
                .ok()
                .filter(|&b| b >= 1)
                .with_context(|| format!("--batch {:?}: expected a positive number or auto", self.batch))?
        };
        Ok(s)
    }

    pub fn load_unet<B: Backend>(&self, backend: &B) -> Result<BasicUNet<B>> {
        let dir = match &self.unet {
            Some(d) => d.clone(),
            None => bundled("unet")?,
        };
        BasicUNet::load_dir(backend, &dir)
    }
}

/// CLIP weights and CoOp contexts, loaded once and used for many slices.
pub struct ClipRoiFinder<'a, B: Backend> {
    backend: &'a B,
    clip: ClipModel<B>,
    coop: Option<CoopContexts>,
    classes: Vec<String>,
    prompt: Option<String>,
    threshold: Threshold,
}

impl<'a, B: Backend> ClipRoiFinder<'a, B> {
    pub fn load(backend: &'a B, args: &MethodArgs) -> Result<Self> {
        let clip_dir = match &args.clip {
            Some(d) => d.clone(),
            None => bundled("clip")?,
        };
        let clip = ClipModel::load_dir(backend, &clip_dir)?;
        let classes = std::iter::once("background".to_string())
            .chain(FLARE22_ORGANS.iter().map(|(_, n)| n.to_string()))
            .collect();
        let coop = if args.prompt.is_none() && !args.no_coop {
            let dir = match &args.coop {
                Some(d) => d.clone(),
                None => bundled("coop")?,
            };
            Some(CoopContexts::load_dir(&dir)?)
        } else {
            None
        };
        Ok(Self { backend, clip, coop, classes, prompt: args.prompt.clone(), threshold: args.roi_threshold.parse()? })
    }

    /// The CLIP ROI of a prepared slice: organ probability map, thresholded, small components dropped.
    /// Seconds count the text features, map and threshold (not the weights' loading).
    pub fn roi(&self, input: &SliceInput, class: usize) -> Result<ClipRoi> {
        let started = Instant::now();
        let localiser = ClipLocaliser::new(
            self.backend,
            &self.clip,
            &self.classes,
            self.coop.as_ref(),
            self.prompt.as_deref().map(|p| (class, p)),
        )?;
        let probability = localiser.probability_map(self.backend, &input.image, input.size, class)?;
        let mask = keep_large_components(&binarise(&probability, self.threshold), input.size, 0.2);
        Ok(ClipRoi { mask: Some(mask), probability: Some(probability), seconds: started.elapsed().as_secs_f64() })
    }
}

/// The CLIP ROI of one slice, loading the weights for it.
pub fn clip_roi<B: Backend>(backend: &B, args: &MethodArgs, input: &SliceInput, class: usize) -> Result<ClipRoi> {
    ClipRoiFinder::load(backend, args)?.roi(input, class)
}

/// Largest batch whose activations fit the backend's memory budget, capped where larger batches stop
/// paying off (Backend::batch_budget).
fn auto_batch<B: Backend>(backend: &B, size: usize, model: &BasicUNet<B>) -> usize {
    let f = model.config().features;
    // Peak live activations of one image: about three full-resolution tensors of the widest top-level
    // width plus the skip pyramid (a geometric series, ~1/3 more).
    let per_image = 4 * size * size * (3 * f[0].max(f[5]) + model.config().out_channels) * 4 / 3;
    let (bytes, cap) = backend.batch_budget();
    (bytes / per_image.max(1)).clamp(1, cap)
}

/// The bundled weights folder `weights/<name>`: beside the current directory, or in the source tree
/// this binary was built from.
pub fn bundled(name: &str) -> Result<PathBuf> {
    let candidates =
        [PathBuf::from("weights").join(name), Path::new(env!("CARGO_MANIFEST_DIR")).join("weights").join(name)];
    candidates.iter().find(|p| p.join("model.safetensors").is_file()).cloned().with_context(|| {
        format!(
            "bundled weights weights/{name} not found (looked in {}); pass the folder explicitly",
            candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The slice where the organ's ground-truth area is largest.
pub fn organ_center_slice(volume: &Volume, labels: &[u8], class: usize) -> Result<usize> {
    let layout = AxialLayout::of(volume)?;
    let area = |k: usize| layout.plane(volume.dims, k, labels).into_iter().filter(|&l| l as usize == class).count();
    let (k, n) = (0..layout.slices(volume))
        .map(|k| (k, area(k)))
        .max_by_key(|&(k, n)| (n, std::cmp::Reverse(k)))
        .unwrap_or((0, 0));
    if n == 0 {
        bail!("{}: no slice contains {} in the labels", volume.source.display(), organ_name(class));
    }
    Ok(k)
}

/// Saliency mapped back to the slice's pixels, as a volume that is zero outside slice k.
pub fn saliency_volume(volume: &Volume, k: usize, saliency: &[f32], size: usize) -> Result<Vec<f32>> {
    let layout = AxialLayout::of(volume)?;
    let shape = layout.slice_shape(volume);
    let plane = resize_bilinear(saliency, 1, (size, size), shape);
    let mut out = vec![0f32; volume.voxel_count()];
    layout.insert(volume.dims, k, &plane, &mut out);
    Ok(out)
}

pub fn run_json(run: &MethodRun) -> serde_json::Value {
    let (lo, hi) = run.saliency.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    json!({
        "method": run.method.name(),
        "roi": run.roi_mode.name(),
        "seconds": run.seconds,
        "forward_passes": run.forward_passes,
        "samples": run.samples,
        "roi_fraction": run.roi_fraction(),
        "saliency_range": [lo, hi],
        "agreement": run.agreement,
        "faithfulness": run.faithfulness.as_ref().map(|f| json!({"deletion_auc": f.deletion_auc, "insertion_auc": f.insertion_auc, "deletion_curve": f.deletion_curve, "insertion_curve": f.insertion_curve})),
    })
}

pub fn overlay_image(slice: &SliceInput, run: &MethodRun) -> image::RgbImage {
    let roi = (run.roi_mode != RoiMode::Full).then_some(&run.roi[..]);
    render::overlay(&slice.image, &run.saliency, slice.size, roi, slice.truth.as_deref())
}

/// Shared by explain and bench: load, pick the slice, prepare the model grid.
pub struct Case {
    pub volume: Volume,
    pub labels: Option<Vec<u8>>,
    pub slice: usize,
    pub class: usize,
    pub input: SliceInput,
    pub clip: ClipRoi,
}

impl Case {
    /// `needs_clip`: compute the CLIP ROI (for the clip and clip+seg modes).
    pub fn load<B: Backend>(
        backend: &B,
        case: &CaseArgs,
        args: &MethodArgs,
        size: usize,
        needs_clip: bool,
    ) -> Result<Self> {
        let volume = io::read_image(&case.image)?;
        let class = organ_class(&args.organ)?;
        let labels = case.label.as_deref().map(|l| load_labels(l, case.label_ids, &volume)).transpose()?;
        Self::from_volume(backend, volume, labels, &case.slice, class, args, size, needs_clip)
    }

    #[allow(clippy::too_many_arguments)]
    pub fn from_volume<B: Backend>(
        backend: &B,
        volume: Volume,
        labels: Option<Vec<u8>>,
        slice: &str,
        class: usize,
        args: &MethodArgs,
        size: usize,
        needs_clip: bool,
    ) -> Result<Self> {
        let layout = AxialLayout::of(&volume)?;
        let k = if slice == "organ-center" {
            let l = labels.as_ref().context("--slice organ-center needs --label")?;
            organ_center_slice(&volume, l, class)?
        } else {
            let k: usize =
                slice.parse().map_err(|_| anyhow::anyhow!("--slice {slice:?}: expected an index or organ-center"))?;
            layout.check_slice(&volume, k)?;
            k
        };
        let range = args.intensity.intensity()?.range(&volume);
        let input = SliceInput::new(&volume, k, range, size, labels.as_deref(), class)?;
        if let Some(t) = &input.truth {
            if !t.contains(&true) {
                bail!(
                    "{}: slice {k} has no {} in the labels; pick another slice (or --slice organ-center)",
                    volume.source.display(),
                    organ_name(class)
                );
            }
        }
        let clip = if needs_clip { clip_roi(backend, args, &input, class)? } else { ClipRoi::default() };
        Ok(Self { volume, labels, slice: k, class, input, clip })
    }
}

/// Runs one method with a progress bar of forward passes.
pub fn run_with_progress<B: Backend>(
    backend: &B,
    model: &BasicUNet<B>,
    case: &Case,
    method: Method,
    roi: RoiMode,
    settings: &Settings,
) -> Result<MethodRun> {
    let bar = progress_bar(0, &format!("{} ({})", method.name(), roi.name()));
    let run = run_method(backend, model, &case.input, &case.clip, case.class, method, roi, settings, |done, total| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    });
    bar.finish_and_clear();
    run
}

/// Each method in full-image mode and in `roi` mode, `repeat` times (median seconds; maps and metrics
/// from the first run, which is the only one that computes the metrics).
pub fn bench_runs<B: Backend>(
    backend: &B,
    model: &BasicUNet<B>,
    case: &Case,
    methods: &[Method],
    roi: RoiMode,
    settings: &Settings,
    repeat: usize,
) -> Result<Vec<MethodRun>> {
    let mut rows = Vec::new();
    for &method in methods {
        for mode in [RoiMode::Full, roi] {
            let mut first = run_with_progress(backend, model, case, method, mode, settings)?;
            let quick = Settings { faithfulness_steps: 0, ..settings.clone() };
            let mut times = vec![first.seconds];
            for _ in 1..repeat.max(1) {
                times.push(run_with_progress(backend, model, case, method, mode, &quick)?.seconds);
            }
            times.sort_by(f64::total_cmp);
            first.seconds = times[times.len() / 2];
            eprintln!(
                "{:<10} {:<8} {:>8.2}s {:>6} forward passes",
                method.name(),
                mode.name(),
                first.seconds,
                first.forward_passes
            );
            rows.push(first);
        }
    }
    Ok(rows)
}

fn pct(new: f64, old: f64) -> f64 {
    if old.abs() < 1e-12 {
        f64::NAN
    } else {
        100.0 * (new - old) / old
    }
}

/// The bench table as Markdown and JSON. Dice/IoU use the paper's likely protocol (min-max, >= 0.5);
/// top-|GT| and Otsu binarisations are in the JSON too.
pub fn bench_tables(rows: &[MethodRun], context: serde_json::Value) -> (String, serde_json::Value) {
    let mut md = String::from("| method | roi | seconds | forward passes | in forward | ROI area | Dice | IoU | Dice top-k | AUROC | deletion AUC | insertion AUC |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    let mut json_rows = Vec::new();
    let metric =
        |r: &MethodRun, f: &dyn Fn(&crate::metrics::Agreement) -> f64| r.agreement.as_ref().map_or(f64::NAN, f);
    for r in rows {
        let (del, ins) = r.faithfulness.as_ref().map_or((f64::NAN, f64::NAN), |f| (f.deletion_auc, f.insertion_auc));
        md += &format!(
            "| {} | {} | {:.2} | {} | {:.0}% | {:.1}% | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |\n",
            r.method.name(),
            r.roi_mode.name(),
            r.seconds,
            r.forward_passes,
            100.0 * r.forward_fraction,
            100.0 * r.roi_fraction(),
            metric(r, &|a| a.half.dice),
            metric(r, &|a| a.half.iou),
            metric(r, &|a| a.top_k.dice),
            metric(r, &|a| a.auroc),
            del,
            ins
        );
        json_rows.push(json!({
            "method": r.method.name(), "roi": r.roi_mode.name(), "seconds": r.seconds, "forward_passes": r.forward_passes,
            "forward_fraction": r.forward_fraction, "dice": metric(r, &|a| a.half.dice), "iou": metric(r, &|a| a.half.iou), "auroc": metric(r, &|a| a.auroc),
            "deletion_auc": del, "insertion_auc": ins,
            "dice_topk": metric(r, &|a| a.top_k.dice), "iou_topk": metric(r, &|a| a.top_k.iou),
            "dice_otsu": metric(r, &|a| a.otsu.dice), "iou_otsu": metric(r, &|a| a.otsu.iou),
            "roi_fraction": r.roi_fraction(), "samples": r.samples,
        }));
    }
    md += "\n| method | runtime reduction | forward-pass reduction | Dice change | IoU change |\n|---|---:|---:|---:|---:|\n";
    let mut comparisons = Vec::new();
    for pair in rows.chunks(2) {
        if let [full, roi] = pair {
            let d = |r: &MethodRun| metric(r, &|a| a.half.dice);
            let i = |r: &MethodRun| metric(r, &|a| a.half.iou);
            let c = json!({
                "method": full.method.name(), "roi": roi.roi_mode.name(),
                "runtime_reduction_pct": -pct(roi.seconds, full.seconds),
                "forward_pass_reduction_pct": -pct(roi.forward_passes as f64, full.forward_passes as f64),
                "dice_change_pct": pct(d(roi), d(full)), "iou_change_pct": pct(i(roi), i(full)),
            });
            md += &format!(
                "| {} | {:.1}% | {:.1}% | {:+.1}% | {:+.1}% |\n",
                full.method.name(),
                -pct(roi.seconds, full.seconds),
                -pct(roi.forward_passes as f64, full.forward_passes as f64),
                pct(d(roi), d(full)),
                pct(i(roi), i(full))
            );
            comparisons.push(c);
        }
    }
    (md, json!({"context": context, "rows": json_rows, "comparison": comparisons}))
}

/// Writes a whole output file atomically (text or bytes).
pub fn write_text(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    io::write_atomically(path, |tmp| {
        std::fs::write(tmp, contents).with_context(|| format!("{}: cannot write", path.display()))
    })
}
