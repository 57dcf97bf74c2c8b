//! MONAI bundles (`configs/inference.json`, `configs/metadata.json`, `models/model.pt`): the network from
//! `network_def`, label names from metadata.json's `channel_def`, and the preprocessing xaiclip can
//! reproduce exactly; anything else is refused, naming the network or transform.
//!
//! The config is read as `monai.bundle`'s ConfigParser would build it for the parts used here:
//! `"@id"` references (with `#` for nesting) are followed, `"$expression"` values cannot be evaluated
//! and are refused, keys starting with `_` (`_target_`, `_requires_`, ...) are not arguments.

use super::dynunet::DynUNetConfig;
use super::monai_unet::MonaiUNetConfig;
use super::segresnet::SegResNetConfig;
use super::unet::UNetConfig;
use crate::preprocess::{AxisCode, Intensity, Orientation};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};
use std::path::{Path, PathBuf};

/// The networks a bundle's `network_def` may name.
#[derive(Clone, Debug)]
pub enum Network {
    /// monai.networks.nets.BasicUNet.
    BasicUNet(UNetConfig),
    /// monai.networks.nets.UNet.
    UNet(MonaiUNetConfig),
    /// monai.networks.nets.SegResNet.
    SegResNet(SegResNetConfig),
    /// monai.networks.nets.DynUNet.
    DynUNet(DynUNetConfig),
}

impl Network {
    /// 2 or 3.
    pub fn spatial_dims(&self) -> usize {
        match self {
            Network::BasicUNet(c) => c.spatial_dims,
            Network::UNet(c) => c.spatial_dims,
            Network::SegResNet(c) => c.spatial_dims,
            Network::DynUNet(c) => c.spatial_dims,
        }
    }

    /// Input channels.
    pub fn in_channels(&self) -> usize {
        match self {
            Network::BasicUNet(c) => c.in_channels,
            Network::UNet(c) => c.in_channels,
            Network::SegResNet(c) => c.in_channels,
            Network::DynUNet(c) => c.in_channels,
        }
    }

    /// Output classes.
    pub fn out_channels(&self) -> usize {
        match self {
            Network::BasicUNet(c) => c.out_channels,
            Network::UNet(c) => c.out_channels,
            Network::SegResNet(c) => c.out_channels,
            Network::DynUNet(c) => c.out_channels,
        }
    }
}

/// What a bundle says about its model.
#[derive(Clone, Debug)]
pub struct Bundle {
    /// The bundle's folder.
    pub dir: PathBuf,
    /// `network_def`'s class, as written.
    pub network: String,
    /// The network's arguments.
    pub net: Network,
    /// The weights file (models/model.pt).
    pub weights: PathBuf,
    /// Class names by output channel, when metadata.json lists them.
    pub classes: Option<Vec<String>>,
    /// The intensity window of `ScaleIntensityRanged` to [0, 1], when the preprocessing has one.
    pub intensity: Option<Intensity>,
    /// A 2-D model's square input side, from `Resized`.
    pub input_size: Option<usize>,
    /// A 3-D model's sliding-window patch (D, H, W), from `SlidingWindowInferer.roi_size`.
    pub patch_size: Option<[usize; 3]>,
    /// The axis code of `Orientationd`, when the preprocessing reorients.
    pub axcodes: Option<AxisCode>,
    /// `Spacingd`, when the preprocessing resamples.
    pub spacing: Option<BundleSpacing>,
    /// Intensity transforms with each volume's own statistics, in order, after the window if there is
    /// one (`ScaleIntensityd`, `NormalizeIntensityd`).
    pub norms: Vec<VolumeNorm>,
    /// Whether those come before `Spacingd` (statistics of the file's grid) or after it (of the
    /// resampled one).
    pub norms_before_spacing: bool,
    /// The `SlidingWindowInferer`'s blending, when the bundle infers with one.
    pub window: Option<BundleWindow>,
}

