//! The embedding API: an [`Explainer`] is built once from model folders (the bundled ones by default),
//! a device and settings, then explains slices of volumes. Everything the `xaiclip` command does goes
//! through it, so a program that embeds the engine can do the same with the same defaults.
//!
//! Model grids are square (`model_size()` pixels per side); maps are row-major on that grid, and
//! `Explanation::slice_saliency` holds the same map resampled onto the slice's own pixels.

use crate::backend::{Backend, Compute, CpuBackend, CudaBackend, Device, Precision};
use crate::bench::{median, Runs};
use crate::dataset::{labels_of, load_labels, LabelIds};
use crate::error::Result;
use crate::explain::lime::{KernelShap, Lime};
use crate::explain::occlusion::Occlusion;
use crate::explain::rise::Rise;
use crate::explain::superpixels::{Segmenter, SegmenterKind};
use crate::explain::{BaselineKind, Cancel, ScoreKind};
use crate::fail;
use crate::io::Volume;
use crate::models::{bundled, SegModel};
use crate::pipeline::{
    model_size, run_method, saliency_on_slice, saliency_volume, BatchSize, Method, MethodRun, Settings, SliceInput,
    Slices,
};
use crate::preprocess::{Intensity, Modality, Orientation};
use crate::roi::clip::{ClipOptions, ClipRoi, ClipRoiFinder};
use crate::roi::RoiMode;
use crate::segment::{segment_slices, SegmentOptions};
use anyhow::Context;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The largest model grid: a 1024² U-Net batch already needs gigabytes per image.
const MAX_GRID: usize = 1024;

/// Reads an image: a NIfTI-1 file (.nii, .nii.gz) or a folder holding one DICOM series.
pub fn read_volume(path: impl AsRef<Path>) -> Result<Volume> {
    Ok(crate::io::read_image(path.as_ref())?)
}

/// Reads a label volume (any grid; matched to `image` through the affines) as FLARE22 ids.
pub fn read_labels(path: impl AsRef<Path>, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
    Ok(load_labels(path.as_ref(), ids, image)?)
}

/// A label volume in memory (any grid, matched to `image` through the affines) as FLARE22 ids, with
/// the checks of [`read_labels`] (integer values, ids of the scheme, a shared grid).
pub fn labels_from_volume(labels: &Volume, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
    Ok(labels_of(labels, ids, image).map_err(|e| crate::error::Error::input(&labels.source, e))?)
}

/// The base settings that [`Options`] refine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Preset {
    /// xaiclip's defaults (see each option).
    #[default]
    Default,
    /// The paper's likely settings: occlusion 64/32 on 512-pixel slices (scaled to the model grid), RISE
    /// 2000 masks 7x7 p1 0.5, LIME/SHAP 500 samples on Felzenszwalb superpixels (100, 0.5, 50) kept at
    /// >= 10% ROI overlap, score = Dice drop against the unperturbed mask.
    Paper,
}

