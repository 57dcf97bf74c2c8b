//! MONAI `BasicUNet` (2-D and 3-D), loaded from its PyTorch `state_dict` in safetensors plus a JSON
//! config that mirrors the constructor's keyword arguments, so any MONAI user can export a trained model
//! and run it. The 3-D network runs the backend's NCDHW layers (conv3d, trilinear upsampling, ...).
//!
//! Structure (monai/networks/nets/basic_unet.py): conv_0 = TwoConv; down_1..4 = max-pool + TwoConv;
//! upcat_4..1 = upsample, replicate-pad to the skip's size, concat [skip, up], TwoConv; final 1x1 conv.
//! Each conv unit is conv -> norm -> dropout (identity at inference) -> activation ("NDA").

use crate::backend::volume::Transposed;
use crate::backend::{Activation, Backend, PlaneNorm};
use crate::error::Error;
use crate::preprocess::{Modality, Orientation};
use crate::tensor::Tensor;
use crate::weights::{open_model_dir, ParamReader, WeightsFile};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::Path;

#[derive(Clone, Copy, Debug, PartialEq)]
/// Normalisation after each convolution.
pub enum NormKind {
    #[allow(missing_docs)] // affine: learned scale and shift
    Instance { affine: bool },
    /// Batch norm in eval mode (folded into the convolution).
    Batch,
    /// None.
    None,
}

#[derive(Clone, Copy, Debug, PartialEq)]
/// How the decoder upsamples.
pub enum Upsample {
    /// Transposed convolution, kernel 2 stride 2.
    Deconv,
    /// Optional 1x1 "preconv" then bilinear (trilinear in 3-D) 2x with align_corners = true.
    NonTrainable,
}

#[derive(Clone, Debug, PartialEq)]
/// MONAI BasicUNet's constructor arguments.
pub struct UNetConfig {
    /// 2 (slices, NCHW) or 3 (volumes, NCDHW).
    pub spatial_dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub out_channels: usize,
    /// Widths of the six levels (MONAI's `features`).
    pub features: [usize; 6],
    /// Activation after each norm.
    pub act: Activation,
    /// Normalisation.
    pub norm: NormKind,
    /// Normalisation epsilon.
    pub norm_eps: f32,
    /// Whether convolutions have biases.
    pub bias: bool,
    /// Decoder upsampling.
    pub upsample: Upsample,
    /// Side of the square input the model was trained on (xaiclip's own key `input_size`, not MONAI's).
    pub input_size: Option<usize>,
    /// 3-D models: the (D, H, W) patch they were trained on, the sliding window's tile (xaiclip's own
    /// key `patch_size`, as MONAI bundles' `roi_size`).
    pub patch_size: Option<[usize; 3]>,
    /// How a 2-D model's slices lie on a volume (xaiclip's key `layout`): "radiological" (default) or
    /// "voxel" (the file's axes as stored: slices along axis 2, rows axis 1, columns axis 0, as a
    /// model trained on raw `nibabel`/SimpleITK arrays sees them).
    pub orientation: Orientation,
    /// The modalities the model was trained on (xaiclip's key `modalities`, e.g. `["ct", "mr"]`): an
    /// input made for another is refused, and a model of one modality picks its normalisation by itself.
    pub modalities: Option<Vec<Modality>>,
}

/// MONAI accepts a layer spec as "name" or ["name", {args}]; returns (lower-case name, args).
pub(crate) fn layer_spec(v: &Value, what: &str) -> Result<(String, serde_json::Map<String, Value>)> {
    match v {
        Value::String(s) => Ok((s.to_lowercase(), Default::default())),
        Value::Array(a) if !a.is_empty() && a[0].is_string() => {
            let args = match a.get(1) {
                Some(Value::Object(m)) => m.clone(),
                None => Default::default(),
                Some(other) => bail!("{what}: expected {{args}} after the name, got {other}"),
            };
            Ok((a[0].as_str().unwrap_or_default().to_lowercase(), args))
        }
        Value::Null => Ok(("none".into(), Default::default())),
        other => bail!("{what}: expected \"name\" or [\"name\", {{args}}], got {other}"),
    }
}

