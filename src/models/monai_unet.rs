//! MONAI's `UNet` (monai.networks.nets.UNet, the network of most segmentation bundles in MONAI's model
//! zoo): strided convolutions down, transposed convolutions (kernel 3, stride 2, padding 1, output
//! padding 1) up, optional residual units, PReLU, batch or instance norm, skip connections by channel
//! concatenation. Built from its constructor arguments and loaded under its own state-dict names.
//!
//! Structure (MONAI's `_create_block`, recursive): a level is `Sequential(down, SkipConnection(sub), up)`
//! with `sub` the next level or, at the bottom, one more down layer with stride 1; `SkipConnection`
//! returns `cat([x, sub(x)])`. A 2-D network runs as one-slice volumes (kernels 1 x k x k), so one
//! code path serves both, as for nnU-Net.

use super::unet::{activation, fold_batch_norm, layer_spec, InstanceNorm, NormKind};
use crate::backend::volume::{ConvTranspose3d, Transposed};
use crate::backend::{Activation, Backend};
use crate::tensor::Tensor;
use crate::weights::{ParamReader, WeightsFile};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};

/// The activation after each convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UNetAct {
    /// torch.nn.PReLU with one learned slope per layer (MONAI's default), read from the weights.
    PRelu,
    /// A fixed non-linearity.
    Fixed(Activation),
}

/// MONAI UNet's constructor arguments, per axis (D, H, W) where they are per axis; a 2-D network's
/// first axis is 1.
#[derive(Clone, Debug, PartialEq)]
pub struct MonaiUNetConfig {
    /// 2 or 3.
    pub spatial_dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub out_channels: usize,
    /// Widths of the levels, top first (`channels`).
    pub channels: Vec<usize>,
    /// Stride of each level's down layer (`strides`; those beyond `channels.len() - 1` unused, as MONAI).
    pub strides: Vec<[usize; 3]>,
    /// Convolution kernel (`kernel_size`).
    pub kernel: [usize; 3],
    /// Transposed convolution kernel (`up_kernel_size`).
    pub up_kernel: [usize; 3],
    /// Convolutions per residual unit; 0: plain convolutions (`num_res_units`).
    pub num_res_units: usize,
    /// Activation.
    pub act: UNetAct,
    /// Normalisation (batch norm folded into the convolutions).
    pub norm: NormKind,
    /// Normalisation epsilon.
    pub norm_eps: f32,
    /// Whether convolutions have biases.
    pub bias: bool,
    /// Whether the norm comes before the activation (`adn_ordering` "NDA", the default) or after ("AN").
    pub norm_first: bool,
}

pub(crate) fn positive(v: &Value, what: &str) -> Result<usize> {
    v.as_u64()
        .filter(|&n| n > 0)
        .map(|n| n as usize)
        .with_context(|| format!("{what} must be a positive integer, got {v}"))
}

/// An int or a list of `dims` ints, as (D, H, W) with D = 1 in 2-D.
pub(crate) fn per_axis(v: &Value, dims: usize, what: &str) -> Result<[usize; 3]> {
    let list = match v {
        Value::Array(a) => a.iter().map(|x| positive(x, what)).collect::<Result<Vec<_>>>()?,
        one => vec![positive(one, what)?; dims],
    };
    ensure!(list.len() == dims, "{what} has {} entries; the network is {dims}-D", list.len());
    let mut out = [1; 3];
    out[3 - dims..].copy_from_slice(&list);
    Ok(out)
}