/// How a bundle's `SlidingWindowInferer` blends its tiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BundleWindow {
    /// Overlap of neighbouring tiles.
    pub overlap: f64,
    /// Gaussian weighting (`mode: "gaussian"`) rather than constant.
    pub gaussian: bool,
    /// The Gaussian's sigma as a share of the tile.
    pub sigma_scale: f64,
}

/// An intensity transform with the volume's own statistics: affine in the values, so that a windowed
/// volume's map to the network's input is one scale and shift ([`Bundle::input_map`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum VolumeNorm {
    /// `ScaleIntensityd` (`rescale_array`): the volume's [min, max] to [minv, maxv], to [0, 1] where either
    /// is None; a constant volume times minv.
    Scale {
        #[allow(missing_docs)]
        minv: Option<f64>,
        #[allow(missing_docs)]
        maxv: Option<f64>,
    },
    /// `NormalizeIntensityd` (nonzero false): (v - subtrahend) / divisor, the volume's mean and standard
    /// deviation where not given, a zero divisor taken as 1.
    Normalize {
        #[allow(missing_docs)]
        subtrahend: Option<f64>,
        #[allow(missing_docs)]
        divisor: Option<f64>,
    },
}

impl VolumeNorm {
    /// In the bundle's words.
    pub fn describe(&self) -> String {
        let or = |v: Option<f64>, what: &str| v.map_or(what.to_string(), |v| v.to_string());
        match *self {
            VolumeNorm::Scale { minv: Some(lo), maxv: Some(hi) } => format!("ScaleIntensityd to [{lo}, {hi}]"),
            VolumeNorm::Scale { .. } => "ScaleIntensityd to [0, 1]".into(),
            VolumeNorm::Normalize { subtrahend, divisor } => {
                format!("NormalizeIntensityd (v - {}) / {}", or(subtrahend, "mean"), or(divisor, "std"))
            }
        }
    }
}

/// What the per-volume transforms read of a volume: its minimum, maximum, mean and (population)
/// standard deviation.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stats {
    #[allow(missing_docs)]
    pub min: f64,
    #[allow(missing_docs)]
    pub max: f64,
    #[allow(missing_docs)]
    pub mean: f64,
    #[allow(missing_docs)]
    pub std: f64,
}

impl Stats {
    /// Of `values` (in f64).
    pub fn of(values: &[f32]) -> Self {
        let n = values.len().max(1) as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let std = (values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n).sqrt();
        let (min, max) =
            values.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v as f64), hi.max(v as f64)));
        Self { min, max, mean, std }
    }

    /// Of the values a v + b.
    fn affine(self, a: f64, b: f64) -> Self {
        let (lo, hi) = (a * self.min + b, a * self.max + b);
        Self { min: lo.min(hi), max: lo.max(hi), mean: a * self.mean + b, std: a.abs() * self.std }
    }
}

/// A bundle's `Spacingd` (with MONAI's defaults: bilinear, border padding, align_corners False).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BundleSpacing {
    /// The spacing in mm per axis of the array as MONAI holds it then (after any `Orientationd`); None
    /// keeps the axis's own (a non-positive `pixdim` entry).
    pub pixdim: [Option<f64>; 3],
    /// Whether it comes before `ScaleIntensityRanged`, so that raw values are interpolated.
    pub before_window: bool,
}

impl Bundle {
    /// MONAI's LoadImage keeps the file's voxel order (a 2-D model sees rows along i, columns along j)
    /// unless `Orientationd` reorients to its axis code first.
    pub fn orientation(&self) -> Orientation {
        self.axcodes.map_or(Orientation::Voxel([2, 0, 1]), Orientation::Axes)
    }

