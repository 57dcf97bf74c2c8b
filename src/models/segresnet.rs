//! MONAI's `SegResNet` (monai.networks.nets.SegResNet; the zoo's whole-body CT and BraTS bundles):
//! pre-activation residual blocks (norm -> act -> conv, twice, plus the input) with group norm, strided
//! 3x3 convolutions down, a 1x1 conv then 2x linear upsampling (align_corners false) or a kernel-2
//! transposed conv up, skips added (not concatenated), and norm -> act -> 1x1 conv at the end. A 2-D
//! network runs as one-slice volumes, as the other networks here.

use super::monai_unet::positive;
use super::unet::{activation, layer_spec};
use crate::backend::volume::Transposed;
use crate::backend::{Activation, Backend};
use crate::weights::{ParamReader, WeightsFile};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};

/// How the decoder upsamples.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegResUpsample {
    /// 1x1 conv, then 2x (bi/tri)linear with align_corners false (MONAI's "nontrainable", the default).
    NonTrainable,
    /// 1x1 conv, then a kernel 2 stride 2 transposed conv with bias ("deconv").
    Deconv,
}

/// SegResNet's constructor arguments.
#[derive(Clone, Debug, PartialEq)]
pub struct SegResNetConfig {
    /// 2 or 3.
    pub spatial_dims: usize,
    /// Width of the first level (`init_filters`); level i has init_filters 2^i.
    pub init_filters: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub out_channels: usize,
    /// Residual blocks per encoder level (`blocks_down`).
    pub blocks_down: Vec<usize>,
    /// Residual blocks per decoder level (`blocks_up`), one level fewer than the encoder.
    pub blocks_up: Vec<usize>,
    /// Channel groups of each norm (the channel count for instance norm).
    pub groups: Option<usize>,
    /// Whether the norms have a learned affine.
    pub affine: bool,
    /// Normalisation epsilon.
    pub norm_eps: f32,
    /// Activation.
    pub act: Activation,
    /// Decoder upsampling.
    pub upsample: SegResUpsample,
}

fn list(v: Option<&Value>, default: &[usize], what: &str) -> Result<Vec<usize>> {
    match v {
        None => Ok(default.to_vec()),
        Some(Value::Array(a)) => a.iter().map(|x| positive(x, what)).collect(),
        Some(other) => bail!("{what} must be a list of positive integers, got {other}"),
    }
}

impl SegResNetConfig {
    /// `SegResNet(**args)` from a bundle's `network_def` (keys starting with `_` removed); absent keys take
    /// MONAI's defaults; what xaiclip cannot reproduce is refused by name.
    pub fn from_args(args: &Map<String, Value>) -> Result<Self> {
        const KNOWN: [&str; 13] = [
            "spatial_dims",
            "init_filters",
            "in_channels",
            "out_channels",
            "dropout_prob",
            "act",
            "norm",
            "norm_name",
            "num_groups",
            "use_conv_final",
            "blocks_down",
            "blocks_up",
            "upsample_mode",
        ];
        if let Some(k) = args.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            bail!("network_def.{k} is not a SegResNet argument xaiclip reads");
        }
        let count = |k: &str, default: usize| args.get(k).map_or(Ok(default), |v| positive(v, k));
        let spatial_dims = count("spatial_dims", 3)?;
        ensure!(spatial_dims == 2 || spatial_dims == 3, "spatial_dims is {spatial_dims}; SegResNet has 2 or 3");
        let blocks_down = list(args.get("blocks_down"), &[1, 2, 2, 4], "blocks_down")?;
        let blocks_up = list(args.get("blocks_up"), &[1, 1, 1], "blocks_up")?;
        ensure!(
            !blocks_down.is_empty() && blocks_up.len() + 1 == blocks_down.len(),
            "blocks_up has {} entries for {} encoder levels: only a decoder back to full resolution (one fewer) is supported",
            blocks_up.len(),
            blocks_down.len()
        );
        let (act_name, act_args) =
            layer_spec(args.get("act").unwrap_or(&serde_json::json!(["relu", {"inplace": true}])), "act")?;
        let act = activation(&act_name, &act_args)
            .with_context(|| format!("act {act_name:?} is not supported (relu, leakyrelu or gelu)"))?;
        // The deprecated norm_name="group" with num_groups means norm ("group", {"num_groups": ...}).
        let norm = match args.get("norm_name").and_then(Value::as_str).filter(|n| !n.is_empty()) {
            Some(n) if n.eq_ignore_ascii_case("group") => {
                serde_json::json!(["group", {"num_groups": count("num_groups", 8)?}])
            }
            Some(n) => bail!("norm_name {n:?}: MONAI accepts only \"group\" here"),
            None => args.get("norm").cloned().unwrap_or(serde_json::json!(["group", {"num_groups": 8}])),
        };
        let (norm_name, norm_args) = layer_spec(&norm, "norm")?;
        let (groups, affine) = match norm_name.as_str() {
            "group" => (
                Some(norm_args.get("num_groups").map_or(Ok(8), |v| positive(v, "num_groups"))?),
                norm_args.get("affine").and_then(Value::as_bool).unwrap_or(true),
            ),
            "instance" => (None, norm_args.get("affine").and_then(Value::as_bool).unwrap_or(false)),
            other => bail!(
                "norm {other:?} is not supported in SegResNet (group or instance; a batch norm before a conv cannot be folded into it)"
            ),
        };
        let upsample = match args.get("upsample_mode").map_or(Some("nontrainable"), Value::as_str) {
            Some("nontrainable") => SegResUpsample::NonTrainable,
            Some("deconv") => SegResUpsample::Deconv,
            other => bail!("upsample_mode {other:?} is not supported (nontrainable or deconv)"),
        };
        ensure!(
            args.get("use_conv_final").map_or(Some(true), Value::as_bool) == Some(true),
            "use_conv_final false gives features, not class logits: not a segmentation model"
        );
        let config = Self {
            spatial_dims,
            init_filters: count("init_filters", 8)?,
            in_channels: count("in_channels", 1)?,
            out_channels: count("out_channels", 2)?,
            blocks_down,
            blocks_up,
            groups,
            affine,
            norm_eps: norm_args.get("eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
            act,
            upsample,
        };
        for level in 0..config.blocks_down.len() {
            let c = config.width(level);
            if let Some(g) = config.groups {
                ensure!(c.is_multiple_of(g), "num_groups {g} does not divide level {level}'s {c} channels");
            }
        }
        Ok(config)
    }