impl MonaiUNetConfig {
    /// `UNet(**args)` from a bundle's `network_def` (keys starting with `_` already removed); absent keys
    /// take MONAI's defaults; arguments xaiclip cannot reproduce are refused by name.
    pub fn from_args(args: &Map<String, Value>) -> Result<Self> {
        const KNOWN: [&str; 13] = [
            "spatial_dims",
            "in_channels",
            "out_channels",
            "channels",
            "strides",
            "kernel_size",
            "up_kernel_size",
            "num_res_units",
            "act",
            "norm",
            "dropout",
            "bias",
            "adn_ordering",
        ];
        if let Some(k) = args.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            bail!("network_def.{k} is not a UNet argument xaiclip reads");
        }
        let need = |k: &str| args.get(k).with_context(|| format!("UNet needs {k}"));
        let spatial_dims = positive(need("spatial_dims")?, "spatial_dims")?;
        ensure!(spatial_dims == 2 || spatial_dims == 3, "spatial_dims is {spatial_dims}; UNet here has 2 or 3");
        let channels = need("channels")?
            .as_array()
            .context("channels must be a list")?
            .iter()
            .map(|c| positive(c, "channels"))
            .collect::<Result<Vec<_>>>()?;
        ensure!(channels.len() >= 2, "channels needs at least 2 entries, got {}", channels.len());
        let strides = need("strides")?
            .as_array()
            .context("strides must be a list")?
            .iter()
            .map(|s| per_axis(s, spatial_dims, "strides"))
            .collect::<Result<Vec<_>>>()?;
        ensure!(
            strides.len() >= channels.len() - 1,
            "strides has {} entries; {} channels need {}",
            strides.len(),
            channels.len(),
            channels.len() - 1
        );
        let kernel_of = |key: &str| -> Result<[usize; 3]> {
            let k = match args.get(key) {
                Some(v) => per_axis(v, spatial_dims, key)?,
                None => per_axis(&Value::from(3), spatial_dims, key)?,
            };
            ensure!(k.iter().all(|v| v % 2 == 1), "{key} {k:?}: only odd kernels have MONAI's same padding");
            Ok(k)
        };
        let (act_name, act_args) = layer_spec(args.get("act").unwrap_or(&Value::from("prelu")), "act")?;
        let act = match act_name.as_str() {
            "prelu" => {
                let n = act_args.get("num_parameters").and_then(Value::as_u64).unwrap_or(1);
                ensure!(n == 1, "act PReLU with num_parameters {n} (a slope per channel) is not supported, only one");
                UNetAct::PRelu
            }
            other => UNetAct::Fixed(
                activation(other, &act_args)
                    .with_context(|| format!("act {other:?} is not supported (prelu, relu, leakyrelu or gelu)"))?,
            ),
        };
        let (norm_name, norm_args) = layer_spec(args.get("norm").unwrap_or(&Value::from("instance")), "norm")?;
        let norm = match norm_name.as_str() {
            "instance" => {
                NormKind::Instance { affine: norm_args.get("affine").and_then(Value::as_bool).unwrap_or(false) }
            }
            "batch" => {
                ensure!(
                    norm_args.get("affine").and_then(Value::as_bool).unwrap_or(true),
                    "norm batch without affine is not supported"
                );
                NormKind::Batch
            }
            "none" => NormKind::None,
            other => bail!("norm {other:?} is not supported (instance, batch or none; group norm is not yet)"),
        };
        let ordering: String = args
            .get("adn_ordering")
            .map_or(Some("NDA"), Value::as_str)
            .context("adn_ordering must be a string")?
            .to_uppercase()
            .chars()
            .filter(|&c| c != 'D')
            .collect();
        let norm_first = match ordering.as_str() {
            "NA" | "N" | "A" | "" => true,
            "AN" => {
                ensure!(
                    norm != NormKind::Batch,
                    "adn_ordering with the batch norm after the activation is not supported"
                );
                false
            }
            other => bail!("adn_ordering {other:?} is not an ordering of N, D and A"),
        };
        let num_res_units = match args.get("num_res_units") {
            None => 0,
            Some(v) => v.as_u64().with_context(|| format!("num_res_units must be an integer, got {v}"))? as usize,
        };
        Ok(Self {
            spatial_dims,
            in_channels: positive(need("in_channels")?, "in_channels")?,
            out_channels: positive(need("out_channels")?, "out_channels")?,
            strides: strides[..channels.len() - 1].to_vec(),
            channels,
            kernel: kernel_of("kernel_size")?,
            up_kernel: kernel_of("up_kernel_size")?,
            num_res_units,
            act,
            norm,
            norm_eps: norm_args.get("eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
            bias: args.get("bias").map_or(Some(true), Value::as_bool).context("bias must be true or false")?,
            norm_first,
        })
    }

