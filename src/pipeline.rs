//! One slice, one organ, one method: from a volume to a saliency map with its cost and quality. The
//! `explain`, `bench` and `demo` commands are loops over this.

use crate::backend::Backend;
use crate::explain::lime::{KernelShap, Lime};
use crate::explain::occlusion::Occlusion;
use crate::explain::rise::Rise;
use crate::explain::superpixels::{Segmenter, Segments};
use crate::explain::{baseline_image, BaselineKind, Problem, Runner, ScoreKind, UNetScorer};
use crate::io::Volume;
use crate::metrics::{agreement, faithfulness, Agreement, Faithfulness};
use crate::models::BasicUNet;
use crate::phantom::FLARE22_ORGANS;
use crate::preprocess::{normalise, resize_bilinear, resize_nearest, AxialLayout};
use crate::roi::{area_fraction, region, RoiMode};
use anyhow::{bail, Result};
use serde::Serialize;
use std::time::Instant;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    Occlusion,
    Rise,
    Lime,
    #[value(name = "kernelshap")]
    KernelShap,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::Occlusion, Method::Rise, Method::Lime, Method::KernelShap];

    pub fn name(&self) -> &'static str {
        match self {
            Method::Occlusion => "occlusion",
            Method::Rise => "rise",
            Method::Lime => "lime",
            Method::KernelShap => "kernelshap",
        }
    }
}

/// FLARE22 class id of an organ name ("liver", "right kidney", "left_kidney", "ivc", ...) or number.
pub fn organ_class(name: &str) -> Result<usize> {
    let key = name.trim().to_lowercase().replace(['_', '-'], " ");
    if let Ok(n) = key.parse::<usize>() {
        return Ok(n);
    }
    let aliases = [
        ("kidney right", 2),
        ("kidney left", 13),
        ("ivc", 6),
        ("right adrenal", 7),
        ("left adrenal", 8),
        ("gall bladder", 9),
    ];
    if let Some((_, id)) = aliases.iter().find(|(a, _)| *a == key) {
        return Ok(*id);
    }
    match FLARE22_ORGANS.iter().find(|(_, n)| *n == key) {
        Some((id, _)) => Ok(*id as usize),
        None => bail!(
            "unknown organ {name:?}; use one of: {}",
            FLARE22_ORGANS.iter().map(|(_, n)| n.replace(' ', "-")).collect::<Vec<_>>().join(", ")
        ),
    }
}

/// TotalSegmentator "total" id to FLARE22 id (0 for structures FLARE22 does not label).
pub fn totalseg_to_flare22(id: u8) -> u8 {
    match id {
        5 => 1,
        2 => 2,
        1 => 3,
        7 => 4,
        52 => 5,
        63 => 6,
        8 => 7,
        9 => 8,
        4 => 9,
        15 => 10,
        6 => 11,
        19 => 12,
        3 => 13,
        _ => 0,
    }
}

pub fn organ_name(class: usize) -> String {
    FLARE22_ORGANS.iter().find(|(id, _)| *id as usize == class).map_or(format!("class {class}"), |(_, n)| n.to_string())
}

/// Every knob of the explainers.
#[derive(Clone, Debug)]
pub struct Settings {
    pub score: ScoreKind,
    pub baseline: BaselineKind,
    pub occlusion: Occlusion,
    pub rise: Rise,
    pub lime: Lime,
    pub shap: KernelShap,
    pub segmenter: Segmenter,
    /// ROI mode for LIME/SHAP: None segments only the ROI; Some(f) segments the whole slice and keeps
    /// the superpixels with at least fraction f inside the ROI (the paper's protocol).
    pub superpixel_min_overlap: Option<f64>,
    pub margin_mm: f64,
    pub batch: usize,
    /// Deletion/insertion steps; 0 skips the faithfulness metrics.
    pub faithfulness_steps: usize,
    /// ROI mode keeps the samples per perturbed feature of the full-image run (fewer features, fewer
    /// samples) when true, or the full run's sample counts when false.
    pub scale_roi_budget: bool,
}

impl Settings {
    pub fn defaults(seed: u64) -> Self {
        Self {
            score: ScoreKind::MeanProb,
            baseline: BaselineKind::Zero,
            occlusion: Occlusion { window: 32, stride: 16 },
            rise: Rise { masks: 1000, grid: 8, p1: 0.5, seed, tol: None },
            lime: Lime { samples: 300, kernel_width: 0.25, alpha: 1.0, seed },
            shap: KernelShap { samples: 300, seed },
            segmenter: Segmenter::Slic { segments: 64, compactness: 0.1 },
            superpixel_min_overlap: None,
            // Chosen for recall: a missed organ part cannot be explained. 10 mm left 93% of the right
            // kidney inside the CLIP ROI on held-out CT, 15 mm 97% (weights/README.md).
            margin_mm: 15.0,
            batch: 16,
            faithfulness_steps: 32,
            scale_roi_budget: true,
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
            segmenter: Segmenter::Felzenszwalb { scale: 100.0, sigma: 0.5, min_size: 50 },
            superpixel_min_overlap: Some(0.1),
            ..Self::defaults(seed)
        }
    }
}

