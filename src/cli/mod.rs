//! The `xaiclip` command line: clap structs, each converted into library settings at its command's entry
//! (one file per command), then library calls and printing. Only the binary uses this module.

mod args;
mod bench;
mod convert;
mod demo;
mod eval;
mod explain;
mod info;
mod phantom;
mod profile;
mod roi;
mod segment;
mod selftest;
mod volume;

pub use args::{ClipArgs, MethodArgs};

use anyhow::Result;
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use xaiclip::dataset::LabelIds;
use xaiclip::preprocess::{Intensity, Modality};
use xaiclip::{Device, Precision};

#[derive(Parser, Debug)]
#[command(
    name = "xaiclip",
    version,
    about = "Explain medical image segmentation models by ROI-guided perturbation (XAI-CLIP)",
    long_about = "Explain medical image segmentation models by ROI-guided perturbation (XAI-CLIP).\n\n\
        Images are NIfTI-1 volumes (.nii, .nii.gz) or folders holding one DICOM series. Models (--model) are \
        a MONAI BasicUNet folder (model.safetensors or model.pt, the PyTorch state_dict with names unchanged, \
        and config.json, the BasicUNet keyword arguments; 2-D or 3-D), an nnU-Net v2 result folder \
        (<trainer>__<plans>__<configuration> with plans.json, dataset.json and fold_K/checkpoint_final.pth; \
        PlainConvUNet or ResidualEncoderUNet), or a MONAI bundle with a BasicUNet, UNet, SegResNet or DynUNet network_def; \
        `xaiclip info --model DIR` shows what will be used.\n\n\
        Errors name the file and the problem and exit with status 2; outputs are written atomically, so a \
        failed run leaves no partial file."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub device: LeadingDeviceOptions,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Describe an image (NIfTI file or DICOM folder) or a weights file/folder.
    ///
    /// Images: grid, spacing, orientation, affine, intensity range and, for label maps, the labels
    /// present. Weights: every tensor's name, dtype and shape; with a config.json beside it, also whether
    /// the two match.
    Info(info::InfoCmd),
    /// Segment axial slices with a U-Net and write the label volume on the input's grid.
    ///
    /// Each slice is windowed to [0, 1], resampled to the model's square input, segmented, and the class
    /// probabilities are resampled back (bilinear) before the per-voxel argmax. Slices not asked for are
    /// 0 (background) in the output. The output keeps the input's affine, so it overlays the image in
    /// ITK-SNAP or 3D Slicer.
    #[command(
        after_help = "Examples:\n  xaiclip segment --image ct.nii.gz --slice all --out seg.nii.gz\n  xaiclip segment --image dicom_dir/ --slice 10,16 --out seg.nii.gz"
    )]
    Segment(segment::SegmentCmd),
    /// Explain the U-Net's segmentation of one organ on one slice by perturbation.
    ///
    /// Writes DIR/saliency.nii.gz (float32, on the input's grid and affine, zero outside the slice),
    /// DIR/overlay.png (the labelled panel: heat map over the windowed slice at its physical aspect, ROI
    /// outline dashed cyan, ground truth green, colour bar with values and unit), DIR/report.json (the
    /// method's settings as JSON, the version, git commit, command line and time; seconds, forward passes
    /// and, with --label, Dice/IoU/AUROC/pointing game, plus deletion/insertion AUC) and DIR/report.html
    /// (all of it on one self-contained page, with the curves).
    #[command(
        after_help = "Examples:\n  xaiclip phantom --out case\n  xaiclip explain --image case/ct.nii.gz --label case/labels.nii.gz --slice organ-center --method occlusion --out out\n  xaiclip explain --image ct.nii.gz --slice 40 --organ spleen --method rise --roi seg --masks 500 --out out\n  xaiclip explain --image ct.nii.gz --slice 40 --method lime --roi none --score dice --sign positive --out out\n  xaiclip explain --image case.nii.gz --model nnUNet_results/Dataset002_Phantom/nnUNetTrainer__nnUNetPlans__2d --organ liver --slice organ-center --label labels.nii.gz --label-ids model --method occlusion --out out   (an nnU-Net result folder: its own classes and window)\n  xaiclip explain --image ct.nii.gz --unet my3dunet --slice all --method occlusion --roi clip --patch 96,96,96 --out out3d   (a 3-D U-Net: the whole volume, CLIP ROI over the axial slices)\n  xaiclip explain --image ct.nii.gz --model my3dbundle --slice all --method rise --masks 500 --grid 6 --roi seg --out out3d   (RISE over the volume)"
    )]
    Explain(explain::ExplainCmd),
    /// Compare each method in full-image and ROI mode: seconds, forward passes, agreement, faithfulness.
    ///
    /// Prints a Markdown table (and writes --md/--json) with one row per method and mode, then the
    /// paper's comparison rows: runtime and forward-pass reduction, and insertion/deletion AUC, Dice and
    /// IoU as full -> ROI (absolute change), with a legend. --html writes the report page: the case,
    /// every labelled overlay, the curves and the tables.
    #[command(
        after_help = "Examples:\n  xaiclip bench --demo --html bench.html\n  xaiclip bench --image ct.nii.gz --label seg.nii.gz --label-ids totalseg --methods occlusion,rise --repeat 3 --md bench.md"
    )]
    Bench(bench::BenchCmd),
    /// The whole job on the bundled phantom: segment, explain the liver with every method in both
    /// modes, write overlays and the bench table, and print where they are.
    #[command(
        after_help = "Examples:\n  xaiclip demo --out xaiclip-demo\n  xaiclip demo --out quick --masks 100 --samples 60 --scale shared"
    )]
    Demo(demo::DemoCmd),
    /// Localise an organ with CLIP: the organ probability map of one slice and its ROI mask.
    ///
    /// The map is the softmax over organs of CLIP patch-text similarities (CoOp prompts unless --prompt
    /// or --no-coop), upsampled to the slice; the ROI keeps the pixels above the threshold, drops
    /// components under 20% of the largest, and grows by --margin-mm. Writes a PNG overlay (map as heat,
    /// ROI outline cyan, ground truth green) or, for .nii/.nii.gz, the ROI mask on the input's grid.
    #[command(
        after_help = "Examples:\n  xaiclip roi --image case/ct.nii.gz --label case/labels.nii.gz --slice organ-center --out roi.png\n  xaiclip roi --image ct.nii.gz --slice 40 --organ spleen --out roi.nii.gz"
    )]
    Roi(roi::RoiCmd),
    /// Explain and score every case of a data set: FLARE22, CHAOS CT/MR, or image/label pairs.
    ///
    /// For each case, organ (--organs liver,spleen), slice (--slices organ-center | every-K), method and
    /// ROI mode, one JSON line is appended to DIR/results.jsonl (Dice/IoU/AUROC against the labels,
    /// deletion/insertion AUC, seconds, forward passes) and a small labelled overlay to DIR/overlays/
    /// (with --save-maps also the saliency volume to DIR/maps/); DIR/report.html shows the summary and
    /// every item with links to its overlay and map; DIR/summary.csv and summary.md hold mean ± std per
    /// organ, method and ROI mode. A killed run continues with --resume and loses at most the item
    /// in flight. --shard i/n runs every n-th case (one job of a Slurm array); --merge DIR... joins the
    /// shard folders into --out. Cases that fail to load are listed in DIR/errors.jsonl and the run
    /// exits non-zero after finishing the others.
    #[command(
        after_help = "Examples:\n  xaiclip phantom --layout flare22 --cases 4 --out set\n  xaiclip eval set --dataset flare22 --organs liver,spleen --methods occlusion --roi none,clip --out results\n  xaiclip eval ... --out results --resume      (continue a killed run)\n  xaiclip eval ... --shard 2/8 --out part2     (one job of a Slurm array; then --merge part1 ... part8)"
    )]
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
    Selftest(selftest::SelftestCmd),
    /// Time a model's forward pass layer by layer at several input sizes and batches.
    ///
    /// Every backend call (convolution, norm, pooling, ...) is timed with its shapes, after one warm-up
    /// forward; the table lists the slowest, with their share and FLOP rate, and the total against the
    /// model's FLOP count. The CPU is named with its vector extensions and the kernels xaiclip chose, as
    /// absolute times mean little across machines. benches/peers/forward.py sets these beside PyTorch's
    /// torch.profiler on the same weights.
    #[command(after_help = "Examples:
  xaiclip profile --sizes 128,256,512 --batches 1,16
  xaiclip profile --model my_unet --sizes 256 --batches 16 --repeat 5 --json forward.json")]
    Profile(profile::ProfileCmd),
    /// Convert an image (NIfTI or DICOM series folder) to NIfTI, keeping its geometry.
    ///
    /// Integer-valued volumes within the int16 range are written as int16, others as float32. Useful to
    /// hand DICOM series to tools that read NIfTI only (the training scripts do).
    Convert(convert::ConvertCmd),
    /// Write a synthetic abdominal CT phantom and its FLARE22 label map.
    ///
    /// Writes DIR/ct.nii.gz (int16 HU) and DIR/labels.nii.gz (uint8: 1 liver, 2 right kidney, 3 spleen,
    /// 4 pancreas, 5 aorta, 6 IVC, 7/8 right/left adrenal, 9 gallbladder, 10 esophagus, 11 stomach,
    /// 12 duodenum, 13 left kidney). Field of view 384 mm, 160 mm from inferior to superior. The same seed
    /// gives the same bytes. With --layout, writes a whole synthetic data set of --cases phantoms in that
    /// layout instead (FLARE22 NIfTI, CHAOS CT/MR DICOM + PNG masks, or images/ + labels/ pairs), ready
    /// for `xaiclip eval`.
    Phantom(phantom::PhantomCmd),
}

