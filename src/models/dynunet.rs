//! MONAI's `DynUNet` (monai.networks.nets.DynUNet, nnU-Net's network in MONAI's blocks): per-level kernels
//! and strides, `UnetBasicBlock` (conv -> norm -> act, twice) or `UnetResBlock` (the same plus the input,
//! through a 1x1 strided conv + norm where the shape changes, then act), `UnetUpBlock` (transposed conv,
//! concatenation with the skip, a basic block), a 1x1 output conv. Deep-supervision heads only act in
//! training and are not read. A 2-D network runs as one-slice volumes, as the other networks here.

use super::monai_unet::{per_axis, positive};
use super::unet::{activation, fold_batch_norm, layer_spec};
use crate::backend::volume::Transposed;
use crate::backend::{Activation, Backend};
use crate::weights::{ParamReader, WeightsFile};
use anyhow::{bail, ensure, Context, Result};
use serde_json::{Map, Value};

/// The normalisation after each convolution.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum DynNorm {
    /// Instance norm, with or without a learned affine.
    Instance {
        #[allow(missing_docs)]
        affine: bool,
    },
    /// Group norm with a learned affine.
    Group {
        #[allow(missing_docs)]
        groups: usize,
    },
    /// Batch norm in eval mode, folded into the convolution before it.
    Batch,
}

/// DynUNet's constructor arguments, per axis (D, H, W) with D = 1 in 2-D.
#[derive(Clone, Debug, PartialEq)]
pub struct DynUNetConfig {
    /// 2 or 3.
    pub spatial_dims: usize,
    /// Input channels.
    pub in_channels: usize,
    /// Classes.
    pub out_channels: usize,
    /// Kernel of each level.
    pub kernels: Vec<[usize; 3]>,
    /// Stride of each level (the first usually 1).
    pub strides: Vec<[usize; 3]>,
    /// Transposed conv kernel (= its stride) of each decoder level, top first; matches the level's stride.
    pub up_kernels: Vec<[usize; 3]>,
    /// Width of each level.
    pub filters: Vec<usize>,
    /// Normalisation.
    pub norm: DynNorm,
    /// Normalisation epsilon.
    pub norm_eps: f32,
    /// Activation.
    pub act: Activation,
    /// UnetResBlock instead of UnetBasicBlock.
    pub res_block: bool,
    /// Whether the transposed convs have biases.
    pub trans_bias: bool,
}

/// MONAI's `get_padding`: (k - s + 1) / 2 per axis, refused when negative.
fn padding(kernel: [usize; 3], stride: [usize; 3]) -> Result<[usize; 3]> {
    ensure!(
        (0..3).all(|a| kernel[a] + 1 >= stride[a]),
        "kernel {kernel:?} with stride {stride:?}: MONAI's padding would be negative"
    );
    Ok(std::array::from_fn(|a| (kernel[a] + 1 - stride[a]) / 2))
}