/// A MONAI act spec without learned parameters: relu, leakyrelu (torch's own default slope 0.01) or gelu.
pub(crate) fn activation(name: &str, args: &serde_json::Map<String, Value>) -> Option<Activation> {
    match name {
        "relu" => Some(Activation::Relu),
        "leakyrelu" => {
            Some(Activation::LeakyRelu(args.get("negative_slope").and_then(Value::as_f64).unwrap_or(0.01) as f32))
        }
        "gelu" => Some(Activation::Gelu),
        _ => None,
    }
}

impl UNetConfig {
    /// Parses the JSON form of `BasicUNet(spatial_dims=..., ...)` keyword arguments; absent keys take
    /// MONAI's defaults.
    pub fn from_json(text: &str) -> Result<Self> {
        let v: Value = serde_json::from_str(text).context("invalid JSON")?;
        let usize_field = |key: &str, default: usize| -> Result<usize> {
            match v.get(key) {
                None => Ok(default),
                Some(x) => x
                    .as_u64()
                    .filter(|&n| n > 0)
                    .map(|n| n as usize)
                    .with_context(|| format!("{key} must be a positive integer, got {x}")),
            }
        };
        let spatial_dims = usize_field("spatial_dims", 3)?;
        ensure!(spatial_dims == 2 || spatial_dims == 3, "spatial_dims is {spatial_dims}; BasicUNet has 2 or 3");
        let features = match v.get("features") {
            None => [32, 32, 64, 128, 256, 32],
            Some(f) => {
                let list: Vec<usize> = f
                    .as_array()
                    .and_then(|a| {
                        a.iter().map(|x| x.as_u64().filter(|&n| n > 0).map(|n| n as usize)).collect::<Option<Vec<_>>>()
                    })
                    .with_context(|| format!("features must be a list of positive integers, got {f}"))?;
                match list.len() {
                    6 => [list[0], list[1], list[2], list[3], list[4], list[5]],
                    1 => [list[0]; 6],
                    n => bail!("features must have 6 entries (MONAI ensure_tuple_rep), got {n}"),
                }
            }
        };
        let (act_name, act_args) =
            layer_spec(v.get("act").unwrap_or(&serde_json::json!(["leakyrelu", {"negative_slope": 0.1}])), "act")?;
        let act = activation(&act_name, &act_args)
            .with_context(|| format!("act {act_name:?} is not supported (use relu, leakyrelu or gelu)"))?;
        let (norm_name, norm_args) =
            layer_spec(v.get("norm").unwrap_or(&serde_json::json!(["instance", {"affine": true}])), "norm")?;
        let norm = match norm_name.as_str() {
            // MONAI's Norm["instance"] is torch InstanceNorm, affine off unless asked for.
            "instance" => {
                NormKind::Instance { affine: norm_args.get("affine").and_then(Value::as_bool).unwrap_or(false) }
            }
            "batch" => NormKind::Batch,
            "none" => NormKind::None,
            other => bail!("norm {other:?} is not supported (use instance, batch or none)"),
        };
        let norm_eps = norm_args.get("eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32;
        let upsample = match v.get("upsample").and_then(Value::as_str).unwrap_or("deconv") {
            "deconv" => Upsample::Deconv,
            "nontrainable" => Upsample::NonTrainable,
            other => bail!("upsample {other:?} is not supported (use deconv or nontrainable)"),
        };
        Ok(Self {
            spatial_dims,
            in_channels: usize_field("in_channels", 1)?,
            out_channels: usize_field("out_channels", 2)?,
            features,
            act,
            norm,
            norm_eps,
            bias: v.get("bias").and_then(Value::as_bool).unwrap_or(true),
            upsample,
            input_size: v.get("input_size").map(|_| usize_field("input_size", 256)).transpose()?,
            patch_size: v.get("patch_size").map(patch_size).transpose()?,
            orientation: match v.get("layout").map(|l| l.as_str().unwrap_or_default()) {
                None | Some("radiological") => Orientation::Radiological,
                Some("voxel") => Orientation::Voxel([2, 1, 0]),
                Some(other) => Orientation::Axes(other.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "layout {other:?} is not supported (radiological, voxel, or an axis code such as RAS)"
                    )
                })?),
            },
            modalities: v.get("modalities").map(modalities).transpose()?,
        })
    }
}