/// A slice prepared on the model grid.
pub struct SliceInput {
    pub size: usize,
    /// Windowed image in [0, 1].
    pub image: Vec<f32>,
    /// Ground-truth organ mask on the model grid, when labels were given.
    pub truth: Option<Vec<bool>>,
    /// Millimetres per model pixel (mean of both axes).
    pub mm_per_pixel: f64,
}

impl SliceInput {
    /// `labels`: a FLARE22 label volume on `volume`'s grid.
    pub fn new(
        volume: &Volume,
        k: usize,
        range: (f32, f32),
        size: usize,
        labels: Option<&[u8]>,
        class: usize,
    ) -> Result<Self> {
        let layout = AxialLayout::of(volume)?;
        let slice = normalise(&layout.extract(volume, k)?, range);
        let (h, w) = (slice.height, slice.width);
        let image = resize_bilinear(&slice.data, 1, (h, w), (size, size));
        let truth = labels.map(|l| {
            let plane = layout.plane(volume.dims, k, l);
            resize_nearest(&plane, (h, w), (size, size)).into_iter().map(|v| v as usize == class).collect()
        });
        let (sr, sc) = layout.pixel_spacing(volume);
        Ok(Self { size, image, truth, mm_per_pixel: (sr * h as f64 + sc * w as f64) / (2.0 * size as f64) })
    }
}

/// One method's result on one slice.
pub struct MethodRun {
    pub method: Method,
    pub roi_mode: RoiMode,
    /// Wall time of the explanation (ROI + perturbations), not of the metrics.
    pub seconds: f64,
    pub forward_passes: usize,
    /// Share of the explanation's own time (CLIP excluded) spent in U-Net forwards.
    pub forward_fraction: f64,
    pub samples: usize,
    pub roi: Vec<bool>,
    pub saliency: Vec<f32>,
    /// LIME/SHAP superpixel labels on the model grid (-1 where none is perturbed).
    pub segments: Option<Vec<i32>>,
    pub agreement: Option<Agreement>,
    pub faithfulness: Option<Faithfulness>,
}

impl MethodRun {
    pub fn roi_fraction(&self) -> f64 {
        area_fraction(&self.roi)
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

/// The CLIP ROI of a slice (thresholded, before the margin) and the seconds it took: computed once per
/// slice and charged to every method run that uses it.
#[derive(Clone, Debug, Default)]
pub struct ClipRoi {
    pub mask: Option<Vec<bool>>,
    pub probability: Option<Vec<f32>>,
    pub seconds: f64,
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
pub fn run_method<B: Backend>(
    backend: &B,
    model: &BasicUNet<B>,
    slice: &SliceInput,
    clip: &ClipRoi,
    class: usize,
    method: Method,
    roi_mode: RoiMode,
    settings: &Settings,
    mut progress: impl FnMut(usize, usize),
) -> Result<MethodRun> {
    let size = slice.size;
    let started = Instant::now();
    let scorer = UNetScorer::new(backend, model, &slice.image, size, class, settings.score)?;
    let roi = region(roi_mode, &scorer.m0, clip.mask.as_deref(), size, settings.margin_mm / slice.mm_per_pixel)?;
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
    // Planned forward passes, for progress reports (adaptive RISE may stop earlier).
    let total = match method {
        Method::Occlusion => settings.occlusion.windows(size, &roi).len(),
        Method::Rise => settings.rise.masks,
        Method::Lime => settings.lime.samples,
        Method::KernelShap => settings.shap.samples.max(3),
    };
    let problem = Problem { size, input: slice.image.clone(), baseline, roi, scorer: &scorer, batch: settings.batch };
    let mut runner = Runner::new(&problem, |done| progress(done, total));
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
    let seconds = own_seconds + if roi_mode.uses_clip() { clip.seconds } else { 0.0 };
    let agreement = slice.truth.as_ref().map(|t| agreement(&explanation.saliency, t));
    // Faithfulness is measured the same way for every mode: whole image, same baseline.
    let roi = problem.roi.clone();
    let faithfulness = if settings.faithfulness_steps > 0 {
        let whole = Problem { roi: vec![true; size * size], ..problem };
        let mut metric_runner = Runner::new(&whole, |_| {});
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
    })
}
