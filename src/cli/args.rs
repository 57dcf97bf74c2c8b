//! The explainer options shared by explain, bench, roi, demo and eval, and their one conversion into
//! library settings (`Settings`, `ClipOptions`, an `ExplainerBuilder`). Unset options take the
//! preset's value, so every default lives in the library.

use super::{DeviceArgs, IntensityArgs};
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use xaiclip::explainer::Options;
use xaiclip::pipeline::{BatchSize, Settings};
use xaiclip::roi::clip::{ClipOptions, Prompts};
use xaiclip::{Explainer, ExplainerBuilder};

/// The CLIP ROI's models, prompts and threshold (explain, bench, demo, eval, roi).
#[derive(Args, Debug, Clone)]
pub struct ClipArgs {
    /// CLIP folder (transformers CLIPModel: model.safetensors + config.json); default: weights/clip.
    #[arg(long, help_heading = "ROI")]
    pub clip: Option<PathBuf>,
    /// CoOp context vectors folder; default: weights/coop (ignored with --prompt or --no-coop).
    #[arg(long, help_heading = "ROI")]
    pub coop: Option<PathBuf>,
    /// Use hand-written prompts ("a CT image of the {organ}") instead of CoOp's learned contexts.
    #[arg(long, help_heading = "ROI")]
    pub no_coop: bool,
    /// Hand-written prompt for the organ, e.g. "a CT image of the liver" (implies --no-coop); default:
    /// CoOp's learned contexts.
    #[arg(long, help_heading = "ROI")]
    pub prompt: Option<String>,
    /// CLIP ROI threshold on the organ probability map: otsu, fixed:VALUE, or top:FRACTION.
    #[arg(long, default_value = "otsu", help_heading = "ROI")]
    pub roi_threshold: String,
}

impl ClipArgs {
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
}

/// Options shared by explain, bench and demo. Unset method options take the preset's value.
#[derive(Args, Debug, Clone)]
pub struct MethodArgs {
    /// Organ to explain (liver, spleen, right-kidney, left-kidney, pancreas, aorta, ...) or class id;
    /// eval takes a comma list (--organs liver,spleen).
    #[arg(long, visible_alias = "organs", default_value = "liver", help_heading = "Input")]
    pub organ: String,
    /// Model folder: a MONAI BasicUNet (config.json + model.safetensors or model.pt), a MONAI bundle
    /// (configs/inference.json with a BasicUNet, UNet, SegResNet or DynUNet network_def,
    /// models/model.pt) or an nnU-Net v2 result folder (<trainer>__<plans>__<configuration> with
    /// plans.json, dataset.json and fold_K; all folds found are ensembled, or give one fold_K);
    /// default: the bundled weights/unet.
    #[arg(long, visible_alias = "model", help_heading = "Model")]
    pub unet: Option<PathBuf>,
    /// Perturbed images per forward pass: a number, or "auto" (activations within 2 GiB and at most 64
    /// images on the CPU; a quarter of the free memory and at most 512 images on a GPU).
    #[arg(long, default_value = "auto", help_heading = "Device")]
    pub batch: String,
    #[command(flatten)]
    pub clip: ClipArgs,
    #[command(flatten)]
    pub intensity: IntensityArgs,
    #[command(flatten)]
    pub options: Options,
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
        w.args.options.seed = seed;
        w.args
    }

    /// The explainer settings on a `size`-pixel model grid (the paper preset scales with it).
    pub fn settings(&self, size: usize) -> Settings {
        self.options.settings(size)
    }

    /// The builder these options and `device` describe, with a `size`-pixel grid when given.
    pub fn builder(&self, device: &DeviceArgs, size: Option<usize>) -> Result<ExplainerBuilder> {
        let mut b = Explainer::builder()
            .device(device.device)
            .precision(device.precision)
            .clip(self.clip.clip_options()?)
            .batch(self.batch.parse::<BatchSize>()?)
            .mirror(self.intensity.mirror)
            .size(size);
        if let Some(intensity) = self.intensity.intensity()? {
            b = b.intensity(intensity);
        }
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