impl DynUNetConfig {
    /// `DynUNet(**args)` from a bundle's `network_def` (keys starting with `_` removed); absent keys take
    /// MONAI's defaults; what xaiclip cannot reproduce is refused by name.
    pub fn from_args(args: &Map<String, Value>) -> Result<Self> {
        const KNOWN: [&str; 14] = [
            "spatial_dims",
            "in_channels",
            "out_channels",
            "kernel_size",
            "strides",
            "upsample_kernel_size",
            "filters",
            "dropout",
            "norm_name",
            "act_name",
            "deep_supervision",
            "deep_supr_num",
            "res_block",
            "trans_bias",
        ];
        if let Some(k) = args.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            bail!("network_def.{k} is not a DynUNet argument xaiclip reads");
        }
        let need = |k: &str| args.get(k).with_context(|| format!("DynUNet needs {k}"));
        let spatial_dims = positive(need("spatial_dims")?, "spatial_dims")?;
        ensure!(spatial_dims == 2 || spatial_dims == 3, "spatial_dims is {spatial_dims}; DynUNet here has 2 or 3");
        let levels = |k: &str| -> Result<Vec<[usize; 3]>> {
            need(k)?
                .as_array()
                .with_context(|| format!("{k} must be a list"))?
                .iter()
                .map(|v| per_axis(v, spatial_dims, k))
                .collect()
        };
        let (kernels, strides, up_kernels) =
            (levels("kernel_size")?, levels("strides")?, levels("upsample_kernel_size")?);
        let n = strides.len();
        ensure!(
            kernels.len() == n && n >= 3,
            "kernel_size has {} entries and strides {n}: they must match, 3 or more (MONAI's check)",
            kernels.len()
        );
        ensure!(
            up_kernels.len() == n - 1,
            "upsample_kernel_size has {} entries; {n} levels need {}",
            up_kernels.len(),
            n - 1
        );
        let filters = match args.get("filters") {
            None | Some(Value::Null) => {
                (0..n).map(|i| (1usize << (5 + i)).min(if spatial_dims == 3 { 320 } else { 512 })).collect()
            }
            Some(Value::Array(a)) => {
                let f = a.iter().map(|v| positive(v, "filters")).collect::<Result<Vec<_>>>()?;
                ensure!(f.len() >= n, "filters has {} entries; {n} levels need as many", f.len());
                f[..n].to_vec()
            }
            Some(other) => bail!("filters must be a list, got {other}"),
        };
        let (act_name, act_args) = layer_spec(
            args.get("act_name").unwrap_or(&serde_json::json!(["leakyrelu", {"negative_slope": 0.01}])),
            "act_name",
        )?;
        let act = activation(&act_name, &act_args)
            .with_context(|| format!("act_name {act_name:?} is not supported (leakyrelu, relu or gelu)"))?;
        let (norm_name, norm_args) = layer_spec(
            args.get("norm_name").unwrap_or(&serde_json::json!(["instance", {"affine": true}])),
            "norm_name",
        )?;
        let affine = norm_args.get("affine").and_then(Value::as_bool);
        let norm = match norm_name.as_str() {
            "instance" => DynNorm::Instance { affine: affine.unwrap_or(false) },
            "batch" => DynNorm::Batch,
            "group" => {
                ensure!(affine.unwrap_or(true), "norm_name group without affine is not supported");
                let groups = norm_args.get("num_groups").context("norm_name group needs num_groups")?;
                DynNorm::Group { groups: positive(groups, "num_groups")? }
            }
            other => bail!("norm_name {other:?} is not supported (instance, batch or group)"),
        };
        if let DynNorm::Group { groups } = norm {
            if let Some(f) = filters.iter().find(|f| !f.is_multiple_of(groups)) {
                bail!("num_groups {groups} does not divide a level's {f} channels");
            }
        }
        let flag = |k: &str| {
            args.get(k).map_or(Some(false), Value::as_bool).with_context(|| format!("{k} must be true or false"))
        };
        flag("deep_supervision")?;
        for (k, s) in kernels.iter().zip(&strides) {
            padding(*k, *s)?;
        }
        Ok(Self {
            spatial_dims,
            in_channels: positive(need("in_channels")?, "in_channels")?,
            out_channels: positive(need("out_channels")?, "out_channels")?,
            kernels,
            strides,
            up_kernels,
            filters,
            norm,
            norm_eps: norm_args.get("eps").and_then(Value::as_f64).unwrap_or(1e-5) as f32,
            act,
            res_block: flag("res_block")?,
            trans_bias: flag("trans_bias")?,
        })
    }

    /// Input sides must be multiples of this per axis (D, H, W): the strides' product.
    pub fn total_stride(&self) -> [usize; 3] {
        self.strides.iter().fold([1; 3], |t, s| std::array::from_fn(|a| t[a] * s[a]))
    }

    /// The network in a few words (info, reports).
    pub fn summary(&self) -> String {
        let axes = |v: &[[usize; 3]]| v.iter().map(|k| k[3 - self.spatial_dims..].to_vec()).collect::<Vec<_>>();
        format!(
            "filters {:?}, kernels {:?}, strides {:?}, {} blocks, {:?}, {:?}",
            self.filters,
            axes(&self.kernels),
            axes(&self.strides),
            if self.res_block { "residual" } else { "basic" },
            self.norm,
            self.act
        )
    }
}

/// An instance or group norm: groups (None: one per channel) and the affine (gamma, beta).
type GroupNorm<T> = (Option<usize>, Option<(T, T)>);

/// A conv and the norm after it (None: batch norm, folded into the conv).
struct ConvNorm<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
    stride: [usize; 3],
    pad: [usize; 3],
    norm: Option<GroupNorm<B::Tensor>>,
}

struct Block<B: Backend> {
    units: [ConvNorm<B>; 2],
    /// UnetResBlock's 1x1 conv + norm on the input, where the shape changes.
    skip: Option<ConvNorm<B>>,
    residual: bool,
}

struct Up<B: Backend> {
    weight: B::Tensor,
    bias: Option<B::Tensor>,
    at: Transposed,
    block: Block<B>,
}

/// MONAI DynUNet on a backend.
pub struct DynUNet<B: Backend> {
    config: DynUNetConfig,
    /// input_block, the downsamples, the bottleneck: one block per level.
    down: Vec<Block<B>>,
    /// One per decoder level, deepest first (`upsamples.{i}`).
    up: Vec<Up<B>>,
    out_weight: B::Tensor,
    out_bias: B::Tensor,
}

struct Loader<'a, 'b, B: Backend> {
    backend: &'b B,
    params: ParamReader<'a>,
    config: &'b DynUNetConfig,
}

