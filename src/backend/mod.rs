//! The layer-level compute interface. The CPU implementation is the reference for every other backend;
//! the CUDA backend implements the same calls (and may fuse them) on device-resident tensors.
//!
//! Calls take and return the backend's own tensor type, so a model uploads its weights once and keeps
//! activations where the backend wants them; `upload`/`download` are the only host crossings.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod kernels;
pub mod perturb;
pub mod profile;
pub mod volume;

use crate::tensor::Tensor;
use anyhow::Result;
use perturb::{MaskBatch, ScoreKind};

pub use cpu::CpuBackend;
pub use cuda::{CudaBackend, Precision};
pub use device::{Compute, Device};
pub use perturb::Scene;

/// Pointwise non-linearities used by the models (MONAI U-Net: ReLU/LeakyReLU; CLIP: QuickGELU/GELU).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Activation {
    /// x.
    Identity,
    /// max(x, 0).
    Relu,
    /// x, or slope * x below 0.
    LeakyRelu(f32),
    /// x * sigmoid(1.702 x), as in OpenAI CLIP.
    QuickGelu,
    /// The exact (erf) GELU.
    Gelu,
}

impl Activation {
    #[inline]
    /// The activation of one value (the CPU reference of every kernel's epilogue).
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Identity => x,
            Activation::Relu => x.max(0.0),
            Activation::LeakyRelu(slope) => {
                if x >= 0.0 {
                    x
                } else {
                    x * slope
                }
            }
            Activation::QuickGelu => x / (1.0 + (-1.702 * x).exp()),
            Activation::Gelu => 0.5 * x * (1.0 + erf(x / std::f32::consts::SQRT_2)),
        }
    }
}

/// erf with max abs error ~1.2e-7 (Numerical Recipes' erfc Chebyshev fit), enough for f32 GELU.
fn erf(x: f32) -> f32 {
    let z = (x as f64).abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * poly.exp();
    (if x >= 0.0 { 1.0 - erfc } else { erfc - 1.0 }) as f32
}

/// The instance norm that follows a convolution in [`Backend::conv2d_norm`].
pub struct PlaneNorm<'a, T> {
    /// Scale per output channel (None: 1).
    pub gamma: Option<&'a T>,
    /// Shift per output channel (None: 0).
    pub beta: Option<&'a T>,
    /// Added to the variance.
    pub eps: f32,
    /// Applied after the norm.
    pub act: Activation,
}

/// `conv2d_fused` as separate calls: concatenate, convolve, activate (the trait's default, and what a
/// backend's own version falls back to).
pub fn conv2d_unfused<B: Backend + ?Sized>(
    b: &B,
    x: &B::Tensor,
    extra: Option<&B::Tensor>,
    weight: &B::Tensor,
    bias: Option<&B::Tensor>,
    pad: usize,
    act: Activation,
) -> Result<B::Tensor> {
    let joined;
    let input = match extra {
        Some(e) => {
            joined = b.concat_channels(x, e)?;
            &joined
        }
        None => x,
    };
    let mut y = b.conv2d(input, weight, bias, 1, pad)?;
    b.activate(&mut y, act)?;
    Ok(y)
}

/// The layer-level calls every model is written against; `CpuBackend` is the reference and
/// `CudaBackend` runs the same calls on hand-written kernels.
pub trait Backend: Send + Sync {
    /// The backend's tensor (host memory, or a device buffer with its shape).
    type Tensor: Clone + Send + Sync;