/// The slice to work on (explain, roi).
#[derive(clap::Args, Debug)]
#[command(next_help_heading = "Input")]
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
    /// Axial slice: an index, or organ-center (the slice with the largest ground-truth area; needs
    /// --label). Every command takes the same syntax; those that run several slices also take a list
    /// (3,7,9), all and every-K.
    #[arg(long)]
    pub slice: String,
}

impl CaseArgs {
    /// The --slice option, parsed.
    pub fn slices(&self) -> Result<xaiclip::Slices> {
        parse_slices("--slice", &self.slice)
    }
}

/// A slice option (`flag` names it in the error): index, list, all, organ-center or every-K.
pub fn parse_slices(flag: &str, text: &str) -> Result<xaiclip::Slices> {
    text.parse().map_err(|e| anyhow::anyhow!("{flag} {text:?}: {e}"))
}

/// How figures colour the maps.
#[derive(clap::Args, Debug, Clone)]
pub struct FigureArgs {
    /// The part of signed maps to show (Captum's visualize_image_attr choices): all (diverging map
    /// centred at 0 where a map has both signs), positive, negative, absolute_value.
    #[arg(long, value_enum, default_value_t = xaiclip::render::Sign::All, help_heading = "Figures")]
    pub sign: xaiclip::render::Sign,
    /// Colour scales: panel (each map its own range) or shared (one range per method, so its full-image
    /// and ROI maps compare; methods measure different quantities and never share one).
    #[arg(long, value_enum, default_value_t = Scale::Panel, help_heading = "Figures")]
    pub scale: Scale,
}