    /// The map (scale, shift) from the windowed values the model gets to what the network takes, given
    /// their statistics: the per-volume transforms composed (None without any).
    pub fn input_map(&self, stats: Stats) -> Option<[f32; 2]> {
        if self.norms.is_empty() {
            return None;
        }
        let (mut scale, mut shift, mut s) = (1.0, 0.0, stats);
        for norm in &self.norms {
            let (a, b) = match *norm {
                VolumeNorm::Scale { minv, .. } if s.min == s.max => (minv.unwrap_or(1.0), 0.0),
                VolumeNorm::Scale { minv, maxv } => {
                    let (a, b) = (1.0 / (s.max - s.min), -s.min / (s.max - s.min));
                    match (minv, maxv) {
                        (Some(lo), Some(hi)) => (a * (hi - lo), b * (hi - lo) + lo),
                        _ => (a, b),
                    }
                }
                VolumeNorm::Normalize { subtrahend, divisor } => {
                    let divisor = divisor.unwrap_or(s.std);
                    let divisor = if divisor == 0.0 { 1.0 } else { divisor };
                    (1.0 / divisor, -subtrahend.unwrap_or(s.mean) / divisor)
                }
            };
            (scale, shift, s) = (a * scale, a * shift + b, s.affine(a, b));
        }
        Some([scale as f32, shift as f32])
    }

    /// How a 3-D bundle sees a volume's voxels, in words: the orientation, then any `Spacingd`.
    pub fn describe_volume(&self) -> String {
        let orientation = self.orientation().describe_volume();
        match self.spacing {
            None => format!("{orientation}; no resampling (pass a volume at the spacing the model was trained on)"),
            Some(s) => {
                let pixdim: Vec<String> = s.pixdim.iter().map(|p| p.map_or("kept".into(), |p| p.to_string())).collect();
                let when = if s.before_window { "before" } else { "after" };
                format!(
                    "{orientation}; resampled to [{}] mm as Spacingd (bilinear, {when} the intensity window), logits and maps back as Invertd",
                    pixdim.join(", ")
                )
            }
        }
    }
}

/// Whether `dir` is a MONAI bundle.
pub fn is_bundle(dir: &Path) -> bool {
    dir.join("configs").join("inference.json").is_file()
}

fn short(target: &str) -> &str {
    target.rsplit('.').next().unwrap_or(target)
}

/// `v` with every `"@id"` replaced by the config's value (recursively), refusing `"$expressions"`.
fn resolve(v: &Value, root: &Value, depth: usize) -> Result<Value> {
    ensure!(depth < 32, "references nest more than 32 deep (a cycle?)");
    Ok(match v {
        Value::String(s) if s.starts_with('@') => {
            let mut at = root;
            for part in s[1..].split('#') {
                at = match at {
                    Value::Object(m) => m.get(part),
                    Value::Array(a) => part.parse::<usize>().ok().and_then(|i| a.get(i)),
                    _ => None,
                }
                .with_context(|| format!("reference {s}: no such id in the config"))?;
            }
            resolve(at, root, depth + 1)?
        }
        Value::String(s) if s.starts_with('$') => {
            bail!("{s:?} is a Python expression, which xaiclip does not evaluate; write the value itself")
        }
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve(x, root, depth + 1)).collect::<Result<_>>()?),
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, x)| Ok((k.clone(), resolve(x, root, depth + 1)?))).collect::<Result<Map<_, _>>>()?,
        ),
        other => other.clone(),
    })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// Reads a bundle's model description.
