//! One slice, one organ, one method: from a volume to a saliency map with its cost and quality. The
//! `explain`, `bench` and `demo` commands are loops over this.

use crate::backend::Backend;
use crate::explain::lime::{KernelShap, Lime};
use crate::explain::occlusion::Occlusion;
use crate::explain::rise::Rise;
use crate::explain::superpixels::{Segmenter, Segments};
use crate::explain::{baseline_image, BaselineKind, Cancel, Convergence, Problem, Runner, ScoreKind, UNetScorer};
use crate::fail;
use crate::io::Volume;
use crate::metrics::{agreement, faithfulness, Agreement, Faithfulness};
use crate::models::SegModel;
use crate::preprocess::{normalise, resize_bilinear, resize_nearest, AxialLayout, Orientation};
pub use crate::preprocess::{organ_center_slice, Slices};
use crate::render::{Colouring, Panel, Sign};
use crate::roi::clip::ClipRoi;
use crate::roi::{area_fraction, region, RoiMode};
use anyhow::Result;
use serde::{Deserialize, Serialize};
use std::str::FromStr;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
/// A perturbation method (each is a module of `explain`).
pub enum Method {
    /// Sliding-window occlusion (Zeiler & Fergus; Captum's conventions).
    Occlusion,
    /// Randomised input sampling (Petsiuk et al.): random smooth masks, score-weighted.
    Rise,
    /// LIME on superpixels: a weighted linear surrogate of the score.
    Lime,
    #[value(name = "kernelshap")]
    /// Kernel SHAP on superpixels: Shapley values by weighted least squares.
    KernelShap,
}

impl Method {
    /// Every method, in the order tables list them.
    pub const ALL: [Method; 4] = [Method::Occlusion, Method::Rise, Method::Lime, Method::KernelShap];

    /// The method's name in the CLI, file names and records.
    pub fn name(&self) -> &'static str {
        match self {
            Method::Occlusion => "occlusion",
            Method::Rise => "rise",
            Method::Lime => "lime",
            Method::KernelShap => "kernelshap",
        }
    }
}

/// Every knob of the explainers. As JSON (reports, eval.json) enums take their command-line spelling.
#[derive(Clone, Debug, Serialize)]
pub struct Settings {
    /// The number a forward pass is reduced to.
    pub score: ScoreKind,
    /// What perturbed pixels become.
    pub baseline: BaselineKind,
    /// Occlusion window and stride (model pixels).
    pub occlusion: Occlusion,
    /// RISE masks, grid, keep probability, seed, adaptive stop.
    pub rise: Rise,
    /// LIME samples, kernel width, ridge strength, seed.
    pub lime: Lime,
    /// Kernel SHAP samples and seed.
    pub shap: KernelShap,
    /// The superpixels LIME and Kernel SHAP switch on and off.
    pub segmenter: Segmenter,
    /// ROI mode for LIME/SHAP: None segments only the ROI; Some(f) segments the whole slice and keeps
    /// the superpixels with at least fraction f inside the ROI (the paper's protocol).
    pub superpixel_min_overlap: Option<f64>,
    /// Millimetres the ROI grows by around the organ region.
    pub margin_mm: f64,
    /// Perturbed images per forward pass (resolved for the device; see `BatchSize`). Speed only: maps do
    /// not depend on it.
    pub batch: usize,
    /// Deletion/insertion steps; 0 skips the faithfulness metrics.
    pub faithfulness_steps: usize,
    /// ROI mode keeps the samples per perturbed feature of the full-image run (fewer features, fewer
    /// samples) when true, or the full run's sample counts when false.
    pub scale_roi_budget: bool,
    /// An ROI (any mode but the full image) must cover at least this share of M0, the U-Net's own
    /// prediction of the organ; below it the run stops, or falls back to `roi_fallback`.
    pub roi_min_coverage: f64,
    /// The mode used instead of an ROI that covers too little of M0 (None: stop with an error).
    pub roi_fallback: Option<RoiMode>,
}

/// Upper bounds of the work-size options: beyond them a run takes hours or memory no machine has.
const MAX_MASKS: usize = 1_000_000;
const MAX_SAMPLES: usize = 100_000;
const MAX_FAITHFULNESS_STEPS: usize = 4096;
const MAX_BATCH: usize = 4096;