/// The explainer options of the command line (`xaiclip explain --help`) and of the Python package's
/// keyword arguments, by the same names: a preset refined by the options given. Unset options take the
/// preset's value, so every default lives in [`Settings`].
#[derive(clap::Args, Clone, Debug, Default, PartialEq)]
pub struct Options {
    /// Base settings that the options below refine.
    #[arg(long, value_enum, default_value_t = Preset::Default, help_heading = "Method")]
    pub preset: Preset,
    /// Target score [default: mean-prob; paper: dice].
    #[arg(long, value_enum, help_heading = "Method")]
    pub score: Option<ScoreKind>,
    /// Fill of perturbed pixels, in model-input space [default: zero].
    #[arg(long, value_enum, help_heading = "Method")]
    pub baseline: Option<BaselineKind>,
    /// Occlusion window side in model pixels [default: 32; paper: 64 at 512 px].
    #[arg(long, help_heading = "Occlusion")]
    pub occlusion_window: Option<usize>,
    /// Occlusion stride in model pixels [default: 16; paper: 32 at 512 px].
    #[arg(long, help_heading = "Occlusion")]
    pub occlusion_stride: Option<usize>,
    /// RISE masks [default: 1000; paper: 2000].
    #[arg(long, help_heading = "RISE")]
    pub masks: Option<usize>,
    /// RISE grid side s (s x s cells) [default: 8; paper: 7].
    #[arg(long, help_heading = "RISE")]
    pub grid: Option<usize>,
    /// RISE probability that a cell is kept [default: 0.5].
    #[arg(long, help_heading = "RISE")]
    pub p1: Option<f32>,
    /// RISE adaptive mode: stop when the map changes by less than this (relative L2) over 250 masks, at
    /// most --masks; report.html plots the change per block; default: off (all --masks are scored).
    #[arg(long, help_heading = "RISE")]
    pub rise_tol: Option<f32>,
    /// LIME / Kernel SHAP samples [default: 300; paper: 500].
    #[arg(long, help_heading = "LIME and Kernel SHAP")]
    pub samples: Option<usize>,
    /// LIME kernel width on cosine distance [default: 0.25].
    #[arg(long, help_heading = "LIME and Kernel SHAP")]
    pub kernel_width: Option<f64>,
    /// Superpixel algorithm [default: slic; paper: felzenszwalb].
    #[arg(long, value_enum, help_heading = "LIME and Kernel SHAP")]
    pub segmenter: Option<SegmenterKind>,
    /// SLIC: number of superpixels wanted [default: 64].
    #[arg(long, help_heading = "LIME and Kernel SHAP")]
    pub segments: Option<usize>,
    /// ROI margin around the CLIP (or predicted) organ region, in millimetres [default: 15].
    #[arg(long, help_heading = "ROI")]
    pub margin_mm: Option<f64>,
    /// Deletion/insertion curve steps; 0 skips those metrics [default: 32] (whole volumes: 10, each step a
    /// pass over the volume's tiles).
    #[arg(long, help_heading = "Method")]
    pub faithfulness_steps: Option<usize>,
    /// In ROI mode, keep the full run's sample counts (RISE masks, LIME/SHAP samples) instead of scaling
    /// them to the ROI's share of the perturbed features.
    #[arg(long, help_heading = "ROI")]
    pub same_budget: bool,
    /// Least share of the U-Net's own prediction of the organ that an ROI must cover; below it the run
    /// stops (it would explain the wrong place) unless --roi-fallback is given [default: 0.9].
    #[arg(long, help_heading = "ROI")]
    pub roi_min_coverage: Option<f64>,
    /// ROI mode to use instead of one that covers too little of the prediction (seg, bbox, clip+seg, or
    /// none for the full image); reports record that it was used; default: none (the run stops).
    #[arg(long, value_enum, help_heading = "ROI")]
    pub roi_fallback: Option<RoiMode>,
    /// Seed of every random choice (RISE masks, LIME/SHAP coalitions): same seed, same map.
    #[arg(long, default_value_t = 0, help_heading = "Method")]
    pub seed: u64,
}

impl Options {
    /// Options from `(name, value)` pairs named as the command line's flags with `_` for `-`
    /// (`("occlusion_window", "16")`; a flag such as `same_budget` takes "true" or "false"), parsed by the
    /// same parser as the command line, so values and errors are the same.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, String)>) -> Result<Self> {
        use clap::{Args, FromArgMatches};
        let mut command =
            Options::augment_args(clap::Command::new("options").no_binary_name(true).disable_help_flag(true));
        command.build();
        let mut argv = Vec::new();
        for (name, value) in pairs {
            let Some(arg) = command.get_arguments().find(|a| a.get_id() == name) else {
                let known: Vec<_> = command.get_arguments().map(|a| a.get_id().to_string()).collect();
                fail!(InvalidInput, "unknown option {name:?}; the options are {}", known.join(", "));
            };
            let flag = format!("--{}", arg.get_long().unwrap_or(name));
            if arg.get_num_args().is_some_and(|n| n.takes_values()) {
                argv.push(format!("{flag}={value}"));
            } else {
                match value.as_str() {
                    "true" => argv.push(flag),
                    "false" => {}
                    _ => fail!(InvalidInput, "{name}: expected true or false, got {value:?}"),
                }
            }
        }
        let matches = command.try_get_matches_from(&argv).map_err(|e| {
            let text = e.to_string();
            let first = text.lines().next().unwrap_or_default().trim_start_matches("error: ").to_string();
            crate::error::Error::new(crate::error::ErrorKind::InvalidInput, first)
        })?;
        Ok(Options::from_arg_matches(&matches).map_err(|e| anyhow::anyhow!("{e}"))?)
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
}

/// How to build an [`Explainer`]; every field has the command line's default.
#[derive(Clone, Debug)]
pub struct ExplainerBuilder {
    unet: Option<PathBuf>,
    clip: ClipOptions,
    device: Device,
    precision: Precision,
    settings: Settings,
    batch: BatchSize,
    size: Option<usize>,
    intensity: Option<Intensity>,
    mirror: bool,
}