impl<B: Backend> Loader<'_, '_, B> {
    fn host(&mut self, name: &str, a: usize, b: usize, k: [usize; 3]) -> Result<crate::tensor::Tensor> {
        let mut shape = vec![a, b];
        shape.extend_from_slice(&k[3 - self.config.spatial_dims..]);
        self.params.take(name, &shape).reshape(&[a, b, k[0], k[1], k[2]])
    }

    fn conv_norm(
        &mut self,
        conv: &str,
        norm: &str,
        (cin, cout): (usize, usize),
        kernel: [usize; 3],
        stride: [usize; 3],
    ) -> Result<ConvNorm<B>> {
        let mut weight = self.host(&format!("{conv}.conv.weight"), cout, cin, kernel)?;
        let mut bias = None;
        let vector = |l: &mut Self, leaf: &str| l.params.take(&format!("{norm}.{leaf}"), &[cout]);
        let norm = match self.config.norm {
            DynNorm::Batch => {
                let stats = ["weight", "bias", "running_mean", "running_var"].map(|leaf| vector(self, leaf));
                fold_batch_norm(&mut weight, &mut bias, stats, self.config.norm_eps);
                None
            }
            DynNorm::Instance { affine: false } => Some((None, None)),
            DynNorm::Instance { affine: true } | DynNorm::Group { .. } => {
                let (g, b) = (vector(self, "weight"), vector(self, "bias"));
                let groups = match self.config.norm {
                    DynNorm::Group { groups } => Some(groups),
                    _ => None,
                };
                Some((groups, Some((self.backend.upload(&g)?, self.backend.upload(&b)?))))
            }
        };
        Ok(ConvNorm {
            weight: self.backend.upload(&weight)?,
            bias: bias.map(|b| self.backend.upload(&b)).transpose()?,
            stride,
            pad: padding(kernel, stride)?,
            norm,
        })
    }

    /// UnetBasicBlock or UnetResBlock at `prefix`.
    fn block(
        &mut self,
        prefix: &str,
        (cin, cout): (usize, usize),
        kernel: [usize; 3],
        stride: [usize; 3],
        residual: bool,
    ) -> Result<Block<B>> {
        let units = [
            self.conv_norm(&format!("{prefix}.conv1"), &format!("{prefix}.norm1"), (cin, cout), kernel, stride)?,
            self.conv_norm(&format!("{prefix}.conv2"), &format!("{prefix}.norm2"), (cout, cout), kernel, [1; 3])?,
        ];
        let skip = (residual && (cin != cout || stride != [1; 3]))
            .then(|| {
                self.conv_norm(&format!("{prefix}.conv3"), &format!("{prefix}.norm3"), (cin, cout), [1; 3], stride)
            })
            .transpose()?;
        Ok(Block { units, skip, residual })
    }
}

impl<B: Backend> DynUNet<B> {
    /// Builds the network from `config` and a state dict, listing every mismatch at once.
    pub fn load(backend: &B, config: DynUNetConfig, weights: &WeightsFile) -> Result<Self> {
        Self::build(backend, config, ParamReader::new(weights))
    }

    /// A randomly initialised network (shape tests, benches).
    pub fn random(backend: &B, config: DynUNetConfig, seed: u64) -> Result<Self> {
        Self::build(backend, config, ParamReader::random(seed))
    }

    fn build(backend: &B, config: DynUNetConfig, params: ParamReader) -> Result<Self> {
        let c = &config;
        let mut l = Loader { backend, params, config: c };
        let n = c.strides.len();
        let mut down = Vec::with_capacity(n);
        for i in 0..n {
            let prefix = match i {
                0 => "input_block".to_string(),
                _ if i == n - 1 => "bottleneck".to_string(),
                _ => format!("downsamples.{}", i - 1),
            };
            let cin = if i == 0 { c.in_channels } else { c.filters[i - 1] };
            down.push(l.block(&prefix, (cin, c.filters[i]), c.kernels[i], c.strides[i], c.res_block)?);
        }
        // upsamples.{j}: from level n-1-j to level n-2-j.
        let mut up = Vec::with_capacity(n - 1);
        for j in 0..n - 1 {
            let (below, at) = (n - 1 - j, n - 2 - j);
            let (cin, cout) = (c.filters[below], c.filters[at]);
            // UnetUpBlock strides by its kernel: padding 0, output padding 0.
            let k = c.up_kernels[at];
            let weight = l.host(&format!("upsamples.{j}.transp_conv.conv.weight"), cin, cout, k)?;
            let bias = c.trans_bias.then(|| l.params.take(&format!("upsamples.{j}.transp_conv.conv.bias"), &[cout]));
            let block =
                l.block(&format!("upsamples.{j}.conv_block"), (2 * cout, cout), c.kernels[below], [1; 3], false)?;
            up.push(Up {
                weight: backend.upload(&weight)?,
                bias: bias.map(|b| backend.upload(&b)).transpose()?,
                at: Transposed::kernel_stride(k),
                block,
            });
        }
        let out_weight =
            backend.upload(&l.host("output_block.conv.conv.weight", c.out_channels, c.filters[0], [1; 3])?)?;
        let out_bias = backend.upload(&l.params.take("output_block.conv.conv.bias", &[c.out_channels]))?;
        // skip_layers.* alias the same modules; the deep-supervision heads only act in training.
        l.params.finish_except(|name| {
            name.starts_with("skip_layers.")
                || name.starts_with("deep_supervision_heads.")
                || name.ends_with("num_batches_tracked")
        })?;
        Ok(Self { config, down, up, out_weight, out_bias })
    }