    /// Input sides must be multiples of this per axis (D, H, W): the strides' product.
    pub fn total_stride(&self) -> [usize; 3] {
        self.strides.iter().fold([1; 3], |t, s| std::array::from_fn(|a| t[a] * s[a]))
    }

    /// The network in a few words (info, reports).
    pub fn summary(&self) -> String {
        let act = match self.act {
            UNetAct::PRelu => "PReLU".to_string(),
            UNetAct::Fixed(a) => format!("{a:?}"),
        };
        let norm = match self.norm {
            NormKind::Instance { affine } => format!("instance norm{}", if affine { " (affine)" } else { "" }),
            NormKind::Batch => "batch norm (folded into the convs)".into(),
            NormKind::None => "no norm".into(),
        };
        let strides: Vec<_> = self.strides.iter().map(|s| s[3 - self.spatial_dims..].to_vec()).collect();
        format!(
            "channels {:?}, strides {strides:?}, {} residual unit(s), {norm}, {act}",
            self.channels, self.num_res_units
        )
    }
}

/// conv or transposed conv -> (norm, activation in the configured order), or the conv alone.
struct Unit<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
    kernel: [usize; 3],
    stride: [usize; 3],
    pad: [usize; 3],
    /// Transposed convolution placement (the up path).
    transposed: Option<Transposed>,
    instance_norm: Option<InstanceNorm<B::Tensor>>,
    act: Activation,
    /// (cin, cout): for flops.
    channels: (usize, usize),
}

/// MONAI ResidualUnit: units in a row plus the input (through a conv where the shape changes).
struct Residual<B: Backend> {
    units: Vec<Unit<B>>,
    skip: Option<Unit<B>>,
}

enum Layer<B: Backend> {
    Conv(Unit<B>),
    Residual(Residual<B>),
}

enum Sub<B: Backend> {
    Level(Box<Level<B>>),
    Bottom(Layer<B>),
}

struct Level<B: Backend> {
    down: Layer<B>,
    sub: Sub<B>,
    up: Unit<B>,
    up_residual: Option<Residual<B>>,
}

/// MONAI UNet on a backend.
pub struct MonaiUNet<B: Backend> {
    config: MonaiUNetConfig,
    top: Box<Level<B>>,
}

struct Loader<'a, 'b, B: Backend> {
    backend: &'b B,
    params: ParamReader<'a>,
    config: &'b MonaiUNetConfig,
}

impl<B: Backend> Loader<'_, '_, B> {
    /// A weight (a, b, kernel) in the checkpoint's rank, as a 5-D host tensor.
    fn weight(&mut self, name: &str, a: usize, b: usize, k: [usize; 3]) -> Result<Tensor> {
        let mut shape = vec![a, b];
        shape.extend_from_slice(&k[3 - self.config.spatial_dims..]);
        self.params.take(name, &shape).reshape(&[a, b, k[0], k[1], k[2]])
    }