    /// The device in words, for reports.
    fn name(&self) -> String;
    /// Copies a host tensor to the backend.
    fn upload(&self, t: &Tensor) -> Result<Self::Tensor>;
    /// Copies a backend tensor to the host.
    fn download(&self, t: &Self::Tensor) -> Result<Tensor>;
    /// The tensor's shape.
    fn shape<'a>(&self, t: &'a Self::Tensor) -> &'a [usize];
    /// The same values under a new shape with as many elements (no copy): a 2-D network run by the
    /// 3-D layers as one-slice volumes.
    fn reshape(&self, t: Self::Tensor, shape: &[usize]) -> Result<Self::Tensor>;

    /// Bytes this backend can still allocate (the CPU: the tightest of MemAvailable, the cgroup's limit
    /// and the address-space rlimit).
    fn memory_available(&self) -> usize {
        cpu::available_memory()
    }

    /// (bytes of activations one forward batch may take, largest useful batch) for `--batch auto`: up to
    /// 2 GiB, and at most half of what is available, so a tight memory limit gives a smaller batch.
    fn batch_budget(&self) -> (usize, usize) {
        ((2usize << 30).min(self.memory_available() / 2), 64)
    }

    /// Waits until queued device work is done (timing); the CPU has none.
    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    /// 2-D convolution, NCHW input, weight (Cout, Cin, kh, kw), symmetric zero padding.
    fn conv2d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        stride: usize,
        pad: usize,
    ) -> Result<Self::Tensor>;

    /// Transposed convolution whose kernel equals its stride (MONAI's `deconv` upsampling):
    /// weight (Cin, Cout, k, k), output (N, Cout, k*H, k*W).
    fn conv_transpose2d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
    ) -> Result<Self::Tensor>;

    /// Group normalisation: the channels split into `groups` runs of equal length, each (image, group)
    /// normalised over its channels' H*W (D*H*W for NCDHW) with biased variance, then the optional
    /// per-channel affine, then `act`: one fused pass over the activations instead of three.
    #[allow(clippy::too_many_arguments)]
    fn group_norm(
        &self,
        x: &mut Self::Tensor,
        groups: usize,
        gamma: Option<&Self::Tensor>,
        beta: Option<&Self::Tensor>,
        eps: f32,
        act: Activation,
    ) -> Result<()>;

    /// Per (image, channel) normalisation: `group_norm` with one channel per group.
    fn instance_norm(
        &self,
        x: &mut Self::Tensor,
        gamma: Option<&Self::Tensor>,
        beta: Option<&Self::Tensor>,
        eps: f32,
        act: Activation,
    ) -> Result<()> {
        let channels = self.shape(x).get(1).copied().unwrap_or(1);
        self.group_norm(x, channels, gamma, beta, eps, act)
    }

    /// Applies `act` in place.
    fn activate(&self, x: &mut Self::Tensor, act: Activation) -> Result<()>;

    /// A stride-1 conv over the channel concatenation [x, extra] (the decoder's [skip, upsampled]),
    /// followed by `act`. A device backend reads both inputs in place and applies `act` in the conv's
    /// epilogue; the default composes the plain calls.
    fn conv2d_fused(
        &self,
        x: &Self::Tensor,
        extra: Option<&Self::Tensor>,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        pad: usize,
        act: Activation,
    ) -> Result<Self::Tensor> {
        conv2d_unfused(self, x, extra, weight, bias, pad, act)
    }

    /// `conv2d_fused` without activation, then instance norm of each output plane and `norm.act` (the
    /// 2-D U-Nets' conv unit). The default composes the calls; the CPU normalises each image's planes
    /// right after its convolution, while they are still in cache.
    fn conv2d_norm(
        &self,
        x: &Self::Tensor,
        extra: Option<&Self::Tensor>,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        pad: usize,
        norm: &PlaneNorm<Self::Tensor>,
    ) -> Result<Self::Tensor> {
        let mut y = self.conv2d_fused(x, extra, weight, bias, pad, Activation::Identity)?;
        self.instance_norm(&mut y, norm.gamma, norm.beta, norm.eps, norm.act)?;
        Ok(y)
    }

    /// k x k max pooling with stride k, floor mode (odd edges dropped, as in PyTorch).
    fn max_pool2d(&self, x: &Self::Tensor, k: usize) -> Result<Self::Tensor>;

    /// Bilinear 2x upsampling with align_corners = true (MONAI's `nontrainable` upsampling).
    fn upsample_bilinear2x(&self, x: &Self::Tensor) -> Result<Self::Tensor>;

    /// Grow H, W to (h, w) by repeating the last row/column (MONAI UpCat's replicate pad).
    fn pad_replicate_end(&self, x: &Self::Tensor, h: usize, w: usize) -> Result<Self::Tensor>;

    /// Channel concatenation [a, b] of two NCHW (or NCDHW) tensors equal outside the channels.
    fn concat_channels(&self, a: &Self::Tensor, b: &Self::Tensor) -> Result<Self::Tensor>;

    /// Softmax over the channel axis of an NCHW or NCDHW tensor.
    fn softmax_channels(&self, x: &mut Self::Tensor) -> Result<()>;

    /// 3-D convolution, NCDHW input, weight (Cout, Cin, kd, kh, kw), `stride` and symmetric zero
    /// padding `pad` per (D, H, W) axis (`volume::Conv3d`).
    fn conv3d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        stride: [usize; 3],
        pad: [usize; 3],
    ) -> Result<Self::Tensor>;

    /// Transposed 3-D convolution, weight (Cin, Cout, kd, kh, kw), placed as `at` says
    /// (`volume::ConvTranspose3d`; `Transposed::kernel_stride` for the U-Nets' kernel = stride upsampling).
    fn conv_transpose3d(
        &self,
        x: &Self::Tensor,
        weight: &Self::Tensor,
        bias: Option<&Self::Tensor>,
        at: volume::Transposed,
    ) -> Result<Self::Tensor>;

    /// Max pooling over windows of `k` voxels per axis with stride `k`, floor mode.
    fn max_pool3d(&self, x: &Self::Tensor, k: [usize; 3]) -> Result<Self::Tensor>;

    /// Trilinear resizing of an NCDHW tensor to `size` (D, H, W), with PyTorch's `align_corners` rule
    /// (`volume::linear_taps`).
    fn upsample_trilinear(&self, x: &Self::Tensor, size: [usize; 3], align_corners: bool) -> Result<Self::Tensor>;

    /// Grow D, H, W to `size` by repeating the last slice/row/column (MONAI UpCat's replicate pad in 3-D).
    fn pad_replicate_end3d(&self, x: &Self::Tensor, size: [usize; 3]) -> Result<Self::Tensor>;

    /// An NCDHW tensor reversed along the spatial axes marked in `axes` (D, H, W): nnU-Net's test-time
    /// mirroring (`torch.flip`).
    fn flip3d(&self, x: &Self::Tensor, axes: [bool; 3]) -> Result<Self::Tensor>;

    /// y = x W^T + b over the last axis; weight (out, in) as in torch.nn.Linear.
    fn linear(&self, x: &Self::Tensor, weight: &Self::Tensor, bias: Option<&Self::Tensor>) -> Result<Self::Tensor>;

    /// LayerNorm over the last axis.
    fn layer_norm(&self, x: &Self::Tensor, gamma: &Self::Tensor, beta: &Self::Tensor, eps: f32)
        -> Result<Self::Tensor>;

    /// Softmax over the last axis.
    fn softmax_last(&self, x: &mut Self::Tensor) -> Result<()>;

    /// Multi-head scaled dot-product attention. q, k, v are (B, L, heads * d) as the projections emit
    /// them; the output has the same layout. `causal` masks future positions.
    fn attention(
        &self,
        q: &Self::Tensor,
        k: &Self::Tensor,
        v: &Self::Tensor,
        heads: usize,
        causal: bool,
    ) -> Result<Self::Tensor>;

    /// a += b, elementwise (residual connections).
    fn add(&self, a: &mut Self::Tensor, b: &Self::Tensor) -> Result<()>;

    /// Keep-masks of samples `first..first + n` of `masks` and the perturbed images
    /// baseline + m (input - baseline), both (n, 1, S, S), with m forced to 1 outside the scene's ROI.
    fn perturb(
        &self,
        scene: &Scene<Self::Tensor>,
        masks: &MaskBatch,
        first: usize,
        n: usize,
    ) -> Result<(Self::Tensor, Self::Tensor)>;

    /// One score per item of logits (N, C, H, W): class `class` against M0 (a 0/1 plane), as `kind` says.
    fn segmentation_scores(
        &self,
        logits: &Self::Tensor,
        m0: &Self::Tensor,
        class: usize,
        kind: ScoreKind,
    ) -> Result<Self::Tensor>;

    /// acc (2, plane) holds a Kahan sum and its compensation; adds `sum_i weights[i] * masks[i]` in item
    /// order (RISE's saliency sum, kept where the masks are).
    fn accumulate_weighted(&self, acc: &mut Self::Tensor, weights: &Self::Tensor, masks: &Self::Tensor) -> Result<()>;

    /// `segmentation_scores` of the logits a pointwise (1x1) head (weight (classes, C, 1, 1), bias) makes
    /// of `features` (N, C, H, W). A backend may compute the head only where the score reads it
    /// (M0's pixels for the mean probability and the logit sum); by default, everywhere.
    fn head_scores(
        &self,
        features: &Self::Tensor,
        head: (&Self::Tensor, &Self::Tensor),
        m0: &Self::Tensor,
        class: usize,
        kind: ScoreKind,
    ) -> Result<Self::Tensor> {
        head_then_scores(self, features, head, m0, class, kind)
    }
}

/// The logits a pointwise (1x1) head (weight, bias) makes of `features` (N, C, H, W), at every pixel.
pub fn head_logits<B: Backend + ?Sized>(
    b: &B,
    features: &B::Tensor,
    (weight, bias): (&B::Tensor, &B::Tensor),
) -> Result<B::Tensor> {
    b.conv2d_fused(features, None, weight, Some(bias), 0, Activation::Identity)
}

/// [`Backend::head_scores`] through the head's logits at every pixel.
pub fn head_then_scores<B: Backend + ?Sized>(
    b: &B,
    features: &B::Tensor,
    head: (&B::Tensor, &B::Tensor),
    m0: &B::Tensor,
    class: usize,
    kind: ScoreKind,
) -> Result<B::Tensor> {
    b.segmentation_scores(&head_logits(b, features, head)?, m0, class, kind)
}