impl Settings {
    /// The settings as JSON, as reports record them.
    pub fn to_json(&self) -> serde_json::Value {
        // Through text, so that f32 values keep their short form (0.1, not 0.10000000149011612).
        serde_json::from_str(&serde_json::to_string(self).expect("settings serialise")).expect("valid JSON")
    }

    /// [`Self::to_json`] without the blocks of the other methods: what one run of `method` used.
    pub fn json_for(&self, method: Method) -> serde_json::Value {
        let mut v = self.to_json();
        let keep: &[&str] = match method {
            Method::Occlusion => &["occlusion"],
            Method::Rise => &["rise"],
            Method::Lime => &["lime", "segmenter", "superpixel_min_overlap"],
            Method::KernelShap => &["shap", "segmenter", "superpixel_min_overlap"],
        };
        let object = v.as_object_mut().expect("an object");
        for block in ["occlusion", "rise", "lime", "shap", "segmenter", "superpixel_min_overlap"] {
            if !keep.contains(&block) {
                object.remove(block);
            }
        }
        v
    }

    /// The settings that decide the maps: [`Self::to_json`] without the speed-only batch size (what a
    /// resumed or merged evaluation must share).
    pub fn results_json(&self) -> serde_json::Value {
        let mut v = self.to_json();
        v.as_object_mut().expect("an object").remove("batch");
        v
    }

    /// Refuses values that would panic, never finish or cannot mean anything on a `size`-pixel grid;
    /// messages name the command-line option.
    pub fn validate(&self, size: usize) -> Result<()> {
        let check = |ok: bool, what: String| -> Result<()> {
            if !ok {
                fail!(InvalidInput, "{what}");
            }
            Ok(())
        };
        let o = &self.occlusion;
        check(
            (1..=size).contains(&o.window),
            format!("--occlusion-window {}: must be 1 to {size} (the model grid)", o.window),
        )?;
        check(
            (1..=size).contains(&o.stride),
            format!("--occlusion-stride {}: must be 1 to {size} (the model grid)", o.stride),
        )?;
        let r = &self.rise;
        check((1..=MAX_MASKS).contains(&r.masks), format!("--masks {}: must be 1 to {MAX_MASKS}", r.masks))?;
        check((1..=size.min(64)).contains(&r.grid), format!("--grid {}: must be 1 to {}", r.grid, size.min(64)))?;
        check(r.p1 > 0.0 && r.p1 <= 1.0, format!("--p1 {}: must be in (0, 1]", r.p1))?;
        if let Some(tol) = r.tol {
            check(tol.is_finite() && tol > 0.0, format!("--rise-tol {tol}: must be a positive number"))?;
        }
        for (n, what) in [(self.lime.samples, "--samples"), (self.shap.samples, "--samples")] {
            check((2..=MAX_SAMPLES).contains(&n), format!("{what} {n}: must be 2 to {MAX_SAMPLES}"))?;
        }
        let kw = self.lime.kernel_width;
        check(kw.is_finite() && kw > 0.0, format!("--kernel-width {kw}: must be a positive number"))?;
        check(
            self.lime.alpha.is_finite() && self.lime.alpha >= 0.0,
            format!("LIME alpha {}: must be >= 0", self.lime.alpha),
        )?;
        if let Segmenter::Slic { segments, .. } = self.segmenter {
            let most = (size * size / 16).max(1);
            check(
                (1..=most).contains(&segments),
                format!("--segments {segments}: must be 1 to {most} at {size}x{size}"),
            )?;
        }
        let m = self.margin_mm;
        check(m.is_finite() && (0.0..=500.0).contains(&m), format!("--margin-mm {m}: must be 0 to 500"))?;
        let steps = self.faithfulness_steps;
        check(
            steps <= MAX_FAITHFULNESS_STEPS,
            format!("--faithfulness-steps {steps}: must be 0 to {MAX_FAITHFULNESS_STEPS}"),
        )?;
        check((1..=MAX_BATCH).contains(&self.batch), format!("--batch {}: must be 1 to {MAX_BATCH}", self.batch))?;
        let c = self.roi_min_coverage;
        check(c.is_finite() && (0.0..=1.0).contains(&c), format!("--roi-min-coverage {c}: must be 0 to 1"))?;
        if let Some(mode) = self.roi_fallback {
            check(
                !matches!(mode, RoiMode::Clip),
                "--roi-fallback clip: fall back to a mode that contains the prediction (seg, bbox, clip+seg, none)"
                    .into(),
            )?;
        }
        if let Some(min) = self.superpixel_min_overlap {
            check(
                min.is_finite() && (0.0..=1.0).contains(&min),
                format!("superpixel overlap {min}: must be in [0, 1]"),
            )?;
        }
        Ok(())
    }

