//! nnU-Net v2 result folders: `PlainConvUNet` and `ResidualEncoderUNet` (dynamic_network_architectures)
//! rebuilt from `plans.json`'s architecture block, weights from `fold_K/checkpoint_final.pth`, class
//! names from `dataset.json`, the CT intensity normalisation from the plans' foreground properties.
//!
//! One code path for 2-D and 3-D: a `2d` configuration runs the 3-D layers on one-slice volumes
//! (kernels (1, k, k)), which is exact because every op then sees a depth of one.
//!
//! Structure (dynamic_network_architectures 0.4): every conv unit is conv (padding (k-1)/2) -> dropout
//! (identity at inference) -> norm -> nonlinearity. PlainConvUNet's encoder stage s is `n_conv_per_stage[s]`
//! units, the first strided by `strides[s]`; ResidualEncoderUNet has a one-unit stem, then stages of
//! BasicBlockD (unit, unit without nonlinearity, + skip, nonlinearity; the skip is avg-pool by the stride
//! and a 1x1 conv + norm where the shape changes). The decoder upsamples by a transposed conv (kernel =
//! stride), concatenates [upsampled, skip] and runs `n_conv_per_stage_decoder` units; the last stage's
//! 1x1 `seg_layers` conv gives the logits (the other seg layers are deep supervision, unused here).
//! `nnUNetPredictor` averages the folds' logits; so does [`NnUNet::forward_logits`].

use super::unet::{fold_batch_norm, InstanceNorm, NormKind};
use crate::backend::volume::Transposed;
use crate::backend::{Activation, Backend};
use crate::error::Error;
use crate::preprocess::{Intensity, Orientation};
use crate::resample::{Orders, Resampling};
use crate::tensor::Tensor;
use crate::weights::{ParamReader, WeightsFile};
use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The two nnU-Net v2 network classes.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Architecture {
    /// `PlainConvUNet` (the default planner's).
    Plain,
    /// `ResidualEncoderUNet` with BasicBlockD (the ResEnc M/L/XL presets').
    ResidualEncoder,
}

impl Architecture {
    /// The class name as the plans write it.
    pub fn name(self) -> &'static str {
        match self {
            Architecture::Plain => "PlainConvUNet",
            Architecture::ResidualEncoder => "ResidualEncoderUNet",
        }
    }
}

/// A network of one configuration of the plans; 2-D axes are held as (1, h, w).
#[derive(Clone, Debug, PartialEq)]
pub struct DynamicUNetConfig {
    /// Network class.
    pub architecture: Architecture,
    /// 2 or 3.
    pub spatial_dims: usize,
    /// Input channels (dataset.json's channel_names).
    pub in_channels: usize,
    /// Output classes (dataset.json's labels).
    pub num_classes: usize,
    /// Width of every stage.
    pub features: Vec<usize>,
    /// Kernel of every stage (D, H, W).
    pub kernels: Vec<[usize; 3]>,
    /// Stride into every stage (D, H, W).
    pub strides: Vec<[usize; 3]>,
    /// Conv units (PlainConvUNet) or residual blocks (ResidualEncoderUNet) of every encoder stage.
    pub encoder_depth: Vec<usize>,
    /// Conv units of every decoder stage, deepest first.
    pub decoder_depth: Vec<usize>,
    /// Whether convolutions have biases.
    pub conv_bias: bool,
    /// Norm after each conv.
    pub norm: NormKind,
    /// Norm epsilon.
    pub norm_eps: f32,
    /// Nonlinearity.
    pub act: Activation,
    /// conv -> nonlinearity -> norm instead of conv -> norm -> nonlinearity.
    pub nonlin_first: bool,
    /// ResidualEncoderUNet's stem width (default: the first stage's).
    pub stem_channels: usize,
}

fn usize_list(v: &Value, what: &str) -> Result<Vec<usize>> {
    v.as_array()
        .and_then(|a| a.iter().map(|x| x.as_u64().filter(|&n| n > 0).map(|n| n as usize)).collect())
        .with_context(|| format!("{what} must be a list of positive integers, got {v}"))
}

/// A per-stage entry: an int for every stage, or a list with one entry per stage.
fn per_stage(v: Option<&Value>, stages: usize, what: &str) -> Result<Vec<usize>> {
    let v = v.with_context(|| format!("the architecture has no {what}"))?;
    let list = match v.as_u64() {
        Some(n) if n > 0 => vec![n as usize; stages],
        _ => usize_list(v, what)?,
    };
    ensure!(list.len() == stages, "{what} has {} entries for {stages} stages", list.len());
    Ok(list)
}

/// Kernel sizes or strides: per stage an int or a list of `dims` ints, held as (D, H, W).
fn per_stage_axes(v: Option<&Value>, stages: usize, dims: usize, what: &str) -> Result<Vec<[usize; 3]>> {
    let v = v.with_context(|| format!("the architecture has no {what}"))?;
    let entries: Vec<Value> = match v {
        Value::Array(a) => a.clone(),
        scalar => vec![scalar.clone(); stages],
    };
    ensure!(entries.len() == stages, "{what} has {} entries for {stages} stages", entries.len());
    entries
        .iter()
        .map(|e| {
            let axes = match e.as_u64() {
                Some(n) if n > 0 => vec![n as usize; dims],
                _ => usize_list(e, what)?,
            };
            ensure!(axes.len() == dims, "{what}: entry {e} has {} axes for a {dims}-D network", axes.len());
            Ok(if dims == 2 { [1, axes[0], axes[1]] } else { [axes[0], axes[1], axes[2]] })
        })
        .collect()
}

/// The last component of a dotted Python name.
fn short_name(v: &Value) -> Option<&str> {
    v.as_str().map(|s| s.rsplit('.').next().unwrap_or(s))
}