impl Default for ExplainerBuilder {
    fn default() -> Self {
        Self {
            unet: None,
            clip: ClipOptions::default(),
            device: Device::Auto,
            precision: Precision::F32,
            settings: Settings::defaults(0),
            batch: BatchSize::Auto,
            size: None,
            intensity: None,
            mirror: false,
        }
    }
}

impl ExplainerBuilder {
    /// Model folder: a MONAI BasicUNet (config.json + model.safetensors) or an nnU-Net v2 result folder
    /// (plans.json, dataset.json, fold_K/checkpoint_final.pth); default: the bundled weights/unet.
    pub fn unet(mut self, dir: impl Into<PathBuf>) -> Self {
        self.unet = Some(dir.into());
        self
    }

    /// CLIP and CoOp folders, prompts and ROI threshold; default: bundled models, CoOp, Otsu.
    pub fn clip(mut self, options: ClipOptions) -> Self {
        self.clip = options;
        self
    }

    /// The device this builder computes on (`Device::Auto` unless set).
    pub fn device_choice(&self) -> Device {
        self.device
    }

    /// The convolution precision asked for (`Precision::F32` unless set).
    pub fn precision_choice(&self) -> Precision {
        self.precision
    }

    /// Where to compute; default `Device::Auto` (a GPU when one is usable, else the CPU).
    pub fn device(mut self, device: Device) -> Self {
        self.device = device;
        self
    }

    /// Operand precision of GPU convolutions; default f32.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }

    /// Explainer settings; default `Settings::defaults(0)`. Their `batch` is replaced by [`Self::batch`].
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = settings;
        self
    }

    /// Perturbed images per forward pass; default `BatchSize::Auto`.
    pub fn batch(mut self, batch: BatchSize) -> Self {
        self.batch = batch;
        self
    }

    /// Side of the square model grid; default: the U-Net config's input_size (required when it has none).
    pub fn size(mut self, size: Option<usize>) -> Self {
        self.size = size;
        self
    }

    /// How slices are normalised to [0, 1]; default the model's own window where it fixes one (an
    /// nnU-Net CTNormalization), else the abdomen CT window [-160, 240] HU.
    pub fn intensity(mut self, intensity: Intensity) -> Self {
        self.intensity = Some(intensity);
        self
    }

    /// nnU-Net's test-time mirroring: every forward averages the flips along the axes the checkpoint
    /// allows, as `nnUNetPredictor` does by default (4x the work in 2-D, 8x in 3-D); off by default, and
    /// refused for models that state no mirroring axes.
    pub fn mirror(mut self, on: bool) -> Self {
        self.mirror = on;
        self
    }

    /// Opens the device and loads the U-Net (CLIP is loaded on first use).
    pub fn build(self) -> Result<Explainer> {
        let unet_dir = match &self.unet {
            Some(d) => d.clone(),
            None => bundled("unet")?,
        };
        let compute = self.device.select(self.precision)?;
        let precision = match &compute {
            Compute::Cpu(b) => b.precision(),
            Compute::Cuda(_) => self.precision,
        };
        let mut settings = self.settings;
        let (engine, size, intensity) = match compute {
            Compute::Cpu(b) => {
                let loaded = Loaded::new(b, &unet_dir, self.size, self.batch, self.mirror, &mut settings)?;
                let own = loaded.intensity(self.intensity, &unet_dir)?;
                let size = loaded.size;
                (Engine::Cpu(Box::new(loaded)), size, own)
            }
            Compute::Cuda(b) => {
                let loaded = Loaded::new(*b, &unet_dir, self.size, self.batch, self.mirror, &mut settings)?;
                let own = loaded.intensity(self.intensity, &unet_dir)?;
                let size = loaded.size;
                (Engine::Cuda(Box::new(loaded)), size, own)
            }
        };
        Ok(Explainer {
            engine,
            clip: self.clip,
            settings,
            size,
            intensity,
            cancel: Cancel::default(),
            unet_dir,
            precision,
        })
    }
}

/// The models on one backend.
struct Loaded<B: Backend> {
    backend: B,
    unet: SegModel<B>,
    size: usize,
    /// CLIP with the prompts of each modality (CT, MR), loaded when first needed.
    clip: [OnceLock<ClipRoiFinder<B>>; 2],
}