    /// xaiclip's own defaults (each option's help says them); `seed` seeds every random choice.
    pub fn defaults(seed: u64) -> Self {
        Self {
            score: ScoreKind::MeanProb,
            baseline: BaselineKind::Zero,
            occlusion: Occlusion { window: 32, stride: 16 },
            rise: Rise { masks: 1000, grid: 8, p1: 0.5, seed, tol: None },
            lime: Lime { samples: 300, kernel_width: 0.25, alpha: 1.0, seed },
            shap: KernelShap { samples: 300, seed },
            segmenter: Segmenter::slic(Segmenter::SLIC_SEGMENTS),
            superpixel_min_overlap: None,
            // Chosen for recall: a missed organ part cannot be explained. 10 mm left 93% of the right
            // kidney inside the CLIP ROI on held-out CT, 15 mm 97% (weights/README.md).
            margin_mm: 15.0,
            batch: 16,
            faithfulness_steps: 32,
            scale_roi_budget: true,
            roi_min_coverage: crate::roi::MIN_COVERAGE,
            roi_fallback: None,
        }
    }

    /// The settings the paper most likely used (from a secondary summary, not its code), scaled from
    /// 512-pixel slices to a `size`-pixel model grid.
    pub fn paper(seed: u64, size: usize) -> Self {
        let scale = |px: usize| (px * size / 512).max(1);
        Self {
            score: ScoreKind::Dice,
            occlusion: Occlusion { window: scale(64), stride: scale(32) },
            rise: Rise { masks: 2000, grid: 7, p1: 0.5, seed, tol: None },
            lime: Lime { samples: 500, kernel_width: 0.25, alpha: 1.0, seed },
            shap: KernelShap { samples: 500, seed },
            segmenter: Segmenter::FELZENSZWALB,
            superpixel_min_overlap: Some(0.1),
            ..Self::defaults(seed)
        }
    }
}

/// The score's name in figure labels.
pub fn score_label(score: ScoreKind) -> &'static str {
    match score {
        ScoreKind::MeanProb => "mean organ probability",
        ScoreKind::LogitSum => "organ logit sum",
        ScoreKind::SoftDice => "soft Dice",
        ScoreKind::Dice => "Dice",
    }
}

/// A slice prepared on the model grid.
pub struct SliceInput {
    /// Side of the square model grid.
    pub size: usize,
    /// Windowed image in [0, 1].
    pub image: Vec<f32>,
    /// Ground-truth organ mask on the model grid, when labels were given.
    pub truth: Option<Vec<bool>>,
    /// Millimetres per model pixel (mean of both axes).
    pub mm_per_pixel: f64,
    /// Physical extent of the slice in mm, [rows, columns] (figures keep this aspect).
    pub extent_mm: [f64; 2],
    /// The slice's own pixels, [rows, columns] (figures are drawn at least this fine).
    pub native: [usize; 2],
    /// How the slice was taken from the volume (the model's orientation).
    pub layout: AxialLayout,
    /// The model's input map for this volume where it depends on the volume (nnU-Net's
    /// ZScoreNormalization: `SegModel::input_map_of`, which `Explainer::prepare` sets); None otherwise.
    pub input_map: Option<[f32; 2]>,
}