/// `modalities`: a non-empty list of "ct" and "mr" (any case; "mri" too).
fn modalities(v: &Value) -> Result<Vec<Modality>> {
    let names = v.as_array().filter(|a| !a.is_empty());
    let list: Option<Vec<Modality>> = names.and_then(|a| {
        a.iter()
            .map(|m| match m.as_str()?.to_lowercase().as_str() {
                "ct" => Some(Modality::Ct),
                "mr" | "mri" => Some(Modality::Mr),
                _ => None,
            })
            .collect()
    });
    list.with_context(|| format!("modalities must be a non-empty list of \"ct\" and \"mr\", got {v}"))
}

impl UNetConfig {
    /// A conv weight's shape: (a, b, k, k) in 2-D, (a, b, k, k, k) in 3-D.
    fn kernel(&self, a: usize, b: usize, k: usize) -> Vec<usize> {
        let mut shape = vec![a, b];
        shape.resize(2 + self.spatial_dims, k);
        shape
    }
}

/// A 3-D patch (D, H, W) of three sides >= 16 (`patch_size`, a bundle's `roi_size`).
pub(crate) fn patch_size(p: &Value) -> Result<[usize; 3]> {
    let sides: Option<Vec<usize>> =
        p.as_array().and_then(|a| a.iter().map(|x| x.as_u64().filter(|&n| n >= 16).map(|n| n as usize)).collect());
    match sides.as_deref() {
        Some(&[d, h, w]) => Ok([d, h, w]),
        _ => bail!("patch_size must be three integers >= 16 (D, H, W), got {p}"),
    }
}

/// Instance norm's optional affine (gamma, beta).
pub(crate) type InstanceNorm<T> = (Option<T>, Option<T>);

/// Folds an eval-mode batch norm (a per-channel affine map) into the conv before it: weight (Cout, ...)
/// scaled per output channel, bias created when the conv had none.
pub(crate) fn fold_batch_norm(
    weight: &mut Tensor,
    bias: &mut Option<Tensor>,
    [g, b, mean, var]: [Tensor; 4],
    eps: f32,
) {
    let cout = g.len();
    let bias_vals = bias.get_or_insert_with(|| Tensor::zeros(&[cout]));
    let per_out = weight.len() / cout;
    for co in 0..cout {
        let scale = g.data()[co] / (var.data()[co] + eps).sqrt();
        weight.data_mut()[co * per_out..(co + 1) * per_out].iter_mut().for_each(|w| *w *= scale);
        let bv = &mut bias_vals.data_mut()[co];
        *bv = (*bv - mean.data()[co]) * scale + b.data()[co];
    }
}

/// conv (+ folded batch norm) -> instance norm? -> activation.
struct ConvUnit<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
    instance_norm: Option<InstanceNorm<B::Tensor>>,
}

struct TwoConv<B: Backend> {
    convs: [ConvUnit<B>; 2],
}

struct UpCat<B: Backend> {
    /// Deconv weight (Cin, Cup, 2, 2) or nontrainable preconv (Cup, Cin, 1, 1); absent for a
    /// nontrainable upsample without channel change.
    up_weight: Option<B::Tensor>,
    up_bias: Option<B::Tensor>,
    convs: TwoConv<B>,
}

/// MONAI BasicUNet (2-D or 3-D) on a backend, weights under their state_dict names.
pub struct BasicUNet<B: Backend> {
    config: UNetConfig,
    conv_0: TwoConv<B>,
    downs: Vec<TwoConv<B>>,
    ups: Vec<UpCat<B>>,
    final_weight: B::Tensor,
    final_bias: B::Tensor,
}

struct Loader<'a, 'b, B: Backend> {
    backend: &'b B,
    params: ParamReader<'a>,
    config: &'b UNetConfig,
}

impl<B: Backend> Loader<'_, '_, B> {
    fn up(&self, t: &Tensor) -> Result<B::Tensor> {
        self.backend.upload(t)
    }