    /// Channels of encoder level `i`.
    pub fn width(&self, level: usize) -> usize {
        self.init_filters << level
    }

    /// Input sides must be multiples of this: 2 per downsampling level.
    pub fn total_stride(&self) -> usize {
        1 << (self.blocks_down.len() - 1)
    }

    /// The network in a few words (info, reports).
    pub fn summary(&self) -> String {
        let norm = match self.groups {
            Some(g) => format!("group norm ({g} groups)"),
            None => "instance norm".into(),
        };
        format!(
            "init_filters {}, blocks_down {:?}, blocks_up {:?}, {norm}, {:?}, {:?} upsampling",
            self.init_filters, self.blocks_down, self.blocks_up, self.act, self.upsample
        )
    }
}

/// A norm's affine (gamma, beta) on the device; absent without affine.
type Affine<T> = Option<(T, T)>;

/// norm1 -> act -> conv1 -> norm2 -> act -> conv2, plus the input.
struct ResBlock<B: Backend> {
    norms: [Affine<B::Tensor>; 2],
    convs: [B::Tensor; 2],
}

/// An encoder level: the strided conv into it (none at level 0) and its blocks.
type Down<B> = (Option<<B as Backend>::Tensor>, Vec<ResBlock<B>>);

struct Up<B: Backend> {
    reduce: B::Tensor,
    deconv: Option<(B::Tensor, B::Tensor)>,
    blocks: Vec<ResBlock<B>>,
}

/// MONAI SegResNet on a backend.
pub struct SegResNet<B: Backend> {
    config: SegResNetConfig,
    init: B::Tensor,
    down: Vec<Down<B>>,
    up: Vec<Up<B>>,
    final_norm: Affine<B::Tensor>,
    final_weight: B::Tensor,
    final_bias: B::Tensor,
}

struct Loader<'a, 'b, B: Backend> {
    backend: &'b B,
    params: ParamReader<'a>,
    config: &'b SegResNetConfig,
}

impl<B: Backend> Loader<'_, '_, B> {
    /// A conv weight (a, b, k...) in the checkpoint's rank, uploaded as 5-D.
    fn weight(&mut self, name: &str, a: usize, b: usize, k: usize) -> Result<B::Tensor> {
        let dims = self.config.spatial_dims;
        let mut shape = vec![a, b];
        shape.resize(2 + dims, k);
        let kd = if dims == 3 { k } else { 1 };
        self.backend.upload(&self.params.take(name, &shape).reshape(&[a, b, kd, k, k])?)
    }

    fn norm(&mut self, prefix: &str, c: usize) -> Result<Affine<B::Tensor>> {
        if !self.config.affine {
            return Ok(None);
        }
        let g = self.params.take(&format!("{prefix}.weight"), &[c]);
        let b = self.params.take(&format!("{prefix}.bias"), &[c]);
        Ok(Some((self.backend.upload(&g)?, self.backend.upload(&b)?)))
    }