    /// MONAI `Convolution` at `prefix` (its `conv` and `adn` children); `conv_only` has no `adn`.
    fn unit(
        &mut self,
        prefix: &str,
        (cin, cout): (usize, usize),
        stride: [usize; 3],
        transposed: bool,
        conv_only: bool,
    ) -> Result<Unit<B>> {
        let c = self.config;
        let kernel = if transposed { c.up_kernel } else { c.kernel };
        let pad = kernel.map(|k| (k - 1) / 2);
        let (a, b) = if transposed { (cin, cout) } else { (cout, cin) };
        let mut weight = self.weight(&format!("{prefix}.conv.weight"), a, b, kernel)?;
        let mut bias = c.bias.then(|| self.params.take(&format!("{prefix}.conv.bias"), &[cout]));
        let (mut instance_norm, mut act) = (None, Activation::Identity);
        if !conv_only {
            let vector = |l: &mut Self, leaf: &str| l.params.take(&format!("{prefix}.adn.N.{leaf}"), &[cout]);
            match c.norm {
                NormKind::Batch => {
                    let stats = ["weight", "bias", "running_mean", "running_var"].map(|leaf| vector(self, leaf));
                    if transposed {
                        // Weight (cin, cout, taps): the per-output-channel scale runs along axis 1.
                        let mut t = transpose01(&weight)?;
                        fold_batch_norm(&mut t, &mut bias, stats, c.norm_eps);
                        weight = transpose01(&t)?;
                    } else {
                        fold_batch_norm(&mut weight, &mut bias, stats, c.norm_eps);
                    }
                }
                NormKind::Instance { affine: true } => {
                    let (g, beta) = (vector(self, "weight"), vector(self, "bias"));
                    instance_norm = Some((Some(self.backend.upload(&g)?), Some(self.backend.upload(&beta)?)));
                }
                NormKind::Instance { affine: false } => instance_norm = Some((None, None)),
                NormKind::None => {}
            }
            act = match c.act {
                // One learned slope: PReLU is LeakyReLU with that slope.
                UNetAct::PRelu => {
                    Activation::LeakyRelu(self.params.take(&format!("{prefix}.adn.A.weight"), &[1]).data()[0])
                }
                UNetAct::Fixed(a) => a,
            };
        }
        let mut unit = self.conv(weight, bias, (kernel, stride), (cin, cout))?;
        if transposed {
            unit.transposed = Some(Transposed { stride, pad, output_pad: stride.map(|s| s - 1) });
        }
        Ok(Unit { instance_norm, act, ..unit })
    }

    /// A plain convolution with MONAI's same padding (no norm, no activation) on the device.
    fn conv(
        &self,
        weight: Tensor,
        bias: Option<Tensor>,
        (kernel, stride): ([usize; 3], [usize; 3]),
        channels: (usize, usize),
    ) -> Result<Unit<B>> {
        Ok(Unit {
            weight: self.backend.upload(&weight)?,
            bias: bias.map(|b| self.backend.upload(&b)).transpose()?,
            kernel,
            stride,
            pad: kernel.map(|k| (k - 1) / 2),
            transposed: None,
            instance_norm: None,
            act: Activation::Identity,
            channels,
        })
    }

    /// MONAI `ResidualUnit` at `prefix`.
    fn residual(
        &mut self,
        prefix: &str,
        (cin, cout): (usize, usize),
        stride: [usize; 3],
        subunits: usize,
        last_conv_only: bool,
    ) -> Result<Residual<B>> {
        let subunits = subunits.max(1);
        let units = (0..subunits)
            .map(|i| {
                let (from, s) = if i == 0 { (cin, stride) } else { (cout, [1; 3]) };
                self.unit(
                    &format!("{prefix}.conv.unit{i}"),
                    (from, cout),
                    s,
                    false,
                    last_conv_only && i == subunits - 1,
                )
            })
            .collect::<Result<Vec<_>>>()?;
        let strided = stride != [1; 3];
        let skip = if strided || cin != cout {
            // The kernel when strided, else 1 x 1 with no padding (MONAI's rule).
            let kernel = if strided { self.config.kernel } else { [1; 3] };
            let weight = self.weight(&format!("{prefix}.residual.weight"), cout, cin, kernel)?;
            let bias = self.config.bias.then(|| self.params.take(&format!("{prefix}.residual.bias"), &[cout]));
            Some(self.conv(weight, bias, (kernel, stride), (cin, cout))?)
        } else {
            None
        };
        Ok(Residual { units, skip })
    }

    fn down(&mut self, prefix: &str, io: (usize, usize), stride: [usize; 3]) -> Result<Layer<B>> {
        Ok(match self.config.num_res_units {
            0 => Layer::Conv(self.unit(prefix, io, stride, false, false)?),
            n => Layer::Residual(self.residual(prefix, io, stride, n, false)?),
        })
    }