impl SliceInput {
    /// `labels`: a FLARE22 label volume on `volume`'s grid; `orientation`: the model's.
    pub fn new(
        volume: &Volume,
        k: usize,
        range: (f32, f32),
        size: usize,
        labels: Option<&[u8]>,
        class: usize,
        orientation: Orientation,
    ) -> Result<Self> {
        let layout = orientation.layout(volume)?;
        let slice = normalise(&layout.extract(volume, k)?, range);
        let (h, w) = (slice.height, slice.width);
        let image = resize_bilinear(&slice.data, 1, (h, w), (size, size));
        let truth = labels.map(|l| {
            let plane = layout.plane(volume.dims, k, l);
            resize_nearest(&plane, (h, w), (size, size)).into_iter().map(|v| v as usize == class).collect()
        });
        let (sr, sc) = layout.pixel_spacing(volume);
        Ok(Self {
            size,
            image,
            truth,
            mm_per_pixel: (sr * h as f64 + sc * w as f64) / (2.0 * size as f64),
            extent_mm: [sr * h as f64, sc * w as f64],
            native: [h, w],
            layout,
            input_map: None,
        })
    }

    /// Pixels of a figure panel's longer side: the slice's own resolution, at least `MIN_LONG_SIDE`.
    pub fn figure_long_side(&self) -> usize {
        self.native[0].max(self.native[1]).max(crate::render::MIN_LONG_SIDE)
    }
}

/// One method's result on one slice.
pub struct MethodRun {
    /// The method that ran.
    pub method: Method,
    /// The ROI mode it ran in.
    pub roi_mode: RoiMode,
    /// Wall time of the explanation (ROI + perturbations), not of the metrics.
    pub seconds: f64,
    /// U-Net forwards, the unperturbed one that found M0 included.
    pub forward_passes: usize,
    /// Share of the explanation's own time (CLIP excluded) spent in U-Net forwards.
    pub forward_fraction: f64,
    /// Perturbation samples used (RISE's adaptive stop may use fewer than asked).
    pub samples: usize,
    /// Pixels that could be perturbed (model grid).
    pub roi: Vec<bool>,
    /// The saliency map on the model grid, row-major (0 outside the ROI).
    pub saliency: Vec<f32>,
    /// LIME/SHAP superpixel labels on the model grid (-1 where none is perturbed).
    pub segments: Option<Vec<i32>>,
    /// Saliency against the ground truth, when labels were given.
    pub agreement: Option<Agreement>,
    /// Deletion and insertion curves, when asked for.
    pub faithfulness: Option<Faithfulness>,
    /// M0: the unperturbed prediction of the organ (per model pixel), the mask the score refers to.
    pub m0: Vec<bool>,
    /// Seconds of the CLIP map charged to this run (0 outside the CLIP modes); included in `seconds`.
    pub clip_seconds: f64,
    /// Seconds of the agreement and faithfulness metrics (not in `seconds`).
    pub metrics_seconds: f64,
    /// Share of M0 inside the ROI the mode produced (1 for the full image).
    pub roi_coverage: f64,
    /// The mode used instead, when that ROI covered too little of M0 (`Settings::roi_fallback`).
    pub roi_fallback: Option<RoiMode>,
    /// The target score of the unperturbed slice (`Settings::score`), from which drops are measured.
    pub unperturbed_score: f32,
    /// Adaptive RISE (`--rise-tol`): how the map settled; None otherwise.
    pub convergence: Option<Convergence>,
}

impl MethodRun {
    /// Share of the slice the ROI covers.
    pub fn roi_fraction(&self) -> f64 {
        area_fraction(&self.roi)
    }