pub fn read(dir: &Path) -> Result<Bundle> {
    let inference_path = dir.join("configs").join("inference.json");
    let root = read_json(&inference_path)?;
    let at = |what: &str| format!("{}: {what}", inference_path.display());
    let def = root.get("network_def").with_context(|| at("no network_def"))?;
    let def = resolve(def, &root, 0).with_context(|| at("network_def"))?;
    let def = def.as_object().with_context(|| at("network_def is not an object"))?;
    let network = def.get("_target_").and_then(Value::as_str).with_context(|| at("network_def has no _target_"))?;
    let args: Map<String, Value> =
        def.iter().filter(|(k, _)| !k.starts_with('_')).map(|(k, v)| (k.clone(), v.clone())).collect();
    let net = match short(network) {
        "BasicUNet" => {
            const ARGS: [&str; 9] = [
                "spatial_dims",
                "in_channels",
                "out_channels",
                "features",
                "act",
                "norm",
                "bias",
                "dropout",
                "upsample",
            ];
            if let Some(k) = args.keys().find(|k| !ARGS.contains(&k.as_str())) {
                bail!("{}", at(&format!("network_def.{k} is not a BasicUNet argument")));
            }
            Network::BasicUNet(
                UNetConfig::from_json(&Value::Object(args).to_string()).with_context(|| at("network_def"))?,
            )
        }
        "UNet" => Network::UNet(MonaiUNetConfig::from_args(&args).with_context(|| at("network_def"))?),
        "SegResNet" => Network::SegResNet(SegResNetConfig::from_args(&args).with_context(|| at("network_def"))?),
        "DynUNet" => Network::DynUNet(DynUNetConfig::from_args(&args).with_context(|| at("network_def"))?),
        _ => {
            bail!("{}", at(&format!("network {network} is not supported (BasicUNet, UNet, SegResNet and DynUNet are)")))
        }
    };
    let Preprocessing { intensity, input_size, axcodes, spacing, norms, norms_before_spacing } =
        preprocessing(&root).with_context(|| at("preprocessing"))?;
    if !norms.is_empty() && net.spatial_dims() == 2 {
        bail!("{}", at("preprocessing: NormalizeIntensityd/ScaleIntensityd in a 2-D bundle are not applied (they would take each slice's statistics)"));
    }
    if spacing.is_some() && net.spatial_dims() == 2 {
        bail!(
            "{}",
            at("preprocessing: Spacingd in a 2-D bundle is not applied (slices are resized to the model grid)")
        );
    }
    let (mut patch_size, mut window) = (None, None);
    if let Some(inferer) = root.get("inferer") {
        let inferer = resolve(inferer, &root, 0).with_context(|| at("inferer"))?;
        if inferer.get("_target_").and_then(Value::as_str).map(short) == Some("SlidingWindowInferer") {
            if let Some(roi) = inferer.get("roi_size") {
                patch_size = Some(super::unet::patch_size(roi).with_context(|| at("inferer.roi_size"))?);
            }
            window = Some(sliding_window(&inferer).with_context(|| at("inferer"))?);
        }
    }
    let weights =
        ["model.pt", "model.pth"].iter().map(|n| dir.join("models").join(n)).find(|p| p.is_file()).with_context(
            || format!("{}: no models/model.pt (TorchScript model.ts files are not read)", dir.display()),
        )?;
    let classes = classes(dir, net.out_channels())?;
    Ok(Bundle {
        dir: dir.to_path_buf(),
        network: network.to_string(),
        net,
        weights,
        classes,
        intensity,
        input_size,
        patch_size,
        axcodes,
        spacing,
        norms,
        norms_before_spacing,
        window,
    })
}