impl<B: Backend> Loaded<B> {
    /// The model's window for `asked` (its own where it fixes one).
    fn intensity(&self, asked: Option<Intensity>, dir: &Path) -> Result<Intensity> {
        Ok(self.unet.input_intensity(asked).with_context(|| dir.display().to_string())?)
    }

    fn new(
        backend: B,
        unet: &Path,
        size: Option<usize>,
        batch: BatchSize,
        mirror: bool,
        settings: &mut Settings,
    ) -> Result<Self> {
        let dir = unet;
        let mut unet = SegModel::load_dir(&backend, dir)?;
        if mirror {
            unet.enable_mirroring(&backend).with_context(|| dir.display().to_string())?;
        }
        if unet.spatial_dims() != 2 {
            fail!(
                InvalidInput,
                "{}: a 3-D U-Net (spatial_dims {}): this explainer and the segment and roi commands run 2-D U-Nets on axial slices; explain, bench and eval take a 3-D U-Net over the whole volume (in the library: xaiclip::volumes)",
                dir.display(),
                unet.spatial_dims()
            );
        }
        let size = model_size(size, &unet).with_context(|| dir.display().to_string())?;
        if !(16..=MAX_GRID).contains(&size) {
            fail!(InvalidInput, "--size {size}: the model grid must be 16 to {MAX_GRID} pixels");
        }
        let multiple = unet.size_multiple();
        if size % multiple != 0 {
            fail!(
                InvalidInput,
                "--size {size}: {} needs a model grid that is a multiple of {multiple} (its total stride)",
                unet.describe()
            );
        }
        settings.batch = batch.resolve(&backend, size, &unet)?;
        Ok(Self { backend, unet, size, clip: Default::default() })
    }

    fn clip(&self, options: &ClipOptions, modality: Modality) -> anyhow::Result<&ClipRoiFinder<B>> {
        let cell = &self.clip[modality as usize];
        if let Some(f) = cell.get() {
            return Ok(f);
        }
        let finder = ClipRoiFinder::load(&self.backend, options, modality)?;
        Ok(cell.get_or_init(|| finder))
    }
}

enum Engine {
    Cpu(Box<Loaded<CpuBackend>>),
    Cuda(Box<Loaded<CudaBackend>>),
}

/// Runs `$body` with `$e` bound to the engine's `Loaded<B>` (compiled once per backend type).
macro_rules! with_engine {
    ($self:expr, |$e:ident| $body:expr) => {
        match &$self.engine {
            Engine::Cpu(cpu) => {
                let $e: &Loaded<CpuBackend> = cpu;
                $body
            }
            Engine::Cuda(cuda) => {
                let $e: &Loaded<CudaBackend> = cuda;
                $body
            }
        }
    };
}

/// What to explain: an organ, a method, an ROI mode and a slice (the `xaiclip explain` options).
#[derive(Clone, Debug)]
pub struct Request {
    /// Organ name ("liver", "right-kidney", ...) or FLARE22 class id.
    pub organ: String,
    /// The perturbation method.
    pub method: Method,
    /// Default: the CLIP ROI.
    pub roi: RoiMode,
    /// Default: organ-center (needs labels).
    pub slices: Slices,
    /// Ground truth on the volume's grid (FLARE22 ids): enables the agreement metrics.
    pub labels: Option<Vec<u8>>,
    /// Settings for this request instead of the explainer's (the explainer's batch size is kept).
    pub settings: Option<Settings>,
}

impl Request {
    /// `method` on `organ`, CLIP ROI, organ-center slice.
    pub fn new(organ: &str, method: Method) -> Self {
        Self {
            organ: organ.to_string(),
            method,
            roi: RoiMode::default(),
            slices: Slices::OrganCenter,
            labels: None,
            settings: None,
        }
    }

    /// The ROI mode.
    pub fn roi(mut self, roi: RoiMode) -> Self {
        self.roi = roi;
        self
    }

    /// Slice `k` along the file's slice axis.
    pub fn slice(mut self, k: usize) -> Self {
        self.slices = Slices::List(vec![k]);
        self
    }

    /// Ground-truth labels on the volume's grid.
    pub fn labels(mut self, labels: Vec<u8>) -> Self {
        self.labels = Some(labels);
        self
    }

    /// Which slices (one of them is explained).
    pub fn slices(mut self, slices: Slices) -> Self {
        self.slices = slices;
        self
    }