impl FigureArgs {
    /// The library's figure options.
    pub fn options(&self) -> xaiclip::report::FigureOptions {
        xaiclip::report::FigureOptions { sign: self.sign, shared: self.scale == Scale::Shared }
    }
}

/// Colour scales of a figure's panels.
#[derive(Clone, Copy, Debug, ValueEnum, PartialEq)]
pub enum Scale {
    /// Each panel its own range.
    Panel,
    /// One range per method across ROI modes.
    Shared,
}

#[derive(clap::Args, Debug, Clone)]
pub struct IntensityArgs {
    /// Image modality; decides how intensities are normalised and which CLIP prompts (CoOp contexts or
    /// the hand template) describe the organ [default: ct].
    #[arg(long, value_enum, help_heading = "Input")]
    pub modality: Option<Modality>,
    /// CT window LOW,HIGH in HU mapped to [0, 1] [default: -160,240 (abdomen, level 40 width 400); an
    /// nnU-Net model's own CTNormalization window].
    #[arg(long, allow_hyphen_values = true, help_heading = "Input")]
    pub window: Option<String>,
    /// nnU-Net test-time mirroring: average the model over flips along the axes its checkpoint allows,
    /// as nnUNetPredictor does by default (nnUNetv2_predict without --disable_tta); 4x the forwards in
    /// 2-D, 8x in 3-D. nnU-Net models only.
    #[arg(long, help_heading = "Model")]
    pub mirror: bool,
}