    /// The run's figures as every output file records them (report.json, bench.json, results.jsonl).
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            method: self.method,
            roi: self.roi_mode,
            figures: RunFigures {
                seconds: self.seconds,
                forward_passes: self.forward_passes,
                forward_fraction: Some(self.forward_fraction),
                samples: self.samples,
                roi_fraction: self.roi_fraction(),
                roi_coverage: Some(self.roi_coverage),
                roi_fallback: self.roi_fallback,
                ..RunFigures::of_map(&self.saliency, self.agreement.as_ref(), self.faithfulness.as_ref())
            },
        }
    }

    /// The `result` block of report.json: the summary, agreement with the labels, faithfulness curves.
    pub fn result_json(&self) -> serde_json::Value {
        let mut result = serde_json::to_value(self.summary()).expect("summary serialises");
        result["agreement"] = serde_json::json!(self.agreement);
        result["faithfulness"] = serde_json::json!(self.faithfulness);
        result["unperturbed_score"] = serde_json::json!(self.unperturbed_score);
        if let Some(c) = &self.convergence {
            result["rise_convergence"] = serde_json::json!(c);
        }
        result
    }

    /// The colouring of this run's map over the region it is defined on (`render::Colouring::of`).
    pub fn colouring(&self, sign: Sign) -> Colouring {
        let region = (self.roi_mode != RoiMode::Full).then_some(&self.roi[..]);
        Colouring::of(&self.saliency, region, sign)
    }

    /// The run as a labelled figure panel: method, mode, seconds, forward passes, Dice and insertion AUC
    /// in the title; ROI (ROI modes) and ground-truth outlines; a colour bar saying what the values are.
    pub fn panel<'a>(&'a self, input: &'a SliceInput, score: ScoreKind, colouring: Colouring) -> Panel<'a> {
        let summary = self.summary().figures;
        let mode = match self.roi_mode {
            RoiMode::Full => "full image".to_string(),
            mode => format!("ROI: {}", mode.name()),
        };
        let mut title = vec![
            format!("{} · {mode}", self.method.name()),
            format!("{:.2} s · {} forward passes", self.seconds, self.forward_passes),
        ];
        let numbers: Vec<String> = [("Dice", summary.dice), ("insertion AUC", summary.insertion_auc)]
            .iter()
            .filter_map(|(name, v)| v.map(|v| format!("{name} {v:.3}")))
            .collect();
        if !numbers.is_empty() {
            title.push(numbers.join(" · "));
        }
        let score = score_label(score);
        let unit = match self.method {
            Method::Occlusion => format!("drop of the {score} when the window is occluded"),
            Method::Rise => format!("average {score} over the masks that keep the pixel"),
            Method::Lime => format!("LIME weight of the superpixel ({score})"),
            Method::KernelShap => format!("Shapley value of the superpixel ({score})"),
        };
        Panel {
            image: &input.image,
            size: input.size,
            extent_mm: input.extent_mm,
            values: &self.saliency,
            colouring,
            roi: (self.roi_mode != RoiMode::Full).then_some(&self.roi[..]),
            truth: input.truth.as_deref(),
            title,
            unit,
            long_side: input.figure_long_side(),
        }
    }

    /// The labelled overlay of this run alone, on its own colour scale.
    pub fn overlay(&self, input: &SliceInput, score: ScoreKind, sign: Sign) -> Result<image::RgbImage> {
        let panel = self.panel(input, score, self.colouring(sign));
        let legend = ["colour bar: the map's range where it is defined (the ROI in ROI modes)".to_string()];
        crate::render::figure(&[panel.render()?], 1, &[], &legend)
    }
}

/// One run as report.json (`result`) and bench.json (`rows`) record it: the method, the ROI mode and
/// the run's figures, flat.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// The method.
    pub method: Method,
    /// The ROI mode.
    pub roi: RoiMode,
    #[serde(flatten)]
    /// The numbers.
    pub figures: RunFigures,
}

/// One run's figures: the one field list that report.json, bench.json and eval's results.jsonl (each
/// `ok` line) serialise. Metrics are absent (null) without labels or faithfulness curves.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFigures {
    /// Wall time of the explanation, CLIP map included in the CLIP modes.
    pub seconds: f64,
    /// U-Net forward passes.
    pub forward_passes: usize,
    /// Share of the explanation's own time spent in U-Net forwards.
    #[serde(default)]
    pub forward_fraction: Option<f64>,
    /// Perturbation samples.
    pub samples: usize,
    /// Share of the slice inside the ROI.
    pub roi_fraction: f64,
    /// Minimum and maximum of the saliency map.
    #[serde(default)]
    pub saliency_range: Option<[f32; 2]>,
    /// Dice / IoU of the map binarised at 0.5 after min-max normalisation (the paper's protocol).
    pub dice: Option<f64>,
    /// IoU at the same binarisation as `dice`.
    pub iou: Option<f64>,
    /// Binarised at the |ground truth| most salient pixels.
    #[serde(default)]
    pub dice_topk: Option<f64>,
    #[serde(default)]
    /// IoU at the top-|ground truth| binarisation.
    pub iou_topk: Option<f64>,
    /// Binarised at Otsu's threshold.
    #[serde(default)]
    pub dice_otsu: Option<f64>,
    #[serde(default)]
    /// IoU at Otsu's threshold.
    pub iou_otsu: Option<f64>,
    /// Area under the ROC curve of saliency against the organ's pixels.
    pub auroc: Option<f64>,
    /// Whether the most salient pixel lies in the organ.
    #[serde(default)]
    pub pointing_game: Option<bool>,
    /// Deletion curve area (lower: more faithful).
    pub deletion_auc: Option<f64>,
    /// Insertion curve area (higher: more faithful).
    pub insertion_auc: Option<f64>,
    /// Share of the U-Net's own prediction of the organ inside the ROI of the requested mode.
    #[serde(default)]
    pub roi_coverage: Option<f64>,
    /// The mode that replaced an ROI covering too little of that prediction.
    #[serde(default)]
    pub roi_fallback: Option<RoiMode>,
}