    /// One level of `_create_block`: down at `prefix.0`, the skip-connected sub-block at
    /// `prefix.1.submodule`, up at `prefix.2`.
    fn level(&mut self, prefix: &str, (inc, outc): (usize, usize), depth: usize, is_top: bool) -> Result<Level<B>> {
        let c = self.config;
        let (ch, stride) = (c.channels[depth], c.strides[depth]);
        let down = self.down(&format!("{prefix}.0"), (inc, ch), stride)?;
        let at = format!("{prefix}.1.submodule");
        let (sub, upc) = if depth + 2 < c.channels.len() {
            (Sub::Level(Box::new(self.level(&at, (ch, ch), depth + 1, false)?)), 2 * ch)
        } else {
            let below = c.channels[depth + 1];
            (Sub::Bottom(self.down(&at, (ch, below), [1; 3])?), ch + below)
        };
        let (up, up_residual) = if c.num_res_units > 0 {
            let up = self.unit(&format!("{prefix}.2.0"), (upc, outc), stride, true, false)?;
            (up, Some(self.residual(&format!("{prefix}.2.1"), (outc, outc), [1; 3], 1, is_top)?))
        } else {
            (self.unit(&format!("{prefix}.2"), (upc, outc), stride, true, is_top)?, None)
        };
        Ok(Level { down, sub, up, up_residual })
    }
}

/// (a, b, rest...) -> (b, a, rest...).
fn transpose01(t: &Tensor) -> Result<Tensor> {
    let s = t.shape();
    let (a, b, rest) = (s[0], s[1], s[2..].iter().product::<usize>());
    let mut out = vec![0.0; t.len()];
    for i in 0..a {
        for j in 0..b {
            out[(j * a + i) * rest..][..rest].copy_from_slice(&t.data()[(i * b + j) * rest..][..rest]);
        }
    }
    let mut shape = s.to_vec();
    shape.swap(0, 1);
    Tensor::new(&shape, out)
}

impl<B: Backend> MonaiUNet<B> {
    /// Builds the network from `config` and a state dict, listing every mismatch at once.
    pub fn load(backend: &B, config: MonaiUNetConfig, weights: &WeightsFile) -> Result<Self> {
        Self::build(backend, config, ParamReader::new(weights))
    }

