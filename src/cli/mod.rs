//! The `xaiclip` command line.

pub mod device;
pub mod eval;
pub mod explain;

use crate::backend::Backend;
use crate::backend::CpuBackend;
use crate::io::{self, Volume};
use crate::models::{BasicUNet, UNetConfig};
use crate::phantom;
use crate::pipeline::{organ_name, Method};
use crate::preprocess::{AxialLayout, Intensity};
use crate::roi::RoiMode;
use crate::segment::{segment_slices, SegmentOptions};
use crate::weights::WeightsFile;
use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand, ValueEnum};
use explain::{
    bench_runs, bench_tables, overlay_image, run_json, run_with_progress, saliency_volume, write_text, Case, LabelIds,
    MethodArgs,
};
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(
    name = "xaiclip",
    version,
    about = "Explain medical image segmentation models by ROI-guided perturbation (XAI-CLIP)",
    long_about = "Explain medical image segmentation models by ROI-guided perturbation (XAI-CLIP).\n\n\
        Images are NIfTI-1 volumes (.nii, .nii.gz) or folders holding one DICOM series. Models are MONAI \
        BasicUNet (2-D) weights: a folder with model.safetensors (the PyTorch state_dict, names unchanged) \
        and config.json (the BasicUNet keyword arguments).\n\n\
        Errors name the file and the problem and exit with status 2; outputs are written atomically, so a \
        failed run leaves no partial file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub device: device::DeviceArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe an image (NIfTI file or DICOM folder) or a weights file/folder.
    ///
    /// Images: grid, spacing, orientation, affine, intensity range and, for label maps, the labels
    /// present. Weights: every tensor's name, dtype and shape; with a config.json beside it, also whether
    /// the two match.
    Info {
        /// A .nii/.nii.gz file, a DICOM series folder, a .safetensors file, or a model folder.
        path: PathBuf,
    },
    /// Segment axial slices with a U-Net and write the label volume on the input's grid.
    ///
    /// Each slice is windowed to [0, 1], resampled to the model's square input, segmented, and the class
    /// probabilities are resampled back (bilinear) before the per-voxel argmax. Slices not asked for are
    /// 0 (background) in the output. The output keeps the input's affine, so it overlays the image in
    /// ITK-SNAP or 3D Slicer.
    Segment {
        /// Input image: NIfTI file or DICOM series folder.
        #[arg(long)]
        image: PathBuf,
        /// Axial slice(s) to segment: an index along the file's slice axis (0-based), a comma list
        /// (3,7,9), or "all".
        #[arg(long, default_value = "all")]
        slice: String,
        /// U-Net folder holding model.safetensors and config.json.
        #[arg(long)]
        unet: PathBuf,
        /// Output label volume (.nii or .nii.gz), uint8 class ids.
        #[arg(long)]
        out: PathBuf,
        #[command(flatten)]
        intensity: IntensityArgs,
        /// Model input size (square); default: config.json's input_size, else 256.
        #[arg(long)]
        size: Option<usize>,
        /// Slices per forward pass.
        #[arg(long, default_value_t = 16)]
        batch: usize,
    },
    /// Explain the U-Net's segmentation of one organ on one slice by perturbation.
    ///
    /// Writes DIR/saliency.nii.gz (float32, on the input's grid and affine, zero outside the slice),
    /// DIR/overlay.png (heat map over the windowed slice, ROI outline cyan, ground truth green, colour
    /// bar from minimum to maximum) and DIR/report.json (settings, seconds, forward passes and, with
    /// --label, Dice/IoU/AUROC/pointing game, plus deletion/insertion AUC).
    Explain(ExplainCmd),
    /// Compare each method in full-image and ROI mode: seconds, forward passes, agreement, faithfulness.
    ///
    /// Prints a Markdown table (and writes --md/--json) with one row per method and mode, then the
    /// paper's comparison rows: runtime reduction, Dice change and IoU change of ROI mode.
    Bench(BenchCmd),
    /// The whole job on the bundled phantom: segment, explain the liver with every method in both
    /// modes, write overlays and the bench table, and print where they are.
    Demo(DemoCmd),
    /// Localise an organ with CLIP: the organ probability map of one slice and its ROI mask.
    ///
    /// The map is the softmax over organs of CLIP patch-text similarities (CoOp prompts unless --prompt
    /// or --no-coop), upsampled to the slice; the ROI keeps the pixels above the threshold, drops
    /// components under 20% of the largest, and grows by --margin-mm. Writes a PNG overlay (map as heat,
    /// ROI outline cyan, ground truth green) or, for .nii/.nii.gz, the ROI mask on the input's grid.
    Roi(RoiCmd),
    /// Explain and score every case of a data set: FLARE22, CHAOS CT/MR, or image/label pairs.
    ///
    /// For each case, organ (--organs liver,spleen), slice (--slices organ-center | every-K), method and
    /// ROI mode, one JSON line is appended to DIR/results.jsonl (Dice/IoU/AUROC against the labels,
    /// deletion/insertion AUC, seconds, forward passes); DIR/summary.csv and summary.md hold mean ± std
    /// per organ, method and ROI mode. A killed run continues with --resume and loses at most the item
    /// in flight. --shard i/n runs every n-th case (one job of a Slurm array); --merge DIR... joins the
    /// shard folders into --out. Cases that fail to load are listed in DIR/errors.jsonl and the run
    /// exits non-zero after finishing the others.
    Eval(eval::EvalCmd),
    /// Check every compute kernel against its reference on fresh random inputs, then time kernels and
    /// whole explanations: how to check a GPU, and how this project verifies its kernels.
    ///
    /// --device cuda: each CUDA kernel against its CPU twin (the CPU backend's call of the same name).
    /// Device outputs start as NaN, so an element a kernel never writes fails, and NaN never passes. The
    /// error is max |gpu - cpu| / max |cpu|, bounded by 1e-5 for f32, 5e-3 for tf32, 2e-2 for bf16
    /// convolutions (--precision). Then each method runs on the bundled phantom: saliency against the
    /// CPU's at 64 samples, then timed at --samples. --device cpu: the CPU backend's GEMM and
    /// reduction calls against plain f64 loops (the other calls are their own reference and are only
    /// timed), then each method timed. Rates are compared with the device's ceilings: measured copy
    /// bandwidth and SGEMM on the CPU; measured copy bandwidth and the H200's matrix rates on a GPU
    /// (f32 67 TFLOP/s and tf32 495 TFLOP/s as NVIDIA states them, bf16 788 TFLOP/s as measured on a
    /// random 8192³ product). Exits with status 2 when any check fails.
    Selftest(SelftestCmd),
    /// Convert an image (NIfTI or DICOM series folder) to NIfTI, keeping its geometry.
    ///
    /// Integer-valued volumes within the int16 range are written as int16, others as float32. Useful to
    /// hand DICOM series to tools that read NIfTI only (the training scripts do).
    Convert {
        /// Input image: NIfTI file or DICOM series folder.
        #[arg(long)]
        image: PathBuf,
        /// Output .nii or .nii.gz.
        #[arg(long)]
        out: PathBuf,
    },
    /// Write a synthetic abdominal CT phantom and its FLARE22 label map.
    ///
    /// Writes DIR/ct.nii.gz (int16 HU) and DIR/labels.nii.gz (uint8: 1 liver, 2 right kidney, 3 spleen,
    /// 4 pancreas, 5 aorta, 6 IVC, 7/8 right/left adrenal, 9 gallbladder, 10 esophagus, 11 stomach,
    /// 12 duodenum, 13 left kidney). Field of view 384 mm, 160 mm from inferior to superior. The same seed
    /// gives the same bytes. With --layout, writes a whole synthetic data set of --cases phantoms in that
    /// layout instead (FLARE22 NIfTI, CHAOS CT/MR DICOM + PNG masks, or images/ + labels/ pairs), ready
    /// for `xaiclip eval`.
    Phantom {
        /// Random seed: anatomy variation, blur and noise all follow from it.
        #[arg(long, default_value_t = 7)]
        seed: u64,
        /// Output folder (created if missing).
        #[arg(long)]
        out: PathBuf,
        /// Pixels per side of each axial slice.
        #[arg(long, default_value_t = 256)]
        size: usize,
        /// Number of axial slices.
        #[arg(long, default_value_t = 32)]
        slices: usize,
        /// Write a data set tree in this layout instead of one volume.
        #[arg(long, value_enum)]
        layout: Option<crate::dataset::DatasetKind>,
        /// Cases in the data set tree (seeds seed, seed+1, ...).
        #[arg(long, default_value_t = 3, requires = "layout")]
        cases: usize,
    },
}