    /// The configuration.
    pub fn config(&self) -> &DynUNetConfig {
        &self.config
    }

    fn conv_norm(&self, b: &B, x: &B::Tensor, u: &ConvNorm<B>, act: Activation) -> Result<B::Tensor> {
        let mut y = b.conv3d(x, &u.weight, u.bias.as_ref(), u.stride, u.pad)?;
        match &u.norm {
            Some((groups, affine)) => {
                let groups = groups.unwrap_or(b.shape(&y)[1]);
                let (g, beta) = affine.as_ref().map_or((None, None), |(g, beta)| (Some(g), Some(beta)));
                b.group_norm(&mut y, groups, g, beta, self.config.norm_eps, act)?;
            }
            None => b.activate(&mut y, act)?,
        }
        Ok(y)
    }

    fn block(&self, b: &B, x: &B::Tensor, block: &Block<B>) -> Result<B::Tensor> {
        let act = self.config.act;
        let y = self.conv_norm(b, x, &block.units[0], act)?;
        if !block.residual {
            return self.conv_norm(b, &y, &block.units[1], act);
        }
        let mut y = self.conv_norm(b, &y, &block.units[1], Activation::Identity)?;
        match &block.skip {
            Some(s) => b.add(&mut y, &self.conv_norm(b, x, s, Activation::Identity)?)?,
            None => b.add(&mut y, x)?,
        }
        b.activate(&mut y, act)?;
        Ok(y)
    }

    /// Logits (N, classes, spatial...) of input (N, in_channels, H, W) for a 2-D network or
    /// (N, in_channels, D, H, W) for a 3-D one; every side must be a multiple of the strides' product.
    pub fn forward_logits(&self, b: &B, x: &B::Tensor) -> Result<B::Tensor> {
        let c = &self.config;
        let (shape, mut y) = super::volume_input(b, x, "DynUNet", (c.spatial_dims, c.in_channels), c.total_stride())?;
        let mut skips = Vec::with_capacity(self.down.len());
        for block in &self.down {
            y = self.block(b, &y, block)?;
            skips.push(y.clone());
        }
        skips.pop();
        for u in &self.up {
            let t = b.conv_transpose3d(&y, &u.weight, u.bias.as_ref(), u.at)?;
            y = self.block(b, &b.concat_channels(&t, &skips.pop().expect("one skip per decoder level"))?, &u.block)?;
        }
        let logits = b.conv3d(&y, &self.out_weight, Some(&self.out_bias), [1; 3], [0; 3])?;
        super::logits_like_input(b, logits, &shape, c.out_channels)
    }

    /// Multiply-adds of one forward at the spatial size `dims` (H, W or D, H, W), times two.
    pub fn flops(&self, dims: &[usize]) -> f64 {
        let c = &self.config;
        let mut size = [1usize; 3];
        size[3 - dims.len()..].copy_from_slice(dims);
        let taps = |k: [usize; 3]| k.iter().product::<usize>() as f64;
        let vox = |s: [usize; 3]| s.iter().product::<usize>() as f64;
        let (mut total, mut sizes) = (0.0, Vec::new());
        for i in 0..c.strides.len() {
            size = std::array::from_fn(|a| size[a].div_ceil(c.strides[i][a]));
            let cin = if i == 0 { c.in_channels } else { c.filters[i - 1] };
            total += 2.0 * (cin + c.filters[i]) as f64 * c.filters[i] as f64 * taps(c.kernels[i]) * vox(size);
            sizes.push(size);
        }
        for at in 0..c.strides.len() - 1 {
            let (f, s) = (c.filters[at] as f64, sizes[at]);
            total += 2.0 * c.filters[at + 1] as f64 * f * taps(c.up_kernels[at]) * vox(sizes[at + 1]);
            total += 2.0 * 3.0 * f * f * taps(c.kernels[at + 1]) * vox(s);
        }
        total + 2.0 * (c.filters[0] * c.out_channels) as f64 * vox(sizes[0])
    }
}