/// The blending, overlap and sigma of a `SlidingWindowInferer` (MONAI's defaults: constant, 0.25, 0.125);
/// what changes its numbers beyond them is refused by name (`sw_batch_size` and devices do not).
fn sliding_window(inferer: &Value) -> Result<BundleWindow> {
    let number = |k: &str, default: f64| -> Result<f64> {
        match inferer.get(k) {
            None => Ok(default),
            Some(v) => {
                v.as_f64().with_context(|| format!("SlidingWindowInferer {k} {v}: only one number is reproduced"))
            }
        }
    };
    let overlap = number("overlap", 0.25)?;
    ensure!((0.0..1.0).contains(&overlap), "SlidingWindowInferer overlap {overlap} must be in [0, 1)");
    let gaussian = match inferer.get("mode").and_then(Value::as_str).unwrap_or("constant") {
        "constant" => false,
        "gaussian" => true,
        other => bail!("SlidingWindowInferer mode {other:?} is not reproduced (constant or gaussian)"),
    };
    let sigma_scale = number("sigma_scale", 0.125)?;
    ensure!(sigma_scale > 0.0, "SlidingWindowInferer sigma_scale {sigma_scale} must be positive");
    match inferer.get("padding_mode").and_then(Value::as_str).unwrap_or("constant") {
        "constant" => ensure!(number("cval", 0.0)? == 0.0, "SlidingWindowInferer cval other than 0 is not reproduced"),
        other => bail!("SlidingWindowInferer padding_mode {other:?} is not reproduced (constant, cval 0)"),
    }
    for k in ["roi_weight_map", "buffer_steps", "with_coord"] {
        ensure!(
            inferer.get(k).is_none_or(|v| v.is_null() || v == &Value::Bool(false)),
            "SlidingWindowInferer {k} is not reproduced"
        );
    }
    Ok(BundleWindow { overlap, gaussian, sigma_scale })
}

/// What a bundle's preprocessing does that xaiclip reproduces.
#[derive(Default)]
struct Preprocessing {
    intensity: Option<Intensity>,
    input_size: Option<usize>,
    axcodes: Option<AxisCode>,
    spacing: Option<BundleSpacing>,
    norms: Vec<VolumeNorm>,
    norms_before_spacing: bool,
}

/// The CT window, model input size and orientation the preprocessing implies; transforms xaiclip does
/// not reproduce are refused by name.
fn preprocessing(root: &Value) -> Result<Preprocessing> {
    let Some(pre) = root.get("preprocessing") else { return Ok(Preprocessing::default()) };
    let pre = resolve(pre, root, 0)?;
    let transforms = pre.get("transforms").and_then(Value::as_array).context("no transforms list")?;
    let (mut intensity, mut size, mut axcodes, mut spacing) = (None, None, None, None);
    let mut norms = Vec::new();
    let mut norms_before_spacing = false;
    for t in transforms {
        let name = t.get("_target_").and_then(Value::as_str).map(short).context("a transform without _target_")?;
        // The dictionary transforms (LoadImaged, ...) are the array ones by key.
        let name = name.strip_suffix('d').unwrap_or(name);
        let number = |k: &str| t.get(k).and_then(Value::as_f64);
        match name {
            "LoadImage" | "EnsureChannelFirst" | "EnsureType" | "ToTensor" | "CastToType" | "AsChannelFirst" => {}
            "ScaleIntensityRange" => {
                let (Some(a_min), Some(a_max)) = (number("a_min"), number("a_max")) else {
                    bail!("ScaleIntensityRanged needs numeric a_min and a_max");
                };
                let (b_min, b_max) = (number("b_min").unwrap_or(0.0), number("b_max").unwrap_or(1.0));
                let clip = t.get("clip").and_then(Value::as_bool).unwrap_or(false);
                ensure!(
                    b_min == 0.0 && b_max == 1.0 && clip && a_max > a_min,
                    "ScaleIntensityRanged to [{b_min}, {b_max}] with clip {clip}: only a clipped window to [0, 1] is reproduced"
                );
                ensure!(
                    norms.is_empty(),
                    "ScaleIntensityRanged after NormalizeIntensityd/ScaleIntensityd is not reproduced (a window on normalised values)"
                );
                intensity = Some(Intensity::CtWindow { low: a_min as f32, high: a_max as f32 });
            }
            "Resize" => match t
                .get("spatial_size")
                .and_then(Value::as_array)
                .map(|a| a.iter().map(Value::as_u64).collect::<Vec<_>>())
            {
                Some(s) if s.len() == 2 && s[0].is_some() && s[0] == s[1] => size = s[0].map(|n| n as usize),
                _ => bail!("Resized: only a square spatial_size [n, n] is reproduced (the model grid)"),
            },
            "Orientation" => {
                ensure!(
                    t.get("labels").is_none_or(Value::is_null),
                    "Orientationd labels are not reproduced (MONAI's default pairs L/R, P/A, I/S are)"
                );
                // as_closest_canonical is nibabel's closest canonical orientation, RAS (MONAI then ignores
                // axcodes; with MONAI 1.6.1 the two give equal arrays and affines, permuted axes included).
                let code = if t.get("as_closest_canonical").and_then(Value::as_bool).unwrap_or(false) {
                    "RAS"
                } else {
                    t.get("axcodes").and_then(Value::as_str).context("Orientationd without axcodes")?
                };
                ensure!(
                    spacing.is_none(),
                    "Orientationd after Spacingd is not reproduced (MONAI's zoo reorients first)"
                );
                axcodes = Some(code.parse()?);
            }
            "Spacing" => {
                ensure!(
                    norms.is_empty() || intensity.is_none(),
                    "Spacingd between ScaleIntensityRanged and NormalizeIntensityd/ScaleIntensityd is not reproduced"
                );
                spacing =
                    Some(BundleSpacing { pixdim: pixdim(t)?, before_window: intensity.is_none() && norms.is_empty() })
            }
            "ScaleIntensity" | "NormalizeIntensity" => {
                let norm = volume_norm(name, t)?;
                if norms.is_empty() {
                    norms_before_spacing = spacing.is_none();
                } else {
                    ensure!(
                        norms_before_spacing == spacing.is_none(),
                        "Spacingd between two of NormalizeIntensityd/ScaleIntensityd is not reproduced"
                    );
                }
                norms.extend(norm);
            }
            other => bail!("transform {other} is not supported"),
        }
    }
    if !norms.is_empty() && intensity.is_none() {
        // The windowed input spans the volume's own range, unclipped; the input map does the rest.
        intensity = Some(Intensity::ZScore);
    }
    Ok(Preprocessing { intensity, input_size: size, axcodes, spacing, norms, norms_before_spacing })
}