impl DynamicUNetConfig {
    /// Parses a plans configuration's `architecture` block for a network with `in_channels` inputs and
    /// `num_classes` outputs; anything xaiclip cannot run exactly is refused, named.
    pub fn from_architecture(arch: &Value, in_channels: usize, num_classes: usize) -> Result<Self> {
        let class = arch
            .get("network_class_name")
            .and_then(short_name)
            .context("the architecture has no network_class_name (plans from nnU-Net before v2.4 are not supported)")?;
        let architecture = match class {
            "PlainConvUNet" => Architecture::Plain,
            "ResidualEncoderUNet" => Architecture::ResidualEncoder,
            other => bail!("network {other} is not supported (PlainConvUNet and ResidualEncoderUNet are)"),
        };
        let kw = arch.get("arch_kwargs").and_then(Value::as_object).context("the architecture has no arch_kwargs")?;
        let known = [
            "n_stages",
            "features_per_stage",
            "conv_op",
            "kernel_sizes",
            "strides",
            "n_conv_per_stage",
            "n_blocks_per_stage",
            "n_conv_per_stage_decoder",
            "conv_bias",
            "norm_op",
            "norm_op_kwargs",
            "dropout_op",
            "dropout_op_kwargs",
            "nonlin",
            "nonlin_kwargs",
            "deep_supervision",
            "nonlin_first",
            "block",
            "bottleneck_channels",
            "stem_channels",
        ];
        if let Some(k) = kw.keys().find(|k| !known.contains(&k.as_str())) {
            bail!("arch_kwargs.{k} is not supported ({} {})", class, kw[k]);
        }
        let stages =
            kw.get("n_stages").and_then(Value::as_u64).filter(|&n| n >= 2).context("n_stages must be >= 2")? as usize;
        let spatial_dims = match kw.get("conv_op").and_then(short_name) {
            Some("Conv2d") => 2,
            Some("Conv3d") => 3,
            other => bail!("conv_op {other:?} is not supported (Conv2d or Conv3d)"),
        };
        let (norm, norm_eps) = {
            let kwargs = kw.get("norm_op_kwargs").filter(|v| !v.is_null());
            let eps = kwargs.and_then(|k| k.get("eps")).and_then(Value::as_f64).unwrap_or(1e-5) as f32;
            let affine = kwargs.and_then(|k| k.get("affine")).and_then(Value::as_bool);
            match kw.get("norm_op").and_then(short_name) {
                // torch's InstanceNorm is affine only when asked; BatchNorm is affine by default.
                Some("InstanceNorm2d" | "InstanceNorm3d") => {
                    (NormKind::Instance { affine: affine.unwrap_or(false) }, eps)
                }
                Some("BatchNorm2d" | "BatchNorm3d") if affine != Some(false) => (NormKind::Batch, eps),
                None => (NormKind::None, eps),
                Some(other) => bail!("norm_op {other} is not supported (InstanceNorm or affine BatchNorm)"),
            }
        };
        let act = {
            let slope = kw.get("nonlin_kwargs").and_then(|k| k.get("negative_slope")).and_then(Value::as_f64);
            match kw.get("nonlin").and_then(short_name) {
                Some("LeakyReLU") => Activation::LeakyRelu(slope.unwrap_or(0.01) as f32),
                Some("ReLU") => Activation::Relu,
                Some("GELU") => Activation::Gelu,
                None => Activation::Identity,
                Some(other) => bail!("nonlin {other} is not supported (LeakyReLU, ReLU or GELU)"),
            }
        };
        let nonlin_first = kw.get("nonlin_first").and_then(Value::as_bool).unwrap_or(false);
        if nonlin_first && norm == NormKind::Batch {
            bail!("nonlin_first with BatchNorm is not supported");
        }
        if let Some(block) = kw.get("block").and_then(short_name).filter(|b| *b != "BasicBlockD") {
            bail!("block {block} is not supported (BasicBlockD is)");
        }
        let features = per_stage(kw.get("features_per_stage"), stages, "features_per_stage")?;
        let encoder_key = match architecture {
            Architecture::Plain => "n_conv_per_stage",
            Architecture::ResidualEncoder => "n_blocks_per_stage",
        };
        let stem_channels = match kw.get("stem_channels") {
            None | Some(Value::Null) => features[0],
            Some(v) => v.as_u64().filter(|&n| n > 0).with_context(|| format!("stem_channels {v}"))? as usize,
        };
        let config = Self {
            architecture,
            spatial_dims,
            in_channels,
            num_classes,
            kernels: per_stage_axes(kw.get("kernel_sizes"), stages, spatial_dims, "kernel_sizes")?,
            strides: per_stage_axes(kw.get("strides"), stages, spatial_dims, "strides")?,
            encoder_depth: per_stage(kw.get(encoder_key), stages, encoder_key)?,
            decoder_depth: per_stage(kw.get("n_conv_per_stage_decoder"), stages - 1, "n_conv_per_stage_decoder")?,
            features,
            conv_bias: kw.get("conv_bias").and_then(Value::as_bool).unwrap_or(false),
            norm,
            norm_eps,
            act,
            nonlin_first,
            stem_channels,
        };
        if let Some(k) = config.kernels.iter().flatten().find(|&&k| k % 2 == 0) {
            bail!("kernel size {k}: nnU-Net's 'same' padding needs odd kernels");
        }
        Ok(config)
    }

    /// Total downsampling per axis (D, H, W): inputs must be multiples of it.
    pub fn total_stride(&self) -> [usize; 3] {
        let mut total = [1; 3];
        for s in &self.strides {
            (0..3).for_each(|a| total[a] *= s[a]);
        }
        total
    }

    /// A weight shape: (a, b, kernel) with the kernel in the checkpoint's own rank.
    fn shape(&self, a: usize, b: usize, k: [usize; 3]) -> Vec<usize> {
        let mut s = vec![a, b];
        s.extend_from_slice(&k[3 - self.spatial_dims..]);
        s
    }
}

/// conv -> norm -> nonlinearity (or conv -> nonlinearity -> norm), on one-slice volumes in 2-D.
struct Unit<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
    stride: [usize; 3],
    pad: [usize; 3],
    instance_norm: Option<InstanceNorm<B::Tensor>>,
    act: Activation,
}

enum Block<B: Backend> {
    /// Conv units in a row.
    Plain(Vec<Unit<B>>),
    /// BasicBlockD: act(unit2(unit1(x)) + skip(x)); `skip` is the folded avg-pool + 1x1 conv + norm.
    Residual { units: [Unit<B>; 2], skip: Option<Unit<B>>, act: Activation },
}

struct DecoderStage<B: Backend> {
    up_weight: B::Tensor,
    up: Transposed,
    up_bias: Option<B::Tensor>,
    units: Vec<Unit<B>>,
}

/// One fold's network.
pub struct DynamicUNet<B: Backend> {
    config: DynamicUNetConfig,
    stem: Option<Unit<B>>,
    encoder: Vec<Vec<Block<B>>>,
    decoder: Vec<DecoderStage<B>>,
    seg_weight: B::Tensor,
    seg_bias: B::Tensor,
}

struct Loader<'a, 'b, B: Backend> {
    backend: &'b B,
    params: ParamReader<'a>,
    config: &'b DynamicUNetConfig,
}

impl<B: Backend> Loader<'_, '_, B> {
    /// A weight read in the checkpoint's rank and held as 3-D (one-slice kernels in 2-D).
    fn weight(&mut self, name: &str, a: usize, b: usize, k: [usize; 3]) -> Result<B::Tensor> {
        let t = self.params.take(name, &self.config.shape(a, b, k));
        self.backend.upload(&t.reshape(&[a, b, k[0], k[1], k[2]])?)
    }

    fn vector(&mut self, name: &str, n: usize) -> Tensor {
        self.params.take(name, &[n])
    }