impl RunFigures {
    /// The figures of a map alone: its range, its agreement with the labels and its faithfulness; what
    /// the run cost and where it perturbed are left at zero for the caller to fill in.
    pub fn of_map(saliency: &[f32], a: Option<&Agreement>, f: Option<&Faithfulness>) -> Self {
        let (lo, hi) = saliency.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        Self {
            saliency_range: Some([lo, hi]),
            dice: a.map(|a| a.half.dice),
            iou: a.map(|a| a.half.iou),
            dice_topk: a.map(|a| a.top_k.dice),
            iou_topk: a.map(|a| a.top_k.iou),
            dice_otsu: a.map(|a| a.otsu.dice),
            iou_otsu: a.map(|a| a.otsu.iou),
            auroc: a.map(|a| a.auroc),
            pointing_game: a.map(|a| a.pointing_game),
            deletion_auc: f.map(|f| f.deletion_auc),
            insertion_auc: f.map(|f| f.insertion_auc),
            ..Self::default()
        }
    }
}

/// Superpixels for LIME/SHAP in the given ROI, and the ROI they effectively perturb.
fn superpixels(settings: &Settings, slice: &SliceInput, roi: &[bool], full: bool) -> (Segments, Vec<bool>) {
    let size = slice.size;
    match settings.superpixel_min_overlap {
        Some(min) if !full => {
            let all = settings.segmenter.segment(&slice.image, size, &vec![true; size * size]);
            let mut inside = vec![(0usize, 0usize); all.count];
            for (q, &l) in all.labels.iter().enumerate() {
                inside[l as usize].1 += 1;
                inside[l as usize].0 += roi[q] as usize;
            }
            let keep: Vec<bool> = inside.iter().map(|&(i, n)| i as f64 >= min * n as f64 && i > 0).collect();
            let labels: Vec<i32> = all.labels.iter().map(|&l| if keep[l as usize] { l } else { -1 }).collect();
            let effective: Vec<bool> = labels.iter().map(|&l| l >= 0).collect();
            let kept = Segments { count: all.count, labels };
            (kept, effective)
        }
        _ => (settings.segmenter.segment(&slice.image, size, roi), roi.to_vec()),
    }
}

/// ROI-mode settings with the full run's samples per perturbed feature: SLIC keeps its superpixel size
/// (segments scale with the ROI's area) and LIME/SHAP samples scale with the superpixel count; RISE's
/// masks scale with the fraction of its grid cells that touch the ROI. Occlusion needs no rule: it
/// already evaluates only the windows touching the ROI.
pub fn roi_budget(settings: &Settings, roi: &[bool], size: usize) -> Settings {
    let mut s = settings.clone();
    let area = area_fraction(roi);
    if let Segmenter::Slic { segments, compactness } = settings.segmenter {
        let kept = ((segments as f64 * area).ceil() as usize).max(4);
        s.segmenter = Segmenter::Slic { segments: kept, compactness };
        let scale = |n: usize| ((n as f64 * kept as f64 / segments as f64).ceil() as usize).clamp(16.min(n), n);
        s.lime.samples = scale(settings.lime.samples);
        s.shap.samples = scale(settings.shap.samples);
    }
    let g = settings.rise.grid;
    let cell = size.div_ceil(g);
    let touched = (0..g * g).filter(|&c| {
        let (y0, x0) = ((c / g) * cell, (c % g) * cell);
        (y0..(y0 + cell).min(size)).any(|y| (x0..(x0 + cell).min(size)).any(|x| roi[y * size + x]))
    });
    let fraction = touched.count() as f64 / (g * g) as f64;
    s.rise.masks = ((settings.rise.masks as f64 * fraction).ceil() as usize).clamp(1, settings.rise.masks);
    s
}