/// `ScaleIntensityd` or `NormalizeIntensityd` (`name` without the d), with every argument xaiclip does not
/// reproduce refused by name; None: the transform leaves values as they are.
fn volume_norm(name: &str, t: &Value) -> Result<Option<VolumeNorm>> {
    let number = |k: &str, default: Option<f64>| -> Result<Option<f64>> {
        match t.get(k) {
            None => Ok(default),
            Some(Value::Null) => Ok(None),
            Some(v) => v.as_f64().map(Some).with_context(|| format!("{name}d {k} {v} is not a number")),
        }
    };
    let known: &[&str] = match name {
        "ScaleIntensity" => {
            &["_target_", "keys", "minv", "maxv", "factor", "channel_wise", "dtype", "allow_missing_keys"]
        }
        _ => &["_target_", "keys", "subtrahend", "divisor", "nonzero", "channel_wise", "dtype", "allow_missing_keys"],
    };
    if let Some(k) = t.as_object().and_then(|o| o.keys().find(|k| !known.contains(&k.as_str()))) {
        bail!("{name}d argument {k} is not reproduced");
    }
    if name == "ScaleIntensity" {
        // MONAI's defaults: minv 0, maxv 1; factor only applies without both.
        let (minv, maxv) = (number("minv", Some(0.0))?, number("maxv", Some(1.0))?);
        if minv.is_none() && maxv.is_none() {
            ensure!(number("factor", None)?.is_none(), "ScaleIntensityd factor is not reproduced");
            return Ok(None);
        }
        return Ok(Some(VolumeNorm::Scale { minv, maxv }));
    }
    ensure!(
        !t.get("nonzero").and_then(Value::as_bool).unwrap_or(false),
        "NormalizeIntensityd nonzero true is not reproduced (zero voxels stay 0 while the rest is normalised: not one map of the volume)"
    );
    Ok(Some(VolumeNorm::Normalize { subtrahend: number("subtrahend", None)?, divisor: number("divisor", None)? }))
}