    fn conv_unit(&mut self, prefix: &str, cin: usize, cout: usize) -> Result<ConvUnit<B>> {
        let mut weight = self.params.take(&format!("{prefix}.conv.weight"), &self.config.kernel(cout, cin, 3));
        let mut bias = self.config.bias.then(|| self.params.take(&format!("{prefix}.conv.bias"), &[cout]));
        let norm = |p: &mut ParamReader, leaf: &str| p.take(&format!("{prefix}.adn.N.{leaf}"), &[cout]);
        let mut instance_norm = None;
        match self.config.norm {
            NormKind::Batch => {
                let stats = ["weight", "bias", "running_mean", "running_var"].map(|leaf| norm(&mut self.params, leaf));
                fold_batch_norm(&mut weight, &mut bias, stats, self.config.norm_eps);
            }
            NormKind::Instance { affine } => {
                let affine_params = if affine {
                    let (g, b) = (norm(&mut self.params, "weight"), norm(&mut self.params, "bias"));
                    (Some(self.up(&g)?), Some(self.up(&b)?))
                } else {
                    (None, None)
                };
                instance_norm = Some(affine_params);
            }
            NormKind::None => {}
        }
        Ok(ConvUnit { weight: self.up(&weight)?, bias: bias.map(|b| self.up(&b)).transpose()?, instance_norm })
    }

    fn two_conv(&mut self, prefix: &str, cin: usize, cout: usize) -> Result<TwoConv<B>> {
        Ok(TwoConv {
            convs: [
                self.conv_unit(&format!("{prefix}.conv_0"), cin, cout)?,
                self.conv_unit(&format!("{prefix}.conv_1"), cout, cout)?,
            ],
        })
    }

    /// MONAI UpCat(in_chns, cat_chns, out_chns, halves).
    fn upcat(&mut self, prefix: &str, cin: usize, cat: usize, cout: usize, halves: bool) -> Result<UpCat<B>> {
        let cup = if halves { cin / 2 } else { cin };
        let bias = self.config.bias;
        let (w, b) = match self.config.upsample {
            Upsample::Deconv => (
                Some(self.params.take(&format!("{prefix}.upsample.deconv.weight"), &self.config.kernel(cin, cup, 2))),
                bias.then(|| self.params.take(&format!("{prefix}.upsample.deconv.bias"), &[cup])),
            ),
            Upsample::NonTrainable if cup != cin => (
                Some(self.params.take(&format!("{prefix}.upsample.preconv.weight"), &self.config.kernel(cup, cin, 1))),
                bias.then(|| self.params.take(&format!("{prefix}.upsample.preconv.bias"), &[cup])),
            ),
            Upsample::NonTrainable => (None, None),
        };
        Ok(UpCat {
            up_weight: w.map(|t| self.up(&t)).transpose()?,
            up_bias: b.map(|t| self.up(&t)).transpose()?,
            convs: self.two_conv(&format!("{prefix}.convs"), cat + cup, cout)?,
        })
    }
}

impl<B: Backend> BasicUNet<B> {
    /// Loads `dir/config.json` and `dir/model.safetensors`.
    pub fn load_dir(backend: &B, dir: &Path) -> Result<Self> {
        let load = || {
            let (config, weights) = open_model_dir(dir, "U-Net", UNetConfig::from_json)?;
            Self::load(backend, config, &weights)
        };
        load().map_err(|e| Error::input(dir, e))
    }

    /// Builds the network from `config` and `weights`, listing every mismatch at once.
    pub fn load(backend: &B, config: UNetConfig, weights: &WeightsFile) -> Result<Self> {
        Self::build(backend, config, ParamReader::new(weights))
    }

