//! The explainer options shared by explain, bench, roi, demo and eval, and their one conversion into
//! library settings (`Settings`, `ClipOptions`, an `ExplainerBuilder`). Unset options take the
//! preset's value, so every default lives in the library.

use super::{DeviceArgs, IntensityArgs};
use anyhow::Result;
use clap::{Args, ValueEnum};
use std::path::PathBuf;
use xaiclip::explain::lime::{KernelShap, Lime};
use xaiclip::explain::occlusion::Occlusion;
use xaiclip::explain::rise::Rise;
use xaiclip::explain::superpixels::{Segmenter, SegmenterKind};
use xaiclip::explain::{BaselineKind, ScoreKind};
use xaiclip::pipeline::{BatchSize, ClipOptions, Prompts, Settings};
use xaiclip::{Explainer, ExplainerBuilder};

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
    /// Least share of the U-Net's own prediction of the organ that an ROI must cover; below it the run
    /// stops (it would explain the wrong place) unless --roi-fallback is given [default: 0.9].
    #[arg(long)]
    pub roi_min_coverage: Option<f64>,
    /// ROI mode to use instead of one that covers too little of the prediction (seg, bbox, clip+seg, or
    /// none for the full image); reports record that it was used.
    #[arg(long, value_enum)]
    pub roi_fallback: Option<xaiclip::RoiMode>,
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

    /// The explainer settings on a `size`-pixel model grid (the paper preset scales with it).
    pub fn settings(&self, size: usize) -> Settings {
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
                Segmenter::slic(self.segments.unwrap_or(Segmenter::SLIC_SEGMENTS))
            }
            (Some(SegmenterKind::Felzenszwalb), Segmenter::Slic { .. }) => Segmenter::FELZENSZWALB,
            (_, f) => f,
        };
        s.margin_mm = self.margin_mm.unwrap_or(s.margin_mm);
        s.faithfulness_steps = self.faithfulness_steps.unwrap_or(s.faithfulness_steps);
        s.scale_roi_budget = !self.same_budget;
        s.roi_min_coverage = self.roi_min_coverage.unwrap_or(s.roi_min_coverage);
        s.roi_fallback = self.roi_fallback.or(s.roi_fallback);
        s
    }

    /// The CLIP ROI's models, prompts and threshold.
    pub fn clip_options(&self) -> Result<ClipOptions> {
        let prompts = match (&self.prompt, self.no_coop) {
            (Some(p), _) => Prompts::Custom(p.clone()),
            (None, true) => Prompts::Template,
            (None, false) => Prompts::Coop,
        };
        Ok(ClipOptions {
            clip: self.clip.clone(),
            coop: self.coop.clone(),
            prompts,
            threshold: self.roi_threshold.parse()?,
        })
    }

    /// The builder these options and `device` describe, with a `size`-pixel grid when given.
    pub fn builder(&self, device: &DeviceArgs, size: Option<usize>) -> Result<ExplainerBuilder> {
        let mut b = Explainer::builder()
            .device(device.device)
            .precision(device.precision)
            .clip(self.clip_options()?)
            .batch(self.batch.parse::<BatchSize>()?)
            .size(size)
            .intensity(self.intensity.intensity()?);
        if let Some(unet) = &self.unet {
            b = b.unet(unet);
        }
        Ok(b)
    }

    /// The explainer for these options, with its settings on the model's grid.
    pub fn explainer(&self, device: &DeviceArgs, size: Option<usize>) -> Result<Explainer> {
        let mut explainer = self.builder(device, size)?.build()?;
        explainer.set_settings(self.settings(explainer.model_size()))?;
        Ok(explainer)
    }
}