    /// Settings for this request only.
    pub fn settings(mut self, settings: Settings) -> Self {
        self.settings = Some(settings);
        self
    }
}

/// One explanation: the map on the model grid and on the slice, the ROI, what it cost and how good it is.
pub struct Explanation {
    /// Organ name.
    pub organ: String,
    /// FLARE22 class id.
    pub class: usize,
    /// The slice explained (index along the file's slice axis).
    pub slice: usize,
    /// Saliency, ROI, M0, forward passes, seconds (per stage too) and metrics, on the model grid.
    pub run: MethodRun,
    /// The saliency resampled onto the slice's pixels, `slice_shape` = (rows, columns).
    pub slice_saliency: Vec<f32>,
    /// (rows, columns) of the slice.
    pub slice_shape: (usize, usize),
    /// CLIP's organ probability map on the model grid (CLIP modes only).
    pub clip_probability: Option<Vec<f32>>,
    /// The slice as explained: windowed and resampled to the model grid, with its ground truth.
    pub input: SliceInput,
    /// The settings it ran with.
    pub settings: Settings,
    /// What looked wrong about the image for this model ([`Explainer::check_image`]).
    pub warnings: Vec<String>,
}

impl Explanation {
    /// The saliency on `volume`'s grid (the volume it explains): the map on its slice, zero elsewhere.
    pub fn saliency_volume(&self, volume: &Volume) -> Result<Vec<f32>> {
        Ok(saliency_volume(&self.input, volume, self.slice, &self.run.saliency))
    }

    /// The overlay `xaiclip explain` writes: the labelled panel (heat map over the slice at its physical
    /// aspect, ROI outline in ROI modes, ground truth, colour bar with values), both signs shown.
    pub fn overlay(&self) -> Result<image::RgbImage> {
        self.overlay_with(crate::render::Sign::All)
    }

    /// The overlay with the part of a signed map to show.
    pub fn overlay_with(&self, sign: crate::render::Sign) -> Result<image::RgbImage> {
        Ok(self.run.overlay(&self.input, self.settings.score, sign)?)
    }

    /// The `result` block of `xaiclip explain`'s report.json: the run's summary, agreement with the
    /// labels and faithfulness curves, and with labels the U-Net's own Dice on the slice (M0 against the
    /// ground truth: how good the segmentation being explained is).
    pub fn result_json(&self) -> serde_json::Value {
        let mut result = self.run.result_json();
        if let Some(truth) = &self.input.truth {
            result["unet_dice"] = crate::metrics::overlap(&self.run.m0, truth).dice.into();
        }
        result
    }
}

/// The engine: a U-Net (and CLIP, loaded when first needed) on one device, with fixed settings.
pub struct Explainer {
    engine: Engine,
    clip: ClipOptions,
    settings: Settings,
    size: usize,
    intensity: Intensity,
    cancel: Cancel,
    unet_dir: PathBuf,
    precision: Precision,
}