    /// A randomly initialised model of any configuration (benches, shape tests).
    pub fn random(backend: &B, config: UNetConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, ParamReader::random(seed))
    }

    fn build(backend: &B, config: UNetConfig, params: ParamReader) -> Result<Self> {
        let f = config.features;
        let mut l = Loader { backend, params, config: &config };
        let conv_0 = l.two_conv("conv_0", config.in_channels, f[0])?;
        let downs =
            (1..=4).map(|i| l.two_conv(&format!("down_{i}.convs"), f[i - 1], f[i])).collect::<Result<Vec<_>>>()?;
        let ups = vec![
            l.upcat("upcat_4", f[4], f[3], f[3], true)?,
            l.upcat("upcat_3", f[3], f[2], f[2], true)?,
            l.upcat("upcat_2", f[2], f[1], f[1], true)?,
            l.upcat("upcat_1", f[1], f[0], f[5], false)?,
        ];
        let fw = l.params.take("final_conv.weight", &config.kernel(config.out_channels, f[5], 1));
        // final_conv always has a bias in MONAI (plain Conv, bias=True).
        let fb = l.params.take("final_conv.bias", &[config.out_channels]);
        let (final_weight, final_bias) = (l.up(&fw)?, l.up(&fb)?);
        l.params.finish(&["num_batches_tracked"])?;
        Ok(Self { config, conv_0, downs, ups, final_weight, final_bias })
    }

    /// The configuration.
    pub fn config(&self) -> &UNetConfig {
        &self.config
    }

    fn volumetric(&self) -> bool {
        self.config.spatial_dims == 3
    }

    /// Stride-1 conv over [x, extra] with padding `pad` on every axis, then `act`. In 2-D the device
    /// reads both inputs in place and applies `act` in the epilogue; the 3-D path composes the calls.
    #[allow(clippy::too_many_arguments)]
    fn conv(
        &self,
        b: &B,
        x: &B::Tensor,
        extra: Option<&B::Tensor>,
        weight: &B::Tensor,
        bias: Option<&B::Tensor>,
        pad: usize,
        act: Activation,
    ) -> Result<B::Tensor> {
        if !self.volumetric() {
            return b.conv2d_fused(x, extra, weight, bias, pad, act);
        }
        let joined;
        let input = match extra {
            Some(e) => {
                joined = b.concat_channels(x, e)?;
                &joined
            }
            None => x,
        };
        let mut y = b.conv3d(input, weight, bias, [1; 3], [pad; 3])?;
        b.activate(&mut y, act)?;
        Ok(y)
    }

    /// conv over [x, extra] -> norm -> activation; in 2-D the norm, and without it the activation, ride in
    /// the conv's epilogue.
    fn conv_unit(&self, b: &B, x: &B::Tensor, extra: Option<&B::Tensor>, u: &ConvUnit<B>) -> Result<B::Tensor> {
        let act = self.config.act;
        match &u.instance_norm {
            Some((gamma, beta)) if !self.volumetric() => {
                let norm = PlaneNorm { gamma: gamma.as_ref(), beta: beta.as_ref(), eps: self.config.norm_eps, act };
                b.conv2d_norm(x, extra, &u.weight, u.bias.as_ref(), 1, &norm)
            }
            Some((g, bt)) => {
                let mut y = self.conv(b, x, extra, &u.weight, u.bias.as_ref(), 1, Activation::Identity)?;
                b.instance_norm(&mut y, g.as_ref(), bt.as_ref(), self.config.norm_eps, act)?;
                Ok(y)
            }
            None => self.conv(b, x, extra, &u.weight, u.bias.as_ref(), 1, act),
        }
    }

    /// Bilinear (trilinear) 2x with align_corners = true, MONAI's nontrainable upsampling.
    fn upsample2x(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        if !self.volumetric() {
            return b.upsample_bilinear2x(x);
        }
        let s = b.shape(x);
        b.upsample_trilinear(x, [2 * s[2], 2 * s[3], 2 * s[4]], true)
    }

    fn two_conv(&self, b: &B, x: &B::Tensor, extra: Option<&B::Tensor>, t: &TwoConv<B>) -> Result<B::Tensor> {
        let y = self.conv_unit(b, x, extra, &t.convs[0])?;
        self.conv_unit(b, &y, None, &t.convs[1])
    }

    fn upcat(&self, b: &B, x: &B::Tensor, skip: &B::Tensor, u: &UpCat<B>) -> Result<B::Tensor> {
        let up = match (self.config.upsample, &u.up_weight) {
            (Upsample::Deconv, Some(w)) if self.volumetric() => {
                b.conv_transpose3d(x, w, u.up_bias.as_ref(), Transposed::kernel_stride([2; 3]))?
            }
            (Upsample::Deconv, Some(w)) => b.conv_transpose2d(x, w, u.up_bias.as_ref())?,
            (Upsample::NonTrainable, Some(w)) => {
                self.upsample2x(b, &self.conv(b, x, None, w, u.up_bias.as_ref(), 0, Activation::Identity)?)?
            }
            _ => self.upsample2x(b, x)?,
        };
        // Odd skips: grow the upsampled tensor to the skip's size by replicating its last samples.
        let target = b.shape(skip)[2..].to_vec();
        let up = match target[..] {
            _ if b.shape(&up)[2..] == target[..] => up,
            [h, w] => b.pad_replicate_end(&up, h, w)?,
            [d, h, w] => b.pad_replicate_end3d(&up, [d, h, w])?,
            _ => bail!("U-Net skip of shape {:?}", b.shape(skip)),
        };
        self.two_conv(b, skip, Some(&up), &u.convs)
    }

    /// Logits (N, out_channels, spatial...) for a batch (N, in_channels, H, W), or (N, in_channels, D, H,
    /// W) for a 3-D model; every spatial side must be >= 16 (four 2x poolings).
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let y = self.forward_features(b, x)?;
        self.conv(b, &y, None, &self.final_weight, Some(&self.final_bias), 0, Activation::Identity)
    }

    /// The last layer, a 1x1 convolution with no activation after it: (weight, bias).
    pub fn head(&self) -> (&B::Tensor, &B::Tensor) {
        (&self.final_weight, &self.final_bias)
    }

    /// What [`Self::head`] turns into the logits: the features of the last decoder level.
    pub fn forward_features(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let shape = b.shape(x);
        let axes = if self.volumetric() { "D, H, W" } else { "H, W" };
        ensure!(
            shape.len() == 2 + self.config.spatial_dims && shape[1] == self.config.in_channels,
            "this {}-D U-Net expects input (N, {}, {axes}), got {shape:?}",
            self.config.spatial_dims,
            self.config.in_channels
        );
        ensure!(
            shape[2..].iter().all(|&v| v >= 16),
            "U-Net input must be at least 16 on every axis, got {:?}",
            &shape[2..]
        );
        let mut skips = vec![self.two_conv(b, x, None, &self.conv_0)?];
        for down in &self.downs {
            let last = skips.last().expect("non-empty");
            let pooled = if self.volumetric() { b.max_pool3d(last, [2; 3])? } else { b.max_pool2d(last, 2)? };
            skips.push(self.two_conv(b, &pooled, None, down)?);
        }
        let mut y = skips.pop().expect("five levels");
        for up in &self.ups {
            y = self.upcat(b, &y, &skips.pop().expect("one skip per level"), up)?;
        }
        Ok(y)
    }

    /// Class probabilities: softmax over channels of `forward_logits`.
    pub fn forward(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let mut y = self.forward_logits(b, x)?;
        b.softmax_channels(&mut y)?;
        Ok(y)
    }

    /// Multiply-adds of one forward at the spatial size `dims` (H, W or D, H, W), times two: the FLOP
    /// count benches report.
    pub fn flops(&self, dims: &[usize]) -> f64 {
        let f = self.config.features;
        let taps = |k: usize| k.pow(dims.len() as u32) as f64;
        let conv3 = |cin: usize, cout: usize, hw: f64| 2.0 * taps(3) * (cin * cout) as f64 * hw;
        let hw = |level: usize| dims.iter().map(|&d| (d >> level) as f64).product::<f64>();
        let mut total = conv3(self.config.in_channels, f[0], hw(0)) + conv3(f[0], f[0], hw(0));
        for i in 1..=4 {
            total += conv3(f[i - 1], f[i], hw(i)) + conv3(f[i], f[i], hw(i));
        }
        let ups = [
            (f[4], f[3], f[3], true, 3),
            (f[3], f[2], f[2], true, 2),
            (f[2], f[1], f[1], true, 1),
            (f[1], f[0], f[5], false, 0),
        ];
        for (cin, cat, cout, halves, level) in ups {
            let cup = if halves { cin / 2 } else { cin };
            total += 2.0
                * (cin * cup) as f64
                * hw(level + 1)
                * if self.config.upsample == Upsample::Deconv { taps(2) } else { 1.0 };
            total += conv3(cat + cup, cout, hw(level)) + conv3(cout, cout, hw(level));
        }
        total + 2.0 * (f[5] * self.config.out_channels) as f64 * hw(0)
    }
}