    /// ConvDropoutNormReLU at `prefix` (its `conv` and `norm` children).
    fn unit(
        &mut self,
        prefix: &str,
        (cin, cout): (usize, usize),
        kernel: [usize; 3],
        stride: [usize; 3],
        bias: bool,
        act: Activation,
    ) -> Result<Unit<B>> {
        let pad = kernel.map(|k| (k - 1) / 2);
        let mut weight = self.params.take(&format!("{prefix}.conv.weight"), &self.config.shape(cout, cin, kernel));
        let mut bias = bias.then(|| self.vector(&format!("{prefix}.conv.bias"), cout));
        let mut instance_norm = None;
        match self.config.norm {
            NormKind::Batch => {
                let stats = ["weight", "bias", "running_mean", "running_var"]
                    .map(|leaf| self.vector(&format!("{prefix}.norm.{leaf}"), cout));
                fold_batch_norm(&mut weight, &mut bias, stats, self.config.norm_eps);
            }
            NormKind::Instance { affine } => {
                instance_norm = Some(if affine {
                    let g = self.vector(&format!("{prefix}.norm.weight"), cout);
                    let b = self.vector(&format!("{prefix}.norm.bias"), cout);
                    (Some(self.backend.upload(&g)?), Some(self.backend.upload(&b)?))
                } else {
                    (None, None)
                });
            }
            NormKind::None => {}
        }
        let weight = self.backend.upload(&weight.reshape(&[cout, cin, kernel[0], kernel[1], kernel[2]])?)?;
        Ok(Unit { weight, bias: bias.map(|b| self.backend.upload(&b)).transpose()?, stride, pad, instance_norm, act })
    }

    /// BasicBlockD at `prefix`.
    fn residual(
        &mut self,
        prefix: &str,
        (cin, cout): (usize, usize),
        kernel: [usize; 3],
        stride: [usize; 3],
    ) -> Result<Block<B>> {
        let (bias, act) = (self.config.conv_bias, self.config.act);
        let units = [
            self.unit(&format!("{prefix}.conv1"), (cin, cout), kernel, stride, bias, act)?,
            self.unit(&format!("{prefix}.conv2"), (cout, cout), kernel, [1; 3], bias, Activation::Identity)?,
        ];
        let strided = stride != [1; 3];
        let skip = if cin != cout {
            // skip = [AvgPool(stride)], 1x1 conv without bias, norm. The average pool then 1x1 conv is
            // one conv with kernel = stride and the 1x1 weights spread evenly over the window (exact).
            let at = if strided { "skip.1" } else { "skip.0" };
            let mut unit =
                self.unit(&format!("{prefix}.{at}"), (cin, cout), [1; 3], [1; 3], false, Activation::Identity)?;
            if strided {
                let w = self.backend.download(&unit.weight)?;
                let taps: usize = stride.iter().product();
                let spread: Vec<f32> =
                    w.data().iter().flat_map(|&v| std::iter::repeat_n(v / taps as f32, taps)).collect();
                unit.weight =
                    self.backend.upload(&Tensor::new(&[cout, cin, stride[0], stride[1], stride[2]], spread)?)?;
                unit.stride = stride;
            }
            Some(unit)
        } else if strided {
            bail!("{prefix}: a strided residual block without a channel change is not supported");
        } else {
            None
        };
        Ok(Block::Residual { units, skip, act })
    }
}

impl<B: Backend> DynamicUNet<B> {
    /// Builds the network from `config` and a checkpoint's state dict, listing every mismatch at once.
    pub fn load(backend: &B, config: DynamicUNetConfig, weights: &WeightsFile) -> Result<Self> {
        Self::build(backend, config, ParamReader::new(weights))
    }