    /// A randomly initialised network (shape tests, benches).
    pub fn random(backend: &B, config: MonaiUNetConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, ParamReader::random(seed))
    }

    fn build(backend: &B, config: MonaiUNetConfig, params: ParamReader) -> Result<Self> {
        let mut l = Loader { backend, params, config: &config };
        let top = Box::new(l.level("model", (config.in_channels, config.out_channels), 0, true)?);
        l.params.finish(&["num_batches_tracked"])?;
        Ok(Self { config, top })
    }

    /// The configuration.
    pub fn config(&self) -> &MonaiUNetConfig {
        &self.config
    }

    fn unit(&self, b: &B, x: &B::Tensor, u: &Unit<B>) -> Result<B::Tensor> {
        let mut y = match u.transposed {
            Some(at) => b.conv_transpose3d(x, &u.weight, u.bias.as_ref(), at)?,
            None => b.conv3d(x, &u.weight, u.bias.as_ref(), u.stride, u.pad)?,
        };
        let eps = self.config.norm_eps;
        match &u.instance_norm {
            Some((g, beta)) if self.config.norm_first => {
                b.instance_norm(&mut y, g.as_ref(), beta.as_ref(), eps, u.act)?
            }
            Some((g, beta)) => {
                b.activate(&mut y, u.act)?;
                b.instance_norm(&mut y, g.as_ref(), beta.as_ref(), eps, Activation::Identity)?;
            }
            None if u.act != Activation::Identity => b.activate(&mut y, u.act)?,
            None => {}
        }
        Ok(y)
    }

    fn residual(&self, b: &B, x: &B::Tensor, r: &Residual<B>) -> Result<B::Tensor> {
        let mut y = self.unit(b, x, &r.units[0])?;
        for u in &r.units[1..] {
            y = self.unit(b, &y, u)?;
        }
        match &r.skip {
            Some(s) => b.add(&mut y, &self.unit(b, x, s)?)?,
            None => b.add(&mut y, x)?,
        }
        Ok(y)
    }

    fn layer(&self, b: &B, x: &B::Tensor, layer: &Layer<B>) -> Result<B::Tensor> {
        match layer {
            Layer::Conv(u) => self.unit(b, x, u),
            Layer::Residual(r) => self.residual(b, x, r),
        }
    }

    fn level(&self, b: &B, x: &B::Tensor, l: &Level<B>) -> Result<B::Tensor> {
        let down = self.layer(b, x, &l.down)?;
        let sub = match &l.sub {
            Sub::Level(inner) => self.level(b, &down, inner)?,
            Sub::Bottom(layer) => self.layer(b, &down, layer)?,
        };
        let y = self.unit(b, &b.concat_channels(&down, &sub)?, &l.up)?;
        match &l.up_residual {
            Some(r) => self.residual(b, &y, r),
            None => Ok(y),
        }
    }

    /// Logits (N, classes, spatial...) of input (N, in_channels, H, W) for a 2-D network or
    /// (N, in_channels, D, H, W) for a 3-D one; every side must be a multiple of the strides' product.
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let c = &self.config;
        let (shape, volume) = super::volume_input(b, x, "UNet", (c.spatial_dims, c.in_channels), c.total_stride())?;
        let logits = self.level(b, &volume, &self.top)?;
        super::logits_like_input(b, logits, &shape, c.out_channels)
    }

    /// Multiply-adds of one forward at the spatial size `dims` (H, W or D, H, W), times two.
    pub fn flops(&self, dims: &[usize]) -> f64 {
        let mut size = [1usize; 3];
        size[3 - dims.len()..].copy_from_slice(dims);
        level_flops(&self.top, size).0
    }
}

/// (flops, output size) of a unit on input `size`.
fn unit_flops<B: Backend>(u: &Unit<B>, size: [usize; 3]) -> (f64, [usize; 3]) {
    let (cin, cout) = u.channels;
    let taps: usize = u.kernel.iter().product();
    let per = 2.0 * (cin * cout * taps) as f64;
    match u.transposed {
        Some(at) => {
            let out = ConvTranspose3d::checked(1, (cin, cin, cout), size, u.kernel, at).map_or(size, |g| g.output);
            (per * size.iter().product::<usize>() as f64, out)
        }
        None => {
            let out: [usize; 3] =
                std::array::from_fn(|a| (size[a] + 2 * u.pad[a]).saturating_sub(u.kernel[a]) / u.stride[a] + 1);
            (per * out.iter().product::<usize>() as f64, out)
        }
    }
}

fn residual_flops<B: Backend>(r: &Residual<B>, size: [usize; 3]) -> (f64, [usize; 3]) {
    let (mut total, mut at) = (0.0, size);
    for u in &r.units {
        let (f, out) = unit_flops(u, at);
        total += f;
        at = out;
    }
    (total + r.skip.as_ref().map_or(0.0, |s| unit_flops(s, size).0), at)
}

fn layer_flops<B: Backend>(layer: &Layer<B>, size: [usize; 3]) -> (f64, [usize; 3]) {
    match layer {
        Layer::Conv(u) => unit_flops(u, size),
        Layer::Residual(r) => residual_flops(r, size),
    }
}

fn level_flops<B: Backend>(l: &Level<B>, size: [usize; 3]) -> (f64, [usize; 3]) {
    let (down, at) = layer_flops(&l.down, size);
    let (sub, _) = match &l.sub {
        Sub::Level(inner) => level_flops(inner, at),
        Sub::Bottom(layer) => layer_flops(layer, at),
    };
    let (up, out) = unit_flops(&l.up, at);
    let res = l.up_residual.as_ref().map_or(0.0, |r| residual_flops(r, out).0);
    (down + sub + up + res, out)
}