/// `Spacingd`'s target spacing (a number or a list, padded with its last entry as MONAI pads it), with
/// every argument xaiclip does not reproduce refused by name.
fn pixdim(t: &Value) -> Result<[Option<f64>; 3]> {
    let is = |k: &str, ok: &dyn Fn(&Value) -> bool| t.get(k).is_none_or(|v| v.is_null() || ok(v));
    let bilinear = |v: &Value| match v {
        Value::String(m) => m == "bilinear",
        // One mode per key: the image's (the first key; inference bundles have only it).
        Value::Array(m) => m.first().and_then(Value::as_str) == Some("bilinear"),
        _ => false,
    };
    for (k, ok) in [
        ("mode", &bilinear as &dyn Fn(&Value) -> bool),
        ("padding_mode", &|v: &Value| v.as_str() == Some("border")),
        ("align_corners", &|v: &Value| v.as_bool() == Some(false)),
        ("diagonal", &|v: &Value| v.as_bool() == Some(false)),
        ("scale_extent", &|v: &Value| v.as_bool() == Some(false)),
        ("min_pixdim", &|_: &Value| false),
        ("max_pixdim", &|_: &Value| false),
    ] {
        ensure!(
            is(k, ok),
            "Spacingd {k} {} is not reproduced (mode bilinear, padding_mode border, align_corners, diagonal and scale_extent false, no min_pixdim/max_pixdim)",
            t[k]
        );
    }
    const KNOWN: [&str; 13] = [
        "_target_",
        "keys",
        "pixdim",
        "mode",
        "padding_mode",
        "align_corners",
        "diagonal",
        "scale_extent",
        "min_pixdim",
        "max_pixdim",
        "dtype",
        "recompute_affine",
        "allow_missing_keys",
    ];
    if let Some(k) = t.as_object().and_then(|o| o.keys().find(|k| !KNOWN.contains(&k.as_str()))) {
        bail!("Spacingd argument {k} is not reproduced");
    }
    let values: Vec<f64> = match t.get("pixdim") {
        Some(Value::Number(n)) => vec![n.as_f64().unwrap_or(f64::NAN)],
        Some(Value::Array(a)) => a.iter().map(|v| v.as_f64().unwrap_or(f64::NAN)).collect(),
        _ => bail!("Spacingd needs pixdim, a number or a list of numbers"),
    };
    ensure!(!values.is_empty() && values.iter().all(|v| v.is_finite()), "Spacingd pixdim must be numbers");
    let last = values[values.len() - 1];
    Ok(std::array::from_fn(|a| Some(values.get(a).copied().unwrap_or(last)).filter(|&p| p > 0.0)))
}

/// metadata.json's `network_data_format.outputs.pred.channel_def`, by channel.
fn classes(dir: &Path, out_channels: usize) -> Result<Option<Vec<String>>> {
    let path = dir.join("configs").join("metadata.json");
    if !path.is_file() {
        return Ok(None);
    }
    let meta = read_json(&path)?;
    let outputs = meta.get("network_data_format").and_then(|f| f.get("outputs")).and_then(Value::as_object);
    let Some(def) = outputs.and_then(|o| o.values().find_map(|v| v.get("channel_def"))).and_then(Value::as_object)
    else {
        return Ok(None);
    };
    let mut names = vec![None; out_channels];
    for (k, v) in def {
        let i: usize = k.parse().ok().filter(|&i| i < out_channels).with_context(|| {
            format!("{}: channel_def key {k:?} is not a channel of the {out_channels}-class network", path.display())
        })?;
        names[i] = v.as_str().map(str::to_string);
    }
    match names.iter().position(Option::is_none) {
        Some(i) => bail!("{}: channel_def names no class for channel {i}", path.display()),
        None => Ok(Some(names.into_iter().flatten().collect())),
    }
}