impl IntensityArgs {
    /// The normalisation these options ask for; None when neither is given (the model's own, else the
    /// abdomen window).
    pub fn intensity(&self) -> Result<Option<Intensity>> {
        match (self.modality, &self.window) {
            (Some(Modality::Mr), Some(_)) => {
                xaiclip::fail!(InvalidInput, "--window is a CT window; --modality mr uses percentiles")
            }
            (Some(Modality::Mr), None) => Ok(Some(Intensity::MrPercentile)),
            (_, Some(w)) => w.parse().map(Some),
            (Some(Modality::Ct), None) => Ok(Some(Intensity::ABDOMEN)),
            (None, None) => Ok(None),
        }
    }
}

/// The device options of the commands that compute (segment, explain, bench, demo, roi, eval,
/// selftest); info, convert and phantom do not list them.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct DeviceOptions {
    /// Where to compute: auto (a GPU when one is usable, else the CPU), cpu, cuda or cuda:N [default: auto].
    #[arg(long, help_heading = "Device")]
    pub device: Option<Device>,
    /// Operand precision of the convolutions (accumulation is f32): f32 matches the CPU to ~1e-6; on a
    /// GPU tf32 and bf16 use the tensor cores (~1e-3 and ~1e-2 relative); on a CPU with AVX512-BF16,
    /// bf16 runs the stride-1 convolutions on bf16 operands, on AMX tiles where the CPU has them
    /// (refused on other CPUs); on a CPU with AVX-512, tf32 runs f32 on Winograd F(4x4, 3x3) (~17-21%
    /// faster forwards, maps within ~1e-6 of max of f32) [default: f32].
    #[arg(long, value_enum, help_heading = "Device")]
    pub precision: Option<Precision>,
}

/// The same options before the command (`xaiclip --device cpu demo`), as scripts written for earlier
/// versions give them; not listed.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct LeadingDeviceOptions {
    /// See the command's --device.
    #[arg(long = "device", id = "leading_device", value_name = "DEVICE", hide = true)]
    pub device: Option<Device>,
    /// See the command's --precision.
    #[arg(long = "precision", id = "leading_precision", value_name = "PRECISION", value_enum, hide = true)]
    pub precision: Option<Precision>,
}

/// The device a command computes on, from its options (or those before the command).
#[derive(Debug, Clone)]
pub struct DeviceArgs {
    /// Where to compute.
    pub device: Device,
    /// Operand precision of the convolutions.
    pub precision: Precision,
}

impl DeviceArgs {
    fn resolve(own: &DeviceOptions, leading: &LeadingDeviceOptions) -> Self {
        let defaults = xaiclip::Explainer::builder();
        Self {
            device: own.device.or(leading.device).unwrap_or(defaults.device_choice()),
            precision: own.precision.or(leading.precision).unwrap_or(defaults.precision_choice()),
        }
    }
}

/// Prints what looks wrong about `volume` for the explainer's model, before any work; a file that
/// states another modality is refused ([`xaiclip::Explainer::check_image`]).
pub fn warn_image(explainer: &xaiclip::Explainer, volume: &xaiclip::io::Volume) -> Result<()> {
    explainer.check_image(volume)?.iter().for_each(|warning| eprintln!("warning: {warning}"));
    Ok(())
}