    fn block(&mut self, prefix: &str, c: usize) -> Result<ResBlock<B>> {
        Ok(ResBlock {
            norms: [self.norm(&format!("{prefix}.norm1"), c)?, self.norm(&format!("{prefix}.norm2"), c)?],
            convs: [
                self.weight(&format!("{prefix}.conv1.conv.weight"), c, c, 3)?,
                self.weight(&format!("{prefix}.conv2.conv.weight"), c, c, 3)?,
            ],
        })
    }
}

impl<B: Backend> SegResNet<B> {
    /// Builds the network from `config` and a state dict, listing every mismatch at once.
    pub fn load(backend: &B, config: SegResNetConfig, weights: &WeightsFile) -> Result<Self> {
        Self::build(backend, config, ParamReader::new(weights))
    }

    /// A randomly initialised network (shape tests, benches).
    pub fn random(backend: &B, config: SegResNetConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, ParamReader::random(seed))
    }

    fn build(backend: &B, config: SegResNetConfig, params: ParamReader) -> Result<Self> {
        let c = &config;
        let mut l = Loader { backend, params, config: c };
        let init = l.weight("convInit.conv.weight", c.init_filters, c.in_channels, 3)?;
        let mut down = Vec::new();
        for (i, &n) in c.blocks_down.iter().enumerate() {
            let w = c.width(i);
            let pre = (i > 0).then(|| l.weight(&format!("down_layers.{i}.0.conv.weight"), w, w / 2, 3)).transpose()?;
            let blocks = (0..n).map(|j| l.block(&format!("down_layers.{i}.{}", j + 1), w)).collect::<Result<_>>()?;
            down.push((pre, blocks));
        }
        let n_up = c.blocks_up.len();
        let mut up = Vec::new();
        for (i, &n) in c.blocks_up.iter().enumerate() {
            let w = c.width(n_up - i);
            let reduce = l.weight(&format!("up_samples.{i}.0.conv.weight"), w / 2, w, 1)?;
            let deconv = match c.upsample {
                SegResUpsample::Deconv => {
                    let dims = c.spatial_dims;
                    let mut shape = vec![w / 2, w / 2];
                    shape.resize(2 + dims, 2);
                    let k = l.params.take(&format!("up_samples.{i}.1.deconv.weight"), &shape);
                    let kd = if dims == 3 { 2 } else { 1 };
                    let k = backend.upload(&k.reshape(&[w / 2, w / 2, kd, 2, 2])?)?;
                    let b = backend.upload(&l.params.take(&format!("up_samples.{i}.1.deconv.bias"), &[w / 2]))?;
                    Some((k, b))
                }
                SegResUpsample::NonTrainable => None,
            };
            let blocks = (0..n).map(|j| l.block(&format!("up_layers.{i}.{j}"), w / 2)).collect::<Result<_>>()?;
            up.push(Up { reduce, deconv, blocks });
        }
        let final_norm = l.norm("conv_final.0", c.init_filters)?;
        let final_weight = l.weight("conv_final.2.conv.weight", c.out_channels, c.init_filters, 1)?;
        let final_bias = backend.upload(&l.params.take("conv_final.2.conv.bias", &[c.out_channels]))?;
        l.params.finish(&[])?;
        Ok(Self { config, init, down, up, final_norm, final_weight, final_bias })
    }

    /// The configuration.
    pub fn config(&self) -> &SegResNetConfig {
        &self.config
    }

    /// norm -> act on a copy of `x`.
    fn norm_act(&self, b: &B, x: &B::Tensor, affine: &Affine<B::Tensor>) -> Result<B::Tensor> {
        let mut y = x.clone();
        let groups = self.config.groups.unwrap_or(b.shape(x)[1]);
        let (g, beta) = affine.as_ref().map_or((None, None), |(g, beta)| (Some(g), Some(beta)));
        b.group_norm(&mut y, groups, g, beta, self.config.norm_eps, self.config.act)?;
        Ok(y)
    }

    fn block(&self, b: &B, x: B::Tensor, r: &ResBlock<B>) -> Result<B::Tensor> {
        let conv = |t: &B::Tensor, w: &B::Tensor| b.conv3d(t, w, None, [1; 3], self.pad3());
        let y = conv(&self.norm_act(b, &x, &r.norms[0])?, &r.convs[0])?;
        let mut y = conv(&self.norm_act(b, &y, &r.norms[1])?, &r.convs[1])?;
        b.add(&mut y, &x)?;
        Ok(y)
    }

    /// Padding of a 3x3(x3) conv: none along the slice axis of a 2-D network.
    fn pad3(&self) -> [usize; 3] {
        [usize::from(self.config.spatial_dims == 3), 1, 1]
    }

    /// Logits (N, classes, spatial...) of input (N, in_channels, H, W) for a 2-D network or
    /// (N, in_channels, D, H, W) for a 3-D one; every side must be a multiple of 2 per downsampling.
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let c = &self.config;
        let t = c.total_stride();
        let multiple = [if c.spatial_dims == 3 { t } else { 1 }, t, t];
        let (shape, volume) = super::volume_input(b, x, "SegResNet", (c.spatial_dims, c.in_channels), multiple)?;
        let stride = if c.spatial_dims == 3 { [2; 3] } else { [1, 2, 2] };
        let mut y = b.conv3d(&volume, &self.init, None, [1; 3], self.pad3())?;
        let mut skips = Vec::with_capacity(self.down.len());
        for (pre, blocks) in &self.down {
            if let Some(w) = pre {
                y = b.conv3d(&y, w, None, stride, self.pad3())?;
            }
            for r in blocks {
                y = self.block(b, y, r)?;
            }
            skips.push(y.clone());
        }
        skips.pop();
        for u in &self.up {
            let reduced = b.conv3d(&y, &u.reduce, None, [1; 3], [0; 3])?;
            y = match &u.deconv {
                Some((w, bias)) => b.conv_transpose3d(&reduced, w, Some(bias), Transposed::kernel_stride(stride))?,
                None => {
                    let s = b.shape(&reduced);
                    let size = [s[2] * stride[0], s[3] * 2, s[4] * 2];
                    b.upsample_trilinear(&reduced, size, false)?
                }
            };
            b.add(&mut y, &skips.pop().expect("one skip per decoder level"))?;
            for r in &u.blocks {
                y = self.block(b, y, r)?;
            }
        }
        let y = self.norm_act(b, &y, &self.final_norm)?;
        let logits = b.conv3d(&y, &self.final_weight, Some(&self.final_bias), [1; 3], [0; 3])?;
        super::logits_like_input(b, logits, &shape, c.out_channels)
    }

    /// Multiply-adds of one forward at the spatial size `dims` (H, W or D, H, W), times two.
    pub fn flops(&self, dims: &[usize]) -> f64 {
        let c = &self.config;
        let (taps, up_taps) = if c.spatial_dims == 3 { (27.0, 8.0) } else { (9.0, 4.0) };
        let voxels = |level: usize| dims.iter().map(|&d| (d >> level) as f64).product::<f64>();
        let conv = |cin: usize, cout: usize, k: f64, at: f64| 2.0 * (cin * cout) as f64 * k * at;
        let mut total = conv(c.in_channels, c.init_filters, taps, voxels(0));
        for (i, &n) in c.blocks_down.iter().enumerate() {
            let w = c.width(i);
            if i > 0 {
                total += conv(w / 2, w, taps, voxels(i));
            }
            total += 2.0 * n as f64 * conv(w, w, taps, voxels(i));
        }
        let n_up = c.blocks_up.len();
        for (i, &n) in c.blocks_up.iter().enumerate() {
            let (w, level) = (c.width(n_up - i), n_up - i);
            total += conv(w, w / 2, 1.0, voxels(level));
            if c.upsample == SegResUpsample::Deconv {
                total += conv(w / 2, w / 2, up_taps, voxels(level));
            }
            total += 2.0 * n as f64 * conv(w / 2, w / 2, taps, voxels(level - 1));
        }
        total + conv(c.init_filters, c.out_channels, 1.0, voxels(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::CpuBackend;
    use crate::tensor::Tensor;

    #[test]
    fn a_random_2d_segresnet_gives_logits_on_the_input_grid() {
        let args: Map<String, Value> = serde_json::from_value(serde_json::json!({
            "spatial_dims": 2, "init_filters": 4, "out_channels": 3, "blocks_down": [1, 1], "blocks_up": [1],
            "norm": ["group", {"num_groups": 2}]
        }))
        .unwrap();
        let net = SegResNet::random(&CpuBackend, SegResNetConfig::from_args(&args).unwrap(), 1).unwrap();
        let y = net.forward_logits(&CpuBackend, &Tensor::zeros(&[2, 1, 8, 6])).unwrap();
        assert_eq!(y.shape(), &[2, 3, 8, 6]);
        let err = net.forward_logits(&CpuBackend, &Tensor::zeros(&[1, 1, 7, 6])).unwrap_err().to_string();
        assert!(err.contains("multiple of the strides' product [2, 2]"), "{err}");
    }
}