#[allow(clippy::too_many_arguments)]
/// One method in one ROI mode on a prepared slice: finds M0, builds the ROI, runs the explainer on
/// `backend`, and scores the map (agreement with labels, faithfulness). `progress(done, planned)` counts
/// forward passes; `cancel` stops the run between batches. Settings are validated first.
pub fn run_method<B: Backend>(
    backend: &B,
    model: &SegModel<B>,
    slice: &SliceInput,
    clip: &ClipRoi,
    class: usize,
    method: Method,
    roi_mode: RoiMode,
    settings: &Settings,
    progress: impl FnMut(usize, usize),
    cancel: &Cancel,
) -> Result<MethodRun> {
    let size = slice.size;
    settings.validate(size)?;
    let started = Instant::now();
    let scorer = UNetScorer::new(backend, model, &slice.image, size, class, settings.score)?;
    let roi = region(roi_mode, &scorer.m0, clip.mask.as_deref(), size, settings.margin_mm / slice.mm_per_pixel)?;
    if !roi.contains(&true) {
        fail!(
            OrganAbsent,
            "the {} ROI is empty on this slice (the CLIP map has no {} above its threshold): nothing to perturb; try --roi seg, --roi none or another --roi-threshold",
            roi_mode.name(),
            crate::organs::name_in(model.classes(), class)
        );
    }
    // The ROI must contain the organ the U-Net sees, or the explanation is of the wrong place.
    let m0_count = scorer.m0.iter().filter(|&&b| b).count().max(1);
    let roi_coverage = roi.iter().zip(&scorer.m0).filter(|(r, m)| **r && **m).count() as f64 / m0_count as f64;
    let mut roi_fallback = None;
    let roi = if roi_mode != RoiMode::Full && roi_coverage < settings.roi_min_coverage {
        let Some(fallback) = settings.roi_fallback else {
            fail!(
                RoiMiss,
                "the {} ROI covers {:.1}% of the U-Net's own {} prediction on this slice (at least {:.0}% needed): it would explain the wrong place; use --roi seg or --roi clip+seg, or --roi-fallback seg",
                roi_mode.name(),
                100.0 * roi_coverage,
                crate::organs::name_in(model.classes(), class),
                100.0 * settings.roi_min_coverage
            );
        };
        roi_fallback = Some(fallback);
        region(fallback, &scorer.m0, clip.mask.as_deref(), size, settings.margin_mm / slice.mm_per_pixel)?
    } else {
        roi
    };
    let baseline = baseline_image(settings.baseline, &slice.image, size);
    let full = roi_mode == RoiMode::Full;
    let settings =
        &if full || !settings.scale_roi_budget { settings.clone() } else { roi_budget(settings, &roi, size) };
    let (segments, roi) = match method {
        Method::Lime | Method::KernelShap => {
            let (s, effective) = superpixels(settings, slice, &roi, full);
            (Some(s), effective)
        }
        _ => (None, roi),
    };
    let problem = Problem {
        size,
        input: slice.image.clone(),
        baseline,
        roi,
        scorer: &scorer,
        batch: settings.batch,
        cancel: cancel.clone(),
    };
    let mut runner = Runner::new(&problem, progress);
    let explanation = match method {
        Method::Occlusion => settings.occlusion.explain(&mut runner)?,
        Method::Rise => settings.rise.explain(&mut runner)?,
        Method::Lime => settings.lime.explain(&mut runner, segments.as_ref().expect("segmented"))?,
        Method::KernelShap => settings.shap.explain(&mut runner, segments.as_ref().expect("segmented"))?,
    };
    // The scorer's own unperturbed pass that found M0.
    let forward_passes = explanation.forward_passes + 1;
    drop(runner);
    let own_seconds = started.elapsed().as_secs_f64();
    let forward_fraction = scorer.forward_nanos.load(std::sync::atomic::Ordering::Relaxed) as f64 * 1e-9 / own_seconds;
    let clip_seconds = if roi_mode.uses_clip() { clip.seconds } else { 0.0 };
    let seconds = own_seconds + clip_seconds;
    let metrics_started = Instant::now();
    let agreement = slice.truth.as_ref().map(|t| agreement(&explanation.saliency, t));
    // Faithfulness is measured the same way for every mode: whole image, same baseline.
    let roi = problem.roi.clone();
    let faithfulness = if settings.faithfulness_steps > 0 {
        let whole = Problem { roi: vec![true; size * size], ..problem };
        let mut metric_runner = Runner::new(&whole, |_, _| {});
        let curves = faithfulness(&mut metric_runner, &explanation.saliency, settings.faithfulness_steps)?;
        Some(curves)
    } else {
        None
    };
    let segments = segments.map(|s| s.labels);
    Ok(MethodRun {
        method,
        roi_mode,
        seconds,
        forward_passes,
        forward_fraction,
        samples: explanation.samples,
        roi,
        saliency: explanation.saliency,
        segments,
        agreement,
        faithfulness,
        m0: scorer.m0.clone(),
        roi_coverage,
        roi_fallback,
        unperturbed_score: scorer.unperturbed_score,
        convergence: explanation.convergence,
        clip_seconds,
        metrics_seconds: metrics_started.elapsed().as_secs_f64(),
    })
}