/// Who wrote a report and when: the version and git commit built from, the command line and the time
/// (UTC, RFC 3339).
pub fn provenance() -> serde_json::Value {
    let args: Vec<String> = std::env::args().collect();
    serde_json::json!({
        "xaiclip_version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("XAICLIP_GIT_COMMIT"),
        "command_line": args,
        "timestamp": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
    })
}

/// A progress bar on stderr, "{what} [=====>   ] done/total rate eta" (eval's multi-bar display).
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

/// Progress of one task: a bar on a terminal; where stderr is not one (Slurm and nohup logs), where a
/// bar draws nothing, a line every 10 seconds and one at the end.
pub struct Progress {
    bar: ProgressBar,
    what: String,
    log: Option<(std::time::Instant, std::cell::Cell<std::time::Instant>)>,
}

impl Progress {
    /// A task of `len` steps (0 when not known yet).
    pub fn new(len: u64, what: &str) -> Self {
        use std::io::IsTerminal;
        let log = (!std::io::stderr().is_terminal()).then(|| {
            let now = std::time::Instant::now();
            (now, std::cell::Cell::new(now))
        });
        Self { bar: progress_bar(len, what), what: what.to_string(), log }
    }

    /// The number of steps.
    pub fn set_length(&self, len: u64) {
        self.bar.set_length(len);
    }

    /// Steps done.
    pub fn set_position(&self, pos: u64) {
        self.bar.set_position(pos);
        if let Some((started, last)) = &self.log {
            if last.get().elapsed().as_secs() >= 10 {
                last.set(std::time::Instant::now());
                self.line(*started, self.bar.position(), "");
            }
        }
    }

    /// One more step done.
    pub fn inc(&self, steps: u64) {
        self.set_position(self.bar.position() + steps);
    }

    /// Removes the bar (logs: the final count).
    pub fn finish_and_clear(&self) {
        // Read before finishing: indicatif's finish moves the position to the length, and an adaptive run
        // (RISE with --rise-tol) stops short of it.
        let position = self.bar.position();
        self.bar.finish_and_clear();
        if let Some((started, _)) = &self.log {
            if position > 0 {
                self.line(*started, position, ", done");
            }
        }
    }

    fn line(&self, started: std::time::Instant, position: u64, end: &str) {
        let len = self.bar.length().map_or_else(|| "?".to_string(), |l| l.to_string());
        eprintln!("{}: {position}/{len} after {:.0}s{end}", self.what, started.elapsed().as_secs_f64());
    }
}

/// Runs one command.
pub fn run(cli: Cli) -> Result<()> {
    let lead = &cli.device;
    let device = |own: &DeviceOptions| DeviceArgs::resolve(own, lead);
    match cli.command {
        Command::Info(cmd) => info::run(cmd),
        Command::Segment(cmd) => segment::run(&device(&cmd.device), cmd),
        Command::Explain(cmd) => explain::run(&device(&cmd.device), cmd),
        Command::Bench(cmd) => bench::run(&device(&cmd.device), cmd),
        Command::Demo(cmd) => demo::run(&device(&cmd.device), cmd),
        Command::Roi(cmd) => roi::run(&device(&cmd.device), cmd),
        Command::Eval(cmd) => eval::run(&device(&cmd.device), cmd),
        Command::Selftest(cmd) => selftest::run(&device(&cmd.device), cmd),
        Command::Profile(cmd) => profile::run(&device(&cmd.device), cmd),
        Command::Convert(cmd) => convert::run(cmd),
        Command::Phantom(cmd) => phantom::run(cmd),
    }
}

#[cfg(test)]
mod tests {
    /// clap's own consistency checks (no flag defined twice across flattened groups, valid defaults):
    /// release builds skip them at run time, where a duplicate would silently shadow an option.
    #[test]
    fn the_command_line_definition_is_consistent() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