/// The slice to work on (explain, roi).
#[derive(clap::Args, Debug)]
pub struct CaseArgs {
    /// Input image: NIfTI file or DICOM series folder.
    #[arg(long)]
    pub image: PathBuf,
    /// Ground-truth label volume (NIfTI; any grid, matched through the affines): enables the agreement
    /// metrics, ROI coverage and --slice organ-center.
    #[arg(long)]
    pub label: Option<PathBuf>,
    /// Id scheme of --label.
    #[arg(long, value_enum, default_value_t = LabelIds::Flare22)]
    pub label_ids: LabelIds,
    /// Axial slice index, or organ-center (the slice with the largest ground-truth area; needs --label).
    #[arg(long)]
    pub slice: String,
}

#[derive(clap::Args, Debug)]
pub struct ExplainCmd {
    #[command(flatten)]
    pub case: CaseArgs,
    /// Perturbation method.
    #[arg(long, value_enum)]
    pub method: Method,
    /// Region of interest: none (full image), clip (CLIP organ map + margin), seg (predicted organ +
    /// margin), bbox, clip+seg.
    #[arg(long, value_enum, default_value_t = RoiMode::Clip)]
    pub roi: RoiMode,
    /// Model input size (square); default: the U-Net config's input_size, else 256.
    #[arg(long)]
    pub size: Option<usize>,
    /// Output folder (created if missing).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub method_args: MethodArgs,
}