/// SHA-256 of a file, as lowercase hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::Digest;
    let mut file = std::fs::File::open(path).map_err(|e| {
        crate::error::Error::new(crate::error::ErrorKind::InvalidInput, format!("{}: {e}", path.display()))
    })?;
    let mut hasher = sha2::Sha256::new();
    std::io::copy(&mut file, &mut hasher)
        .map_err(|e| crate::error::Error::new(crate::error::ErrorKind::Other, format!("{}: {e}", path.display())))?;
    Ok(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// A report's record of one model folder: its SHA-256 when one file defines it, else each file's.
pub fn weights_entry(folder: &Path, files: &[std::path::PathBuf]) -> Result<serde_json::Value> {
    Ok(match files {
        [one] => serde_json::json!({"folder": folder, "sha256": sha256_file(one)?}),
        many => {
            let hashes = many
                .iter()
                .map(|f| Ok(serde_json::json!({"file": f, "sha256": sha256_file(f)?})))
                .collect::<Result<Vec<_>>>()?;
            serde_json::json!({"folder": folder, "files": hashes})
        }
    })
}

impl Explainer {
    /// The model folders this explainer uses (U-Net, CLIP, and CoOp when its prompts are used) with the
    /// SHA-256 of each weights file, as reports record them: which weights made a result; for the U-Net
    /// also the network, how its slices are oriented and the intensity window.
    pub fn weights_json(&self) -> Result<serde_json::Value> {
        let mut folders = vec![("unet", self.unet_dir.clone())];
        folders.push(("clip", self.clip.clip.clone().map_or_else(|| bundled("clip"), Ok)?));
        if self.clip.prompts == crate::roi::clip::Prompts::Coop {
            folders.push(("coop", self.clip.coop.clone().map_or_else(|| bundled("coop"), Ok)?));
        }
        let mut out = serde_json::Map::new();
        let unet_files = with_engine!(self, |e| e.unet.files(&self.unet_dir));
        for (name, folder) in folders {
            let files = if name == "unet" { unet_files.clone() } else { vec![crate::weights::model_file(&folder)] };
            out.insert(name.into(), weights_entry(&folder, &files)?);
        }
        // What the U-Net is and how its inputs were made: the network, its slice orientation and window.
        let network = with_engine!(self, |e| e.unet.describe());
        if let Some(serde_json::Value::Object(unet)) = out.get_mut("unet") {
            unet.insert("network".into(), network.into());
            unet.insert("slices".into(), self.orientation().describe().into());
            unet.insert("intensity".into(), format!("{:?}", self.intensity).into());
        }
        // The CLIP side describes the organ with the prompts of the images' modality.
        let prompts = match &self.clip.prompts {
            crate::roi::clip::Prompts::Coop => format!("CoOp contexts ({})", self.intensity.modality().name()),
            crate::roi::clip::Prompts::Template => {
                format!("\"{}\"", crate::roi::clip::hand_template(self.intensity.modality()))
            }
            crate::roi::clip::Prompts::Custom(p) => format!("\"{p}\" for the organ"),
        };
        if let Some(serde_json::Value::Object(clip)) = out.get_mut("clip") {
            clip.insert("prompts".into(), prompts.into());
        }
        Ok(out.into())
    }

    /// A builder with the command line's defaults (bundled models, `--device auto`).
    pub fn builder() -> ExplainerBuilder {
        ExplainerBuilder::default()
    }

    /// The device in words ("cpu (2 threads)", a GPU's name).
    pub fn device_name(&self) -> String {
        with_engine!(self, |e| e.backend.name())
    }

    /// The settings every explanation uses unless given others.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Replaces the settings (e.g. a preset that depends on `model_size()`), keeping the batch size
    /// resolved for this device and model; refuses values that cannot run (see `Settings::validate`).
    pub fn set_settings(&mut self, settings: Settings) -> Result<()> {
        let settings = Settings { batch: self.settings.batch, ..settings };
        settings.validate(self.size)?;
        self.settings = settings;
        Ok(())
    }

    /// The precision convolutions run at: the one asked for on a GPU, f32 on the CPU. Unlike the batch
    /// size, it changes maps (tf32/bf16 by ~1e-3/1e-2).
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// Side of the square model grid.
    pub fn model_size(&self) -> usize {
        self.size
    }

    /// The normalisation of CT slices (MR cases use the percentile rule).
    pub fn intensity(&self) -> Intensity {
        self.intensity
    }

    /// The token that cancels this explainer's runs: `cancel()` stops the one in progress at its next
    /// batch (and every later one until `reset()`) with `ErrorKind::Cancelled`.
    pub fn cancel_token(&self) -> Cancel {
        self.cancel.clone()
    }

    /// Explains one slice of `volume` as `request` says (with the explainer's settings unless the request
    /// has its own).
    pub fn explain(&self, volume: &Volume, request: &Request) -> Result<Explanation> {
        self.explain_with(volume, request, |_, _| {})
    }

    /// [`Self::explain`], with `progress(done, planned)` counting forward passes.
    pub fn explain_with(
        &self,
        volume: &Volume,
        request: &Request,
        progress: impl FnMut(usize, usize),
    ) -> Result<Explanation> {
        let settings = match &request.settings {
            Some(s) => {
                let s = Settings { batch: self.settings.batch, ..s.clone() };
                s.validate(self.size)?;
                s
            }
            None => self.settings.clone(),
        };
        let class = self.class_of(&request.organ)?;
        let warnings = self.check_image(volume)?;
        let k = self.pick_slice(volume, request.labels.as_deref(), &request.slices, class)?;
        let input = self.prepare(volume, request.labels.as_deref(), k, class, self.intensity)?;
        let clip = if request.roi.uses_clip() {
            self.clip_roi(&input, class, self.intensity.modality())?
        } else {
            ClipRoi::default()
        };
        let run = self.run(&input, &clip, class, request.method, request.roi, &settings, progress)?;
        let (slice_saliency, slice_shape) = saliency_on_slice(&input, volume, &run.saliency);
        Ok(Explanation {
            organ: self.class_name(class),
            class,
            slice: k,
            run,
            slice_saliency,
            slice_shape,
            clip_probability: clip.probability,
            input,
            settings,
            warnings,
        })
    }

    /// Whether `volume` fits this explainer's model: an error where the file states another modality
    /// than the inputs are made for; warnings where its values cannot be that modality's
    /// ([`crate::preprocess::check_modality`]) and where the model's own framework would prepare its
    /// slices otherwise ([`crate::models::SegModel::slice_geometry_warning`]).
    pub fn check_image(&self, volume: &Volume) -> Result<Vec<String>> {
        let modality = crate::preprocess::check_modality(volume, self.intensity.modality())?;
        Ok(modality.into_iter().chain(self.geometry_warning(volume)).collect())
    }

    /// What the model's own framework would do to `volume`'s slices that resizing them to the model
    /// grid does not (an nnU-Net 2d configuration's crop, resampling and tiling; None where the slices
    /// are exactly what it predicts: [`crate::models::SegModel::slice_geometry_warning`]).
    pub fn geometry_warning(&self, volume: &Volume) -> Option<String> {
        with_engine!(self, |e| e.unet.slice_geometry_warning(volume, self.size))
    }

    /// How the model's slices lie on a volume (radiological for the bundled models, voxel order for
    /// nnU-Net).
    pub fn orientation(&self) -> Orientation {
        with_engine!(self, |e| e.unet.orientation())
    }

    /// Ground-truth labels at `path` (any grid, matched to `image`) as FLARE22 ids: [`read_labels`],
    /// and `LabelIds::Model` through this model's class names.
    pub fn read_labels(&self, path: impl AsRef<Path>, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
        match ids {
            LabelIds::Model => self.labels_from_volume(&crate::io::read_image(path.as_ref())?, ids, image),
            _ => read_labels(path, ids, image),
        }
    }

    /// A label volume in memory as FLARE22 ids: [`labels_from_volume`], and `LabelIds::Model` through
    /// this model's class names.
    pub fn labels_from_volume(&self, labels: &Volume, ids: LabelIds, image: &Volume) -> Result<Vec<u8>> {
        let classes = with_engine!(self, |e| e.unet.classes().map(<[_]>::to_vec));
        match (ids, &classes) {
            (LabelIds::Model, Some(classes)) => Ok(crate::dataset::model_labels_of(labels, classes, image)
                .map_err(|e| crate::error::Error::input(&labels.source, e))?),
            (LabelIds::Model, None) => fail!(
                InvalidInput,
                "{}: --label-ids model: this model does not list its classes (its ids are FLARE22's: --label-ids flare22)",
                labels.source.display()
            ),
            _ => labels_from_volume(labels, ids, image),
        }
    }

    /// The model's output channel of an organ name or number: from the model's own class list where
    /// its format has one (nnU-Net's dataset.json), else the FLARE22 ids of the bundled models.
    pub fn class_of(&self, organ: &str) -> Result<usize> {
        Ok(with_engine!(self, |e| e.unet.class_of(organ))?)
    }

    /// The name of output channel `class`.
    pub fn class_name(&self, class: usize) -> String {
        with_engine!(self, |e| e.unet.class_name(class))
    }

    /// The FLARE22 id of output channel `class`: what ground-truth labels (read as FLARE22) and the
    /// CLIP prompts name it by.
    pub fn label_id(&self, class: usize) -> Result<usize> {
        Ok(with_engine!(self, |e| e.unet.label_id(class))?)
    }

    /// The one slice `slices` names for `class` (organ-center needs `labels`).
    pub fn pick_slice(&self, volume: &Volume, labels: Option<&[u8]>, slices: &Slices, class: usize) -> Result<usize> {
        let label = if labels.is_some() { self.label_id(class)? } else { class };
        let picked = slices.resolve(volume, labels, label, self.orientation())?;
        match picked[..] {
            [k] => Ok(k),
            _ => Err(crate::error::Error::new(
                crate::error::ErrorKind::InvalidInput,
                format!("--slice: expected one slice, got {}", picked.len()),
            )),
        }
    }

    /// Slice `k` normalised by `intensity` and resampled to the model grid, with the organ's ground truth
    /// when `labels` are given. A labelled slice without the organ is refused (organ absent).
    pub fn prepare(
        &self,
        volume: &Volume,
        labels: Option<&[u8]>,
        k: usize,
        class: usize,
        intensity: Intensity,
    ) -> Result<SliceInput> {
        let label = if labels.is_some() { self.label_id(class)? } else { class };
        let mut input =
            SliceInput::new(volume, k, intensity.range(volume), self.size, labels, label, self.orientation())?;
        input.input_map = with_engine!(self, |e| e.unet.input_map_of(volume))?;
        if input.truth.as_ref().is_some_and(|t| !t.contains(&true)) {
            return Err(crate::error::Error::new(
                crate::error::ErrorKind::OrganAbsent,
                format!(
                    "{}: slice {k} has no {} in the labels; pick another slice (or --slice organ-center)",
                    volume.source.display(),
                    self.class_name(class)
                ),
            ));
        }
        Ok(input)
    }

    /// The CLIP ROI of a prepared slice (thresholded map, before the margin) and its seconds, with the
    /// prompts of `modality` (the slice's: `Intensity::modality` of how it was normalised).
    pub fn clip_roi(&self, input: &SliceInput, class: usize, modality: Modality) -> Result<ClipRoi> {
        let prompt = self.label_id(class)?;
        with_engine!(self, |e| Ok(e.clip(&self.clip, modality)?.roi(&e.backend, &input.image, input.size, prompt)?))
    }

    /// One method in one ROI mode on a prepared slice; `progress(done, total)` counts forward passes.
    /// The explainer's cancel token stops it.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        input: &SliceInput,
        clip: &ClipRoi,
        class: usize,
        method: Method,
        roi: RoiMode,
        settings: &Settings,
        progress: impl FnMut(usize, usize),
    ) -> Result<MethodRun> {
        with_engine!(self, |e| Ok(run_method(
            &e.backend,
            e.unet.with_input_map(&e.backend, input.input_map)?.as_ref().unwrap_or(&e.unet),
            input,
            clip,
            class,
            method,
            roi,
            settings,
            progress,
            &self.cancel
        )?))
    }

    /// Each method in full-image mode and in `roi` mode, run as `runs` says (median seconds of the timed
    /// runs; maps and metrics from the first run, the only one that computes the metrics).
    /// `progress(method, mode, done, total)` counts forward passes; `finished` sees each row.
    #[allow(clippy::too_many_arguments)]
    pub fn bench(
        &self,
        input: &SliceInput,
        clip: &ClipRoi,
        class: usize,
        methods: &[Method],
        roi: RoiMode,
        settings: &Settings,
        runs: Runs,
        mut progress: impl FnMut(Method, RoiMode, usize, usize),
        mut finished: impl FnMut(&MethodRun),
    ) -> Result<Vec<MethodRun>> {
        if runs.repeat == 0 {
            crate::fail!(InvalidInput, "repeat must be at least 1 (timed runs per row)");
        }
        let mut rows = Vec::new();
        for &method in methods {
            for mode in [RoiMode::Full, roi] {
                let mut first =
                    self.run(input, clip, class, method, mode, settings, |d, t| progress(method, mode, d, t))?;
                let quick = Settings { faithfulness_steps: 0, ..settings.clone() };
                // The first run is the first warm-up, or the first timed run.
                let mut times = if runs.warmup == 0 { vec![first.seconds] } else { Vec::new() };
                let untimed = runs.warmup.saturating_sub(1);
                for i in 0..untimed + runs.repeat - times.len() {
                    let again =
                        self.run(input, clip, class, method, mode, &quick, |d, t| progress(method, mode, d, t))?;
                    if i >= untimed {
                        times.push(again.seconds);
                    }
                }
                first.seconds = median(&mut times);
                finished(&first);
                rows.push(first);
            }
        }
        Ok(rows)
    }

    /// U-Net labels of `slices` on `volume`'s grid (0 elsewhere); `progress` counts finished slices.
    pub fn segment(
        &self,
        volume: &Volume,
        slices: &[usize],
        intensity: Intensity,
        batch: usize,
        progress: impl FnMut(usize),
    ) -> Result<Vec<u8>> {
        // A file that states another modality is refused here too (the warning is the caller's).
        crate::preprocess::check_modality(volume, intensity.modality())?;
        let options = SegmentOptions { intensity, input_size: self.size, batch };
        with_engine!(self, |e| Ok(segment_slices(&e.backend, &e.unet, volume, slices, &options, progress)?))
    }
}