    /// A randomly initialised network (shape tests, benches).
    pub fn random(backend: &B, config: DynamicUNetConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, ParamReader::random(seed))
    }

    fn build(backend: &B, config: DynamicUNetConfig, params: ParamReader) -> Result<Self> {
        let c = &config;
        let mut l = Loader { backend, params, config: c };
        let (bias, act) = (c.conv_bias, c.act);
        let stages = c.features.len();
        let mut stem = None;
        let mut cin = c.in_channels;
        if c.architecture == Architecture::ResidualEncoder {
            stem = Some(l.unit("encoder.stem.convs.0", (cin, c.stem_channels), c.kernels[0], [1; 3], bias, act)?);
            cin = c.stem_channels;
        }
        let mut encoder = Vec::with_capacity(stages);
        for s in 0..stages {
            let mut blocks = Vec::new();
            for i in 0..c.encoder_depth[s] {
                let stride = if i == 0 { c.strides[s] } else { [1; 3] };
                let io = (if i == 0 { cin } else { c.features[s] }, c.features[s]);
                blocks.push(match c.architecture {
                    Architecture::Plain => Block::Plain(vec![l.unit(
                        &format!("encoder.stages.{s}.0.convs.{i}"),
                        io,
                        c.kernels[s],
                        stride,
                        bias,
                        act,
                    )?]),
                    Architecture::ResidualEncoder => {
                        l.residual(&format!("encoder.stages.{s}.blocks.{i}"), io, c.kernels[s], stride)?
                    }
                });
            }
            encoder.push(blocks);
            cin = c.features[s];
        }
        let mut decoder = Vec::with_capacity(stages - 1);
        for s in 1..stages {
            let (below, skip) = (c.features[stages - s], c.features[stages - s - 1]);
            let stride = c.strides[stages - s];
            let up_weight = l.weight(&format!("decoder.transpconvs.{}.weight", s - 1), below, skip, stride)?;
            let up_bias = bias.then(|| l.vector(&format!("decoder.transpconvs.{}.bias", s - 1), skip));
            let units = (0..c.decoder_depth[s - 1])
                .map(|i| {
                    let io = (if i == 0 { 2 * skip } else { skip }, skip);
                    l.unit(
                        &format!("decoder.stages.{}.convs.{i}", s - 1),
                        io,
                        c.kernels[stages - s - 1],
                        [1; 3],
                        bias,
                        act,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            decoder.push(DecoderStage {
                up_weight,
                up: Transposed::kernel_stride(stride),
                up_bias: up_bias.map(|b| backend.upload(&b)).transpose()?,
                units,
            });
        }
        let last = stages - 2;
        let seg_weight =
            l.weight(&format!("decoder.seg_layers.{last}.weight"), c.num_classes, c.features[0], [1; 3])?;
        let seg_bias = backend.upload(&l.vector(&format!("decoder.seg_layers.{last}.bias"), c.num_classes))?;
        // Aliases of the same tensors (ConvDropoutNormReLU.all_modules, UNetDecoder.encoder) and the deep
        // supervision heads are in every nnU-Net state dict.
        let deep_supervision = |n: &str| {
            n.strip_prefix("decoder.seg_layers.")
                .and_then(|r| r.split('.').next())
                .and_then(|i| i.parse::<usize>().ok())
                .is_some_and(|i| i < last)
        };
        l.params.finish_except(|n| {
            n.contains(".all_modules.")
                || n.starts_with("decoder.encoder.")
                || n.ends_with("num_batches_tracked")
                || deep_supervision(n)
        })?;
        Ok(Self { config, stem, encoder, decoder, seg_weight, seg_bias })
    }

    /// The configuration.
    pub fn config(&self) -> &DynamicUNetConfig {
        &self.config
    }

    /// Multiplies the logits by `factor` through the 1x1 output conv (linear in its weight and bias),
    /// so that a fold ensemble's mean is a plain sum on the device.
    fn scale_logits(&mut self, b: &B, factor: f32) -> Result<()> {
        for t in [&mut self.seg_weight, &mut self.seg_bias] {
            let mut host = b.download(t)?;
            host.data_mut().iter_mut().for_each(|v| *v *= factor);
            *t = b.upload(&host)?;
        }
        Ok(())
    }

    fn unit(&self, b: &B, x: &B::Tensor, u: &Unit<B>) -> Result<B::Tensor> {
        let mut y = b.conv3d(x, &u.weight, u.bias.as_ref(), u.stride, u.pad)?;
        match &u.instance_norm {
            Some((g, beta)) if self.config.nonlin_first => {
                b.activate(&mut y, u.act)?;
                b.instance_norm(&mut y, g.as_ref(), beta.as_ref(), self.config.norm_eps, Activation::Identity)?;
            }
            Some((g, beta)) => b.instance_norm(&mut y, g.as_ref(), beta.as_ref(), self.config.norm_eps, u.act)?,
            None => b.activate(&mut y, u.act)?,
        }
        Ok(y)
    }

    fn block(&self, b: &B, x: &B::Tensor, block: &Block<B>) -> Result<B::Tensor> {
        match block {
            Block::Plain(units) => {
                let mut y = self.unit(b, x, &units[0])?;
                for u in &units[1..] {
                    y = self.unit(b, &y, u)?;
                }
                Ok(y)
            }
            Block::Residual { units, skip, act } => {
                let mut y = self.unit(b, &self.unit(b, x, &units[0])?, &units[1])?;
                match skip {
                    Some(s) => b.add(&mut y, &self.unit(b, x, s)?)?,
                    None => b.add(&mut y, x)?,
                }
                b.activate(&mut y, *act)?;
                Ok(y)
            }
        }
    }

    /// Logits (N, classes, spatial...) of input (N, in_channels, H, W) for a 2-D network or
    /// (N, in_channels, D, H, W) for a 3-D one; every side must be a multiple of the total stride.
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let c = &self.config;
        let shape = b.shape(x).to_vec();
        let axes = if c.spatial_dims == 3 { "D, H, W" } else { "H, W" };
        ensure!(
            shape.len() == 2 + c.spatial_dims && shape[1] == c.in_channels,
            "this {}-D {} expects input (N, {}, {axes}), got {shape:?}",
            c.spatial_dims,
            c.architecture.name(),
            c.in_channels
        );
        let total = c.total_stride();
        let sides = &shape[2..];
        ensure!(
            sides.iter().zip(&total[3 - c.spatial_dims..]).all(|(&n, &t)| n % t == 0),
            "{} input {sides:?}: every side must be a multiple of the network's total stride {:?}",
            c.architecture.name(),
            &total[3 - c.spatial_dims..]
        );
        let volume = if c.spatial_dims == 2 {
            b.reshape(x.clone(), &[shape[0], shape[1], 1, shape[2], shape[3]])?
        } else {
            x.clone()
        };
        let mut y = match &self.stem {
            Some(stem) => self.unit(b, &volume, stem)?,
            None => volume,
        };
        let mut skips = Vec::with_capacity(self.encoder.len());
        for stage in &self.encoder {
            for block in stage {
                y = self.block(b, &y, block)?;
            }
            skips.push(y.clone());
        }
        let mut y = skips.pop().expect("two or more stages");
        for stage in &self.decoder {
            let up = b.conv_transpose3d(&y, &stage.up_weight, stage.up_bias.as_ref(), stage.up)?;
            y = b.concat_channels(&up, &skips.pop().expect("one skip per decoder stage"))?;
            for u in &stage.units {
                y = self.unit(b, &y, u)?;
            }
        }
        let logits = b.conv3d(&y, &self.seg_weight, Some(&self.seg_bias), [1; 3], [0; 3])?;
        if c.spatial_dims == 2 {
            return b.reshape(logits, &[shape[0], c.num_classes, shape[2], shape[3]]);
        }
        Ok(logits)
    }

    /// Multiply-adds of one forward at the spatial size `dims` (H, W or D, H, W), times two.
    pub fn flops(&self, dims: &[usize]) -> f64 {
        let c = &self.config;
        let mut size = [1usize; 3];
        size[3 - dims.len()..].copy_from_slice(dims);
        let conv = |cin: usize, cout: usize, k: [usize; 3], at: [usize; 3]| {
            2.0 * (cin * cout * k.iter().product::<usize>()) as f64 * at.iter().product::<usize>() as f64
        };
        let mut total = 0.0;
        let mut cin = c.in_channels;
        if c.architecture == Architecture::ResidualEncoder {
            total += conv(cin, c.stem_channels, c.kernels[0], size);
            cin = c.stem_channels;
        }
        let mut sizes = Vec::new();
        for s in 0..c.features.len() {
            size = std::array::from_fn(|a| size[a] / c.strides[s][a]);
            let convs_per_block = if c.architecture == Architecture::Plain { 1 } else { 2 };
            for i in 0..c.encoder_depth[s] {
                let from = if i == 0 { cin } else { c.features[s] };
                total += conv(from, c.features[s], c.kernels[s], size);
                total += (convs_per_block - 1) as f64 * conv(c.features[s], c.features[s], c.kernels[s], size);
            }
            sizes.push(size);
            cin = c.features[s];
        }
        let n = c.features.len();
        for s in 1..n {
            let (below, skip, at) = (c.features[n - s], c.features[n - s - 1], sizes[n - s - 1]);
            total += conv(below, skip, [1; 3], at);
            for i in 0..c.decoder_depth[s - 1] {
                total += conv(if i == 0 { 2 * skip } else { skip }, skip, c.kernels[n - s - 1], at);
            }
        }
        total + conv(c.features[0], c.num_classes, [1; 3], sizes[0])
    }
}

/// nnU-Net's intensity normalisation of the (single) input channel.
#[derive(Clone, Debug, PartialEq)]
pub enum Normalization {
    /// `CTNormalization`: clip to the foreground's [0.5, 99.5] percentiles, subtract its mean, divide
    /// by its std (the plans' foreground_intensity_properties_per_channel).
    Ct {
        #[allow(missing_docs)]
        low: f32,
        #[allow(missing_docs)]
        high: f32,
        #[allow(missing_docs)]
        mean: f32,
        #[allow(missing_docs)]
        std: f32,
    },
    /// `ZScoreNormalization`: subtract the volume's own mean, divide by its own standard deviation
    /// (nnU-Net's scheme for every modality but CT), nothing clipped. `use_mask`: the plans'
    /// use_mask_for_norm (statistics over the nonzero region only).
    ZScore {
        #[allow(missing_docs)]
        use_mask: bool,
    },
    /// Another scheme, by name; refused where an input is prepared.
    Other(String),
}

/// A result folder: the configuration's network for each fold found, the plans' geometry and
/// normalisation, and dataset.json's class names.
pub struct NnUNet<B: Backend> {
    /// The result folder.
    pub dir: PathBuf,
    /// `2d`, `3d_fullres`, ...
    pub configuration: String,
    /// Folds in use, with their checkpoints.
    pub folds: Vec<(String, PathBuf)>,
    /// Class names by output channel (dataset.json `labels`).
    pub classes: Vec<String>,
    /// Patch size of the configuration, its own axis order.
    pub patch_size: Vec<usize>,
    /// Target spacing in mm, its own axis order.
    pub spacing: Vec<f64>,
    /// Normalisation of the input channel.
    pub normalization: Normalization,
    /// How a case is resampled to `spacing` and its logits back, or why xaiclip cannot (refused only
    /// where a case needs resampling).
    pub resampling: std::result::Result<Resampling, String>,
    /// How 2d slices lie on a file's voxels: nnU-Net reads NIfTI as arrays (k, j, i) (SimpleITKIO and
    /// NibabelIO alike), transposes them by `transpose_forward` and slices along the first axis.
    pub orientation: Orientation,
    networks: Vec<DynamicUNet<B>>,
    /// Test-time mirroring: the spatial axes (the network's own order) whose flips are averaged in, as
    /// `nnUNetPredictor(use_mirroring=True)` does with the checkpoint's allowed axes; empty when off.
    mirror_axes: Vec<usize>,
}

/// The configuration's `resampling_fn_data` and `resampling_fn_probabilities` with their kwargs, where
/// they are nnU-Net's default function (`resample_data_or_seg_to_shape`) with orders xaiclip has.
fn resampling(config: &Value) -> std::result::Result<Resampling, String> {
    let orders = |what: &str| -> std::result::Result<Orders, String> {
        let key = format!("resampling_fn_{what}");
        match config.get(&key).and_then(Value::as_str) {
            None | Some("resample_data_or_seg_to_shape") => {}
            Some(other) => return Err(format!("{key} {other} (xaiclip has resample_data_or_seg_to_shape)")),
        }
        let kwargs = config.get(format!("{key}_kwargs")).cloned().unwrap_or_default();
        let default = if what == "data" { Resampling::default().data } else { Resampling::default().probabilities };
        let order = |k: &str, d: u8, allowed: &[u8]| match kwargs.get(k) {
            None => Ok(d),
            Some(v) => v
                .as_u64()
                .and_then(|o| u8::try_from(o).ok())
                .filter(|o| allowed.contains(o))
                .ok_or_else(|| format!("{key}_kwargs {k} {v} (xaiclip has {allowed:?})")),
        };
        if !kwargs.get("force_separate_z").is_none_or(Value::is_null) {
            return Err(format!("{key}_kwargs force_separate_z {} (xaiclip has null)", kwargs["force_separate_z"]));
        }
        Ok(Orders {
            order: order("order", default.order, &[0, 1, 3])?,
            order_z: order("order_z", default.order_z, &[0, 1])?,
        })
    };
    Ok(Resampling { data: orders("data")?, probabilities: orders("probabilities")? })
}

fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}: cannot read", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("{}: invalid JSON", path.display()))
}