#[derive(clap::Args, Debug)]
pub struct RoiCmd {
    #[command(flatten)]
    pub case: CaseArgs,
    /// Model grid size (square) the map is computed on.
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Output: .png (overlay) or .nii/.nii.gz (ROI mask on the input's grid).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub method_args: MethodArgs,
}

#[derive(clap::Args, Debug)]
pub struct BenchCmd {
    /// Input image (NIfTI or DICOM folder); or --demo.
    #[arg(long, required_unless_present = "demo")]
    pub image: Option<PathBuf>,
    /// Ground-truth labels (needed for Dice/IoU and for --slice organ-center).
    #[arg(long)]
    pub label: Option<PathBuf>,
    #[arg(long, value_enum, default_value_t = LabelIds::Flare22)]
    pub label_ids: LabelIds,
    /// Use the bundled phantom (seed 7) and its labels.
    #[arg(long, conflicts_with_all = ["image", "label"])]
    pub demo: bool,
    /// Axial slice index, or organ-center.
    #[arg(long, default_value = "organ-center")]
    pub slice: String,
    /// Methods, comma separated.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "occlusion,rise,lime,kernelshap")]
    pub methods: Vec<Method>,
    /// The ROI mode compared against the full image.
    #[arg(long, value_enum, default_value_t = RoiMode::Clip)]
    pub roi: RoiMode,
    /// Runs per row; seconds are the median.
    #[arg(long, default_value_t = 1)]
    pub repeat: usize,
    #[arg(long)]
    pub size: Option<usize>,
    /// Write the table as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the table as Markdown here.
    #[arg(long)]
    pub md: Option<PathBuf>,
    /// Write each run's arrays on the model grid to DIR/<method>-<roi>.safetensors (input, baseline,
    /// roi, saliency, and LIME/SHAP segments): what benches/peers compares other libraries against.
    #[arg(long)]
    pub export: Option<PathBuf>,
    #[command(flatten)]
    pub method_args: MethodArgs,
}

#[derive(clap::Args, Debug)]
pub struct SelftestCmd {
    /// Also write every row (and ptxas's register/spill report on a GPU) as JSON here.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Seed of the random inputs (default: from the clock, so each run draws fresh inputs; printed).
    #[arg(long)]
    pub seed: Option<u64>,
    /// RISE masks of the timed explanations (LIME/SHAP use a quarter); default 4000 on a GPU, 200 on
    /// the CPU.
    #[arg(long)]
    pub samples: Option<usize>,
    /// Images per forward batch in the timed explanations; default 256 on a GPU, 16 on the CPU.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Kernels only: skip the end-to-end explanations.
    #[arg(long)]
    pub kernels_only: bool,
    /// Small shapes and one timed run per kernel; explanations by a small random U-Net on a 32x32 grid
    /// with 16 samples, compared with the CPU (for slow devices, such as the tests' kernel emulator).
    #[arg(long)]
    pub quick: bool,
}

#[derive(clap::Args, Debug)]
pub struct DemoCmd {
    /// Output folder (created if missing).
    #[arg(long, default_value = "xaiclip-demo")]
    pub out: PathBuf,
    /// RISE masks in the demo (kept small so the demo runs in about two minutes on 2 cores).
    #[arg(long, default_value_t = 500)]
    pub masks: usize,
    /// LIME / Kernel SHAP samples in the demo.
    #[arg(long, default_value_t = 200)]
    pub samples: usize,
    /// Seed of the explainers' random choices.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Modality {
    /// CT: fixed HU window (--window).
    Ct,
    /// MR: the volume's 0.5th-99.5th percentiles map to [0, 1].
    Mr,
}

#[derive(clap::Args, Debug, Clone)]
pub struct IntensityArgs {
    /// Image modality; decides how intensities are normalised.
    #[arg(long, value_enum, default_value_t = Modality::Ct)]
    pub modality: Modality,
    /// CT window LOW,HIGH in HU mapped to [0, 1] (default: abdomen, level 40 width 400).
    #[arg(long, default_value = "-160,240", allow_hyphen_values = true)]
    pub window: String,
}

impl IntensityArgs {
    pub fn intensity(&self) -> Result<Intensity> {
        if self.modality == Modality::Mr {
            return Ok(Intensity::MrPercentile);
        }
        let parts: Vec<f32> = self
            .window
            .split(',')
            .map(|s| s.trim().parse::<f32>())
            .collect::<std::result::Result<_, _>>()
            .map_err(|_| anyhow::anyhow!("--window {:?}: expected LOW,HIGH in HU, e.g. -160,240", self.window))?;
        match parts[..] {
            [low, high] if low < high && low.is_finite() && high.is_finite() => Ok(Intensity::CtWindow { low, high }),
            _ => bail!("--window {:?}: expected LOW,HIGH with LOW < HIGH", self.window),
        }
    }
}

/// Parses "all", "K" or "K1,K2,..." against the number of slices.
pub fn parse_slices(spec: &str, volume: &Volume, layout: &AxialLayout) -> Result<Vec<usize>> {
    let n = layout.slices(volume);
    if spec.trim() == "all" {
        return Ok((0..n).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        let k: usize = part
            .trim()
            .parse()
            .map_err(|_| anyhow::anyhow!("--slice {spec:?}: expected \"all\", an index, or a comma list of indices"))?;
        layout.check_slice(volume, k)?;
        out.push(k);
    }
    Ok(out)
}

pub fn progress_bar(len: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

pub fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Info { path } => info(&path),
        Command::Explain(cmd) => crate::on_backend!(cli.device.select()?, |b| explain_command(b, cmd)),
        Command::Roi(cmd) => crate::on_backend!(cli.device.select()?, |b| roi_command(b, cmd)),
        Command::Bench(cmd) => crate::on_backend!(cli.device.select()?, |b| bench_command(b, cmd)),
        Command::Demo(cmd) => crate::on_backend!(cli.device.select()?, |b| demo_command(b, cmd)),
        Command::Eval(cmd) => eval::eval_command(cmd, &cli.device),
        Command::Selftest(cmd) => selftest_command(cmd, &cli.device),
        Command::Convert { image, out } => {
            let v = io::read_image(&image)?;
            if v.data.iter().all(|x| x.fract() == 0.0 && (i16::MIN as f32..=i16::MAX as f32).contains(x)) {
                io::nifti::write_like(&out, &v, &v.data.iter().map(|&x| x as i16).collect::<Vec<_>>())?;
            } else {
                io::nifti::write_like(&out, &v, &v.data)?;
            }
            eprintln!(
                "wrote {} ({} x {} x {}, orientation {})",
                out.display(),
                v.dims[0],
                v.dims[1],
                v.dims[2],
                v.orientation()
            );
            Ok(())
        }
        Command::Phantom { seed, out, size, slices, layout, cases } => {
            if !(32..=1024).contains(&size) || !(1..=512).contains(&slices) {
                bail!("phantom size must be 32 to 1024 pixels and slices 1 to 512 (got {size} and {slices})");
            }
            if let Some(kind) = layout {
                crate::dataset::write_synthetic(kind, &out, seed, cases, size, slices)?;
                eprintln!("wrote a {kind:?} data set of {cases} cases in {}", out.display());
                return Ok(());
            }
            std::fs::create_dir_all(&out).with_context(|| format!("{}: cannot create folder", out.display()))?;
            let p = phantom::generate(seed, size, slices);
            let hu: Vec<i16> = p.ct.data.iter().map(|&v| v as i16).collect();
            io::nifti::write_like(&out.join("ct.nii.gz"), &p.ct, &hu)?;
            io::nifti::write_like(&out.join("labels.nii.gz"), &p.ct, &p.labels)?;
            eprintln!("wrote {} and {}", out.join("ct.nii.gz").display(), out.join("labels.nii.gz").display());
            Ok(())
        }
        Command::Segment { image, slice, unet, out, intensity, size, batch } => {
            let volume = io::read_image(&image)?;
            let layout = AxialLayout::of(&volume)?;
            let slices = parse_slices(&slice, &volume, &layout)?;
            crate::on_backend!(cli.device.select()?, |b| segment_command(
                b, &volume, &slices, &unet, &out, &intensity, size, batch
            ))
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn segment_command<B: Backend>(
    backend: &B,
    volume: &Volume,
    slices: &[usize],
    unet: &Path,
    out: &Path,
    intensity: &IntensityArgs,
    size: Option<usize>,
    batch: usize,
) -> Result<()> {
    let model = BasicUNet::load_dir(backend, unet)?;
    let options = SegmentOptions {
        intensity: intensity.intensity()?,
        input_size: size.or(model.config().input_size).unwrap_or(256),
        batch,
    };
    let started = Instant::now();
    let bar = progress_bar(slices.len() as u64, "segment slices");
    let labels = segment_slices(backend, &model, volume, slices, &options, |done| bar.set_position(done as u64))?;
    bar.finish_and_clear();
    io::nifti::write_like(out, volume, &labels)?;
    let counts = label_counts(&labels);
    eprintln!(
        "segmented {} slices in {:.2}s; wrote {} (labels present: {:?})",
        slices.len(),
        started.elapsed().as_secs_f64(),
        out.display(),
        counts.iter().map(|(l, _)| *l).collect::<Vec<_>>()
    );
    Ok(())
}

fn label_counts(labels: &[u8]) -> Vec<(u8, usize)> {
    let mut counts = [0usize; 256];
    labels.iter().for_each(|&l| counts[l as usize] += 1);
    (0..=255u8).zip(counts).filter(|(_, c)| *c > 0).collect()
}

fn is_weights_path(path: &Path) -> bool {
    path.extension().is_some_and(|e| e == "safetensors") || (path.is_dir() && path.join("model.safetensors").is_file())
}

fn info(path: &Path) -> Result<()> {
    if !path.exists() {
        bail!("{}: no such file or folder", path.display());
    }
    if is_weights_path(path) {
        return weights_info(path);
    }
    let v = io::read_image(path)?;
    let layout = AxialLayout::of(&v)?;
    let s = v.spacing();
    let (min, max) = v.data.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &x| (a.min(x), b.max(x)));
    let kind = if v.nifti_header.is_some() { "NIfTI-1" } else { "DICOM series" };
    println!("file:        {}", path.display());
    println!("format:      {kind}");
    println!("grid:        {} x {} x {} voxels", v.dims[0], v.dims[1], v.dims[2]);
    println!("spacing:     {:.4} x {:.4} x {:.4} mm", s[0], s[1], s[2]);
    println!(
        "orientation: {} (axial slices along voxel axis {}: {} slices of {} x {} pixels)",
        v.orientation(),
        layout.slice_axis,
        layout.slices(&v),
        layout.slice_shape(&v).0,
        layout.slice_shape(&v).1
    );
    for row in &v.affine[..3] {
        println!("affine:      [{:>10.4} {:>10.4} {:>10.4} {:>10.4}]", row[0], row[1], row[2], row[3]);
    }
    println!("values:      {min} to {max}");
    if v.check_labels().is_ok() && max <= 255.0 {
        println!("labels:      {:?}", v.labels_present());
    }
    Ok(())
}

fn weights_info(path: &Path) -> Result<()> {
    let (file, config) = if path.is_dir() {
        (path.join("model.safetensors"), Some(path.join("config.json")))
    } else {
        (path.to_path_buf(), path.parent().map(|p| p.join("config.json")))
    };
    let weights = WeightsFile::open(&file)?;
    let tensors = weights.tensors();
    let params: usize = tensors.iter().map(|t| t.shape.iter().product::<usize>()).sum();
    println!("file:       {}", file.display());
    println!("tensors:    {} ({} values)", tensors.len(), params);
    for t in &tensors {
        println!("  {:<50} {:<5} {:?}", t.name, t.dtype, t.shape);
    }
    if let Some(config_path) = config.filter(|c| c.is_file()) {
        let text =
            std::fs::read_to_string(&config_path).with_context(|| format!("{}: cannot read", config_path.display()))?;
        let config =
            UNetConfig::from_json(&text).with_context(|| format!("{}: bad U-Net config", config_path.display()))?;
        println!("config:     {} -> {config:?}", config_path.display());
        BasicUNet::load(&CpuBackend, config, &weights)?;
        println!("check:      weights match the config (MONAI BasicUNet, 2-D)");
    }
    Ok(())
}

pub(crate) fn model_size<B: Backend>(size: Option<usize>, model: &BasicUNet<B>) -> usize {
    size.or(model.config().input_size).unwrap_or(256)
}

fn explain_command<B: Backend>(backend: &B, cmd: ExplainCmd) -> Result<()> {
    let model = cmd.method_args.load_unet(backend)?;
    let size = model_size(cmd.size, &model);
    let case = Case::load(backend, &cmd.case, &cmd.method_args, size, cmd.roi.uses_clip())?;
    let settings = cmd.method_args.settings(backend, size, &model)?;
    let run = run_with_progress(backend, &model, &case, cmd.method, cmd.roi, &settings)?;
    std::fs::create_dir_all(&cmd.out).with_context(|| format!("{}: cannot create folder", cmd.out.display()))?;
    io::nifti::write_like(
        &cmd.out.join("saliency.nii.gz"),
        &case.volume,
        &saliency_volume(&case.volume, case.slice, &run.saliency, size)?,
    )?;
    crate::render::save_png(&cmd.out.join("overlay.png"), &overlay_image(&case.input, &run))?;
    let report = json!({
        "image": cmd.case.image, "label": cmd.case.label, "slice": case.slice, "organ": organ_name(case.class), "class": case.class,
        "model_input_size": size, "seed": cmd.method_args.seed, "backend": backend.name(), "settings": format!("{settings:?}"),
        "result": run_json(&run),
    });
    write_text(&cmd.out.join("report.json"), &serde_json::to_string_pretty(&report)?)?;
    eprintln!(
        "{} on slice {} ({} ROI, {:.1}% of the slice): {:.2}s, {} forward passes; wrote {}/{{saliency.nii.gz, overlay.png, report.json}}",
        cmd.method.name(), case.slice, cmd.roi.name(), 100.0 * run.roi_fraction(), run.seconds, run.forward_passes, cmd.out.display()
    );
    Ok(())
}

fn bench_command<B: Backend>(backend: &B, cmd: BenchCmd) -> Result<()> {
    let model = cmd.method_args.load_unet(backend)?;
    let size = model_size(cmd.size, &model);
    let case = if cmd.demo {
        let p = phantom::generate(7, 256, 32);
        let class = crate::pipeline::organ_class(&cmd.method_args.organ)?;
        Case::from_volume(
            backend,
            p.ct,
            Some(p.labels),
            &cmd.slice,
            class,
            &cmd.method_args,
            size,
            cmd.roi.uses_clip(),
        )?
    } else {
        let image = cmd.image.as_deref().context("--image or --demo is required")?;
        let args = CaseArgs {
            image: image.to_path_buf(),
            label: cmd.label.clone(),
            label_ids: cmd.label_ids,
            slice: cmd.slice.clone(),
        };
        Case::load(backend, &args, &cmd.method_args, size, cmd.roi.uses_clip())?
    };
    let settings = cmd.method_args.settings(backend, size, &model)?;
    let rows = bench_runs(backend, &model, &case, &cmd.methods, cmd.roi, &settings, cmd.repeat)?;
    let context = json!({"image": if cmd.demo { "phantom seed 7".into() } else { case.volume.source.display().to_string() }, "slice": case.slice, "organ": organ_name(case.class), "repeat": cmd.repeat, "backend": backend.name(), "settings": format!("{settings:?}")});
    let (md, json_table) = bench_tables(&rows, context);
    println!("{md}");
    if let Some(p) = &cmd.md {
        write_text(p, &md)?;
    }
    if let Some(p) = &cmd.json {
        write_text(p, &serde_json::to_string_pretty(&json_table)?)?;
    }
    if let Some(dir) = &cmd.export {
        std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create folder", dir.display()))?;
        let baseline = crate::explain::baseline_image(settings.baseline, &case.input.image, size);
        for r in &rows {
            let path = dir.join(format!("{}-{}.safetensors", r.method.name(), r.roi_mode.name()));
            let roi: Vec<f32> = r.roi.iter().map(|&b| b as u8 as f32).collect();
            let mut arrays: Vec<(&str, Vec<u8>, safetensors::Dtype)> = vec![
                ("input", bytemuck::cast_slice(&case.input.image).to_vec(), safetensors::Dtype::F32),
                ("baseline", bytemuck::cast_slice(&baseline).to_vec(), safetensors::Dtype::F32),
                ("roi", bytemuck::cast_slice(&roi).to_vec(), safetensors::Dtype::F32),
                ("saliency", bytemuck::cast_slice(&r.saliency).to_vec(), safetensors::Dtype::F32),
            ];
            if let Some(s) = &r.segments {
                arrays.push(("segments", bytemuck::cast_slice(s).to_vec(), safetensors::Dtype::I32));
            }
            let views = arrays
                .iter()
                .map(|(name, bytes, dtype)| {
                    Ok((*name, safetensors::tensor::TensorView::new(*dtype, vec![size, size], bytes)?))
                })
                .collect::<std::result::Result<Vec<_>, safetensors::SafeTensorError>>()?;
            let meta = std::collections::HashMap::from([
                ("class".to_string(), case.class.to_string()),
                ("forward_passes".to_string(), r.forward_passes.to_string()),
                ("seconds".to_string(), r.seconds.to_string()),
                ("samples".to_string(), r.samples.to_string()),
            ]);
            let bytes = safetensors::serialize(views, Some(meta))?;
            write_text(&path, &bytes)?;
        }
        eprintln!("wrote the runs' arrays to {}", dir.display());
    }
    Ok(())
}

fn demo_command<B: Backend>(backend: &B, cmd: DemoCmd) -> Result<()> {
    let started = Instant::now();
    let out = &cmd.out;
    std::fs::create_dir_all(out).with_context(|| format!("{}: cannot create folder", out.display()))?;
    let args = MethodArgs::parse_from_defaults(cmd.seed);
    let model = args.load_unet(backend)?;
    let size = model_size(None, &model);
    let p = phantom::generate(7, 256, 32);
    let phantom_dir = out.join("phantom");
    std::fs::create_dir_all(&phantom_dir)
        .with_context(|| format!("{}: cannot create folder", phantom_dir.display()))?;
    io::nifti::write_like(
        &phantom_dir.join("ct.nii.gz"),
        &p.ct,
        &p.ct.data.iter().map(|&v| v as i16).collect::<Vec<_>>(),
    )?;
    io::nifti::write_like(&phantom_dir.join("labels.nii.gz"), &p.ct, &p.labels)?;
    let case = Case::from_volume(backend, p.ct, Some(p.labels), "organ-center", 1, &args, size, true)?;
    let seg_options = SegmentOptions { intensity: Intensity::ABDOMEN, input_size: size, batch: 1 };
    let labels = segment_slices(backend, &model, &case.volume, &[case.slice], &seg_options, |_| {})?;
    io::nifti::write_like(&out.join("segmentation.nii.gz"), &case.volume, &labels)?;
    let mut settings = args.settings(backend, size, &model)?;
    settings.rise.masks = cmd.masks;
    settings.lime.samples = cmd.samples;
    settings.shap.samples = cmd.samples;
    settings.faithfulness_steps = 16;
    eprintln!(
        "explaining {} on phantom slice {} (ROI: CLIP organ map + {} mm)",
        organ_name(1),
        case.slice,
        settings.margin_mm
    );
    let rows = bench_runs(backend, &model, &case, &Method::ALL, RoiMode::Clip, &settings, 1)?;
    let overlays: Vec<_> = rows.iter().map(|r| overlay_image(&case.input, r)).collect();
    for (r, img) in rows.iter().zip(&overlays) {
        crate::render::save_png(&out.join(format!("{}_{}.png", r.method.name(), r.roi_mode.name())), img)?;
    }
    // Columns: methods; rows: full image, then ROI.
    let ordered: Vec<_> = [0, 1]
        .iter()
        .flat_map(|&m| (0..Method::ALL.len()).map(move |i| 2 * i + m))
        .map(|i| overlays[i].clone())
        .collect();
    crate::render::save_png(&out.join("overlays.png"), &crate::render::grid(&ordered, Method::ALL.len()))?;
    let context = json!({"image": "phantom seed 7", "slice": case.slice, "organ": "liver", "backend": backend.name(), "settings": format!("{settings:?}")});
    let (md, table) = bench_tables(&rows, context);
    write_text(&out.join("bench.md"), &md)?;
    write_text(&out.join("bench.json"), &serde_json::to_string_pretty(&table)?)?;
    println!("{md}");
    println!("demo finished in {:.0}s; wrote to {}:", started.elapsed().as_secs_f64(), out.display());
    println!("  phantom/ct.nii.gz, phantom/labels.nii.gz   the case (seed 7)");
    println!("  segmentation.nii.gz                       U-Net labels on slice {}", case.slice);
    println!("  overlays.png                              all methods; top row full image, bottom row ROI");
    println!("  <method>_<roi>.png                        each overlay alone");
    println!("  bench.md, bench.json                      the table above");
    Ok(())
}

fn selftest_command(cmd: SelftestCmd, device: &device::DeviceArgs) -> Result<()> {
    use crate::selftest::{check_explainers, check_kernels, explain_table, table, Ceilings};
    let seed = cmd.seed.unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
    });
    let compute = device.select()?;
    let (ceilings, gpu) = match &compute {
        device::Compute::Cpu(_) => (crate::selftest::cpu_ceilings(), false),
        device::Compute::Cuda(g) => {
            g.set_poison(true);
            let matrix = match g.precision() {
                crate::backend::cuda::Precision::F32 => 67e12,
                crate::backend::cuda::Precision::Tf32 => 495e12,
                crate::backend::cuda::Precision::Bf16 => 788e12,
            };
            (Ceilings { flops: 67e12, conv_flops: matrix, bytes_per_s: g.copy_bandwidth()? }, true)
        }
    };
    let resources =
        if gpu { crate::backend::cuda::ptxas_resources(crate::backend::cuda::PTXAS_REPORT) } else { Vec::new() };
    let name = crate::on_backend!(compute, |b| b.name());
    println!(
        "selftest on {name}, seed {seed}; ceilings {:.2} TFLOP/s f32, {:.2} TFLOP/s convolutions, {:.0} GB/s copy",
        ceilings.flops * 1e-12,
        ceilings.conv_flops * 1e-12,
        ceilings.bytes_per_s * 1e-9
    );
    if gpu {
        println!("\n| kernel | registers | shared memory | stack | spill stores | spill loads |\n|---|---:|---:|---:|---:|---:|");
        for k in &resources {
            println!(
                "| {} | {} | {} B | {} B | {} B | {} B |",
                k.name, k.registers, k.shared_bytes, k.stack_bytes, k.spill_stores, k.spill_loads
            );
        }
    }
    let bar = progress_bar(0, "kernels");
    let kernels =
        crate::on_backend!(compute, |b| check_kernels(b, gpu, device.precision, ceilings, seed, cmd.quick, |_| bar
            .inc(1)))?;
    bar.finish_and_clear();
    println!("\n{}", table(&kernels));
    let mut explain = Vec::new();
    if !cmd.kernels_only {
        let bar = progress_bar(0, "explanations");
        if cmd.quick {
            explain.extend(crate::on_backend!(compute, |b| check_explainers(b, gpu, true, 16, 8, |_| bar.inc(1)))?);
        } else {
            let samples = cmd.samples.unwrap_or(if gpu { 4000 } else { 200 });
            let batch = cmd.batch.unwrap_or(if gpu { 256 } else { 16 });
            if gpu {
                // Same settings on both sides, small enough for the CPU.
                explain
                    .extend(crate::on_backend!(compute, |b| check_explainers(b, true, false, 64, 16, |_| bar.inc(1)))?);
            }
            explain.extend(crate::on_backend!(compute, |b| check_explainers(b, false, false, samples, batch, |_| {
                bar.inc(1)
            }))?);
        }
        bar.finish_and_clear();
        println!("{}", explain_table(&explain));
    }
    if let Some(path) = &cmd.json {
        let report = json!({"device": name, "precision": device.precision, "seed": seed, "ceilings": ceilings, "ptxas": resources, "kernels": kernels, "explain": explain});
        write_text(path, serde_json::to_string_pretty(&report)?)?;
    }
    let failed: Vec<String> = kernels
        .iter()
        .filter(|r| !r.passed)
        .map(|r| format!("{} {}", r.kernel, r.shape))
        .chain(explain.iter().filter(|r| !r.passed).map(|r| format!("{} end to end", r.method)))
        .collect();
    if !failed.is_empty() {
        bail!("{} of {} checks failed: {}", failed.len(), kernels.len() + explain.len(), failed.join(", "));
    }
    println!("all {} checks passed", kernels.len() + explain.len());
    Ok(())
}

fn roi_command<B: Backend>(backend: &B, cmd: RoiCmd) -> Result<()> {
    let name = cmd.out.to_string_lossy().to_lowercase();
    let png = name.ends_with(".png");
    if !png && !name.ends_with(".nii") && !name.ends_with(".nii.gz") {
        bail!("{}: --out must end in .png, .nii or .nii.gz", cmd.out.display());
    }
    let case = Case::load(backend, &cmd.case, &cmd.method_args, cmd.size, true)?;
    let size = cmd.size;
    let margin_mm = cmd.method_args.margin_mm.unwrap_or(crate::pipeline::Settings::defaults(0).margin_mm);
    let mask = case.clip.mask.as_deref().context("CLIP ROI missing")?;
    let roi = crate::roi::region(
        RoiMode::Clip,
        &vec![false; size * size],
        Some(mask),
        size,
        margin_mm / case.input.mm_per_pixel,
    )?;
    let area = crate::roi::area_fraction(&roi);
    if png {
        let probability = case.clip.probability.as_deref().context("CLIP map missing")?;
        crate::render::save_png(
            &cmd.out,
            &crate::render::overlay(&case.input.image, probability, size, Some(&roi), case.input.truth.as_deref()),
        )?;
    } else {
        let layout = AxialLayout::of(&case.volume)?;
        let shape = layout.slice_shape(&case.volume);
        let plane =
            crate::preprocess::resize_nearest(&roi.iter().map(|&b| b as u8).collect::<Vec<_>>(), (size, size), shape);
        let mut volume = vec![0u8; case.volume.voxel_count()];
        layout.insert(case.volume.dims, case.slice, &plane, &mut volume);
        io::nifti::write_like(&cmd.out, &case.volume, &volume)?;
    }
    let coverage = case.input.truth.as_ref().map(|t| {
        let organ = t.iter().filter(|&&b| b).count().max(1);
        t.iter().zip(&roi).filter(|(a, b)| **a && **b).count() as f64 / organ as f64
    });
    eprintln!(
        "{} ROI on slice {}: {:.1}% of the slice{}; {:.3}s; wrote {}",
        organ_name(case.class),
        case.slice,
        100.0 * area,
        coverage.map_or(String::new(), |c| format!(", covers {:.1}% of the ground-truth organ", 100.0 * c)),
        case.clip.seconds,
        cmd.out.display()
    );
    Ok(())
}