/// Saliency on the model grid of `input` mapped back to the slice's pixels (bilinear).
pub fn saliency_on_slice(input: &SliceInput, volume: &Volume, saliency: &[f32]) -> (Vec<f32>, (usize, usize)) {
    let shape = input.layout.slice_shape(volume);
    (resize_bilinear(saliency, 1, (input.size, input.size), shape), shape)
}

/// Saliency mapped back to the slice's pixels, as a volume that is zero outside slice k.
pub fn saliency_volume(input: &SliceInput, volume: &Volume, k: usize, saliency: &[f32]) -> Vec<f32> {
    let (plane, _) = saliency_on_slice(input, volume, saliency);
    let mut out = vec![0f32; volume.voxel_count()];
    input.layout.insert(volume.dims, k, &plane, &mut out);
    out
}

/// Perturbed images per forward pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchSize {
    /// The largest batch whose activations fit the backend's memory budget, capped where larger
    /// batches stop paying off (`Backend::batch_budget`).
    Auto,
    /// This many images.
    Fixed(usize),
}

impl FromStr for BatchSize {
    type Err = anyhow::Error;
    fn from_str(s: &str) -> Result<Self> {
        match s.trim() {
            "auto" => Ok(BatchSize::Auto),
            n => match n.parse::<usize>() {
                Ok(b) if b >= 1 => Ok(BatchSize::Fixed(b)),
                _ => fail!(InvalidInput, "--batch {s:?}: expected a positive number or auto"),
            },
        }
    }
}

impl BatchSize {
    /// The batch for `model` at `size` on `backend`. A fixed batch whose activations the device cannot
    /// hold is refused here, naming the option, rather than aborting in the middle of a run.
    pub fn resolve<B: Backend>(self, backend: &B, size: usize, model: &SegModel<B>) -> Result<usize> {
        let per_image = (4 * size * size * model.live_floats_per_pixel()).max(1);
        match self {
            BatchSize::Fixed(b) => {
                let available = backend.memory_available();
                if b.saturating_mul(per_image) > available / 10 * 8 {
                    fail!(
                        InvalidInput,
                        "--batch {b}: needs about {:.1} GiB of activations at {size}x{size}, but {:.1} GiB are available; use a smaller --batch or --batch auto",
                        (b as f64 * per_image as f64) / (1u64 << 30) as f64,
                        available as f64 / (1u64 << 30) as f64
                    );
                }
                Ok(b)
            }
            BatchSize::Auto => {
                let (bytes, cap) = backend.batch_budget();
                Ok((bytes / per_image).clamp(1, cap))
            }
        }
    }
}

/// The model grid side for `model`: the requested one, else the input size the model states. Refused
/// when neither is known: a model run at a size other than its training one segments badly, unseen.
pub fn model_size<B: Backend>(requested: Option<usize>, model: &SegModel<B>) -> anyhow::Result<usize> {
    match requested.or(model.input_size()) {
        Some(size) => Ok(size),
        None => crate::fail!(
            InvalidInput,
            "the model states no input size (config.json's \"input_size\", a bundle's Resized): pass --size N, the side of the slices it was trained on"
        ),
    }
}