/// The configuration `name` of the plans with its `inherits_from` chain resolved (the child's keys win).
fn configuration(plans: &Value, name: &str) -> Result<Value> {
    let all = plans.get("configurations").and_then(Value::as_object).context("plans.json has no configurations")?;
    let mut chain = vec![name.to_string()];
    let mut merged = serde_json::Map::new();
    while let Some(current) = chain.last().cloned() {
        let c = all.get(&current).and_then(Value::as_object).with_context(|| {
            format!(
                "plans.json has no configuration {current:?} (it has {})",
                all.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        for (k, v) in c {
            merged.entry(k.clone()).or_insert_with(|| v.clone());
        }
        match c.get("inherits_from").and_then(Value::as_str) {
            Some(parent) if !chain.iter().any(|p| p == parent) => chain.push(parent.to_string()),
            Some(parent) => bail!("plans.json: configuration {current:?} inherits from {parent:?} in a cycle"),
            None => break,
        }
    }
    Ok(Value::Object(merged))
}

/// Whether `dir` is an nnU-Net result folder (or one fold of one).
pub fn is_result_folder(dir: &Path) -> bool {
    dir.join("plans.json").is_file()
        || (dir.join("checkpoint_final.pth").is_file() && dir.parent().is_some_and(|p| p.join("plans.json").is_file()))
}

/// A result folder's plans for its configuration, before any weights are read.
struct Described {
    root: PathBuf,
    only_fold: Option<String>,
    plans: Value,
    name: String,
    config: Value,
}

fn describe(dir: &Path) -> Result<Described> {
    let (root, only_fold) = if dir.join("plans.json").is_file() {
        (dir.to_path_buf(), None)
    } else {
        let parent = dir.parent().context("not an nnU-Net result folder (no plans.json)")?;
        (parent.to_path_buf(), dir.file_name().map(|f| f.to_string_lossy().into_owned()))
    };
    let plans = read_json(&root.join("plans.json"))?;
    let folder_name = root.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
    let name = folder_name.rsplit("__").next().filter(|_| folder_name.contains("__")).with_context(|| {
        format!("{}: the folder name must be <trainer>__<plans>__<configuration>, as nnU-Net writes it", root.display())
    })?;
    let config = configuration(&plans, name)?;
    Ok(Described { name: name.to_string(), root, only_fold, plans, config })
}

/// A configuration's patch, spacing and axis order, and the multiple its 2-D grids must be: what decides
/// how it sees a volume, read without the weights.
struct Geometry {
    patch_size: Vec<usize>,
    spacing: Vec<f64>,
    orientation: Orientation,
    /// The least common multiple of the network's total stride along rows and columns.
    grid_multiple: usize,
}

impl Described {
    /// The class names by output channel (dataset.json) and the network's configuration (plans.json).
    fn network(&self) -> Result<(Vec<String>, DynamicUNetConfig)> {
        let dataset = read_json(&self.root.join("dataset.json"))?;
        let (classes, in_channels) =
            dataset_classes(&dataset).with_context(|| format!("{}", self.root.join("dataset.json").display()))?;
        let arch = self.config.get("architecture").context("plans.json: the configuration has no architecture")?;
        let net_config = DynamicUNetConfig::from_architecture(arch, in_channels, classes.len())
            .with_context(|| format!("{}: configuration {}", self.root.join("plans.json").display(), self.name))?;
        Ok((classes, net_config))
    }

    fn geometry(&self, network: &DynamicUNetConfig) -> Result<Geometry> {
        let floats = |key: &str| -> Result<Vec<f64>> {
            self.config
                .get(key)
                .and_then(Value::as_array)
                .and_then(|a| a.iter().map(Value::as_f64).collect())
                .with_context(|| format!("plans.json: configuration {} has no {key}", self.name))
        };
        let transpose: Vec<usize> = self
            .plans
            .get("transpose_forward")
            .and_then(Value::as_array)
            .and_then(|a| a.iter().map(|v| v.as_u64().map(|n| n as usize)).collect())
            .unwrap_or_else(|| vec![0, 1, 2]);
        let mut sorted = transpose.clone();
        sorted.sort_unstable();
        ensure!(sorted == [0, 1, 2], "plans.json: transpose_forward {transpose:?} is not a permutation of 0, 1, 2");
        Ok(Geometry {
            patch_size: floats("patch_size")?.iter().map(|&v| v as usize).collect(),
            spacing: floats("spacing")?,
            orientation: Orientation::Voxel(std::array::from_fn(|a| 2 - transpose[a])),
            grid_multiple: grid_multiple(network),
        })
    }
}

/// The least common multiple of the network's total stride along rows and columns.
fn grid_multiple(network: &DynamicUNetConfig) -> usize {
    let [_, h, w] = network.total_stride();
    super::lcm(h, w)
}

impl Geometry {
    /// The default square model grid of a 2d configuration: the longer patch side rounded up to the grid
    /// multiple.
    fn default_grid(&self) -> usize {
        let multiple = self.grid_multiple;
        self.patch_size.iter().max().map_or(multiple, |&p| p.div_ceil(multiple) * multiple)
    }

    /// See [`NnUNet::slice_geometry_warning`].
    fn slice_warning(&self, volume: &crate::io::Volume, grid: usize) -> Option<String> {
        let (Orientation::Voxel([_, h, w]), &[th, tw]) = (self.orientation, &self.spacing[..]) else { return None };
        let s = volume.spacing();
        let shape = [volume.dims[h], volume.dims[w]];
        let resampled: [usize; 2] =
            std::array::from_fn(|a| (s[[h, w][a]] / [th, tw][a] * shape[a] as f64).round_ties_even() as usize);
        let boxed = nonzero_box(volume);
        let mut what = Vec::new();
        if boxed.iter().zip(volume.dims).any(|(r, n)| r.len() != n) {
            what.push("crop it to its nonzero voxels".to_string());
        }
        if resampled != shape {
            what.push(format!(
                "resample its {}x{} slices from {:.3} x {:.3} mm to the plans' {th:.3} x {tw:.3} mm ({}x{})",
                shape[0], shape[1], s[h], s[w], resampled[0], resampled[1]
            ));
        }
        if self.patch_size[..] != [grid, grid] || resampled != [grid, grid] {
            what.push(format!("predict them with its {:?} patch", self.patch_size));
        }
        (!what.is_empty()).then(|| {
            format!(
                "{}: nnUNetPredictor would {}, where xaiclip resizes each slice to the {grid}x{grid} model grid: its labels and logits can differ from nnU-Net's (`xaiclip explain` and `bench` without --size and `segment` of every slice do all of this exactly, as 3d configurations do; the library: `volumes::explain_volume_on` with `VolumeSettings::slice`)",
                volume.source.display(),
                what.join(", ")
            )
        })
    }
}

/// [`NnUNet::slice_geometry_warning`] of the 2d configuration in `dir` at its default grid, read from
/// plans.json and dataset.json without the weights: whether a slice of `volume` resized to that grid
/// differs from what nnUNetPredictor predicts for it. None for a 3d configuration.
pub fn default_slice_warning(dir: &Path, volume: &crate::io::Volume) -> Result<Option<String>> {
    let geometry = describe(dir).and_then(|d| d.geometry(&d.network()?.1)).map_err(|e| Error::input(dir, e))?;
    Ok((geometry.patch_size.len() == 2).then(|| geometry.slice_warning(volume, geometry.default_grid())).flatten())
}

/// The configuration's patch (its length is the rank: 2 or 3), read from plans.json alone.
pub fn patch_of(dir: &Path) -> Option<Vec<usize>> {
    let config = describe(dir).ok()?.config;
    config.get("patch_size")?.as_array()?.iter().map(|v| v.as_f64().map(|n| n as usize)).collect()
}

/// dataset.json's class names by output channel, read without the weights.
pub fn classes_of(dir: &Path) -> Result<Vec<String>> {
    let path = describe(dir)?.root.join("dataset.json");
    Ok(dataset_classes(&read_json(&path)?).with_context(|| path.display().to_string())?.0)
}

impl<B: Backend> NnUNet<B> {
    /// Opens a result folder `<trainer>__<plans>__<configuration>` (every `fold_K` with a checkpoint,
    /// as nnUNetPredictor does) or one `fold_K` inside it.
    pub fn load_dir(backend: &B, dir: &Path) -> Result<Self> {
        Self::open(backend, dir).map_err(|e| Error::input(dir, e))
    }

    fn open(backend: &B, dir: &Path) -> Result<Self> {
        let described = describe(dir)?;
        let (classes, net_config) = described.network()?;
        let geometry = described.geometry(&net_config)?;
        let Described { root, only_fold, plans, name, config } = described;
        let mut folds: Vec<(String, PathBuf)> = std::fs::read_dir(&root)
            .with_context(|| format!("{}: cannot list", root.display()))?
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|f| f.starts_with("fold_") && only_fold.as_ref().is_none_or(|o| o == f))
            .filter_map(|f| {
                ["checkpoint_final.pth", "checkpoint_best.pth"]
                    .iter()
                    .map(|c| root.join(&f).join(c))
                    .find(|p| p.is_file())
                    .map(|p| (f, p))
            })
            .collect();
        folds.sort();
        if folds.is_empty() {
            bail!(
                "{}: no fold_K/checkpoint_final.pth (or checkpoint_best.pth){}",
                root.display(),
                only_fold.map(|f| format!(" in {f}")).unwrap_or_default()
            );
        }
        let mut networks = folds
            .iter()
            .map(|(_, path)| {
                let weights = WeightsFile::open(path)?;
                DynamicUNet::load(backend, net_config.clone(), &weights)
            })
            .collect::<Result<Vec<_>>>()?;
        if networks.len() > 1 {
            let share = 1.0 / networks.len() as f32;
            networks.iter_mut().try_for_each(|n| n.scale_logits(backend, share))?;
        }
        let normalization = normalization(&plans, &config)?;
        match plans.get("image_reader_writer").and_then(Value::as_str).unwrap_or("SimpleITKIO") {
            "SimpleITKIO" | "NibabelIO" => {}
            other => crate::fail!(
                Unsupported,
                "plans.json: image_reader_writer {other} is not supported (SimpleITKIO and NibabelIO read voxels as stored)"
            ),
        }
        let Geometry { patch_size, spacing, orientation, .. } = geometry;
        Ok(Self {
            dir: root,
            configuration: name.to_string(),
            folds,
            classes,
            patch_size,
            spacing,
            normalization,
            resampling: resampling(&config),
            orientation,
            networks,
            mirror_axes: Vec::new(),
        })
    }

    /// Turns on test-time mirroring over the axes the checkpoints allow
    /// (`inference_allowed_mirroring_axes`, which nnUNetTrainer saves; the first fold's, every fold must
    /// agree): each forward then averages the network over every non-empty combination of flips, as
    /// `nnUNetPredictor` does by default (2^axes forwards instead of one). Refused where a checkpoint
    /// allows none.
    pub fn enable_mirroring(&mut self, b: &B) -> Result<()> {
        ensure!(self.mirror_axes.is_empty(), "mirroring is already on");
        let mut allowed: Option<Vec<usize>> = None;
        for (_, path) in &self.folds {
            let axes = mirroring_axes(path)?;
            if axes.is_empty() {
                bail!(
                    "{}: the checkpoint allows no mirroring (inference_allowed_mirroring_axes is None); run without it",
                    path.display()
                );
            }
            if let Some(first) = allowed.as_ref().filter(|first| **first != axes) {
                bail!("{}: mirroring axes {axes:?} differ from the first fold's {first:?}", path.display());
            }
            allowed = Some(axes);
        }
        let axes = allowed.unwrap_or_default();
        let dims = self.config().spatial_dims;
        if let Some(bad) = axes.iter().find(|&&a| a >= dims) {
            bail!("mirroring axis {bad} does not exist in a {dims}-D network");
        }
        // nnU-Net divides the sum of 2^axes forwards by their number; the output convs carry that share.
        let share = 1.0 / (1u32 << axes.len()) as f32;
        self.networks.iter_mut().try_for_each(|n| n.scale_logits(b, share))?;
        self.mirror_axes = axes;
        Ok(())
    }

    /// The axes test-time mirroring flips (empty when it is off).
    pub fn mirror_axes(&self) -> &[usize] {
        &self.mirror_axes
    }

    /// What square model-grid sides must be a multiple of: the least common multiple of the total
    /// stride along rows and columns.
    pub fn grid_multiple(&self) -> usize {
        grid_multiple(self.config())
    }

    fn geometry(&self) -> Geometry {
        let (patch_size, spacing) = (self.patch_size.clone(), self.spacing.clone());
        Geometry { patch_size, spacing, orientation: self.orientation, grid_multiple: self.grid_multiple() }
    }

    /// The default square model grid of a 2d model: the longer patch side rounded up to
    /// [`Self::grid_multiple`].
    pub fn default_grid(&self) -> usize {
        self.geometry().default_grid()
    }

    /// For a 2d configuration explaining slices on a `grid` x `grid` model grid: what nnUNetPredictor
    /// would do to `volume` that resizing each slice to the grid does not (crop it to its nonzero box,
    /// resample it to the plans' in-plane spacing, or tile slices that are not one patch), so that its
    /// labels and logits can differ from xaiclip's; None where the slices are exactly one patch.
    pub fn slice_geometry_warning(&self, volume: &crate::io::Volume, grid: usize) -> Option<String> {
        self.geometry().slice_warning(volume, grid)
    }

    /// How a 3-D configuration sees a volume's voxels, in words.
    pub fn describe_volume(&self) -> String {
        match self.orientation {
            Orientation::Voxel([d, h, w]) => format!(
                "nnU-Net's array: the file's (k, j, i) transposed by transpose_forward, (D, H, W) along file axes {d}, {h}, {w}; cropped to the nonzero voxels' box (0 outside it, labelled background) and resampled to the plans' spacing {:?} mm{} as nnU-Net does ({})",
                self.spacing,
                if self.spacing.len() == 2 { " in plane, the spacing between slices kept," } else { "" },
                match &self.resampling {
                    Ok(r) => format!(
                        "input: spline order {}, logits back: {}; along the coarse axis of an anisotropic case {} and {}",
                        r.data.order, r.probabilities.order, r.data.order_z, r.probabilities.order_z
                    ),
                    Err(why) => format!("not possible here: {why}"),
                }
            ),
            other => other.describe_volume(),
        }
    }

    /// The network configuration (every fold has the same).
    pub fn config(&self) -> &DynamicUNetConfig {
        self.networks[0].config()
    }

    /// The folds' mean logits, as nnUNetPredictor ensembles them: each fold's output conv carries its
    /// 1/folds share (set at load), so the mean is a sum that stays on the device.
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let mut y = self.forward_folds(b, x)?;
        // Every non-empty subset of the mirror axes: flip the input, predict, flip the logits back.
        let offset = 3 - self.config().spatial_dims;
        for subset in 1..1usize << self.mirror_axes.len() {
            let mut flags = [false; 3];
            for (i, &axis) in self.mirror_axes.iter().enumerate() {
                flags[offset + axis] = subset >> i & 1 == 1;
            }
            let flipped = flip(b, x, flags)?;
            b.add(&mut y, &flip(b, &self.forward_folds(b, &flipped)?, flags)?)?;
        }
        Ok(y)
    }

    fn forward_folds(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let mut y = self.networks[0].forward_logits(b, x)?;
        for net in &self.networks[1..] {
            b.add(&mut y, &net.forward_logits(b, x)?)?;
        }
        Ok(y)
    }

    /// Multiply-adds of one forward over every fold, times two.
    pub fn flops(&self, dims: &[usize]) -> f64 {
        self.networks.iter().map(|n| n.flops(dims)).sum()
    }

    /// The intensity window the model grid is made with: CTNormalization's foreground window, or the
    /// volume's [min, max] for ZScoreNormalization.
    pub fn intensity(&self) -> Result<Intensity> {
        match &self.normalization {
            &Normalization::Ct { low, high, .. } => Ok(Intensity::CtWindow { low, high }),
            Normalization::ZScore { .. } => Ok(Intensity::ZScore),
            Normalization::Other(name) => crate::fail!(
                Unsupported,
                "{}: the model normalises its input with {name}; CTNormalization and ZScoreNormalization are supported",
                self.dir.display()
            ),
        }
    }

    /// The map (scale, shift) of a windowed value v in [0, 1] to the network's input, the same for every
    /// volume (CTNormalization is exactly clip-to-window then (HU - mean) / std, so v -> (low + v (high -
    /// low) - mean) / std); None where it depends on the volume ([`Self::input_map_of`]).
    pub fn fixed_input_map(&self) -> Option<[f32; 2]> {
        match self.normalization {
            Normalization::Ct { low, high, mean, std } => Some([(high - low) / std, (low - mean) / std]),
            _ => None,
        }
    }

    /// The input map for `volume`: ZScoreNormalization's (v in [min, max] -> (v - mean) / max(std,
    /// 1e-8), the statistics of the region nnU-Net's preprocessor crops the case to, [`nonzero_box`]),
    /// else the fixed one.
    pub fn input_map_of(&self, volume: &crate::io::Volume) -> Result<[f32; 2]> {
        if let Some(map) = self.fixed_input_map() {
            return Ok(map);
        }
        self.intensity()?;
        ensure!(!volume.data.is_empty(), "{}: an empty volume has no statistics", volume.source.display());
        let [nx, ny, _] = volume.dims;
        let [i, j, k] = nonzero_box(volume);
        let rows = k.flat_map(|k| j.clone().map(move |j| nx * (j + ny * k)));
        let data: Vec<f32> = rows.flat_map(|row| volume.data[row + i.start..row + i.end].iter().copied()).collect();
        // With use_mask_for_norm nnU-Net z-scores only the nonzero region (holes filled) inside that box
        // and leaves the rest 0: not a map of the windowed volume, so only a box without zeros is taken.
        if self.normalization == (Normalization::ZScore { use_mask: true }) && data.contains(&0.0) {
            crate::fail!(
                Unsupported,
                "{}: the plans z-score only the nonzero region (use_mask_for_norm) and this volume has zero voxels inside the box nnU-Net crops it to; xaiclip z-scores whole boxes: set those voxels to the background intensity",
                volume.source.display()
            );
        }
        // Two passes in f64 (nnU-Net's numpy runs pairwise float32 sums; the two agree to ~1e-7).
        let super::bundle::Stats { mean, std, .. } = super::bundle::Stats::of(&data);
        let std = std.max(1e-8);
        let (low, high) = Intensity::ZScore.range(volume);
        Ok([((high - low) as f64 / std) as f32, ((low as f64 - mean) / std) as f32])
    }
}

/// The box (file axes i, j, k; half open) nnU-Net's `crop_to_nonzero` crops a case to: the bounding box
/// of its nonzero voxels (filling holes, as it does, does not change it), the whole volume where every
/// voxel is zero.
pub fn nonzero_box(volume: &crate::io::Volume) -> [std::ops::Range<usize>; 3] {
    let [nx, ny, _] = volume.dims;
    let (mut lo, mut hi) = ([usize::MAX; 3], [0usize; 3]);
    for (v, _) in volume.data.iter().enumerate().filter(|(_, &x)| x != 0.0) {
        let at = [v % nx, (v / nx) % ny, v / (nx * ny)];
        for a in 0..3 {
            lo[a] = lo[a].min(at[a]);
            hi[a] = hi[a].max(at[a] + 1);
        }
    }
    std::array::from_fn(|a| if hi[a] == 0 { 0..volume.dims[a] } else { lo[a]..hi[a] })
}

/// `x` (NCHW seen as one-slice volumes, or NCDHW) reversed along the flagged (D, H, W) axes.
fn flip<B: Backend>(b: &B, x: &B::Tensor, flags: [bool; 3]) -> Result<B::Tensor> {
    let shape = b.shape(x).to_vec();
    let volume = match shape[..] {
        [n, c, h, w] => b.reshape(x.clone(), &[n, c, 1, h, w])?,
        _ => x.clone(),
    };
    b.reshape(b.flip3d(&volume, flags)?, &shape)
}

/// A checkpoint's `inference_allowed_mirroring_axes` (a tuple of ints, or None: no axes), read without
/// executing anything, like its weights.
pub fn mirroring_axes(path: &Path) -> Result<Vec<usize>> {
    use pytorch_reader::{PickleValue, PytorchReader};
    let value = PytorchReader::read_pickle_data(path, Some("inference_allowed_mirroring_axes"))
        .map_err(|e| anyhow::anyhow!("{}: no usable inference_allowed_mirroring_axes ({e})", path.display()))?;
    match value {
        PickleValue::None => Ok(Vec::new()),
        PickleValue::List(items) => items
            .iter()
            .map(|v| match v {
                PickleValue::Int(a) if (0..3).contains(a) => Ok(*a as usize),
                other => bail!("{}: inference_allowed_mirroring_axes holds {other:?}", path.display()),
            })
            .collect(),
        other => bail!("{}: inference_allowed_mirroring_axes is {other:?}, not a tuple of axes", path.display()),
    }
}

/// Class names by channel and the number of input channels from dataset.json.
fn dataset_classes(dataset: &Value) -> Result<(Vec<String>, usize)> {
    let labels = dataset.get("labels").and_then(Value::as_object).context("no labels")?;
    if dataset.get("regions_class_order").is_some() || labels.values().any(Value::is_array) {
        bail!("region-based labels (lists of ids) are not supported");
    }
    let mut by_id: Vec<(usize, String)> = labels
        .iter()
        .map(|(name, id)| {
            id.as_u64()
                .map(|i| (i as usize, name.clone()))
                .with_context(|| format!("label {name:?} has id {id}, not an integer"))
        })
        .collect::<Result<_>>()?;
    by_id.sort();
    if by_id.iter().enumerate().any(|(i, (id, _))| *id != i) {
        bail!("labels must have the ids 0, 1, ..., {} (nnU-Net's rule), got {by_id:?}", by_id.len() - 1);
    }
    let channels = dataset
        .get("channel_names")
        .or_else(|| dataset.get("modality"))
        .and_then(Value::as_object)
        .map(|m| m.len())
        .context("no channel_names")?;
    ensure!(channels >= 1, "channel_names is empty");
    Ok((by_id.into_iter().map(|(_, n)| n).collect(), channels))
}

fn normalization(plans: &Value, config: &Value) -> Result<Normalization> {
    let scheme = config
        .get("normalization_schemes")
        .and_then(|s| s.get(0))
        .and_then(Value::as_str)
        .context("plans.json: the configuration has no normalization_schemes")?;
    match scheme {
        "CTNormalization" => {}
        "ZScoreNormalization" => {
            let use_mask = config.get("use_mask_for_norm").and_then(|m| m.get(0)).and_then(Value::as_bool);
            return Ok(Normalization::ZScore { use_mask: use_mask.unwrap_or(false) });
        }
        other => return Ok(Normalization::Other(other.to_string())),
    }
    let props = plans
        .get("foreground_intensity_properties_per_channel")
        .and_then(|p| p.get("0"))
        .context("plans.json: CTNormalization needs foreground_intensity_properties_per_channel[\"0\"]")?;
    let get = |k: &str| {
        props
            .get(k)
            .and_then(Value::as_f64)
            .map(|v| v as f32)
            .with_context(|| format!("plans.json: foreground properties have no {k}"))
    };
    let (low, high, mean, std) = (get("percentile_00_5")?, get("percentile_99_5")?, get("mean")?, get("std")?);
    ensure!(high > low && std > 0.0, "plans.json: foreground properties give an empty window or zero std");
    // nnU-Net divides by max(std, 1e-8).
    Ok(Normalization::Ct { low, high, mean, std: std.max(1e-8) })
}
